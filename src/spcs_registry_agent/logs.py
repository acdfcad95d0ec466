"""Logging: structlog for our events, the same renderer for the connector's.

Everything goes to stderr (stdout carries results). Secrets are removed at
two points: values of secret-looking keys are masked before rendering, and
every rendered line is scrubbed of the secret values registered here, so a
token that slips into a third-party message or a traceback is still hidden.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
from typing import Any, Literal, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

LogFormat = Literal["auto", "console", "json"]
LOG_FORMATS: tuple[LogFormat, ...] = ("auto", "console", "json")

#: Above CRITICAL: nothing is logged (`--silent`).
SILENT = logging.CRITICAL + 10

MASK = "****"

#: Third-party loggers, held back unless --debug (see `configure`).
_NOISY_LOGGERS = ("snowflake", "urllib3", "botocore", "boto3", "docker", "apscheduler", "filelock")

_SECRET_KEY = re.compile(
    r"pass(word|phrase|code)?|token|secret|private_key|authorization|credential|assertion",
    re.IGNORECASE,
)
# `key: value` / `key=value` / `"key": "value"` shapes and Snowflake's auth header.
_SECRET_ASSIGNMENT = re.compile(
    r"""(?P<key>["']?[\w-]*(?:password|passcode|passphrase|token|secret|assertion)["']?"""
    r"""\s*[:=]\s*["']?)(?P<value>[^\s"',}]{4,})""",
    re.IGNORECASE,
)
_AUTH_HEADER = re.compile(r"""(Snowflake Token=|Bearer |Basic )["']?[^\s"',}]+""", re.IGNORECASE)

#: Shorter values are too likely to occur in harmless text to be scrubbed.
_MIN_SECRET_LENGTH = 4
_secrets: set[str] = set()
_secrets_lock = threading.Lock()


def register_secret(value: str) -> None:
    """Remember a secret value so no rendered log line can contain it."""
    if len(value) >= _MIN_SECRET_LENGTH:
        with _secrets_lock:
            _secrets.add(value)


def scrub(text: str) -> str:
    """Remove registered secrets and secret-looking assignments from a text."""
    with _secrets_lock:
        known = sorted(_secrets, key=len, reverse=True)
    for secret in known:
        if secret in text:
            text = text.replace(secret, MASK)
    text = _AUTH_HEADER.sub(lambda m: m.group(1) + MASK, text)
    return _SECRET_ASSIGNMENT.sub(lambda m: m.group("key") + MASK, text)


def mask_secret_fields(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """Mask values of keys that name a secret, whatever their content."""
    for key in list(event_dict):
        if key != "event" and _SECRET_KEY.search(key):
            event_dict[key] = MASK
    return event_dict


def _scrub_rendered(_: WrappedLogger, __: str, rendered: Any) -> Any:
    if isinstance(rendered, str):
        return scrub(rendered)
    return rendered


def configure(
    level: int = logging.ERROR,
    log_format: LogFormat = "auto",
    stream: TextIO | None = None,
) -> None:
    """Route structlog and stdlib logging through one renderer on `stream` (stderr)."""
    stream = stream or sys.stderr
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        mask_secret_fields,
    ]
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                *_renderer(log_format, stream),
                _scrub_rendered,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level)
    # The connector speaks at --debug; at --verbose its warnings; otherwise our own
    # one-line errors say what failed and its ERROR lines would only repeat them.
    if level <= logging.DEBUG:
        third_party_level = level
    elif level <= logging.INFO:
        third_party_level = logging.WARNING
    else:
        third_party_level = SILENT
    for name in _NOISY_LOGGERS:
        logging.getLogger(name).setLevel(third_party_level)
    logging.captureWarnings(True)


def _renderer(log_format: LogFormat, stream: TextIO) -> list[Processor]:
    """Console lines for a person at a terminal, JSON lines for everything else."""
    is_tty = bool(getattr(stream, "isatty", lambda: False)())
    if log_format == "console" or (log_format == "auto" and is_tty):
        return [
            structlog.dev.ConsoleRenderer(
                colors=is_tty, exception_formatter=structlog.dev.plain_traceback
            )
        ]
    return [
        structlog.processors.ExceptionRenderer(
            structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
        ),
        structlog.processors.JSONRenderer(),
    ]
