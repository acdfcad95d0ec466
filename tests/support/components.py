"""Real Docker components for end-to-end tests, each started here and stopped by its PID.

dockerd (vfs, no networking, its own socket), docker-registry in token-auth mode, and a
`pass` store with a throwaway GPG key for docker-credential-pass. Nothing is left behind:
processes are stopped by PID, gpg-agent through gpgconf.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from support.token_realm import ISSUER, SERVICE, TokenRealm

BINARIES = {
    "dockerd": "docker.io",
    "docker": "docker.io",
    "docker-registry": "docker-registry",
    "skopeo": "skopeo",
    "pass": "pass",
    "gpg": "gnupg",
    "docker-credential-pass": "golang-docker-credential-helpers",
}


def missing_binaries() -> list[str]:
    """`binary (debian package)` for every component that is not installed."""
    return [f"{b} ({pkg})" for b, pkg in BINARIES.items() if shutil.which(b) is None]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(
    ready: Callable[[], bool], what: str, proc: subprocess.Popen[bytes], log: Path
) -> None:
    """Poll `ready()` for up to 30 s; fail with the component's log if it never is."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited ({proc.returncode}): {log.read_text()[-2000:]}")
        if ready():
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} not ready after 30 s: {log.read_text()[-2000:]}")


def stop_process(proc: subprocess.Popen[bytes], *, grace: float = 15.0) -> None:
    """SIGTERM the PID, SIGKILL it if it lingers, and reap it."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class Dockerd:
    """A private Docker engine; `host` is its DOCKER_HOST."""

    root: Path
    proc: subprocess.Popen[bytes]

    @property
    def socket_path(self) -> Path:
        return self.root / "docker.sock"

    @property
    def host(self) -> str:
        return f"unix://{self.socket_path}"

    def answers(self) -> bool:
        try:
            with socket.socket(socket.AF_UNIX) as sock:
                sock.settimeout(2)
                sock.connect(str(self.socket_path))
                sock.sendall(b"GET /_ping HTTP/1.0\r\n\r\n")
                return b" 200 " in sock.recv(64)
        except OSError:
            return False


@contextlib.contextmanager
def running_dockerd(root: Path) -> Iterator[Dockerd]:
    root.mkdir(parents=True, exist_ok=True)
    log = root / "dockerd.log"
    command = [
        "dockerd",
        "--iptables=false",
        "--ip6tables=false",
        "--bridge=none",
        "--storage-driver=vfs",
        f"--data-root={root / 'docker'}",
        f"--exec-root={root / 'exec'}",
        f"--pidfile={root / 'dockerd.pid'}",
        f"--host=unix://{root / 'docker.sock'}",
    ]
    with log.open("wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    engine = Dockerd(root, proc)
    try:
        wait_for(engine.answers, "dockerd", proc, log)
        yield engine
    finally:
        stop_process(proc)
        _stop_orphan(root / "exec" / "containerd" / "containerd.pid")


def _stop_orphan(pidfile: Path) -> None:
    """dockerd stops the containerd it started; this only covers a dockerd that was killed."""
    with contextlib.suppress(FileNotFoundError, ValueError, ProcessLookupError):
        os.kill(int(pidfile.read_text().strip()), signal.SIGTERM)


@dataclass
class Registry:
    """docker-registry in token-auth mode on loopback; `host` is what docker calls it."""

    address: str
    port: int
    realm: TokenRealm
    proc: subprocess.Popen[bytes]

    @property
    def host(self) -> str:
        return f"{self.address}:{self.port}"

    def challenge(self) -> str | None:
        """The WWW-Authenticate header of GET /v2/, or None while it is not serving."""
        try:
            urllib.request.urlopen(f"http://{self.host}/v2/", timeout=2)
        except urllib.error.HTTPError as e:
            return e.headers.get("WWW-Authenticate")
        except OSError:
            return None
        return None


REGISTRY_CONFIG = """\
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: {root}/data
  delete:
    enabled: true
http:
  addr: {address}:{port}
auth:
  token:
    realm: {realm}
    service: {service}
    issuer: {issuer}
    rootcertbundle: {bundle}
"""


@contextlib.contextmanager
def running_registry(
    root: Path, realm: TokenRealm, *, address: str = "127.0.0.1", port: int | None = None
) -> Iterator[Registry]:
    """Serve on `address`:`port` (a free port by default) and wait until it challenges."""
    root.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    config = root / "config.yml"
    config.write_text(
        REGISTRY_CONFIG.format(
            root=root,
            address=address,
            port=port,
            realm=realm.url,
            service=SERVICE,
            issuer=ISSUER,
            bundle=realm.write_cert_bundle(root / "realm.pem"),
        )
    )
    log = root / "registry.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            ["docker-registry", "serve", str(config)], stdout=out, stderr=subprocess.STDOUT
        )
    registry = Registry(address, port, realm, proc)
    try:
        wait_for(lambda: registry.challenge() is not None, "docker-registry", proc, log)
        yield registry
    finally:
        stop_process(proc)


@dataclass(frozen=True)
class PassStore:
    """A `pass` password store with its own GPG home; `env` points pass and gpg at it."""

    gnupg_home: Path
    store_dir: Path

    @property
    def env(self) -> Mapping[str, str]:
        return {"GNUPGHOME": str(self.gnupg_home), "PASSWORD_STORE_DIR": str(self.store_dir)}

    def entries(self) -> list[str]:
        """Names of the stored secrets (docker-credential-pass: base64 host / user)."""
        return sorted(
            str(p.relative_to(self.store_dir).with_suffix(""))
            for p in self.store_dir.rglob("*.gpg")
        )


@contextlib.contextmanager
def pass_store(root: Path) -> Iterator[PassStore]:
    """A throwaway GPG key (no passphrase) and `pass init` with it; gpg-agent killed after."""
    store = PassStore(root / "gnupg", root / "password-store")
    store.gnupg_home.mkdir(mode=0o700, parents=True)
    env = {**os.environ, **store.env}

    def run(*command: str) -> str:
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{command[0]} failed: {done.stderr.strip()}")
        return done.stdout

    try:
        run(
            "gpg", "--batch", "--passphrase", "", "--quick-gen-key",
            "spcs-registry-agent test <t@example.invalid>", "default", "default", "never",
        )  # fmt: skip
        fingerprint = next(
            line.split(":")[9]
            for line in run("gpg", "--batch", "--list-keys", "--with-colons").splitlines()
            if line.startswith("fpr:")
        )
        run("pass", "init", fingerprint)
        yield store
    finally:
        subprocess.run(
            ["gpgconf", "--homedir", str(store.gnupg_home), "--kill", "gpg-agent"],
            env=env,
            capture_output=True,
            check=False,
        )
