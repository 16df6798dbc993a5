"""The HTTP endpoint every service exposes: /metrics (Prometheus), /healthz, /readyz."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

log = logging.getLogger(__name__)


class HealthServer:
    """Serves metrics and health on a background thread.

    ``/healthz`` answers 200 while the process runs; ``/readyz`` answers 200 only while
    ``ready()`` is true (model loaded, broker reached, ...).
    """

    def __init__(self, port: int, ready: Callable[[], bool], host: str = "0.0.0.0") -> None:
        ready_check = ready

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/metrics":
                    self._answer(200, generate_latest(), CONTENT_TYPE_LATEST)
                elif self.path == "/healthz":
                    self._answer(200, b"ok\n", "text/plain")
                elif self.path == "/readyz":
                    ok = ready_check()
                    self._answer(
                        200 if ok else 503, b"ready\n" if ok else b"not ready\n", "text/plain"
                    )
                else:
                    self._answer(404, b"not found\n", "text/plain")

            def _answer(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> HealthServer:
        self._thread.start()
        log.info("health and metrics endpoint up", extra={"port": self.port})
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def start_health(port: int, ready: Callable[[], bool]) -> HealthServer | None:
    """The health and metrics endpoint on ``port``, or None when the port is 0 (off)."""
    return HealthServer(port, ready).start() if port else None
