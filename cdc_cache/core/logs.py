"""Structured JSON logs: one object per line, with the event's table, key and position."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any, Final

import orjson

_RESERVED: Final = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
}


class JsonFormatter(logging.Formatter):
    """Render records as JSON; ``extra={...}`` fields become top-level keys."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        doc.update({k: v for k, v in vars(record).items() if k not in _RESERVED})
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        try:
            return orjson.dumps(doc, default=str).decode()
        except TypeError:  # text UTF-8 cannot carry, or nesting the encoder refuses
            return orjson.dumps({name: _text(value) for name, value in doc.items()}).decode()


def _text(value: Any) -> Any:
    """``value`` if it is a plain scalar, else its text with lone surrogates escaped."""
    if value is None or isinstance(value, bool | int | float):
        return value
    try:
        text = str(value)
    except RecursionError:
        return f"<{type(value).__name__} nested too deeply to show>"
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def configure(level: str = "INFO") -> None:
    """Send JSON logs to stderr at ``level`` (idempotent)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
