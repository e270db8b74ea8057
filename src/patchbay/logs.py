"""Structured logs: one JSON object per line on stderr, through structlog."""

from __future__ import annotations

import logging
import sys

import structlog


def configure(level: str = "info") -> None:
    """Send structlog and the standard library's loggers to stderr as JSON lines."""
    numeric = getattr(logging, level.upper(), logging.INFO)
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )


def as_library() -> None:
    """Unless the application configured structlog, route Patchbay's events to ``logging``.

    Called by the objects a Python program uses directly (``Sender``, ``CrmClient``).
    structlog's own default prints every event, debug included, to *stdout*, which would mix
    "token refreshed" lines into a script's output. Through the standard library, an
    application that configured nothing sees warnings and errors on stderr (``logging``'s
    last-resort handler), and one that configured ``logging`` gets them as it asked, under the
    ``patchbay.*`` logger names. An application that configured structlog keeps its setup.
    """
    if structlog.is_configured():
        return
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            structlog.processors.format_exc_info,
            structlog.processors.KeyValueRenderer(key_order=["event"]),
        ],
        wrapper_class=structlog.stdlib.BoundLogger,
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=True,
    )
