"""Connections resolved as snowflake-cli 3.30/3.31 resolves them: real files, env, flags.

Behaviours marked "snow:" were checked against snowflake-cli 3.30's own code.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from spcs_registry_agent.connections import (
    FLAG_KEYS,
    LoadedConnections,
    ResolvedConnection,
    config_directory,
    is_secret_key,
    load_connection_files,
    resolve_connection,
)
from spcs_registry_agent.errors import ConfigError

PASSWORD = "pw-Zq81-never-shown"


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "home"
    path.mkdir(exist_ok=True)
    return path


def write(directory: Path, name: str, text: str, mode: int = 0o600) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(text)
    path.chmod(mode)
    return path


def loaded(connections: Mapping[str, Any], default: Any = None) -> LoadedConnections:
    return LoadedConnections(Path("/cfg"), connections, default)


def resolve(
    source: LoadedConnections,
    name: str | None = None,
    *,
    flags: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    temporary: bool = False,
) -> ResolvedConnection:
    return resolve_connection(
        source, name=name, flags=flags or {}, env=env or {}, temporary=temporary
    )


def config_error(source: LoadedConnections, name: str | None = None, **kwargs: Any) -> str:
    with pytest.raises(ConfigError) as caught:
        resolve(source, name, **kwargs)
    message = str(caught.value)
    assert "\n" not in message
    return message


def load_error(home: Path, env: Mapping[str, str]) -> str:
    with pytest.raises(ConfigError) as caught:
        load_connection_files(env, home)
    message = str(caught.value)
    assert "\n" not in message
    return message


# --- where the files are ---------------------------------------------------------------


def test_snowflake_home_that_exists_wins(home: Path, tmp_path: Path) -> None:
    (home / ".snowflake").mkdir()
    custom = tmp_path / "custom"
    custom.mkdir()
    assert config_directory({"SNOWFLAKE_HOME": str(custom)}, home) == custom


def test_dot_snowflake_is_the_default_home(home: Path) -> None:
    (home / ".snowflake").mkdir()
    env = {"XDG_CONFIG_HOME": str(home / "xdg")}
    assert config_directory(env, home, platform="linux") == home / ".snowflake"


def test_missing_snowflake_home_skips_dot_snowflake_too(home: Path) -> None:
    # snow: SNOWFLAKE_HOME only replaces the default "~/.snowflake"; when it does not
    # exist, platformdirs decides - ~/.snowflake is not looked at.
    (home / ".snowflake").mkdir()
    env = {"SNOWFLAKE_HOME": str(home / "nope")}
    assert config_directory(env, home, platform="linux") == home / ".config" / "snowflake"


def test_snowflake_home_tilde_uses_the_given_home(home: Path) -> None:
    (home / "sf").mkdir()
    assert config_directory({"SNOWFLAKE_HOME": "~/sf"}, home) == home / "sf"


@pytest.mark.parametrize(
    ("platform", "env", "expected"),
    [
        ("linux", {}, ".config/snowflake"),
        ("linux", {"XDG_CONFIG_HOME": "/xdg"}, "/xdg/snowflake"),
        ("linux", {"XDG_CONFIG_HOME": "relative/xdg"}, ".config/snowflake"),
        ("darwin", {}, "Library/Application Support/snowflake"),
        ("darwin", {"XDG_CONFIG_HOME": "/xdg"}, "/xdg/snowflake"),
        ("win32", {"LOCALAPPDATA": "/appdata"}, "/appdata/snowflake"),
    ],
)
def test_platform_config_directory(
    home: Path, platform: str, env: dict[str, str], expected: str
) -> None:
    assert config_directory(env, home, platform=platform) == home / expected


# --- reading the files -----------------------------------------------------------------


def test_config_toml_connections_and_default_name(home: Path) -> None:
    path = write(
        home / ".snowflake",
        "config.toml",
        'default_connection_name = "prod"\n[connections.prod]\naccount = "acme"\nport = 8443\n',
    )
    files = load_connection_files({}, home)
    assert files.directory == home / ".snowflake"
    assert files.default_connection_name == "prod"
    assert files.connections == {"prod": {"account": "acme", "port": 8443}}
    assert files.files == (path,)


def test_connections_toml_replaces_config_toml_connections(home: Path) -> None:
    directory = home / ".snowflake"
    write(
        directory,
        "config.toml",
        'default_connection_name = "b"\n[connections.a]\naccount = "from_config"\n',
    )
    write(directory, "connections.toml", '[b]\naccount = "from_connections"\n')
    files = load_connection_files({}, home)
    assert files.connections == {"b": {"account": "from_connections"}}
    assert files.default_connection_name == "b"  # still read from config.toml
    assert "Available: b" in config_error(files, "a")


def test_empty_connections_toml_still_replaces(home: Path) -> None:
    directory = home / ".snowflake"
    write(directory, "config.toml", '[connections.a]\naccount = "x"\n')
    write(directory, "connections.toml", "")
    assert load_connection_files({}, home).connections == {}


def test_no_files_means_no_connections(home: Path) -> None:
    files = load_connection_files({}, home, platform="linux")
    assert files.connections == {}
    assert files.files == ()
    message = config_error(files)
    assert message == (
        f"Connection 'default' is not configured: no connections in {home}/.config/snowflake"
    )


def test_toml_syntax_error_names_file_and_line(home: Path) -> None:
    path = write(home / ".snowflake", "connections.toml", '[a]\naccount = "x"\nuser = \n')
    message = load_error(home, {})
    assert message.startswith(f"{path}: invalid TOML: ")
    assert "line 3" in message


def test_toml_error_does_not_echo_the_offending_character(home: Path) -> None:
    write(home / ".snowflake", "config.toml", '[connections.a]\npassword = "ab\x01cd"\n')
    message = load_error(home, {})
    assert "Illegal character" in message
    assert "line 2" in message
    assert "x01" not in message


def test_connections_must_be_a_table(home: Path) -> None:
    write(home / ".snowflake", "config.toml", 'connections = "prod"\n')
    assert "'connections' must be a table" in load_error(home, {})


# --- permissions (snow: checked before reading, on every command) ---------------------


@pytest.mark.parametrize("name", ["config.toml", "connections.toml"])
def test_file_readable_by_others_is_an_error(home: Path, name: str) -> None:
    path = write(home / ".snowflake", name, "", mode=0o644)
    assert load_error(home, {}) == (
        f'Configuration file {path} has too wide permissions; run: chmod 0600 "{path}"'
    )


@pytest.mark.parametrize(
    "env",
    [
        {"SF_SKIP_TOKEN_FILE_PERMISSIONS_VERIFICATION": "true"},
        {"SF_SKIP_TOKEN_FILE_PERMISSIONS_VERIFICATION": "1"},
        {"SKIP_TOKEN_FILE_PERMISSIONS_VERIFICATION": "TRUE"},
    ],
)
def test_readable_by_group_allowed_when_skip_is_set(home: Path, env: dict[str, str]) -> None:
    write(home / ".snowflake", "connections.toml", '[a]\naccount = "x"\n', mode=0o640)
    assert load_connection_files(env, home).connections == {"a": {"account": "x"}}


@pytest.mark.parametrize(
    "env",
    [
        {"SF_SKIP_TOKEN_FILE_PERMISSIONS_VERIFICATION": "yes"},  # not a boolean snow knows
        {
            "SF_SKIP_TOKEN_FILE_PERMISSIONS_VERIFICATION": "false",  # first one set decides
            "SKIP_TOKEN_FILE_PERMISSIONS_VERIFICATION": "true",
        },
        {"SF_SKIP_WARNING_FOR_READ_PERMISSIONS_ON_CONFIG_FILE": "true"},  # snow ignores it
    ],
)
def test_readable_by_group_refused_without_valid_skip(home: Path, env: dict[str, str]) -> None:
    write(home / ".snowflake", "config.toml", "", mode=0o640)
    assert "too wide permissions" in load_error(home, env)


def test_writable_by_group_is_an_error_even_with_skip(home: Path) -> None:
    write(home / ".snowflake", "config.toml", "", mode=0o620)
    env = {"SF_SKIP_TOKEN_FILE_PERMISSIONS_VERIFICATION": "true"}
    assert "too wide permissions" in load_error(home, env)


def test_execute_bit_alone_is_accepted(home: Path) -> None:
    write(home / ".snowflake", "config.toml", "", mode=0o611)
    assert load_connection_files({}, home).connections == {}


def test_windows_has_no_mode_check(home: Path) -> None:
    write(home / ".snowflake", "config.toml", "", mode=0o666)
    assert load_connection_files({}, home, platform="win32").connections == {}


# --- which connection ------------------------------------------------------------------


TWO = loaded({"default": {"account": "d"}, "prod": {"account": "p"}}, default="prod")


def test_default_connection_name_from_config_toml() -> None:
    assert resolve(TWO).name == "prod"
    assert resolve(TWO).params["account"] == "p"


def test_default_connection_is_named_default_without_settings() -> None:
    assert resolve(loaded(TWO.connections)).params["account"] == "d"


def test_default_connection_name_env_beats_file() -> None:
    env = {"SNOWFLAKE_DEFAULT_CONNECTION_NAME": "default"}
    assert resolve(TWO, env=env).name == "default"


def test_explicit_name_beats_defaults_and_empty_name_means_default() -> None:
    env = {"SNOWFLAKE_DEFAULT_CONNECTION_NAME": "prod"}
    assert resolve(TWO, "default", env=env).name == "default"
    assert resolve(TWO, "", env=env).name == "prod"


def test_empty_default_connection_name_env_is_an_error() -> None:
    message = config_error(TWO, env={"SNOWFLAKE_DEFAULT_CONNECTION_NAME": ""})
    assert message == "One of connection name or temporary connection is required."


def test_default_connection_name_must_be_a_string() -> None:
    assert "must be a string" in config_error(loaded(TWO.connections, default=3))


def test_unknown_name_lists_the_connections_that_exist() -> None:
    source = loaded({"a": {"account": "x"}, "b": {}, "stray": "value"})
    assert config_error(source, "nope") == "Connection 'nope' is not configured. Available: a, b"


def test_connection_that_is_not_a_table() -> None:
    message = config_error(loaded({"stray": "value"}), "stray")
    assert message.startswith("Connection 'stray' in /cfg must be a table")


# --- precedence ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flag", "connection_env", "file", "generic_env"),
    list(itertools.product([False, True], repeat=4)),
)
def test_precedence_flag_then_connection_env_then_file_then_generic_env(
    flag: bool, connection_env: bool, file: bool, generic_env: bool
) -> None:
    table: dict[str, Any] = {"account": "acme"}
    env: dict[str, str] = {}
    flags: dict[str, Any] = {"role": "from_flag" if flag else None}
    if file:
        table["role"] = "from_file"
    if connection_env:
        env["SNOWFLAKE_CONNECTIONS_PROD_ROLE"] = "from_connection_env"
    if generic_env:
        env["SNOWFLAKE_ROLE"] = "from_generic_env"
    resolved = resolve(loaded({"prod": table}), "prod", flags=flags, env=env)
    candidates = [
        (flag, "from_flag"),
        (connection_env, "from_connection_env"),
        (file, "from_file"),
        (generic_env, "from_generic_env"),
    ]
    expected = next((value for present, value in candidates if present), None)
    assert resolved.params.get("role") == expected


def test_connection_env_uses_upper_case_name_and_adds_keys() -> None:
    env = {"SNOWFLAKE_CONNECTIONS_MY-CONN_WAREHOUSE": "wh", "SNOWFLAKE_CONNECTIONS_OTHER_ROLE": "r"}
    params = resolve(loaded({"my-conn": {"account": "a"}}), "my-conn", env=env).params
    assert params == {"account": "a", "warehouse": "wh"}


def test_connection_env_cannot_create_a_connection() -> None:
    # snow: "Connection zz is not configured" even with SNOWFLAKE_CONNECTIONS_ZZ_* set.
    env = {"SNOWFLAKE_CONNECTIONS_ZZ_ACCOUNT": "acme"}
    assert "'zz' is not configured" in config_error(loaded({}), "zz", env=env)


def test_connection_env_may_set_an_empty_value() -> None:
    env = {"SNOWFLAKE_CONNECTIONS_A_ROLE": ""}
    params = resolve(loaded({"a": {"account": "x", "role": "r"}}), "a", env=env).params
    assert params["role"] == ""


def test_empty_generic_env_is_ignored() -> None:
    env = {"SNOWFLAKE_WAREHOUSE": "", "SNOWFLAKE_DATABASE": "db"}
    params = resolve(loaded({"a": {"account": "x"}}), "a", env=env).params
    assert "warehouse" not in params
    assert params["database"] == "db"


def test_generic_env_covers_only_snow_keys() -> None:
    env = {
        "SNOWFLAKE_PASSCODE": "123",
        "SNOWFLAKE_PRIVATE_KEY_FILE_PWD": "x",
        "SNOWFLAKE_HOST": "h",
    }
    params = resolve(loaded({"a": {"account": "x"}}), "a", env=env).params
    assert params == {"account": "x", "host": "h"}


def test_snowflake_connections_variable_replaces_the_files() -> None:
    env = {
        "SNOWFLAKE_CONNECTIONS": '[q]\naccount = "from_env"\n',
        # snow: per-connection variables only apply to connections read from a file.
        "SNOWFLAKE_CONNECTIONS_Q_USER": "ignored",
    }
    resolved = resolve(loaded({"a": {"account": "x"}}), "q", env=env)
    assert resolved.params == {"account": "from_env"}
    assert "Available: q" in config_error(loaded({"a": {"account": "x"}}), "a", env=env)


def test_snowflake_connections_variable_with_bad_toml() -> None:
    message = config_error(loaded({}), "q", env={"SNOWFLAKE_CONNECTIONS": "[q\n"})
    assert message.startswith("SNOWFLAKE_CONNECTIONS: invalid TOML: ")


# --- temporary connection --------------------------------------------------------------


def test_temporary_connection_uses_flags_and_generic_env_only() -> None:
    source = loaded({"default": {"account": "file", "role": "file_role"}})
    env = {
        "SNOWFLAKE_ACCOUNT": "env_account",
        "SNOWFLAKE_USER": "env_user",
        "SNOWFLAKE_CONNECTIONS_DEFAULT_WAREHOUSE": "ignored",
        "SNOWFLAKE_DEFAULT_CONNECTION_NAME": "default",
    }
    resolved = resolve(source, flags={"user": "flag_user"}, env=env, temporary=True)
    assert resolved.name is None
    assert resolved.params == {"account": "env_account", "user": "flag_user"}


def test_temporary_connection_with_a_name_is_an_error() -> None:
    message = config_error(TWO, "prod", temporary=True)
    assert message == "Can't use connection name and temporary connection."


# --- keys, aliases, values -------------------------------------------------------------


def test_private_key_path_alias_and_wins_over_private_key_file_in_a_table() -> None:
    # snow: private_key_path is not a ConnectionConfig field, so it comes last and wins.
    table = {
        "account": "a",
        "authenticator": "SNOWFLAKE_JWT",
        "private_key_path": "/from_path",
        "private_key_file": "/from_file",
    }
    env = {"SNOWFLAKE_CONNECTIONS_A_PRIVATE_KEY_FILE": "/from_env"}
    params = resolve(loaded({"a": table}), "a", env=env).params
    assert params["private_key_file"] == "/from_path"
    assert "private_key_path" not in params


def test_private_key_path_from_generic_env() -> None:
    env = {"SNOWFLAKE_PRIVATE_KEY_PATH": "/k", "SNOWFLAKE_AUTHENTICATOR": "snowflake_jwt"}
    params = resolve(loaded({"a": {"account": "x"}}), "a", env=env).params
    assert params["private_key_file"] == "/k"


@pytest.mark.parametrize("key", ["private_key_file_pwd", "private_key_passphrase"])
def test_passphrase_from_the_connection(key: str) -> None:
    table = {"account": "a", "authenticator": "SNOWFLAKE_JWT", "private_key_file": "/k", key: "p1"}
    params = resolve(loaded({"a": table}), "a").params
    assert params["private_key_file_pwd"] == "p1"
    assert "private_key_passphrase" not in params


def test_private_key_passphrase_env_beats_the_connection() -> None:
    table = {
        "account": "a",
        "authenticator": "SNOWFLAKE_JWT",
        "private_key_file": "/k",
        "private_key_file_pwd": "p1",
    }
    env = {"PRIVATE_KEY_PASSPHRASE": "p2"}
    assert resolve(loaded({"a": table}), "a", env=env).params["private_key_file_pwd"] == "p2"


def test_passphrase_is_dropped_without_a_key() -> None:
    table = {"account": "a", "private_key_file_pwd": "p1"}
    params = resolve(loaded({"a": table}), "a", env={"PRIVATE_KEY_PASSPHRASE": "p2"}).params
    assert params == {"account": "a"}


@pytest.mark.parametrize("authenticator", [None, "snowflake"])
def test_private_key_needs_snowflake_jwt(authenticator: str | None) -> None:
    table = {"account": "a", "private_key_file": "/k"}
    if authenticator:
        table["authenticator"] = authenticator
    message = config_error(loaded({"a": table}), "a")
    assert message.endswith(
        "Private Key authentication requires authenticator set to SNOWFLAKE_JWT"
    )


def test_legacy_pkce_spelling() -> None:
    params = resolve(loaded({"a": {"account": "x", "oatuh_enable_pkce": True}}), "a").params
    assert params == {"account": "x", "oauth_enable_pkce": True}


@pytest.mark.parametrize(
    ("where", "value"),
    [("file", 8443), ("file", "8443"), ("env", "8443"), ("flag", 8443)],
)
def test_port_is_an_int(where: str, value: Any) -> None:
    table: dict[str, Any] = {"account": "x"}
    env: dict[str, str] = {}
    flags: dict[str, Any] = {}
    if where == "file":
        table["port"] = value
    elif where == "env":
        env["SNOWFLAKE_PORT"] = value
    else:
        flags["port"] = value
    assert resolve(loaded({"a": table}), "a", flags=flags, env=env).params["port"] == 8443


def test_port_that_is_not_a_number() -> None:
    message = config_error(loaded({"a": {"account": "x"}}), "a", env={"SNOWFLAKE_PORT": "http"})
    assert message == "connection 'a' (account=x): port must be a whole number, got 'http'"


def test_boolean_strings_become_booleans_unparsable_stay() -> None:
    table = {
        "account": "x",
        "client_store_temporary_credential": "false",
        "oauth_enable_refresh_tokens": "maybe",
    }
    env = {"SNOWFLAKE_CONNECTIONS_A_SERVER_SESSION_KEEP_ALIVE": "0"}
    params = resolve(loaded({"a": table}), "a", env=env).params
    assert params["client_store_temporary_credential"] is False
    assert params["server_session_keep_alive"] is False
    assert params["oauth_enable_refresh_tokens"] == "maybe"


def test_other_connector_keys_pass_through() -> None:
    table = {
        "account": "x",
        "database": "db",
        "schema": "sch",
        "token_file_path": "/run/token",
        "workload_identity_provider": "AWS",
        "oauth_client_id": "cid",
        "login_timeout": 30,
        "ocsp_fail_open": False,
    }
    assert resolve(loaded({"a": table}), "a").params == table


def test_mfa_passcode_and_diagnostics_flags() -> None:
    flags = {
        "mfa_passcode": "123456",
        "authenticator": "username_password_mfa",
        "enable_diag": True,
        "diag_log_path": "/tmp/diag",
        "diag_allowlist_path": None,
    }
    params = resolve(loaded({"a": {"account": "x"}}), "a", flags=flags).params
    assert params == {
        "account": "x",
        "authenticator": "username_password_mfa",
        "passcode": "123456",
        "client_request_mfa_token": True,
        "enable_connection_diag": True,
        "connection_diag_log_path": "/tmp/diag",
    }


def test_diagnostic_paths_need_enable_diag() -> None:
    params = resolve(loaded({"a": {"account": "x"}}), "a", flags={"diag_log_path": "/d"}).params
    assert params == {"account": "x"}


def test_missing_account_is_an_error() -> None:
    table = {"user": "bob", "password": PASSWORD}
    message = config_error(loaded({"a": table}), "a")
    assert message.startswith("connection 'a' (user=bob): no account set")
    assert PASSWORD not in message
    assert config_error(loaded({}), temporary=True).startswith("temporary connection: no account")


def test_qualified_schema_flag_is_refused_but_quoted_is_fine() -> None:
    source = loaded({"a": {"account": "x", "schema": "db.sch"}})
    assert config_error(source, "a", flags={"schema": "db.sch"}) == "Invalid schema db.sch"
    assert resolve(source, "a", flags={"schema": '"db.sch"'}).params["schema"] == '"db.sch"'
    assert resolve(source, "a").params["schema"] == "db.sch"  # snow checks the flag only


def test_workload_identity_provider_flag_is_checked() -> None:
    message = config_error(TWO, flags={"workload_identity_provider": "aws"})
    assert message.startswith("Invalid workload identity provider 'aws'. Valid values are: AWS")


def test_unknown_flag_key_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="accountname"):
        resolve(TWO, flags={"accountname": "x"})


def test_flag_keys_cover_the_cli_connection_options() -> None:
    expected = {"account", "user", "password", "private_key_file", "token_file_path"}
    assert expected <= FLAG_KEYS
    assert "private_key_path" not in FLAG_KEYS  # the CLI maps --private-key-path itself


# --- secrets never shown ---------------------------------------------------------------


def test_repr_and_str_mask_secrets() -> None:
    secrets = {
        "password": PASSWORD,
        "token": "tok-secret-1",
        "private_key_file_pwd": "phrase-secret-2",
        "passcode": "otp-secret-3",
        "oauth_client_secret": "oauth-secret-4",
        "proxy_password": "proxy-secret-5",
        "private_key_raw": "-----BEGIN PRIVATE KEY-----raw-6",
    }
    resolved = ResolvedConnection("prod", {"account": "acme", "user": "bob", **secrets})
    for text in (repr(resolved), str(resolved), f"{resolved}", str([resolved])):
        for value in secrets.values():
            assert value not in text
        assert "acme" in text
        assert "****" in text
    assert resolved.safe_params()["password"] == "****"
    assert resolved.params["password"] == PASSWORD


def test_describe_is_safe_and_names_the_connection() -> None:
    resolved = ResolvedConnection("prod", {"account": "acme", "user": "bob", "password": PASSWORD})
    assert resolved.describe() == "connection 'prod' (account=acme, user=bob)"
    assert ResolvedConnection(None, {}).describe() == "temporary connection"


@pytest.mark.parametrize(
    ("key", "secret"),
    [
        ("password", True),
        ("token", True),
        ("session_token", True),
        ("private_key", True),
        ("private_key_file_pwd", True),
        ("workload_identity_entra_secret", True),
        ("token_file_path", False),
        ("private_key_file", False),
        ("account", False),
    ],
)
def test_is_secret_key(key: str, secret: bool) -> None:
    assert is_secret_key(key) is secret


def test_params_cannot_be_changed() -> None:
    resolved = resolve(loaded({"a": {"account": "x"}}), "a")
    with pytest.raises(TypeError):
        resolved.params["account"] = "y"  # type: ignore[index]


def test_end_to_end_from_files_env_and_flags(home: Path) -> None:
    directory = home / "sfhome"
    write(
        directory,
        "config.toml",
        'default_connection_name = "dev"\n[connections.dev]\naccount = "ignored"\n',
    )
    write(
        directory,
        "connections.toml",
        f'[dev]\naccount = "acme"\nuser = "bob"\npassword = "{PASSWORD}"\n'
        'host = "127.0.0.1"\nport = 8080\nprotocol = "http"\n',
    )
    env = {"SNOWFLAKE_HOME": str(directory), "SNOWFLAKE_CONNECTIONS_DEV_ROLE": "builder"}
    resolved = resolve_connection(
        load_connection_files(env, home),
        name=None,
        flags=dict.fromkeys(FLAG_KEYS) | {"warehouse": "wh"},
        env=env,
        temporary=False,
    )
    assert resolved.name == "dev"
    assert resolved.params == {
        "account": "acme",
        "user": "bob",
        "password": PASSWORD,
        "host": "127.0.0.1",
        "port": 8080,
        "protocol": "http",
        "role": "builder",
        "warehouse": "wh",
    }
