"""The one-shot commands as users run them: a real process, real files, the fake Snowflake."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from pathlib import Path

import pytest
from support.fake_snowflake import (
    DEFAULT_PASSWORD,
    DEFAULT_PRIVATELINK_HOST,
    DEFAULT_REGISTRY_HOST,
    DEFAULT_USER,
    FakeSnowflake,
    KeyPair,
    SnowflakeHome,
)
from support.processes import run_cli

PAT = "pat-secret-value-9f8e7d"


def assert_one_line_error(done: subprocess.CompletedProcess[str], code: int, *parts: str) -> None:
    assert done.returncode == code, done.stderr
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("Error: ")
    assert "Traceback" not in done.stderr
    for part in parts:
        assert part in lines[0]


def add_key_pair_connection(home: SnowflakeHome, keys: KeyPair, *, passphrase: str) -> None:
    """Connection `keys`: the user's encrypted key file and the given passphrase."""
    home.add_connection(
        "keys",
        user=keys.user,
        password=None,
        authenticator="SNOWFLAKE_JWT",
        private_key_file=str(keys.encrypted_private_key_path),
        private_key_file_pwd=passphrase,
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ---- usage errors: exit 2 before any request, no connector needed --------------------------


def test_verbose_with_debug_is_a_usage_error() -> None:
    assert_one_line_error(run_cli("token", "--verbose", "--debug"), 2, "--verbose", "--debug")


def test_bad_format_is_a_usage_error() -> None:
    assert_one_line_error(run_cli("token", "--format", "XML"), 2, "--format")


def test_unknown_connection_lists_the_configured_ones(snowflake_home: SnowflakeHome) -> None:
    snowflake_home.add_connection("other")
    done = run_cli("token", "-c", "nope")
    assert_one_line_error(done, 2, "'nope'", "fake", "other")


def test_temporary_connection_cannot_name_a_connection(snowflake_home: SnowflakeHome) -> None:
    assert_one_line_error(run_cli("token", "-x", "-c", "fake"), 2)


def test_missing_account_is_a_usage_error(snowflake_home: SnowflakeHome) -> None:
    snowflake_home.add_connection("noacct", account=None)
    assert_one_line_error(run_cli("token", "-c", "noacct"), 2, "account")


def test_config_readable_by_others_is_refused(snowflake_home: SnowflakeHome) -> None:
    snowflake_home.config_file.chmod(0o644)
    assert_one_line_error(run_cli("token"), 2, str(snowflake_home.config_file))


def test_unreadable_key_file_is_a_usage_error(snowflake_home: SnowflakeHome) -> None:
    snowflake_home.add_connection(
        "keys", authenticator="SNOWFLAKE_JWT", private_key_file="/nonexistent/key.p8"
    )
    assert_one_line_error(run_cli("token", "-c", "keys"), 2, "/nonexistent/key.p8")


def test_wrong_key_passphrase_is_a_usage_error(
    snowflake_home: SnowflakeHome, key_pair_user: KeyPair, fake_snowflake: FakeSnowflake
) -> None:
    add_key_pair_connection(snowflake_home, key_pair_user, passphrase="not-the-passphrase")
    done = run_cli("token", "-c", "keys")
    assert_one_line_error(done, 2, "wrong passphrase")
    assert "not-the-passphrase" not in done.stderr
    assert not fake_snowflake.requests_to("login")


# ---- the commands against the fake, under both connector lines -----------------------------


@pytest.mark.connector
@pytest.mark.parametrize("spelling", ["JSON", "json", "Json"])
def test_token_json_is_snows_object_and_the_token_stays_valid(
    snowflake_home: SnowflakeHome, fake_snowflake: FakeSnowflake, spelling: str
) -> None:
    done = run_cli("token", "--format", spelling)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert list(result) == ["token", "expires_in"]
    assert result["expires_in"] == 3600
    assert done.stdout.startswith('{\n    "token": ')
    assert fake_snowflake.registry_password_is_valid(json.dumps(result))
    assert fake_snowflake.logouts == 0, "logging out would revoke the printed token"
    assert done.stderr == ""


@pytest.mark.connector
def test_token_json_matches_snow_and_both_tokens_work(
    snowflake_home: SnowflakeHome, fake_snowflake: FakeSnowflake, snow_executable: str
) -> None:
    """Drop-in: the same connection file, the same output shape, two working tokens."""
    snow = subprocess.run(
        [snow_executable, "spcs", "image-registry", "token", "--format", "JSON", "-c", "fake"],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    ours = run_cli("token", "--format", "JSON", "-c", "fake")
    assert snow.returncode == 0, snow.stderr
    assert ours.returncode == 0, ours.stderr
    snow_result, our_result = json.loads(snow.stdout), json.loads(ours.stdout)
    assert list(our_result) == list(snow_result)
    assert our_result["expires_in"] == snow_result["expires_in"]
    assert our_result["token"] != snow_result["token"]
    for printed in (snow.stdout, ours.stdout):
        assert fake_snowflake.registry_password_is_valid(json.dumps(json.loads(printed)))


@pytest.mark.connector
def test_token_table(snowflake_home: SnowflakeHome, fake_snowflake: FakeSnowflake) -> None:
    done = run_cli("token")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[1].split() == ["|", "key", "|", "value", "|"]
    rows = {line.split("|")[1].strip() for line in lines[3:-1]}
    assert {"token", "expires_in"} <= rows
    token = "".join(line.split("|")[2].strip() for line in lines[3:-2])
    assert token in fake_snowflake.issued_tokens()


@pytest.mark.connector
@pytest.mark.parametrize(
    ("args", "stdout"),
    [
        ((), DEFAULT_REGISTRY_HOST + "\n"),
        (("--private-link",), DEFAULT_PRIVATELINK_HOST + "\n"),
        (("--format", "JSON"), json.dumps({"message": DEFAULT_REGISTRY_HOST}, indent=4) + "\n"),
    ],
)
def test_url(snowflake_home: SnowflakeHome, args: tuple[str, ...], stdout: str) -> None:
    done = run_cli("url", *args)
    assert done.returncode == 0, done.stderr
    assert done.stdout == stdout


@pytest.mark.connector
def test_url_when_the_role_sees_no_repository(
    snowflake_home: SnowflakeHome, fake_snowflake: FakeSnowflake
) -> None:
    fake_snowflake.set_repositories()
    assert_one_line_error(run_cli("url"), 1, "connection 'fake'", "no image repository")


@pytest.mark.connector
def test_temporary_connection_from_flags_only(fake_snowflake: FakeSnowflake) -> None:
    done = run_cli(
        "token",
        "-x",
        "--host",
        fake_snowflake.host,
        "--port",
        str(fake_snowflake.port),
        "--protocol",
        "http",
        "--accountname",
        fake_snowflake.account,
        "--username",
        DEFAULT_USER,
        "--password",
        DEFAULT_PASSWORD,
        "--format",
        "JSON",
    )
    assert done.returncode == 0, done.stderr
    assert fake_snowflake.registry_password_is_valid(done.stdout)


@pytest.mark.connector
def test_flags_override_the_connection_file(
    snowflake_home: SnowflakeHome, fake_snowflake: FakeSnowflake
) -> None:
    snowflake_home.add_connection("broken", default=True, password="wrong-in-file")
    done = run_cli("token", "--password", DEFAULT_PASSWORD, "--format", "JSON")
    assert done.returncode == 0, done.stderr


@pytest.mark.connector
def test_silent_prints_only_the_result(snowflake_home: SnowflakeHome) -> None:
    done = run_cli("url", "--silent")
    assert done.returncode == 0
    assert done.stdout == DEFAULT_REGISTRY_HOST + "\n"
    assert done.stderr == ""


@pytest.mark.connector
def test_verbose_logs_info_events_as_json_lines_on_stderr(snowflake_home: SnowflakeHome) -> None:
    done = run_cli("url", "--verbose")
    assert done.returncode == 0
    assert done.stdout == DEFAULT_REGISTRY_HOST + "\n"
    events = [json.loads(line) for line in done.stderr.splitlines()]
    assert "snowflake_logged_in" in {event["event"] for event in events}
    assert {event["level"] for event in events} <= {"info", "warning"}


@pytest.mark.connector
def test_wrong_password_fails_with_one_line_naming_the_connection(
    snowflake_home: SnowflakeHome,
) -> None:
    snowflake_home.add_connection("badpw", password="wrong-password-xyz")
    done = run_cli("token", "-c", "badpw")
    assert_one_line_error(done, 1, "connection 'badpw'", "Incorrect username or password")
    assert "wrong-password-xyz" not in done.stderr


@pytest.mark.connector
def test_unreachable_host_fails_within_the_login_timeout(snowflake_home: SnowflakeHome) -> None:
    snowflake_home.add_connection("dead", port=free_port(), login_timeout=5)
    started = time.monotonic()
    done = run_cli("token", "-c", "dead")
    assert_one_line_error(done, 1, "connection 'dead'", "login failed")
    assert time.monotonic() - started < 30


@pytest.mark.connector
def test_server_errors_fail_with_one_line(
    snowflake_home: SnowflakeHome, fake_snowflake: FakeSnowflake
) -> None:
    snowflake_home.add_connection("flaky", login_timeout=5)
    fake_snowflake.fail_http(503)
    assert_one_line_error(run_cli("token", "-c", "flaky"), 1, "connection 'flaky'")


@pytest.mark.connector
def test_no_secret_in_any_output_at_debug(
    snowflake_home: SnowflakeHome,
    fake_snowflake: FakeSnowflake,
    key_pair_user: KeyPair,
    tmp_path: Path,
) -> None:
    """Password, PAT and key-pair logins at --debug, through every one-shot command:
    only `token`'s stdout holds a token."""
    fake_snowflake.add_user("patuser", pat=PAT)
    snowflake_home.add_connection(
        "pat", user="patuser", password=None, authenticator="PROGRAMMATIC_ACCESS_TOKEN", token=PAT
    )
    add_key_pair_connection(snowflake_home, key_pair_user, passphrase=key_pair_user.passphrase)
    key_text = key_pair_user.encrypted_private_key_path.read_text()
    key_lines = [line for line in key_text.splitlines() if "-----" not in line]
    captured: list[str] = []
    printed_tokens: list[str] = []
    for name in ("fake", "pat", "keys"):
        for log_format in ("json", "console"):
            done = run_cli(
                "token", "-c", name, "--debug", "--log-format", log_format, "--format", "JSON"
            )
            assert done.returncode == 0, done.stderr
            assert "DEBUG" in done.stderr.upper()
            printed_tokens.append(json.loads(done.stdout)["token"])
            captured.append(done.stderr)
            done = run_cli("url", "-c", name, "--debug", "--log-format", log_format)
            assert done.returncode == 0, done.stderr
            captured += [done.stdout, done.stderr]
            docker = ("--registry", "127.0.0.1:5999", "--docker-config", str(tmp_path / name))
            done = run_cli("login", "-c", name, "--debug", "--verify", "none", *docker)
            assert done.returncode == 0, done.stderr
            captured += [done.stdout, done.stderr]
            done = run_cli("logout", "--revoke", "-c", name, "--debug", *docker)
            assert done.returncode == 0, done.stderr
            captured += [done.stdout, done.stderr]
    secrets = [*fake_snowflake.secrets(), DEFAULT_PASSWORD, PAT, key_pair_user.passphrase]
    secrets += key_lines
    everything = "\n".join(captured)
    assert set(printed_tokens) <= set(fake_snowflake.secrets())
    leaked = [secret for secret in secrets if secret and secret in everything]
    assert leaked == []


def test_help_lists_snows_option_aliases() -> None:
    done = run_cli("token", "--help")
    for alias in (
        "--environment",
        "--accountname",
        "--username",
        "--dbname",
        "--schemaname",
        "--rolename",
        "--private-key-path",
        "--temporary-connection",
        "--mfa-passcode",
        "--enable-diag",
        "--token-file-path",
    ):
        assert alias in done.stdout


def test_version() -> None:
    done = run_cli("--version")
    assert done.returncode == 0
    assert "spcs-registry-agent" in done.stdout
