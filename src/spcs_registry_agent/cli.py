"""Command line: click commands and their options, nothing else.

The one-shot commands import only what they use: the connector when they
talk to Snowflake, never the Docker SDK or the scheduler.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click
import structlog

from spcs_registry_agent import __version__
from spcs_registry_agent.errors import AgentError, ConfigError
from spcs_registry_agent.logs import LOG_FORMATS
from spcs_registry_agent.output import OUTPUT_FORMATS

if TYPE_CHECKING:
    from spcs_registry_agent.connections import ResolvedConnection
    from spcs_registry_agent.snowflake import Session
    from spcs_registry_agent.verify import VerifyMode

F = TypeVar("F", bound=Callable[..., Any])

log = structlog.get_logger(__name__)

#: Connection flags: (option names, connection key, help). Same names and
#: aliases as `snow`, so existing command lines work unchanged.
_CONNECTION_FLAGS: tuple[tuple[tuple[str, ...], str, str], ...] = (
    (("--host",), "host", "Host address for the connection."),
    (("--port",), "port", "Port for the connection."),
    (("--protocol",), "protocol", "Protocol for the connection, for example `https`."),
    (("--account", "--accountname"), "account", "Name assigned to your Snowflake account."),
    (("--user", "--username"), "user", "Username to connect to Snowflake."),
    (("--password",), "password", "Snowflake password."),
    (("--authenticator",), "authenticator", "Snowflake authenticator."),
    (
        ("--workload-identity-provider",),
        "workload_identity_provider",
        "Workload identity provider (AWS, AZURE, GCP, OIDC).",
    ),
    (
        ("--private-key-file", "--private-key-path"),
        "private_key_file",
        "Snowflake private key file path.",
    ),
    (("--token",), "token", "OAuth token to use when connecting to Snowflake."),
    (("--token-file-path",), "token_file_path", "Path to a file with an OAuth token."),
    (("--database", "--dbname"), "database", "Database to use."),
    (("--schema", "--schemaname"), "schema", "Database schema to use."),
    (("--role", "--rolename"), "role", "Role to use."),
    (("--warehouse",), "warehouse", "Warehouse to use."),
    (("--mfa-passcode",), "mfa_passcode", "Token to use for multi-factor authentication (MFA)."),
    (("--diag-log-path",), "diag_log_path", "Diagnostic report path."),
    (("--diag-allowlist-path",), "diag_allowlist_path", "Diagnostic report allowlist path."),
)


def connection_options(command: F) -> F:
    """The options of `snow`'s connection panel; values land in `options`."""
    for names, key, help_text in reversed(_CONNECTION_FLAGS):
        command = click.option(
            *names,
            key,
            type=int if key == "port" else str,
            default=None,
            help=f"{help_text} Overrides the value specified for the connection.",
        )(command)
    command = click.option(
        "--enable-diag",
        "enable_diag",
        is_flag=True,
        default=None,
        help="Run the connector's connection diagnostic test.",
    )(command)
    command = click.option(
        "--temporary-connection",
        "-x",
        "temporary_connection",
        is_flag=True,
        help="Use a connection defined by command-line parameters instead of one from config.",
    )(command)
    return click.option(
        "--connection",
        "-c",
        "--environment",
        "connection",
        default=None,
        help="Name of the connection, as defined in your config.toml. Default: default.",
    )(command)


_FORMAT_OPTION = click.option(
    "--format",
    "output_format",
    type=click.Choice(OUTPUT_FORMATS, case_sensitive=False),
    default="TABLE",
    help="Specifies the output format.",
)
_DEBUG_OPTION = click.option("--debug", is_flag=True, help="Show log entries from debug level up.")
_DOCKER_CONFIG_OPTION = click.option(
    "--docker-config",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Docker config directory. Default: $DOCKER_CONFIG, else ~/.docker.",
)


def _log_format_option(default: str | None) -> Callable[[F], F]:
    return click.option(
        "--log-format",
        type=click.Choice(LOG_FORMATS, case_sensitive=False),
        default=default,
        help="Logs on stderr: console on a terminal, JSON lines otherwise."
        + ("" if default else " Default: the config file's, else auto."),
    )


def _verify_option(default: str | None) -> Callable[[F], F]:
    from spcs_registry_agent.verify import VERIFY_MODES

    return click.option(
        "--verify",
        type=click.Choice(VERIFY_MODES),
        default=default,
        help="Check new credentials before storing them: through the Docker engine, the "
        "registry's own token handshake (no engine needed), the engine when one answers "
        "(auto), or not at all."
        + (f" Default: {default}." if default else " Default: the config file's, else auto."),
    )


def output_options(command: F) -> F:
    """`--format` and the logging switches shared by the one-shot commands."""
    for decorator in (
        _log_format_option("auto"),
        click.option("--silent", is_flag=True, help="Turn off all output but the result."),
        _DEBUG_OPTION,
        click.option("--verbose", "-v", is_flag=True, help="Show log entries from info level up."),
        _FORMAT_OPTION,
    ):
        command = decorator(command)
    return command


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="spcs-registry-agent")
def cli() -> None:
    """Keep Docker logged in to Snowflake's container image registry."""


@cli.command()
@connection_options
@output_options
def token(**options: Any) -> None:
    """Print a registry token, as `snow spcs image-registry token` does."""
    _configure_logging(options)
    session = _login(options)
    try:
        issued = session.issue_token()
    finally:
        session.close()
    _print(issued.as_dict(), options)


@cli.command()
@click.option("--private-link", is_flag=True, help="Print the private-link registry host.")
@connection_options
@output_options
def url(private_link: bool, **options: Any) -> None:
    """Print the registry host, as `snow spcs image-registry url` does."""
    _configure_logging(options)
    session = _login(options)
    try:
        host = session.registry_host(private_link=private_link)
    finally:
        session.close()
    _print_message(host, options)


def docker_options(command: F) -> F:
    """Where credentials go (`--registry`, `--private-link`, `--docker-config`)."""
    for decorator in (
        _DOCKER_CONFIG_OPTION,
        click.option("--private-link", is_flag=True, help="Use the private-link registry host."),
        click.option(
            "--registry",
            metavar="HOST",
            default=None,
            help="Registry host[:port]. Default: discovered through the connection.",
        ),
    ):
        command = decorator(command)
    return command


@cli.command()
@docker_options
@_verify_option("auto")
@connection_options
@output_options
def login(
    registry: str | None,
    private_link: bool,
    docker_config: Path | None,
    verify: VerifyMode,
    **options: Any,
) -> None:
    """Issue a registry token and store it where Docker reads credentials."""
    from spcs_registry_agent import docker_credentials
    from spcs_registry_agent import verify as checks

    _configure_logging(options)
    session = _login(options)
    try:
        issued = session.issue_token()
        host = registry or session.registry_host(private_link=private_link)
    finally:
        session.close()  # never a logout: the session must live on for the token to work
    config_dir = docker_credentials.docker_config_dir(docker_config, os.environ, Path.home())
    password = issued.docker_password()
    # Checked before it is stored: refused credentials never replace working ones.
    checked = checks.verify_credentials(
        host, docker_credentials.USERNAME, password, verify, env=os.environ
    )
    sink = docker_credentials.store_credentials(host, password, config_dir)
    log.info(
        "docker_login_done",
        registry=host,
        sink=sink,
        verified=checked,
        expires_in=issued.expires_in,
    )
    _print_message("Login Succeeded", options)


@cli.command()
@docker_options
@click.option(
    "--revoke",
    is_flag=True,
    help="Before removing them, log out the Snowflake session that issued the stored "
    "token: every token of that session stops working.",
)
@connection_options
@output_options
def logout(
    registry: str | None,
    private_link: bool,
    docker_config: Path | None,
    revoke: bool,
    **options: Any,
) -> None:
    """Remove the credentials `login` stored for the registry (and nothing else)."""
    from spcs_registry_agent import docker_credentials

    _configure_logging(options)
    config_dir = docker_credentials.docker_config_dir(docker_config, os.environ, Path.home())
    host = registry
    if host is None:
        session = _login(options)
        try:
            host = session.registry_host(private_link=private_link)
        finally:
            session.close()
    revoked = ""
    if revoke:
        # Revoke first: if that fails, the token stays where a retry can find it.
        from spcs_registry_agent.revoke import revoke_token, token_of

        secret = docker_credentials.read_credentials(host, config_dir)
        if secret is not None:
            gone = revoke_token(_connection(options).params, token_of(secret))
            revoked = "; Snowflake session logged out" if gone else "; session already gone"
    erased = docker_credentials.erase_credentials(host, config_dir)
    _print_message(
        (f"Removing login credentials for {host}" if erased else f"Not logged in to {host}")
        + revoked,
        options,
    )


_CONFIG_OPTION = click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Agent config file. Default: $XDG_CONFIG_HOME/spcs-registry-agent/config.toml.",
)
_STATE_DIR_OPTION = click.option(
    "--state-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="State directory. Default: $STATE_DIRECTORY, else ~/.local/state/spcs-registry-agent.",
)


@cli.command()
@_CONFIG_OPTION
@click.option(
    "--connection",
    "-c",
    "connections",
    multiple=True,
    help="A snowflake-cli connection to keep logged in (repeatable); replaces the file's.",
)
@_DOCKER_CONFIG_OPTION
@_verify_option(None)
@_STATE_DIR_OPTION
@_log_format_option(None)
@_DEBUG_OPTION
def run(
    config_path: Path | None,
    connections: tuple[str, ...],
    docker_config: Path | None,
    verify: str | None,
    state_dir: Path | None,
    log_format: str | None,
    debug: bool,
) -> None:
    """Keep every configured registry logged in until stopped (SIGHUP reloads the config)."""
    from spcs_registry_agent import logs
    from spcs_registry_agent.agent import serve
    from spcs_registry_agent.config import AgentConfig, load_config, with_flags

    env = dict(os.environ)
    home = Path.home()

    def load() -> AgentConfig:
        return with_flags(
            load_config(config_path, env=env, home=home),
            connections=connections,
            docker_config=docker_config,
            verify=verify,
            log_format=log_format.lower() if log_format else None,
            state_dir=state_dir,
        )

    config = load()
    logs.configure(logging.DEBUG if debug else logging.INFO, config.log_format)
    sys.exit(serve(config, load, env, home))


@cli.command()
@_CONFIG_OPTION
@_STATE_DIR_OPTION
@_FORMAT_OPTION
def status(config_path: Path | None, state_dir: Path | None, output_format: str) -> None:
    """Show what the running agent holds; exit 0 only if every target has valid credentials."""
    import time

    from spcs_registry_agent.config import default_state_dir, load_config
    from spcs_registry_agent.output import render
    from spcs_registry_agent.state import all_healthy, read_states, status_rows

    env = dict(os.environ)
    home = Path.home()
    if state_dir is None:
        state_dir = load_config(config_path, env=env, home=home).state_dir
    directory = state_dir or default_state_dir(env, home)
    states = read_states(directory)
    now = time.time()
    rows = status_rows(states, now)
    if output_format.upper() == "JSON" or not rows:
        click.echo(render(rows, output_format.upper()))
    else:  # a key | value table per target: nine columns do not fit a terminal
        click.echo("\n".join(render(row, "TABLE") for row in rows))
    if not states:
        click.echo(f"no agent state in {directory}: is the agent running?", err=True)
    if not all_healthy(states, now):
        raise click.exceptions.Exit(1)


def _configure_logging(options: dict[str, Any]) -> None:
    from spcs_registry_agent import logs

    if options["verbose"] and options["debug"]:
        raise ConfigError("--verbose and --debug cannot be used together")
    if options["silent"]:
        level = logs.SILENT
    elif options["debug"]:
        level = logging.DEBUG
    elif options["verbose"]:
        level = logging.INFO
    else:
        level = logging.ERROR
    logs.configure(level, options["log_format"].lower())


def _connection(options: dict[str, Any]) -> ResolvedConnection:
    """Files, environment and flags -> the connection, as snowflake-cli resolves it."""
    from spcs_registry_agent.connections import load_connection_files, resolve_connection

    flags = {key: options[key] for _, key, _ in _CONNECTION_FLAGS}
    flags["enable_diag"] = options["enable_diag"]
    env = dict(os.environ)
    return resolve_connection(
        load_connection_files(env, Path.home()),
        name=options["connection"],
        flags=flags,
        env=env,
        temporary=options["temporary_connection"],
    )


def _login(options: dict[str, Any]) -> Session:
    connection = _connection(options)  # before importing the connector: bad input fails fast
    from spcs_registry_agent.snowflake import Session

    return Session.login(connection)


def _print(result: dict[str, Any], options: dict[str, Any]) -> None:
    from spcs_registry_agent.output import render

    click.echo(render(result, options["output_format"].upper()))


def _print_message(message: str, options: dict[str, Any]) -> None:
    """A bare line in TABLE format; `{"message": ...}` in JSON, as snow prints it."""
    from spcs_registry_agent.output import render_json

    if options["output_format"].upper() == "JSON":
        click.echo(render_json({"message": message}))
    else:
        click.echo(message)


def main() -> None:
    """Console entry point: every failure is one line on stderr and an exit code."""
    try:
        code = cli.main(prog_name="spcs-registry-agent", standalone_mode=False)
    except click.ClickException as exc:
        _fail(exc.format_message(), exc.exit_code)
    except click.Abort:
        _fail("aborted", 1)
    except AgentError as exc:
        _fail(str(exc), exc.exit_code)
    except Exception as exc:
        logging.getLogger(__name__).debug("internal error", exc_info=True)
        _fail(f"internal error: {type(exc).__name__} (run with --debug for details)", 1)
    sys.exit(code if isinstance(code, int) else 0)


def _fail(message: str, exit_code: int) -> None:
    click.echo(f"Error: {message}", err=True)
    sys.exit(exit_code)
