"""State files: atomic 0600 JSON per target, round trip, pruning, health."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from spcs_registry_agent.errors import AgentError
from spcs_registry_agent.state import (
    TargetState,
    all_healthy,
    from_json,
    prune_states,
    read_states,
    remove_state,
    state_path,
    status_rows,
    to_json,
    write_state,
)

T0 = 1_800_000_000.0


def sample(name: str = "prod", **changes: object) -> TargetState:
    values: dict[str, object] = {
        "name": name,
        "connection": name,
        "registry": "org-acct.registry.snowflakecomputing.com",
        "expires_at": T0 + 3600,
        "last_refresh": T0,
        "next_refresh": T0 + 2400,
        "failures": 0,
        "last_error": None,
        "written_to": "auths",
        "updated_at": T0,
        "pid": 42,
    }
    values.update(changes)
    return TargetState(**values)  # type: ignore[arg-type]


def test_round_trip_with_iso_times(tmp_path: Path) -> None:
    state = sample()
    write_state(tmp_path / "state", state)
    data = json.loads(state_path(tmp_path / "state", "prod").read_text())
    assert data["expires_at"] == "2027-01-15T09:00:00+00:00"
    assert data["next_refresh"] == "2027-01-15T08:40:00+00:00"
    assert read_states(tmp_path / "state") == [state]


def test_file_and_directory_are_private(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    write_state(state_dir, sample())
    assert stat.S_IMODE(state_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE(state_path(state_dir, "prod").stat().st_mode) == 0o600


def test_rewrite_replaces_and_leaves_no_temp_files(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    write_state(state_dir, sample())
    write_state(state_dir, sample(failures=3, last_error="HTTP 503"))
    assert [p.name for p in state_dir.iterdir()] == ["prod.json"]
    (state,) = read_states(state_dir)
    assert state.failures == 3
    assert state.last_error == "HTTP 503"


def test_no_secret_fields_exist() -> None:
    assert set(to_json(sample())) == {
        "name",
        "connection",
        "registry",
        "expires_at",
        "last_refresh",
        "next_refresh",
        "failures",
        "last_error",
        "written_to",
        "updated_at",
        "pid",
    }


def test_names_become_safe_visible_file_names(tmp_path: Path) -> None:
    assert state_path(tmp_path, "../etc/passwd").parent == tmp_path
    assert not state_path(tmp_path, ".hidden").name.startswith(".")
    for name in ("../x", ".hidden", "a b", "ok@x"):
        write_state(tmp_path, sample(name))
    assert sorted(s.name for s in read_states(tmp_path)) == sorted(
        ["../x", ".hidden", "a b", "ok@x"]
    )


def test_missing_directory_reads_as_no_targets(tmp_path: Path) -> None:
    assert read_states(tmp_path / "nope") == []


def test_prune_and_remove(tmp_path: Path) -> None:
    for name in ("a", "b", "c"):
        write_state(tmp_path, sample(name))
    (tmp_path / "notes.txt").write_text("kept")
    prune_states(tmp_path, {"a", "c"})
    assert [s.name for s in read_states(tmp_path)] == ["a", "c"]
    remove_state(tmp_path, "a")
    remove_state(tmp_path, "gone")
    assert [s.name for s in read_states(tmp_path)] == ["c"]
    assert (tmp_path / "notes.txt").exists()


def test_damaged_file_is_an_error_naming_it(tmp_path: Path) -> None:
    (tmp_path / "x.json").write_text("{not json")
    with pytest.raises(AgentError, match=r"x\.json: unreadable state file"):
        read_states(tmp_path)


@pytest.mark.parametrize(
    "data",
    [[], {"name": "x", "connection": None, "expires_at": 5}, {"name": 3, "connection": None}, {}],
)
def test_from_json_rejects_bad_shapes(data: object) -> None:
    with pytest.raises((ValueError, TypeError)):
        from_json(data)


def test_unknown_keys_from_newer_versions_are_ignored() -> None:
    data = to_json(sample())
    data["future"] = 1
    assert from_json(data) == sample()


def test_health_means_unexpired_credentials() -> None:
    assert sample().healthy(T0)
    assert not sample().healthy(T0 + 3600)
    assert not sample(expires_at=None).healthy(T0)
    assert all_healthy([sample("a"), sample("b")], T0)
    assert not all_healthy([sample("a"), sample("b", expires_at=T0 - 1)], T0)
    assert not all_healthy([], T0)


def test_status_rows_show_expiry_and_health() -> None:
    rows = status_rows([sample("a"), sample("b", expires_at=T0 - 1, failures=2)], T0)
    assert [r["target"] for r in rows] == ["a", "b"]
    assert list(rows[0]) == [
        "target",
        "registry",
        "connection",
        "expires_at",
        "last_refresh",
        "next_refresh",
        "failures",
        "last_error",
        "healthy",
    ]
    assert rows[0]["expires_at"] == "2027-01-15T09:00:00+00:00"
    assert (rows[0]["healthy"], rows[1]["healthy"]) == (True, False)
    assert rows[1]["failures"] == 2
