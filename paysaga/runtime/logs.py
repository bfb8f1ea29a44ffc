"""Structured logging: one JSON object per line, configured once at process start.

Modules log with ``logging.getLogger(__name__)`` and pass fields through ``extra``::

    log.info("grpc.listening", extra={"port": port})

Fields bound with ``log_context`` (e.g. the saga id while handling an event) appear on every
line logged inside that context.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime as dt
import json
import logging
import sys
from collections.abc import Iterator, Mapping
from types import MappingProxyType
from typing import Any, TextIO

_context: contextvars.ContextVar[Mapping[str, Any]] = contextvars.ContextVar(
    "paysaga_log_context", default=MappingProxyType({})
)
_QUIET_LOGGERS = {
    "alembic": logging.WARNING,
    "nats": logging.WARNING,
    "sqlalchemy.engine": logging.WARNING,
    "aiosqlite": logging.WARNING,
    "asyncio": logging.ERROR,
}
_STANDARD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
}


@contextlib.contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    token = _context.set({**_context.get(), **fields})
    try:
        yield
    finally:
        _context.reset(token)


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self._service = service

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "service": self._service,
            "logger": record.name,
            "event": record.getMessage(),
            **_context.get(),
        }
        line.update((key, value) for key, value in vars(record).items() if key not in _STANDARD_ATTRIBUTES)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, separators=(",", ":"))


def configure_logging(service: str, level: str, stream: TextIO = sys.stderr) -> None:
    """Send every log record of the process to stream as JSON lines. Call once, in the entry point."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Library chatter (every SQL statement; asyncio's notice on each TLS connection that the peer
    # closed) is not ours to show; their errors still are.
    for noisy, floor in _QUIET_LOGGERS.items():
        logging.getLogger(noisy).setLevel(max(floor, root.level))
