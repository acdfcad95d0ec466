"""The agent's TOML file: typed settings, defaults, flags, and one-line errors naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from spcs_registry_agent.config import (
    AGENT_KEYS,
    AgentConfig,
    Target,
    default_config_path,
    default_state_dir,
    load_config,
    parse_config,
    with_flags,
)
from spcs_registry_agent.errors import ConfigError
from spcs_registry_agent.policy import Policy

HOME = Path("/home/u")
SRC = Path("/etc/agent.toml")
REPO = Path(__file__).resolve().parent.parent


def parse(text: str, *, env: dict[str, str] | None = None, mode: int = 0o600) -> AgentConfig:
    return parse_config(text, source=SRC, env=env or {}, home=HOME, mode=mode)


def error_of(text: str, **kwargs: object) -> str:
    with pytest.raises(ConfigError) as caught:
        parse(text, **kwargs)  # type: ignore[arg-type]
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{SRC}: ")
    return message


def test_empty_file_gives_defaults() -> None:
    config = parse("")
    assert config == AgentConfig(source=SRC)
    assert config.policy == Policy()
    assert config.verify == "auto"
    assert config.on_exit == "keep"


def test_full_agent_table() -> None:
    config = parse(
        """
        [agent]
        docker_config = "~/dockercfg"
        verify = "registry"
        log_format = "json"
        state_dir = "${STATE}/agent"
        on_exit = "revoke"
        heartbeat = 5
        refresh_fraction = 0.5
        refresh_jitter = 0.2
        refresh_min_margin = 60
        backoff_initial = 0.5
        backoff_max = 30
        """,
        env={"STATE": "/var/lib/x"},
    )
    assert config.docker_config == HOME / "dockercfg"
    assert config.verify == "registry"
    assert config.log_format == "json"
    assert config.state_dir == Path("/var/lib/x/agent")
    assert config.on_exit == "revoke"
    assert config.heartbeat == 5.0
    assert config.policy == Policy(0.5, 0.2, 60.0, 0.5, 30.0)


def test_registries_named_and_inline() -> None:
    config = parse(
        """
        [[registry]]
        connection = "prod"

        [[registry]]
        name = "ci"
        host = "org-acct.registry.snowflakecomputing.com"
        private_link = true
        [registry.connection]
        account = "org-acct"
        user = "ci"
        authenticator = "SNOWFLAKE_JWT"
        private_key_file = "${CREDENTIALS_DIRECTORY}/key.p8"
        port = 8443
        """,
        env={"CREDENTIALS_DIRECTORY": "/run/credentials/agent.service"},
    )
    prod, ci = config.targets
    assert prod == Target(name="prod", connection="prod")
    assert ci.name == "ci"
    assert ci.connection is None
    assert ci.host == "org-acct.registry.snowflakecomputing.com"
    assert ci.private_link is True
    assert ci.inline_params == {
        "account": "org-acct",
        "user": "ci",
        "authenticator": "SNOWFLAKE_JWT",
        "private_key_file": "/run/credentials/agent.service/key.p8",
        "port": 8443,
    }


def test_targets_compare_by_value_for_reload() -> None:
    text = '[[registry]]\nname = "a"\nconnection = { account = "x", user = "y" }\n'
    assert parse(text).targets == parse(text).targets
    other = text.replace('"y"', '"z"')
    assert parse(text).targets != parse(other).targets


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[agent]\nverfy = 'auto'", "agent.verfy: unknown key"),
        ("[agents]\n", "agents: unknown key"),
        (
            "[agent]\nverify = 'sometimes'",
            "agent.verify: must be one of auto, engine, registry, none",
        ),
        ("[agent]\nverify = 1", "agent.verify: expected a string, got integer"),
        ("[agent]\nlog_format = 'xml'", "agent.log_format: must be one of auto, console, json"),
        ("[agent]\non_exit = 'delete'", "agent.on_exit: must be one of keep, revoke"),
        ("[agent]\nheartbeat = 31", "agent.heartbeat: must be in (0, 30]"),
        ("[agent]\nheartbeat = 0", "agent.heartbeat: must be in (0, 30]"),
        ("[agent]\nheartbeat = true", "agent.heartbeat: expected a number, got boolean"),
        ("[agent]\nrefresh_fraction = 1.5", "agent.refresh_fraction: must be in (0, 1]"),
        ("[agent]\nrefresh_jitter = -0.1", "agent.refresh_jitter: must be in [0, 1]"),
        (
            "[agent]\nrefresh_min_margin = 'x'",
            "agent.refresh_min_margin: expected a number, got string",
        ),
        ("[agent]\nrefresh_fraction = nan", "agent.refresh_fraction: must be in (0, 1]"),
        ("[agent]\nbackoff_initial = 0", "agent.backoff_initial: must be in (0, 3600]"),
        (
            "[agent]\nbackoff_initial = 10\nbackoff_max = 5",
            "agent.backoff_max: must not be less than agent.backoff_initial",
        ),
        ("[agent]\ndocker_config = ''", "agent.docker_config: must not be empty"),
        ("agent = 3", "agent: expected a table, got integer"),
        ("registry = 3", "registry: expected [[registry]] tables"),
        ("registry = [1]", "registry[0]: expected a table, got integer"),
        (
            "[[registry]]\nhost = 'h'",
            "registry[0].connection: missing: a connection name or a table",
        ),
        (
            "[[registry]]\nconnection = 5",
            "registry[0].connection: expected a string or a table, got integer",
        ),
        ("[[registry]]\nconnection = ''", "registry[0].connection: must not be empty"),
        ("[[registry]]\nconnection = 'a'\nhots = 'h'", "registry[0].hots: unknown key"),
        (
            "[[registry]]\nconnection = 'a'\nprivate_link = 'yes'",
            "registry[0].private_link: expected true or false, got string",
        ),
        (
            "[[registry]]\nconnection = 'a'\nhost = 'https://h/x'",
            "registry[0].host: expected a bare host[:port]",
        ),
        (
            "[[registry]]\nconnection = {account = 'a'}",
            "registry[0].name: missing: required with an inline connection",
        ),
        ("[[registry]]\nname = 'x'\nconnection = {}", "registry[0].connection: must not be empty"),
        (
            "[[registry]]\nname = 'x'\nconnection = {acount = 'a'}",
            "registry[0].connection.acount: unknown key",
        ),
        (
            "[[registry]]\nname = 'x'\nconnection = {port = 'a'}",
            "registry[0].connection.port: expected a number",
        ),
        (
            "[[registry]]\nname = 'x'\nconnection = {port = 70000}",
            "registry[0].connection.port: must be in [1, 65535]",
        ),
        ("[[registry]]\nname = '../x'\nconnection = 'a'", "registry[0].name: use letters"),
        (
            "[[registry]]\nconnection = 'a'\n[[registry]]\nconnection = 'a'",
            "registry[1].name: duplicate target name 'a'",
        ),
        ("[agent\n", "invalid TOML"),
    ],
)
def test_errors_name_file_key_and_problem(text: str, expected: str) -> None:
    assert expected in error_of(text)


def test_inline_secret_needs_a_private_file() -> None:
    text = '[[registry]]\nname = "x"\n[registry.connection]\naccount = "a"\npassword = "hunter2"\n'
    message = error_of(text, mode=0o640)
    assert "registry[0].connection.password: secret in a file readable by group" in message
    assert "hunter2" not in message
    assert parse(text, mode=0o600).targets[0].inline_params["password"] == "hunter2"


def test_wrong_type_never_echoes_the_value() -> None:
    message = error_of('[[registry]]\nname = "x"\nconnection = { password = 12345678 }\n')
    assert "12345678" not in message


def test_target_repr_does_not_leak_inline_secrets() -> None:
    config = parse('[[registry]]\nname = "x"\nconnection = { password = "hunter2" }\n')
    assert "hunter2" not in repr(config)


def test_load_missing_default_file_gives_defaults(tmp_path: Path) -> None:
    assert load_config(None, env={"XDG_CONFIG_HOME": str(tmp_path)}, home=tmp_path) == AgentConfig()


def test_load_default_file_from_xdg_config_home(tmp_path: Path) -> None:
    file = tmp_path / "spcs-registry-agent" / "config.toml"
    file.parent.mkdir()
    file.write_text("[agent]\nverify = 'none'\n")
    file.chmod(0o644)
    config = load_config(None, env={"XDG_CONFIG_HOME": str(tmp_path)}, home=tmp_path)
    assert config.verify == "none"
    assert config.source == file


def test_load_explicit_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.toml", env={}, home=tmp_path)


def test_load_rejects_group_writable_file(tmp_path: Path) -> None:
    file = tmp_path / "c.toml"
    file.write_text("")
    file.chmod(0o664)
    with pytest.raises(ConfigError, match="writable by group or others"):
        load_config(file, env={}, home=tmp_path)


def test_load_reports_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path, env={}, home=tmp_path)


def test_default_paths_follow_xdg_and_systemd() -> None:
    assert default_config_path({}, HOME) == HOME / ".config/spcs-registry-agent/config.toml"
    assert default_config_path({"XDG_CONFIG_HOME": "/x"}, HOME) == Path(
        "/x/spcs-registry-agent/config.toml"
    )
    assert default_state_dir({}, HOME) == HOME / ".local/state/spcs-registry-agent"
    assert default_state_dir({"XDG_STATE_HOME": "/s"}, HOME) == Path("/s/spcs-registry-agent")
    assert default_state_dir({"STATE_DIRECTORY": "/var/lib/a:/var/lib/b"}, HOME) == Path(
        "/var/lib/a"
    )


def test_flags_alone_make_targets() -> None:
    config = with_flags(AgentConfig(), connections=["prod", "dev", "prod"])
    assert config.targets == (
        Target(name="prod", connection="prod"),
        Target(name="dev", connection="dev"),
    )


def test_flags_replace_file_targets_and_override_settings() -> None:
    base = parse(
        "[agent]\nverify = 'engine'\nlog_format = 'json'\n[[registry]]\nconnection = 'a'\n"
    )
    config = with_flags(base, connections=["b"], verify="none", docker_config=Path("/d"))
    assert [t.name for t in config.targets] == ["b"]
    assert config.verify == "none"
    assert config.log_format == "json"
    assert config.docker_config == Path("/d")


def test_file_targets_kept_without_connection_flags() -> None:
    base = parse("[[registry]]\nconnection = 'a'\n")
    assert with_flags(base).targets == base.targets


def test_nothing_configured_serves_the_default_connection() -> None:
    assert with_flags(AgentConfig()).targets == (Target(name="default"),)


def test_example_config_loads_and_documents_every_key() -> None:
    example = REPO / "config.example.toml"
    text = example.read_text()
    config = parse(text, env={"CREDENTIALS_DIRECTORY": "/run/credentials/x"})
    assert config.targets, "the example should show at least one [[registry]]"
    for key in (
        *AGENT_KEYS,
        "name",
        "connection",
        "host",
        "private_link",
    ):
        assert f"{key} =" in text, key
    # Uncommenting the commented [agent] keys must still give a valid file.
    uncommented = "\n".join(
        line[2:] if line.startswith("# ") and " = " in line else line for line in text.splitlines()
    )
    parse(uncommented, env={"CREDENTIALS_DIRECTORY": "/run/credentials/x"})
