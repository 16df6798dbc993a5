"""Runs the services as child processes with prefixed, coloured output.

Children get their own session (so a terminal's Ctrl-C reaches only the supervisor,
which then stops them in order) and a parent-death signal (so even a killed supervisor
leaves no orphan).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import IO

COLOURS = ("\033[36m", "\033[33m", "\033[35m", "\033[32m", "\033[34m", "\033[91m")
RESET = "\033[0m"
_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Run in a child before exec: the kernel sends it SIGTERM when its parent dies."""
    # Not on Linux: rely on the supervisor's orderly stop.
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def render_log_line(line: str) -> str:
    """A JSON log line as ``level message key=value ...``; other lines unchanged."""
    try:
        entry = json.loads(line)
    except ValueError:
        return line
    if not isinstance(entry, dict) or "msg" not in entry:
        return line
    level = str(entry.pop("level", "")).upper()
    message = entry.pop("msg")
    for key in ("ts", "service", "logger"):
        entry.pop(key, None)
    extras = " ".join(f"{k}={v}" for k, v in entry.items())
    return f"{level:<7} {message} {extras}".rstrip()


@dataclass
class Child:
    name: str
    args: list[str]
    env: dict[str, str]
    process: subprocess.Popen[bytes] | None = None
    log_lines: list[str] = field(default_factory=list)


class Supervisor:
    def __init__(
        self, out: IO[str] | None = None, colour: bool | None = None, keep_lines: int = 2_000
    ) -> None:
        self._out = out or sys.stdout
        self._colour = self._out.isatty() if colour is None else colour
        self._keep = keep_lines
        self._lock = threading.Lock()
        self.children: list[Child] = []
        self._killed: dict[str, Child] = {}
        self.stopping = False

    def start(self, name: str, args: list[str], env: Mapping[str, str]) -> Child:
        child = Child(name, args, dict(env))
        child.process = subprocess.Popen(
            args,
            env=child.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
        colour = COLOURS[len(self.children) % len(COLOURS)]
        self.children.append(child)
        threading.Thread(target=self._pump, args=(child, colour), daemon=True).start()
        return child

    def say(self, name: str, text: str) -> None:
        self._write(name, text, "\033[1m")

    def _write(self, name: str, text: str, colour: str) -> None:
        prefix = f"{name:<10}|"
        with self._lock:
            if self._colour:
                self._out.write(f"{colour}{prefix}{RESET} {text}\n")
            else:
                self._out.write(f"{prefix} {text}\n")
            self._out.flush()

    def _pump(self, child: Child, colour: str) -> None:
        assert child.process is not None and child.process.stdout is not None
        for raw in child.process.stdout:
            line = raw.decode("utf-8", "replace").rstrip()
            child.log_lines.append(line)
            del child.log_lines[: -self._keep]
            self._write(child.name, render_log_line(line), colour)

    def failed(self) -> list[Child]:
        """Children that exited while the stack was meant to run."""
        return [c for c in self.children if c.process and c.process.poll() is not None]

    def child(self, name: str) -> Child:
        """The newest child started under ``name``."""
        for child in reversed(self.children):
            if child.name == name:
                return child
        raise KeyError(name)

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Signal a child's process group and wait for it (fault injection)."""
        child = self.child(name)
        assert child.process is not None
        _signal_group(child.process, sig)
        child.process.wait()
        # a killed child is not a failure of the stack: it is not watched any more
        self.children.remove(child)
        self._killed[name] = child

    def restart(self, name: str) -> Child:
        """Start a stopped or killed child again with the same command and environment."""
        old = next((c for c in self.children if c.name == name), None)
        if old is not None and old.process is not None and old.process.poll() is None:
            raise RuntimeError(f"{name} is still running")
        template = old or self._killed[name]
        if old is not None:
            self.children.remove(old)
        return self.start(name, template.args, template.env)

    def stop(self, timeout_s: float = 15.0) -> None:
        """SIGTERM every child (newest first), then SIGKILL what is left after the timeout."""
        self.stopping = True
        alive = [c for c in reversed(self.children) if c.process and c.process.poll() is None]
        for child in alive:
            assert child.process is not None
            _signal_group(child.process, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for child in alive:
            assert child.process is not None
            try:
                child.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.say("stack", f"{child.name} did not stop in {timeout_s:.0f}s; killing it")
                _signal_group(child.process, signal.SIGKILL)
                child.process.wait()


def _signal_group(process: subprocess.Popen[bytes], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)
