"""Per-target state files: what the running agent holds, for `status` and healthchecks.

One small JSON file per target (0600, written atomically, never a secret) so `status` works
from another process - or another container sharing the directory - without talking to the
agent, and a crash mid-write never leaves a torn file behind.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Collection, Iterable
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote

from spcs_registry_agent.errors import AgentError
from spcs_registry_agent.policy import is_expired

SUFFIX = ".json"
_TIMES = ("expires_at", "last_refresh", "next_refresh", "updated_at")


@dataclass(frozen=True)
class TargetState:
    """A target as last seen by the agent; times are epoch seconds."""

    name: str
    connection: str | None
    registry: str | None = None
    expires_at: float | None = None
    last_refresh: float | None = None
    next_refresh: float | None = None
    failures: int = 0
    last_error: str | None = None
    written_to: str | None = None
    updated_at: float = 0.0
    pid: int = 0

    def healthy(self, now: float) -> bool:
        """Holds credentials that are still valid: what a healthcheck cares about."""
        return not is_expired(now, self.expires_at)


def iso_time(value: float | None) -> str | None:
    """Epoch seconds as ISO 8601 UTC, as files, `status` and log events show times."""
    if value is None:
        return None
    return datetime.fromtimestamp(value, timezone.utc).isoformat(timespec="seconds")


def _epoch(value: object) -> float | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError("expected an ISO 8601 time")
    return datetime.fromisoformat(value).timestamp()


def to_json(state: TargetState) -> dict[str, Any]:
    """The file's (and `status --format JSON`'s) shape: times as ISO 8601 UTC."""
    data = asdict(state)
    for key in _TIMES:
        data[key] = iso_time(data[key])
    return data


def from_json(data: object) -> TargetState:
    if not isinstance(data, dict):
        raise ValueError("expected an object")
    known = {f.name for f in fields(TargetState)}
    values = {key: value for key, value in data.items() if key in known}
    for key in _TIMES:
        if key in values:
            values[key] = _epoch(values[key])
    state = TargetState(**values)
    if not isinstance(state.name, str) or not isinstance(state.failures, int):
        raise ValueError("bad name or failures")
    return state


def state_path(state_dir: Path, name: str) -> Path:
    """Target names may come from -c flags: quote them into a safe, visible file name."""
    quoted = quote(name, safe="@")
    if quoted.startswith("."):
        quoted = "%2E" + quoted[1:]  # dot files are temp files (and hidden)
    return state_dir / (quoted + SUFFIX)


def write_state(state_dir: Path, state: TargetState) -> None:
    """Atomically replace the target's file (temp file 0600 in the same directory + rename)."""
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    text = json.dumps(to_json(state), indent=2) + "\n"
    fd, temp = tempfile.mkstemp(dir=state_dir, prefix=".tmp-", suffix=SUFFIX)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, state_path(state_dir, state.name))
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def remove_state(state_dir: Path, name: str) -> None:
    state_path(state_dir, name).unlink(missing_ok=True)


def prune_states(state_dir: Path, keep: Collection[str]) -> None:
    """Drop files of targets no longer configured, so `status` does not report ghosts."""
    wanted = {state_path(state_dir, name).name for name in keep}
    for path in _state_files(state_dir):
        if path.name not in wanted:
            path.unlink(missing_ok=True)


def read_states(state_dir: Path) -> list[TargetState]:
    """Every target's state, sorted by name; a damaged file is an error naming it."""
    states: list[TargetState] = []
    for path in _state_files(state_dir):
        try:
            states.append(from_json(json.loads(path.read_text(encoding="utf-8"))))
        except FileNotFoundError:
            continue  # removed between listing and reading: the agent dropped the target
        except (OSError, ValueError, TypeError) as error:
            raise AgentError(
                f"{path}: unreadable state file ({error.__class__.__name__})"
            ) from None
    return sorted(states, key=lambda state: state.name)


def status_rows(states: Iterable[TargetState], now: float) -> list[dict[str, Any]]:
    """What `status` prints per target: the file's fields (pid and bookkeeping aside) + health."""
    rows = []
    for state in states:
        data = to_json(state)
        rows.append(
            {
                "target": data["name"],
                "registry": data["registry"],
                "connection": data["connection"],
                "expires_at": data["expires_at"],
                "last_refresh": data["last_refresh"],
                "next_refresh": data["next_refresh"],
                "failures": data["failures"],
                "last_error": data["last_error"],
                "healthy": state.healthy(now),
            }
        )
    return rows


def all_healthy(states: Iterable[TargetState], now: float) -> bool:
    """True when there is at least one target and every one holds unexpired credentials."""
    states = list(states)
    return bool(states) and all(state.healthy(now) for state in states)


def _state_files(state_dir: Path) -> list[Path]:
    try:
        entries = list(state_dir.iterdir())
    except FileNotFoundError:
        return []
    return sorted(
        p for p in entries if p.name.endswith(SUFFIX) and not p.name.startswith(".") and p.is_file()
    )
