"""Logging: structlog for dtq's own events, the same format for stdlib loggers (hypercorn, ...).

JSON lines when stderr is not a terminal (or `log_format = "json"`), a human-readable console
format in a terminal (or `log_format = "console"`). Timestamps are ISO 8601, UTC.

    configure_logging(settings)          # once, at start-up (the CLI does it)
    log = get_logger(__name__)           # at module level, anywhere
    log.info("task_leased", task_id=..., worker_id=...)

Values bound with `structlog.contextvars.bind_contextvars` (a request id, say) appear in every
event logged from the same trio task and the tasks it starts afterwards.
"""

from __future__ import annotations

import logging
import sys
from typing import Literal, TextIO, cast

import structlog
from structlog.typing import EventDict, FilteringBoundLogger, Processor

from dtq.settings import Settings

__all__ = ["configure_logging", "get_logger"]

LOG_FORMATS = ("auto", "json", "console")

# The stdlib handler configure_logging installed last, so that configuring again replaces it
# and leaves handlers that others (pytest's caplog, say) attached to the root logger alone.
_installed_handler: logging.Handler | None = None


def get_logger(name: str) -> FilteringBoundLogger:
    """A logger whose events carry `logger=name`; it follows the configuration of the moment."""
    return cast(FilteringBoundLogger, structlog.get_logger(name))


class _NamedWriteLogger(structlog.WriteLogger):
    """structlog's WriteLogger plus the name given to `get_logger`, for `_add_logger_name`."""

    def __init__(self, file: TextIO, name: str | None) -> None:
        super().__init__(file)
        self.name = name


def _add_logger_name(logger: object, method_name: str, event_dict: EventDict) -> EventDict:
    name = getattr(logger, "name", None)
    if name is not None:
        event_dict["logger"] = name
    return event_dict


def configure_logging(settings: Settings, *, stream: TextIO | None = None) -> None:
    """Configure structlog and the stdlib root logger from `settings` (log_format, log_level).

    `stream` defaults to `sys.stderr` as it is at call time.
    """
    out = sys.stderr if stream is None else stream
    level = _level_number(settings.log_level)
    renderer_kind = _renderer_kind(settings.log_format, out)

    timestamper = structlog.processors.TimeStamper(fmt="iso", utc=True)
    renderer: Processor
    exc_processors: list[Processor]
    if renderer_kind == "json":
        renderer = structlog.processors.JSONRenderer()
        exc_processors = [structlog.processors.format_exc_info]
    else:
        # ConsoleRenderer formats exceptions itself (and warns if format_exc_info ran first).
        renderer = structlog.dev.ConsoleRenderer(colors=_is_tty(out))
        exc_processors = []

    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            _add_logger_name,
            timestamper,
            structlog.processors.StackInfoRenderer(),
            *exc_processors,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=lambda *args: _NamedWriteLogger(out, args[0] if args else None),
        # Not cached: loggers created at import time must pick up a later configure_logging.
        cache_logger_on_first_use=False,
    )

    # Records from stdlib loggers (hypercorn's error log, libraries) go through the same renderer.
    handler = logging.StreamHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[
                structlog.contextvars.merge_contextvars,
                structlog.stdlib.add_log_level,
                structlog.stdlib.add_logger_name,
                timestamper,
            ],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                *exc_processors,
                renderer,
            ],
        )
    )
    global _installed_handler
    root = logging.getLogger()
    if _installed_handler is not None:
        root.removeHandler(_installed_handler)
    root.addHandler(handler)
    root.setLevel(level)
    _installed_handler = handler


def _level_number(name: str) -> int:
    levels = logging.getLevelNamesMapping()
    try:
        return levels[name.strip().upper()]
    except KeyError:
        choices = ", ".join(sorted(n.lower() for n in levels if n not in {"NOTSET", "WARN"}))
        raise ValueError(f"log_level {name!r} is not one of: {choices}") from None


def _renderer_kind(log_format: str, out: TextIO) -> Literal["json", "console"]:
    if log_format == "json":
        return "json"
    if log_format == "console":
        return "console"
    if log_format == "auto":
        return "console" if _is_tty(out) else "json"
    raise ValueError(f"log_format {log_format!r} is not one of: {', '.join(LOG_FORMATS)}")


def _is_tty(out: TextIO) -> bool:
    try:
        return out.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False
