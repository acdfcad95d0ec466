"""snowflake-cli compatible connections: files, environment and flags -> connector arguments.

A user's existing `snow` connections must work unchanged, so this follows snowflake-cli
3.30/3.31 (`api/config.py`, `_app/snow_connector.py`, `api/connections.py`) and the
connector's `config_manager`/`sf_dirs` it builds on, quirks included. Where snowflake-cli
and the bare connector differ (permissions, passphrase names, `PRIVATE_KEY_PASSPHRASE`,
the SNOWFLAKE_JWT requirement), snowflake-cli wins: it is what users run today.

`load_connection_files` does the I/O (directory, permission check, TOML);
`resolve_connection` is pure: loaded files + name + flags + env -> `ResolvedConnection`.
"""

from __future__ import annotations

import re
import stat
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import structlog

from spcs_registry_agent.errors import ConfigError
from spcs_registry_agent.logs import MASK

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib  # type: ignore[import-not-found,unused-ignore]

log = structlog.get_logger(__name__)

CONFIG_FILE = "config.toml"
CONNECTIONS_FILE = "connections.toml"

#: Keys the CLI may pass in `flags` (value None = flag not given). Connection keys use
#: the connector's names: --accountname -> account, --username -> user, --dbname ->
#: database, --schemaname -> schema, --rolename -> role, --private-key-path ->
#: private_key_file. The rest steer the connect call as snow's do: mfa_passcode becomes
#: `passcode`; enable_diag/diag_log_path/diag_allowlist_path become the connector's
#: enable_connection_diag/connection_diag_log_path/connection_diag_allowlist_path.
FLAG_KEYS = frozenset(
    {
        "account",
        "user",
        "password",
        "host",
        "port",
        "protocol",
        "authenticator",
        "workload_identity_provider",
        "private_key_file",
        "token",
        "token_file_path",
        "database",
        "schema",
        "role",
        "warehouse",
        "mfa_passcode",
        "enable_diag",
        "diag_log_path",
        "diag_allowlist_path",
    }
)
#: Flags that steer the connect call rather than name a connection key.
CONTROL_FLAGS = frozenset({"mfa_passcode", "enable_diag", "diag_log_path", "diag_allowlist_path"})

#: Keys whose values are secrets: masked in repr/str and `safe_params`. Extra keys are
#: judged by `is_secret_key`, so an unknown `proxy_password` is masked too.
SECRET_KEYS = frozenset(
    {
        "password",
        "passcode",
        "token",
        "session_token",
        "master_token",
        "private_key",
        "private_key_raw",
        "private_key_file_pwd",
        "private_key_passphrase",
        "oauth_client_secret",
    }
)
_SECRET_PART = re.compile(r"password|passphrase|passcode|secret|_pwd$|token$|^private_key$")

# snowflake-cli's ConnectionConfig fields, in declaration order: `get_connection_dict`
# emits these first and the other keys of the table after them (order decides which
# alias wins when a table has both spellings).
_KNOWN_KEYS = (
    "account",
    "user",
    "password",
    "host",
    "region",
    "port",
    "protocol",
    "database",
    "schema",
    "warehouse",
    "role",
    "authenticator",
    "workload_identity_provider",
    "private_key_file",
    "private_key_raw",
    "private_key_passphrase",
    "token",
    "session_token",
    "master_token",
    "token_file_path",
    "oauth_client_id",
    "oauth_client_secret",
    "oauth_authorization_url",
    "oauth_token_request_url",
    "oauth_redirect_uri",
    "oauth_scope",
    "oauth_enable_pkce",
    "oauth_enable_refresh_tokens",
    "oauth_enable_single_use_refresh_tokens",
    "client_store_temporary_credential",
    "secondary_roles",
    "server_session_keep_alive",
)
# ConnectionConfig.from_dict's renames (file keys only).
_FILE_ALIASES = {
    "oatuh_enable_pkce": "oauth_enable_pkce",
    "private_key_file_pwd": "private_key_passphrase",
}
# snow_connector.CONNECTION_KEY_ALIASES (file keys, flags and generic env); its other entry,
# private_key_file_pwd, has already become private_key_passphrase through _FILE_ALIASES.
_ALIASES = {"private_key_path": "private_key_file"}
# snow_connector.SUPPORTED_ENV_OVERRIDES: SNOWFLAKE_<KEY> fills these when nothing else did.
_GENERIC_ENV_KEYS = (
    "account",
    "user",
    "password",
    "host",
    "port",
    "protocol",
    "authenticator",
    "workload_identity_provider",
    "private_key_file",
    "private_key_path",
    "private_key_raw",
    "database",
    "schema",
    "role",
    "warehouse",
    "session_token",
    "master_token",
    "token",
    "token_file_path",
    "oauth_client_id",
    "oauth_client_secret",
    "oauth_authorization_url",
    "oauth_token_request_url",
    "oauth_redirect_uri",
    "oauth_scope",
    "oauth_disable_pkce",
    "oauth_enable_refresh_tokens",
    "oauth_enable_single_use_refresh_tokens",
    "client_store_temporary_credential",
    "secondary_roles",
    "server_session_keep_alive",
)
_BOOLEAN_KEYS = frozenset(
    {
        "oauth_disable_pkce",
        "oauth_enable_refresh_tokens",
        "oauth_enable_single_use_refresh_tokens",
        "client_store_temporary_credential",
        "server_session_keep_alive",
    }
)
_BOOLEANS = {"true": True, "false": False, "1": True, "0": False}
_WORKLOAD_IDENTITY_PROVIDERS = ("AWS", "AZURE", "GCP", "OIDC")
_QUALIFIED_SCHEMA = re.compile(r".+\..+")
# tomllib quotes the offending character; it may belong to a password.
_QUOTED_CHARACTER = re.compile(r"(character) (?:'[^']*'|\"[^\"]*\"|\S+)(?= \(at )")
_READABLE_BY_OTHERS = stat.S_IRGRP | stat.S_IROTH
_WRITABLE_BY_OTHERS = stat.S_IWGRP | stat.S_IWOTH
_SKIP_PERMISSIONS_ENV = (
    "SF_SKIP_TOKEN_FILE_PERMISSIONS_VERIFICATION",
    "SKIP_TOKEN_FILE_PERMISSIONS_VERIFICATION",
)


def is_secret_key(key: str) -> bool:
    """Whether a connection key holds a secret (`token_file_path` is a path, not one)."""
    return key in SECRET_KEYS or bool(_SECRET_PART.search(key))


@dataclass(frozen=True)
class LoadedConnections:
    """What the configuration directory holds, before any name, flag or env is applied."""

    directory: Path
    #: connections.toml's tables if that file exists, else config.toml's [connections.*].
    connections: Mapping[str, Any]
    #: config.toml's top-level `default_connection_name`, if set.
    default_connection_name: Any = None
    #: The files that existed and were read, for messages.
    files: tuple[Path, ...] = ()


@dataclass(frozen=True, repr=False)
class ResolvedConnection:
    """Connector keyword arguments for one connection; repr/str never show a secret.

    `params` uses snowflake-connector-python 4.x names: private_key_file,
    private_key_file_pwd (5.x's private_key_password), private_key_raw (PEM text,
    snow turns it into `private_key`), token_file_path (both lines read the file).
    """

    name: str | None  # None for --temporary-connection
    params: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "params", MappingProxyType(dict(self.params)))

    def safe_params(self) -> dict[str, Any]:
        """The parameters with every secret value replaced by a mask: fit for logs."""
        return {key: MASK if is_secret_key(key) else value for key, value in self.params.items()}

    def describe(self) -> str:
        """Safe for logs/errors: name (or "temporary connection"), account, user, host."""
        return _describe(self.name, self.params)

    def __repr__(self) -> str:
        return f"ResolvedConnection(name={self.name!r}, params={self.safe_params()!r})"

    __str__ = __repr__


def config_directory(env: Mapping[str, str], home: Path, *, platform: str = sys.platform) -> Path:
    """The connector's `sf_dirs` rule, which snowflake-cli uses.

    `$SNOWFLAKE_HOME` (default `~/.snowflake`) if it exists - a SNOWFLAKE_HOME that does
    not exist skips `~/.snowflake` too - else platformdirs' user config directory:
    `$XDG_CONFIG_HOME/snowflake` when that is an absolute path (Linux and macOS), else
    `~/.config/snowflake` (Linux), `~/Library/Application Support/snowflake` (macOS),
    `%LOCALAPPDATA%\\snowflake` (Windows).
    """
    snowflake_home = _expand_home(env.get("SNOWFLAKE_HOME", "~/.snowflake/"), home)
    if snowflake_home.exists():
        return snowflake_home
    if platform == "win32":
        return Path(env.get("LOCALAPPDATA") or home / "AppData" / "Local") / "snowflake"
    xdg = env.get("XDG_CONFIG_HOME", "")
    if xdg.startswith("/"):
        return Path(xdg) / "snowflake"
    if platform == "darwin":
        return home / "Library" / "Application Support" / "snowflake"
    return home / ".config" / "snowflake"


def load_connection_files(
    env: Mapping[str, str], home: Path, *, platform: str = sys.platform
) -> LoadedConnections:
    """Find the directory, check both files' permissions as snowflake-cli does, read them.

    Missing files mean no connections. A file writable by group/others is an error; one
    readable by group/others too, unless SF_SKIP_TOKEN_FILE_PERMISSIONS_VERIFICATION (or
    SPCS's SKIP_TOKEN_FILE_PERMISSIONS_VERIFICATION) is true/1. snowflake-cli runs these
    checks on every command, -x included, so the CLI should call this every time.
    """
    directory = config_directory(env, home, platform=platform)
    connections_path = directory / CONNECTIONS_FILE
    config_path = directory / CONFIG_FILE
    if platform != "win32":
        skip_read_check = _skip_read_permission_check(env)
        for path in (connections_path, config_path):  # snowflake-cli's order
            _check_permissions(path, skip_read_check)
    config = _read_toml(config_path)
    separate = _read_toml(connections_path)
    if separate is not None:
        connections: Any = separate  # replaces config.toml's connections entirely
    else:
        connections = (config or {}).get("connections", {})
    if not isinstance(connections, Mapping):
        raise ConfigError(f"{config_path}: 'connections' must be a table of connections")
    files = tuple(
        path
        for path, doc in ((config_path, config), (connections_path, separate))
        if doc is not None
    )
    return LoadedConnections(
        directory=directory,
        connections=connections,
        default_connection_name=(config or {}).get("default_connection_name"),
        files=files,
    )


def resolve_connection(
    loaded: LoadedConnections,
    *,
    name: str | None,
    flags: Mapping[str, Any],
    env: Mapping[str, str],
    temporary: bool,
) -> ResolvedConnection:
    """snowflake-cli's `resolve_connection_parameters` plus the pure part of `connect_to_snowflake`.

    Precedence: flags > connection table (+ SNOWFLAKE_CONNECTIONS_<NAME>_<KEY>, which only
    overrides keys of a connection that exists) > generic SNOWFLAKE_<KEY>. `name` None or
    empty means `SNOWFLAKE_DEFAULT_CONNECTION_NAME`, else config.toml's
    `default_connection_name`, else "default". `temporary` (-x) uses flags and generic env
    only and cannot be combined with a name.
    """
    unknown = set(flags) - FLAG_KEYS
    if unknown:
        raise ValueError(f"unknown connection flags: {sorted(unknown)}")
    given = {key: value for key, value in flags.items() if value is not None}
    _check_flags(given)
    if temporary:
        if name:
            raise ConfigError("Can't use connection name and temporary connection.")
        label: str | None = None
        params: dict[str, Any] = {}
    else:
        label = name or _default_name(loaded, env)
        params = _from_file(loaded, label, env)
    for key, value in given.items():
        if key not in CONTROL_FLAGS:
            params[_ALIASES.get(key, key)] = value
    for key in _GENERIC_ENV_KEYS:
        value = env.get(f"SNOWFLAKE_{key.upper()}")
        connection_key = _ALIASES.get(key, key)
        if value and connection_key not in params:
            params[connection_key] = value
    for key in _BOOLEAN_KEYS & params.keys():
        params[key] = _coerce_boolean(params[key])
    _finish(params, given, env, _describe(label, params))
    return ResolvedConnection(label, params)


def _describe(name: str | None, params: Mapping[str, Any]) -> str:
    label = f"connection {name!r}" if name is not None else "temporary connection"
    details = ", ".join(
        f"{key}={params[key]}" for key in ("account", "user", "host") if key in params
    )
    return f"{label} ({details})" if details else label


def _expand_home(value: str, home: Path) -> Path:
    if value == "~" or value.startswith("~/"):
        return home / value[2:]
    return Path(value)


def _skip_read_permission_check(env: Mapping[str, str]) -> bool:
    # The first variable that is set decides; an unparsable value means "do not skip".
    for variable in _SKIP_PERMISSIONS_ENV:
        if variable in env:
            return _BOOLEANS.get(env[variable].lower(), False)
    return False


def _check_permissions(path: Path, skip_read_check: bool) -> None:
    try:
        mode = path.stat().st_mode
    except (FileNotFoundError, NotADirectoryError):
        return
    except OSError as error:
        raise ConfigError(f"cannot read {path}: {error.strerror}") from None
    too_wide = f'Configuration file {path} has too wide permissions; run: chmod 0600 "{path}"'
    if mode & _WRITABLE_BY_OTHERS:
        raise ConfigError(too_wide)
    if mode & _READABLE_BY_OTHERS:
        if not skip_read_check:
            raise ConfigError(too_wide)
        log.warning("config_file_readable_by_others", path=str(path), mode=oct(mode & 0o777))


def _read_toml(path: Path) -> dict[str, Any] | None:
    try:
        text = path.read_text(encoding="utf-8")
    except (FileNotFoundError, NotADirectoryError):
        return None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not valid UTF-8 text") from None
    except OSError as error:
        raise ConfigError(f"cannot read {path}: {error.strerror}") from None
    return _parse_toml(text, str(path))


def _parse_toml(text: str, source: str) -> dict[str, Any]:
    try:
        data: dict[str, Any] = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        detail = _QUOTED_CHARACTER.sub(r"\1", str(error))
        raise ConfigError(f"{source}: invalid TOML: {detail}") from None
    return data


def _check_flags(given: Mapping[str, Any]) -> None:
    # The validators snowflake-cli runs on these flags when it parses them.
    schema = given.get("schema")
    if (
        isinstance(schema, str)
        and not (schema.startswith('"') and schema.endswith('"'))
        and _QUALIFIED_SCHEMA.match(schema)
    ):
        raise ConfigError(f"Invalid schema {schema}")
    provider = given.get("workload_identity_provider")
    if provider is not None and provider not in _WORKLOAD_IDENTITY_PROVIDERS:
        raise ConfigError(
            f"Invalid workload identity provider '{provider}'. "
            f"Valid values are: {', '.join(_WORKLOAD_IDENTITY_PROVIDERS)}"
        )


def _default_name(loaded: LoadedConnections, env: Mapping[str, str]) -> str:
    name = env.get("SNOWFLAKE_DEFAULT_CONNECTION_NAME")
    if name is None:
        name = loaded.default_connection_name
        if name is None:
            return "default"
        if not isinstance(name, str):
            raise ConfigError(
                f"{loaded.directory / CONFIG_FILE}: default_connection_name must be a string"
            )
    if not name:
        raise ConfigError("One of connection name or temporary connection is required.")
    return name


def _from_file(loaded: LoadedConnections, name: str, env: Mapping[str, str]) -> dict[str, Any]:
    """The named table, per-connection env applied, keys normalised as get_connection_dict does."""
    connections: Mapping[str, Any] = loaded.connections
    source = f"in {loaded.directory}"
    from_env = "SNOWFLAKE_CONNECTIONS" in env
    if from_env:
        # The connector's ConfigOption reads the whole table from this variable first.
        connections = _parse_toml(env["SNOWFLAKE_CONNECTIONS"], "SNOWFLAKE_CONNECTIONS")
        source = "in SNOWFLAKE_CONNECTIONS"
    if name not in connections:
        available = ", ".join(
            key for key, value in connections.items() if isinstance(value, Mapping)
        )
        raise ConfigError(
            f"Connection {name!r} is not configured. Available: {available}"
            if available
            else f"Connection {name!r} is not configured: no connections {source}"
        )
    table = connections[name]
    if not isinstance(table, Mapping):
        raise ConfigError(
            f"Connection {name!r} {source} must be a table, like [connections.{name}]"
        )
    section = dict(table)
    if not from_env:
        # snowflake-cli merges these only into tomlkit tables of a file (not the env variable).
        section.update(_connection_env(name, env))
    known: dict[str, Any] = {}
    other: dict[str, Any] = {}
    for key, value in section.items():
        normalised = _FILE_ALIASES.get(key, key)
        if normalised in _KNOWN_KEYS:
            known[normalised] = value
        else:
            other[key] = value
    ordered = [(key, known[key]) for key in _KNOWN_KEYS if key in known] + list(other.items())
    return {_ALIASES.get(key, key): value for key, value in ordered}


def _connection_env(name: str, env: Mapping[str, str]) -> Iterator[tuple[str, str]]:
    prefix = f"SNOWFLAKE_CONNECTIONS_{name.upper()}_"
    for variable, value in env.items():
        if variable.startswith(prefix):
            yield variable[len(prefix) :].lower(), value


def _coerce_boolean(value: Any) -> Any:
    # Like snowflake-cli: "false" must not reach the connector as a truthy string;
    # an unparsable value is passed on unchanged.
    if isinstance(value, str):
        return _BOOLEANS.get(value.lower(), value)
    if isinstance(value, int) and not isinstance(value, bool):
        return _BOOLEANS.get(str(value), value)
    return value


def _finish(
    params: dict[str, Any], given: Mapping[str, Any], env: Mapping[str, str], what: str
) -> None:
    """Checks and renames that turn snow's parameters into connector keywords."""
    if not params.get("account"):
        raise ConfigError(
            f"{what}: no account set (add 'account' to the connection, pass --account "
            "or set SNOWFLAKE_ACCOUNT)"
        )
    if "port" in params:
        params["port"] = _port(params["port"], what)
    passphrase = params.pop("private_key_passphrase", None)
    if "private_key_file" in params or "private_key_raw" in params:
        authenticator = params.get("authenticator")
        if not isinstance(authenticator, str) or authenticator.upper() != "SNOWFLAKE_JWT":
            raise ConfigError(
                f"{what}: Private Key authentication requires authenticator set to SNOWFLAKE_JWT"
            )
        # snowflake-cli: the PRIVATE_KEY_PASSPHRASE variable beats the connection's value.
        passphrase = env.get("PRIVATE_KEY_PASSPHRASE", passphrase)
        if passphrase is not None:
            params["private_key_file_pwd"] = passphrase
    if given.get("mfa_passcode"):
        params["passcode"] = given["mfa_passcode"]
    authenticator = params.get("authenticator")
    if isinstance(authenticator, str) and authenticator.upper() == "USERNAME_PASSWORD_MFA":
        params["client_request_mfa_token"] = True
    if given.get("enable_diag"):
        params["enable_connection_diag"] = True
        for flag, keyword in (
            ("diag_log_path", "connection_diag_log_path"),
            ("diag_allowlist_path", "connection_diag_allowlist_path"),
        ):
            if given.get(flag):
                params[keyword] = given[flag]


def _port(value: Any, what: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    raise ConfigError(f"{what}: port must be a whole number, got {value!r}")
