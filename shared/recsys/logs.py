"""Structured logs: one JSON object per line, with the event or request id when known."""

from __future__ import annotations

import contextvars
import json
import logging
import logging.config
import sys
from typing import Any

import orjson

# Set by handlers for the duration of one event or request.
correlation_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "correlation_id", default=None
)

_STANDARD_ATTRS = frozenset(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self._service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "service": self._service,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        cid = correlation_id.get()
        if cid is not None:
            entry["id"] = cid
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRS and not key.startswith("_") and value != "":
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        # orjson: several times faster than json, and ranking writes a line per request.
        try:
            return orjson.dumps(entry, default=str, option=orjson.OPT_NON_STR_KEYS).decode()
        except orjson.JSONEncodeError:  # what orjson refuses (integers over 64 bits)
            return json.dumps(entry, default=str)


_QUIET_LOGGERS = ("aiokafka", "faust", "mode", "httpx", "urllib3", "grpc")
# Back-pressure notices that say the system is working as designed, not that it is failing.
_SILENCED_LOGGERS = ("faust.transport.producer",)


def logging_config(service: str, level: str = "INFO") -> dict[str, Any]:
    """A ``logging.config.dictConfig`` that routes every logger through one JSON handler.

    Also handed to frameworks that configure logging themselves (faust's worker).
    """
    quiet_level = max(logging.WARNING, logging.getLevelName(level.upper()))
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": JsonFormatter, "service": service}},
        "handlers": {
            "stderr": {"class": "logging.StreamHandler", "formatter": "json", "stream": sys.stderr}
        },
        "root": {"level": level.upper(), "handlers": ["stderr"]},
        "loggers": {
            **{name: {"level": quiet_level} for name in _QUIET_LOGGERS},
            **{name: {"level": "ERROR"} for name in _SILENCED_LOGGERS},
        },
    }


def setup_logging(service: str, level: str = "INFO") -> None:
    # The JSON lines carry neither the caller's file and line nor thread and process ids,
    # so the records skip collecting them (the logging HOWTO's optimisations): a frame
    # walk per record, on the ranking server's line per request.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    logging.config.dictConfig(logging_config(service, level))
