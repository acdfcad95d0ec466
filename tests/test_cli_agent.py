"""`run` and `status` as users run them: a real process, real files, the fake Snowflake."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
from support.fake_snowflake import FakeSnowflake, SnowflakeHome
from support.processes import CLI, run_cli

from spcs_registry_agent.state import TargetState, write_state


def test_run_rejects_a_bad_config_with_exit_2(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text("[agent]\nverfy = 'none'\n")
    done = run_cli("run", "--config", str(config))
    assert done.returncode == 2
    assert done.stderr.strip() == f"Error: {config}: agent.verfy: unknown key"


def test_run_rejects_an_unknown_connection_with_exit_2(tmp_path: Path) -> None:
    done = run_cli("run", "-c", "nope", "--state-dir", str(tmp_path / "state"))
    assert done.returncode == 2, done.stderr
    error = [line for line in done.stderr.splitlines() if line.startswith("Error: ")]
    assert len(error) == 1
    assert "target nope" in error[0]
    assert "nope" in error[0]


@pytest.mark.connector
def test_run_writes_credentials_and_stops_on_sigterm(
    tmp_path: Path, fake_snowflake: FakeSnowflake, snowflake_home: SnowflakeHome
) -> None:
    docker, state = tmp_path / "docker", tmp_path / "state"
    agent = subprocess.Popen(
        [*CLI, "run", "-c", "fake",
         "--docker-config", str(docker), "--state-dir", str(state), "--verify", "none",
         "--log-format", "json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while not (state / "fake.json").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        status = run_cli("status", "--state-dir", str(state), "--format", "JSON")
        assert status.returncode == 0, status.stderr
        (row,) = json.loads(status.stdout)
        assert row["target"] == "fake"
        assert row["registry"] == "myorg-myacct.registry.snowflakecomputing.com"
        assert row["healthy"] is True
        auths = json.loads((docker / "config.json").read_text())["auths"]
        assert list(auths) == ["myorg-myacct.registry.snowflakecomputing.com"]
        agent.send_signal(signal.SIGTERM)
        _, stderr = agent.communicate(timeout=10)
    finally:
        agent.kill()
    assert agent.returncode == 0
    assert '"event": "token_refreshed"' in stderr
    assert not [s for s in fake_snowflake.secrets() if s in stderr]


def test_status_exit_code_follows_credential_expiry(tmp_path: Path) -> None:
    now = time.time()
    write_state(tmp_path, TargetState("a", "a", "r.example", expires_at=now + 600))
    done = run_cli("status", "--state-dir", str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert "r.example" in done.stdout
    write_state(tmp_path, TargetState("b", "b", "r.example", expires_at=now - 1, failures=3))
    done = run_cli("status", "--state-dir", str(tmp_path), "--format", "JSON")
    assert done.returncode == 1
    assert [(r["target"], r["healthy"]) for r in json.loads(done.stdout)] == [
        ("a", True),
        ("b", False),
    ]


def test_status_without_state_is_unhealthy(tmp_path: Path) -> None:
    done = run_cli("status", "--state-dir", str(tmp_path / "none"))
    assert done.returncode == 1
    assert "is the agent running?" in done.stderr


def test_status_finds_the_state_dir_in_the_config(tmp_path: Path) -> None:
    state = tmp_path / "custom-state"
    write_state(state, TargetState("a", "a", "r.example", expires_at=time.time() + 600))
    config = tmp_path / "agent.toml"
    config.write_text(f'[agent]\nstate_dir = "{state}"\n')
    done = run_cli("status", "--config", str(config))
    assert done.returncode == 0, done.stderr
