"""Service processes started by tests: real `python -m services.<name>` subprocesses."""

from __future__ import annotations

import re
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import IO


class FeatureWorker:
    """One `python -m services.feature` process with its own log file."""

    def __init__(self, env: dict[str, str], log_path: Path, metrics_port: int) -> None:
        self.log_path = log_path
        self.metrics_port = metrics_port
        self._log: IO[bytes] = open(log_path, "wb")  # noqa: SIM115
        self.process = subprocess.Popen(
            [sys.executable, "-m", "services.feature"],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def counter(self, outcome: str) -> float:
        """``recsys_feature_events_total{outcome=...}``, 0 while the endpoint is not up."""
        return self.metric(f'recsys_feature_events_total{{outcome="{outcome}"}}')

    def metric(self, sample: str) -> float:
        """One sample of the worker's metrics (name and labels as exposed), 0 if absent."""
        try:
            url = f"http://127.0.0.1:{self.metrics_port}/metrics"
            with urllib.request.urlopen(url, timeout=2) as response:
                text = response.read().decode()
        except OSError:
            return 0.0
        match = re.search(rf"^{re.escape(sample)} (\S+)$", text, re.M)
        return float(match.group(1)) if match else 0.0

    def log_tail(self, lines: int = 30) -> str:
        self._log.flush()
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self._log.close()
