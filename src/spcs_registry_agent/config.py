"""The agent's own TOML file -> typed, validated, frozen settings.

Everything is checked at load so that a typo stops the agent at start (exit 2) or makes a
reload keep the old configuration, instead of surfacing hours later. Messages name the file,
the key path and the problem in one line, and never echo a value (it might be a password).
"""

from __future__ import annotations

import re
import stat
import string
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, TypeVar

from spcs_registry_agent.connections import CONTROL_FLAGS, FLAG_KEYS, is_secret_key
from spcs_registry_agent.errors import ConfigError
from spcs_registry_agent.logs import LOG_FORMATS, LogFormat
from spcs_registry_agent.policy import Policy
from spcs_registry_agent.verify import VERIFY_MODES, VerifyMode

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib  # type: ignore[import-not-found,unused-ignore]

OnExit = Literal["keep", "revoke"]
APP_NAME = "spcs-registry-agent"
ON_EXIT: tuple[OnExit, ...] = ("keep", "revoke")
MAX_HEARTBEAT = 30.0

#: Keys an inline [registry.connection] table may carry: snowflake-cli's connection flags,
#: resolved like `-x/--temporary-connection` (plus generic SNOWFLAKE_* env).
CONNECTION_KEYS = FLAG_KEYS - CONTROL_FLAGS
PATH_CONNECTION_KEYS = frozenset({"private_key_file", "token_file_path"})
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,99}$")

ConnectionValue = str | int | bool
_T = TypeVar("_T")
_Choice = TypeVar("_Choice", bound=str)


@dataclass(frozen=True, repr=False)
class Target:
    """One registry to keep logged in: which connection, and where its registry is."""

    name: str  # unique label: logs, state file, status
    connection: str | None = None  # snowflake-cli connection name; None = its default
    inline: tuple[tuple[str, ConnectionValue], ...] = ()  # inline connection keys, sorted
    host: str | None = None  # registry host; None = discover through the connection
    private_link: bool = False

    @property
    def inline_params(self) -> dict[str, ConnectionValue]:
        return dict(self.inline)

    def __repr__(self) -> str:
        inline = {k: "****" if is_secret_key(k) else v for k, v in self.inline}
        return (
            f"Target(name={self.name!r}, connection={self.connection!r}, inline={inline!r}, "
            f"host={self.host!r}, private_link={self.private_link!r})"
        )


@dataclass(frozen=True)
class AgentConfig:
    """Validated settings for `run` and `status`."""

    source: Path | None = None
    docker_config: Path | None = None  # None = $DOCKER_CONFIG or ~/.docker
    verify: VerifyMode = "auto"
    log_format: LogFormat = "auto"
    state_dir: Path | None = None  # None = default_state_dir()
    on_exit: OnExit = "keep"
    heartbeat: float = MAX_HEARTBEAT
    policy: Policy = field(default_factory=Policy)
    targets: tuple[Target, ...] = ()


def default_config_path(env: Mapping[str, str], home: Path) -> Path:
    """`$XDG_CONFIG_HOME/spcs-registry-agent/config.toml`, XDG's default when unset."""
    base = env.get("XDG_CONFIG_HOME") or str(home / ".config")
    return Path(base) / APP_NAME / "config.toml"


def default_state_dir(env: Mapping[str, str], home: Path) -> Path:
    """systemd's StateDirectory= when set, else `$XDG_STATE_HOME/spcs-registry-agent`."""
    if env.get("STATE_DIRECTORY"):
        # systemd passes a colon-separated list when several directories are configured.
        return Path(env["STATE_DIRECTORY"].split(":")[0])
    base = env.get("XDG_STATE_HOME") or str(home / ".local" / "state")
    return Path(base) / APP_NAME


class _Checker:
    """Reads typed values out of parsed TOML, reporting problems with the file and key path."""

    def __init__(self, source: str, env: Mapping[str, str], home: Path) -> None:
        self.source = source
        self.env = env
        self.home = home

    def fail(self, path: str, problem: str) -> ConfigError:
        return ConfigError(f"{self.source}: {path}: {problem}")

    def table(self, value: object, path: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(path, f"expected a table, got {_kind(value)}")
        return value

    def only(
        self, table: Mapping[str, Any], allowed: Sequence[str] | frozenset[str], path: str
    ) -> None:
        for key in table:
            if key not in allowed:
                raise self.fail(f"{path}.{key}" if path else key, "unknown key")

    def string(self, value: object, path: str, choices: Sequence[str] = ()) -> str:
        if not isinstance(value, str):
            raise self.fail(path, f"expected a string, got {_kind(value)}")
        if choices and value not in choices:
            raise self.fail(path, f"must be one of {', '.join(choices)}")
        if not value.strip():
            raise self.fail(path, "must not be empty")
        return value

    def boolean(self, value: object, path: str) -> bool:
        if not isinstance(value, bool):
            raise self.fail(path, f"expected true or false, got {_kind(value)}")
        return value

    def number(
        self, value: object, path: str, low: float, high: float, *, low_open: bool = False
    ) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail(path, f"expected a number, got {_kind(value)}")
        number = float(value)
        too_low = number <= low if low_open else number < low
        if too_low or number > high or number != number:
            bracket = "(" if low_open else "["
            raise self.fail(path, f"must be in {bracket}{low:g}, {high:g}]")
        return number

    def path(self, value: object, key_path: str) -> Path:
        """A path with ~ and $VAR/${VAR} expanded, e.g. ${CREDENTIALS_DIRECTORY}/key.p8."""
        text = string.Template(self.string(value, key_path)).safe_substitute(self.env)
        if text == "~" or text.startswith("~/"):
            text = str(self.home) + text[1:]
        return Path(text)


def _kind(value: object) -> str:
    names: dict[type, str] = {
        bool: "boolean",
        int: "integer",
        float: "float",
        str: "string",
        list: "array",
        dict: "table",
    }
    return names.get(type(value), type(value).__name__)


#: Every key of the [agent] table.
AGENT_KEYS = (
    "docker_config",
    "verify",
    "log_format",
    "state_dir",
    "on_exit",
    "heartbeat",
    "refresh_fraction",
    "refresh_jitter",
    "refresh_min_margin",
    "backoff_initial",
    "backoff_max",
)


def _agent_settings(check: _Checker, raw: object, base: AgentConfig) -> AgentConfig:
    agent = check.table(raw, "agent")
    check.only(agent, AGENT_KEYS, "agent")

    def get(key: str, read: Callable[[object, str], _T], default: _T) -> _T:
        return read(agent[key], f"agent.{key}") if key in agent else default

    def number(
        low: float, high: float, *, low_open: bool = False
    ) -> Callable[[object, str], float]:
        return lambda value, path: check.number(value, path, low, high, low_open=low_open)

    def choice(choices: Sequence[_Choice]) -> Callable[[object, str], _Choice]:
        def read(value: object, path: str) -> _Choice:
            text = check.string(value, path, choices)
            return next(c for c in choices if c == text)  # the typed member

        return read

    def optional_path(value: object, path: str) -> Path | None:
        return check.path(value, path)

    old = base.policy
    policy = Policy(
        refresh_fraction=get("refresh_fraction", number(0, 1, low_open=True), old.refresh_fraction),
        jitter=get("refresh_jitter", number(0, 1), old.jitter),
        min_margin=get("refresh_min_margin", number(0, 86_400), old.min_margin),
        backoff_initial=get("backoff_initial", number(0, 3600, low_open=True), old.backoff_initial),
        backoff_max=get("backoff_max", number(0, 86_400, low_open=True), old.backoff_max),
    )
    if policy.backoff_max < policy.backoff_initial:
        raise check.fail("agent.backoff_max", "must not be less than agent.backoff_initial")
    return replace(
        base,
        docker_config=get("docker_config", optional_path, base.docker_config),
        verify=get("verify", choice(VERIFY_MODES), base.verify),
        log_format=get("log_format", choice(LOG_FORMATS), base.log_format),
        state_dir=get("state_dir", optional_path, base.state_dir),
        on_exit=get("on_exit", choice(ON_EXIT), base.on_exit),
        heartbeat=get("heartbeat", number(0, MAX_HEARTBEAT, low_open=True), base.heartbeat),
        policy=policy,
    )


def _inline_connection(
    check: _Checker, raw: object, path: str, mode: int
) -> tuple[tuple[str, ConnectionValue], ...]:
    table = check.table(raw, path)
    check.only(table, CONNECTION_KEYS, path)
    if not table:
        raise check.fail(path, "must not be empty")
    items: list[tuple[str, ConnectionValue]] = []
    for key, value in sorted(table.items()):
        key_path = f"{path}.{key}"
        if key in PATH_CONNECTION_KEYS:
            items.append((key, str(check.path(value, key_path))))
        elif key == "port":
            items.append((key, int(check.number(value, key_path, 1, 65535))))
        else:
            items.append((key, check.string(value, key_path)))
    secrets = {key for key in table if is_secret_key(key)}
    if secrets and mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise check.fail(
            f"{path}.{min(secrets)}",
            "secret in a file readable by group or others (chmod 600 it)",
        )
    return tuple(items)


def _target(check: _Checker, raw: object, index: int, mode: int) -> Target:
    path = f"registry[{index}]"
    table = check.table(raw, path)
    check.only(table, ("name", "connection", "host", "private_link"), path)
    if "connection" not in table:
        raise check.fail(f"{path}.connection", "missing: a connection name or a table")
    value = table["connection"]
    connection: str | None = None
    inline: tuple[tuple[str, ConnectionValue], ...] = ()
    if isinstance(value, dict):
        inline = _inline_connection(check, value, f"{path}.connection", mode)
    elif isinstance(value, str):
        connection = check.string(value, f"{path}.connection")
    else:
        raise check.fail(f"{path}.connection", f"expected a string or a table, got {_kind(value)}")
    if "name" in table:
        name = check.string(table["name"], f"{path}.name")
    elif connection is not None:
        name = connection
    else:
        raise check.fail(f"{path}.name", "missing: required with an inline connection")
    if not _NAME.match(name):
        raise check.fail(f"{path}.name", "use letters, digits, '.', '_', '-', '@' (max 100)")
    host = check.string(table["host"], f"{path}.host") if "host" in table else None
    if host is not None and not re.fullmatch(r"[A-Za-z0-9.-]+(:[0-9]{1,5})?", host):
        raise check.fail(f"{path}.host", "expected a bare host[:port], no scheme or path")
    private_link = check.boolean(table.get("private_link", False), f"{path}.private_link")
    return Target(name, connection, inline, host, private_link)


def _unique(check: _Checker, targets: Sequence[Target]) -> None:
    seen: set[str] = set()
    for index, target in enumerate(targets):
        if target.name in seen:
            raise check.fail(f"registry[{index}].name", f"duplicate target name {target.name!r}")
        seen.add(target.name)


def parse_config(
    text: str, *, source: Path, env: Mapping[str, str], home: Path, mode: int = 0o600
) -> AgentConfig:
    """Parse and validate the file's text (pure: the caller read it). ``mode``: file mode bits."""
    check = _Checker(str(source), env, home)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{source}: invalid TOML: {error}") from None
    check.only(data, ("agent", "registry"), "")
    config = AgentConfig(source=source)
    if "agent" in data:
        config = _agent_settings(check, data["agent"], config)
    registries = data.get("registry", [])
    if not isinstance(registries, list):
        raise check.fail("registry", "expected [[registry]] tables")
    targets = tuple(_target(check, raw, i, mode) for i, raw in enumerate(registries))
    _unique(check, targets)
    return replace(config, targets=targets)


def load_config(path: Path | None, *, env: Mapping[str, str], home: Path) -> AgentConfig:
    """Load ``path`` (--config) or the default file; a missing default file means defaults.

    An explicit path that does not exist is an error: the user asked for that file.
    """
    explicit = path is not None
    file = path if path is not None else default_config_path(env, home)
    try:
        text = file.read_text(encoding="utf-8")
        mode = file.stat().st_mode
    except FileNotFoundError:
        if explicit:
            raise ConfigError(f"{file}: config file not found") from None
        return AgentConfig()
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"{file}: cannot read: {error.__class__.__name__}") from None
    if mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise ConfigError(f"{file}: writable by group or others (chmod go-w it)")
    return parse_config(text, source=file, env=env, home=home, mode=mode)


def with_flags(
    config: AgentConfig,
    *,
    connections: Sequence[str] = (),
    docker_config: Path | None = None,
    verify: str | None = None,
    log_format: str | None = None,
    state_dir: Path | None = None,
) -> AgentConfig:
    """Apply command-line flags; `-c NAME` (repeatable) replaces the file's targets.

    With neither flags nor [[registry]] tables the agent serves snowflake-cli's default
    connection, like `snow spcs image-registry login` would.
    """
    targets = config.targets
    if connections:
        names = list(dict.fromkeys(connections))  # -c prod -c prod is one target
        targets = tuple(Target(name=name, connection=name) for name in names)
    if not targets:
        targets = (Target(name="default"),)
    flags: dict[str, Any] = {
        "docker_config": docker_config,
        "verify": verify,
        "log_format": log_format,
        "state_dir": state_dir,
    }
    return replace(config, targets=targets, **{k: v for k, v in flags.items() if v is not None})
