"""`login`/`logout` against a real dockerd, docker-registry (token auth), skopeo and pass."""

from __future__ import annotations

import base64
import json

import pytest

from e2e.conftest import E2E
from spcs_registry_agent.docker_credentials import USERNAME

pytestmark = pytest.mark.e2e


def stored(e2e: E2E) -> dict[str, object]:
    config: dict[str, object] = json.loads((e2e.docker_config / "config.json").read_text())
    return config


def stored_password(e2e: E2E, host: str) -> str:
    auths = stored(e2e)["auths"]
    assert isinstance(auths, dict)
    user, _, password = base64.b64decode(auths[host]["auth"]).decode().partition(":")
    assert user == USERNAME
    return password


def test_login_then_docker_push_and_pull_with_only_the_written_config(e2e: E2E) -> None:
    granted = e2e.registry.realm.granted
    e2e.login("--verify", "engine")
    assert e2e.snowflake.registry_password_is_valid(stored_password(e2e, e2e.registry.host))
    ref = e2e.push_tiny("e2e/tiny:push")
    e2e.docker("rmi", ref)
    e2e.docker("pull", ref)
    assert e2e.registry.realm.granted > granted
    assert e2e.snowflake.logouts == 0  # the session (and so the token) lives on
