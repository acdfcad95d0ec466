"""Logging: one renderer for our events and third-party loggers, never a secret."""

from __future__ import annotations

import io
import json
import logging

import pytest
import structlog

from spcs_registry_agent import logs


class TtyStream(io.StringIO):
    def isatty(self) -> bool:
        return True


def capture(log_format: logs.LogFormat = "json", level: int = logging.DEBUG) -> io.StringIO:
    stream = io.StringIO()
    logs.configure(level, log_format, stream)
    return stream


def test_json_lines_when_not_a_terminal() -> None:
    stream = capture("auto")
    structlog.get_logger("spcs_registry_agent.test").info("token_refreshed", registry="r.example")
    event = json.loads(stream.getvalue())
    assert event["event"] == "token_refreshed"
    assert event["registry"] == "r.example"
    assert event["level"] == "info"
    assert event["timestamp"].endswith("Z")


def test_console_lines_on_a_terminal() -> None:
    stream = TtyStream()
    logs.configure(logging.INFO, "auto", stream)
    structlog.get_logger("spcs_registry_agent.test").info("token_refreshed", registry="r.example")
    line = stream.getvalue()
    assert "token_refreshed" in line
    assert "r.example" in line
    with pytest.raises(json.JSONDecodeError):
        json.loads(line)


def test_stdlib_loggers_share_the_renderer() -> None:
    stream = capture("json")
    logging.getLogger("snowflake.connector.network").debug("posting %s", "/session")
    event = json.loads(stream.getvalue())
    assert event == event | {"event": "posting /session", "logger": "snowflake.connector.network"}


def test_third_party_debug_is_hidden_below_debug() -> None:
    stream = capture("json", logging.INFO)
    logging.getLogger("snowflake.connector").info("chatty")
    structlog.get_logger("spcs_registry_agent.test").info("ours")
    assert "chatty" not in stream.getvalue()
    assert "ours" in stream.getvalue()


def test_silent_logs_nothing() -> None:
    stream = capture("json", logs.SILENT)
    structlog.get_logger("spcs_registry_agent.test").critical("anything")
    assert stream.getvalue() == ""


def test_registered_secrets_are_scrubbed_everywhere() -> None:
    stream = capture("json")
    logs.register_secret("s3cr3t-value-123")
    structlog.get_logger("x").info("login", detail="user alice with s3cr3t-value-123")
    logging.getLogger("snowflake.connector").debug("body=%s", {"x": "s3cr3t-value-123"})
    assert "s3cr3t-value-123" not in stream.getvalue()
    assert logs.MASK in stream.getvalue()


def test_secret_named_fields_are_masked_whatever_their_value() -> None:
    stream = capture("json")
    structlog.get_logger("x").info("connect", password="hunter22", session_token="abcd1234")
    event = json.loads(stream.getvalue())
    assert event["password"] == logs.MASK
    assert event["session_token"] == logs.MASK


@pytest.mark.parametrize(
    "text",
    [
        'Authorization: Snowflake Token="zzzUNREGISTEREDzzz"',
        '{"masterToken": "zzzUNREGISTEREDzzz"}',
        "password=zzzUNREGISTEREDzzz",
        "Authorization: Basic zzzUNREGISTEREDzzz",
    ],
)
def test_secret_shaped_text_is_scrubbed_without_registration(text: str) -> None:
    assert "zzzUNREGISTEREDzzz" not in logs.scrub(text)


def _fail_with_a_local() -> None:
    hidden_local = "local-value-never-shown"
    raise ValueError(f"boom {len(hidden_local)}")


@pytest.mark.parametrize("log_format", ["json", "console"])
def test_tracebacks_are_rendered_without_locals(log_format: logs.LogFormat) -> None:
    stream = capture(log_format)
    try:
        _fail_with_a_local()
    except ValueError:
        structlog.get_logger("x").exception("failed")
    output = stream.getvalue()
    assert "_fail_with_a_local" in output
    assert "local-value-never-shown" not in output
