"""The HTTP endpoint every service exposes: /metrics (Prometheus), /healthz, /readyz;
and the garbage-collector pause histogram every service reports there."""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, Histogram, generate_latest

log = logging.getLogger(__name__)

GC_PAUSE_SECONDS = Histogram(
    "recsys_gc_pause_seconds",
    "Time the process stood still in Python's cyclic garbage collector, by generation",
    ["generation"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
_gc_started: list[float] = []


def _time_gc(phase: str, info: dict[str, Any]) -> None:
    # Runs inside the collector, in whichever thread triggered it: keep it trivial.
    if phase == "start":
        _gc_started.append(time.perf_counter())
    elif _gc_started:
        GC_PAUSE_SECONDS.labels(str(info["generation"])).observe(
            time.perf_counter() - _gc_started.pop()
        )


def track_gc_pauses() -> None:
    """Observe every collection in ``recsys_gc_pause_seconds`` (idempotent): a full
    collection over a large heap stops every thread of the process at once."""
    if _time_gc not in gc.callbacks:
        gc.callbacks.append(_time_gc)


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
        track_gc_pauses()
        self._thread.start()
        log.info("health and metrics endpoint up", extra={"port": self.port})
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def start_health(port: int, ready: Callable[[], bool]) -> HealthServer | None:
    """The health and metrics endpoint on ``port``, or None when the port is 0 (off)."""
    return HealthServer(port, ready).start() if port else None
