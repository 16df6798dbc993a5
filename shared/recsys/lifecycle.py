"""Process lifecycle shared by the services: stop on SIGTERM/SIGINT, settle the heap."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import threading
from collections.abc import Coroutine
from types import FrameType
from typing import Any, Literal, TypeVar

T = TypeVar("T")
EventLoop = Literal["uvloop", "asyncio"]

log = logging.getLogger(__name__)


def stop_on_signals() -> threading.Event:
    """An event set by SIGTERM or SIGINT, for loops that must finish their batch first."""
    stop = threading.Event()

    def handle(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
    return stop


def freeze_startup_heap() -> None:
    """Take what start-up allocated out of the garbage collector's sight; call once, ready.

    A full collection walks every tracked object, and a process that imported torch,
    transformers or faust holds hundreds of thousands that live as long as it does: each
    full collection spent about 150 ms on the inference service's start-up objects alone,
    stopping the process mid-stream. Frozen objects are never walked (nor freed).
    """
    gc.collect()
    gc.freeze()
    log.info("start-up heap frozen", extra={"objects": gc.get_freeze_count()})


def run_async(main: Coroutine[Any, Any, T], event_loop: EventLoop = "uvloop") -> T:
    """``asyncio.run`` on the chosen loop. uvloop's (libuv) costs the ranking server
    about 0.03 ms less CPU per call than the standard loop's."""
    if event_loop == "asyncio":
        return asyncio.run(main)
    try:
        import uvloop
    except ImportError as exc:
        main.close()
        raise RuntimeError(
            "event loop 'uvloop' needs the uvloop package: pip install uvloop, "
            "or choose the standard loop ('asyncio')"
        ) from exc
    return uvloop.run(main)
