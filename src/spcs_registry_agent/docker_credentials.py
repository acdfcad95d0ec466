"""Where Docker reads registry credentials, and writing ours there without losing anyone else's.

The docker CLI looks a registry up in this order: `credHelpers[host]`, then `credsStore`,
then `auths[host]` in config.json. We store where it will look, so that `docker`, BuildKit
and skopeo all find the token. config.json is shared with the user and with concurrent
`docker login`s, which rewrite the whole file without any lock; so we change it under an
advisory lock (for our own writers), re-read it right before replacing it (for theirs), and
replace it atomically. The docker SDK is imported only when a credential helper is used.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import ctypes
import errno
import fcntl
import json
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from spcs_registry_agent.errors import AgentError

if TYPE_CHECKING:
    from spcs_registry_agent.credential_helper import TimedStore

USERNAME = "0sessiontoken"
CONFIG_FILE = "config.json"
# Beside config.json, not config.json itself: docker CLI replaces config.json by rename,
# which would silently drop a lock held on the old inode.
LOCK_FILE = ".config.json.lock"
LOCK_TIMEOUT = 10.0
REWRITE_ATTEMPTS = 50
HELPER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*\Z")

log = structlog.get_logger(__name__)

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
_renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)

Config = dict[str, Any]


class CredentialsError(AgentError):
    """Docker credentials could not be read or written; nothing was lost."""


def docker_config_dir(flag: Path | None, env: Mapping[str, str], home: Path) -> Path:
    """The directory the docker CLI would use: `--config`, then $DOCKER_CONFIG, then ~/.docker."""
    if flag is not None:
        return flag
    if env.get("DOCKER_CONFIG"):
        return Path(env["DOCKER_CONFIG"])
    return home / ".docker"


def auth_field(secret: str) -> str:
    """The `auths[host].auth` value docker writes: base64 of `user:password`."""
    return base64.b64encode(f"{USERNAME}:{secret}".encode()).decode("ascii")


def sink_for(host: str, config: Mapping[str, Any]) -> str:
    """Where docker reads `host`'s credentials: "credHelpers:NAME", "credsStore:NAME" or "auths".

    Mirrors docker/cli `getConfiguredCredentialStore`: an entry in credHelpers wins even
    when it is an empty string (which then means "the file"), else credsStore. The CLI's
    platform default store (pass/secretservice) applies only to a config with no auth data
    at all; once we write `auths`, the CLI reads `auths`, so "auths" is right there too.
    """
    helpers = config.get("credHelpers") or {}
    if host in helpers:
        kind, name = "credHelpers", helpers[host]
    else:
        kind, name = "credsStore", config.get("credsStore")
    if not name:
        return "auths"
    if not isinstance(name, str) or not HELPER_NAME.match(name):
        raise CredentialsError(f"invalid credential helper name {name!r} in docker config")
    return f"{kind}:{name}"


def store_credentials(
    host: str, secret: str, config_dir: Path, *, helper_timeout: float = 10.0
) -> str:
    """Store `0sessiontoken` + `secret` for `host` where docker reads it; return that place.

    Returns "credHelpers:NAME", "credsStore:NAME" or "auths". Failure raises
    CredentialsError and leaves whatever was stored before in place.
    """
    path = config_dir / CONFIG_FILE
    sink = sink_for(host, read_config(path))
    if sink != "auths":
        try:
            _store(_helper(sink), helper_timeout).store(host, USERNAME, secret)
        except _store_errors() as e:
            raise CredentialsError(f"cannot store credentials for {host}: {e}") from None
    else:

        def put(current: Config) -> bool:
            _auths(current)[host] = {"auth": auth_field(secret)}
            return True

        with _locked(config_dir):
            _rewrite(path, put)
    log.debug("docker_credentials_stored", host=host, sink=sink, config_dir=str(config_dir))
    return sink


def erase_credentials(host: str, config_dir: Path, *, helper_timeout: float = 10.0) -> bool:
    """Remove our (`0sessiontoken`) credentials for `host`; False if there were none.

    Credentials of any other user for the host are left alone: they are not ours.
    """
    path = config_dir / CONFIG_FILE
    config = read_config(path)
    sink = sink_for(host, config)
    if sink != "auths":
        return _erase_from_helper(host, _helper(sink), helper_timeout)
    if not _is_ours((config.get("auths") or {}).get(host)):
        return False

    def drop(current: Config) -> bool:
        auths = _auths(current)
        if not _is_ours(auths.get(host)):
            return False
        del auths[host]
        return True

    with _locked(config_dir):
        return _rewrite(path, drop)


def read_credentials(host: str, config_dir: Path, *, helper_timeout: float = 10.0) -> str | None:
    """Our (`0sessiontoken`) secret for `host`, from where docker reads it; None if none."""
    config = read_config(config_dir / CONFIG_FILE)
    sink = sink_for(host, config)
    if sink == "auths":
        return _our_secret((config.get("auths") or {}).get(host))
    found = _helper_get(host, _helper(sink), helper_timeout)
    return None if found is None else found.get("Secret")


def read_config(path: Path) -> Config:
    """Parse config.json; a missing or empty file is an empty config, like the docker CLI."""
    return _parse(_read_bytes(path), path)


def _helper(sink: str) -> str:
    return sink.partition(":")[2]


def _store(helper: str, timeout: float) -> TimedStore:
    from spcs_registry_agent.credential_helper import TimedStore

    return TimedStore(helper, timeout=timeout)


def _store_errors() -> tuple[type[Exception], ...]:
    from docker.credentials import errors

    # ValueError/KeyError: a helper that answers something other than the protocol's JSON.
    return (errors.StoreError, ValueError, KeyError)


def _helper_get(host: str, helper: str, timeout: float) -> dict[str, str] | None:
    """The helper's entry for `host` if it is ours, else None."""
    from docker.credentials import errors

    try:
        found: dict[str, str] = _store(helper, timeout).get(host)
    except errors.CredentialsNotFound:
        return None
    except _store_errors() as e:
        raise CredentialsError(f"cannot read credentials for {host}: {e}") from None
    return found if found.get("Username") == USERNAME else None


def _erase_from_helper(host: str, helper: str, timeout: float) -> bool:
    if _helper_get(host, helper, timeout) is None:
        return False
    try:
        _store(helper, timeout).erase(host)
    except _store_errors() as e:
        raise CredentialsError(f"cannot erase credentials for {host}: {e}") from None
    log.debug("docker_credentials_erased", host=host, sink=helper)
    return True


def _auths(config: Config) -> dict[str, Any]:
    """The `auths` object (shape checked by _parse), created if missing or null."""
    if config.get("auths") is None:
        config["auths"] = {}
    auths: dict[str, Any] = config["auths"]
    return auths


def _is_ours(entry: object) -> bool:
    return _our_secret(entry) is not None


def _our_secret(entry: object) -> str | None:
    """The password of an `auths` entry whose user is `0sessiontoken`, else None."""
    if not isinstance(entry, dict) or not isinstance(entry.get("auth"), str):
        return None
    try:
        user, _, secret = base64.b64decode(entry["auth"], validate=True).decode().partition(":")
    except (binascii.Error, ValueError):
        return None
    return secret if user == USERNAME else None


def _read_bytes(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise CredentialsError(f"cannot read {path}: {e.strerror}") from None


def _parse(raw: bytes | None, path: Path) -> Config:
    if raw is None or not raw.strip():
        return {}
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as e:
        raise CredentialsError(
            f"{path} is not valid JSON (line {e.lineno}); left it untouched"
        ) from None
    except ValueError:  # undecodable bytes
        raise CredentialsError(f"{path} is not valid JSON text; left it untouched") from None
    if not isinstance(config, dict):
        raise CredentialsError(f"{path} does not hold a JSON object; left it untouched")
    for key, kind in (("auths", dict), ("credHelpers", dict), ("credsStore", str)):
        if config.get(key) is not None and not isinstance(config[key], kind):
            raise CredentialsError(f"{path}: {key!r} has the wrong type; left it untouched")
    return config


@contextlib.contextmanager
def _locked(config_dir: Path) -> Iterator[None]:
    """Hold an exclusive flock on the lock file in `config_dir` (created 0700 if missing)."""
    try:
        config_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(config_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as e:
        raise CredentialsError(f"cannot write in {config_dir}: {e.strerror}") from None
    try:
        deadline = time.monotonic() + LOCK_TIMEOUT
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise CredentialsError(
                        f"{config_dir / LOCK_FILE} stayed locked for {LOCK_TIMEOUT:g}s"
                    ) from None
                time.sleep(0.005)
        yield
    finally:
        os.close(fd)  # releases the lock


def _rewrite(path: Path, change: Callable[[Config], bool]) -> bool:
    """Apply `change` to the current config.json and replace the file atomically.

    Callers hold our lock, but `docker login` takes none and rewrites the whole file from
    what it read earlier. So the file is re-read just before ours goes in, and if it
    changed, `change` is applied again to the newer version. Ours goes in with an atomic
    exchange (renameat2 RENAME_EXCHANGE) that hands back the file it displaced, which
    closes the remaining gap: a displaced file other than the one we read is a write we
    would have lost, so it is swapped straight back and we merge into it. Filesystems that
    cannot exchange get a plain rename. `change` returns False when there is nothing to
    write. Returns whether the file was replaced.
    """
    # docker CLI writes through one level of symlink (dotfile managers link config.json).
    target = Path(os.readlink(path)) if path.is_symlink() else path
    target = target if target.is_absolute() else path.parent / target
    current = _read_bytes(target)
    for attempt in range(REWRITE_ATTEMPTS):
        config = _parse(current, target)
        if not change(config) and attempt == 0:
            return False
        data = (json.dumps(config, indent="\t", ensure_ascii=False) + "\n").encode()
        temp = _write_temp(target, data)
        try:
            placed, current = _put_in_place(temp, target, current)
        finally:
            _unlink(temp)
        if placed:
            _fsync_dir(target.parent)
            return True
    raise CredentialsError(f"{target} kept changing while we wrote it; try again")


def _put_in_place(temp: Path, target: Path, expected: bytes | None) -> tuple[bool, bytes | None]:
    """Move `temp` to `target` if `target` still holds `expected`.

    Returns (True, expected) when placed, else (False, what `target` holds now).
    """
    try:
        if expected is None:
            try:
                os.link(temp, target)  # atomic create-if-absent
                return True, None
            except FileExistsError:
                pass
        current = _read_bytes(target)
        if current != expected:
            return False, current
        if not _exchange(temp, target):
            os.replace(temp, target)
            return True, expected
        displaced = _read_bytes(temp)
        if displaced == expected:
            return True, expected
        _exchange(temp, target)  # put back the write that slipped in; merge into it
        if displaced is not None and not _parses(displaced):
            raise CredentialsError(f"{target} became invalid JSON; left it untouched")
        return False, displaced
    except OSError as e:
        raise CredentialsError(f"cannot replace {target}: {e.strerror}") from None


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2); False where that is not supported."""
    if _renameat2 is None:
        return False
    if _renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOENT):
        return False
    raise OSError(err, os.strerror(err))


def _parses(raw: bytes) -> bool:
    try:
        _parse(raw, Path())
    except CredentialsError:
        return False
    return True


def _write_temp(target: Path, data: bytes) -> Path:
    """Write `data` to a fsynced temp file beside `target`: 0600, or the mode `target` has."""
    try:
        fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    except OSError as e:
        raise CredentialsError(f"cannot write in {target.parent}: {e.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            with contextlib.suppress(FileNotFoundError):
                old = os.stat(target)
                os.fchmod(f.fileno(), old.st_mode & 0o7777)
                if (old.st_uid, old.st_gid) != (os.geteuid(), os.getegid()):
                    with contextlib.suppress(PermissionError):
                        os.fchown(f.fileno(), old.st_uid, old.st_gid)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        _unlink(Path(name))
        raise CredentialsError(f"cannot write {name}: {e.strerror}") from None
    return Path(name)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
