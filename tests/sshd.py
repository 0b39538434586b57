"""A real OpenSSH server on 127.0.0.1 for the SSH device tests, with throw-away keys in a temp folder.

Nothing here reads or writes the real ``~/.ssh``: the client side is a config file (``-F``) with its own
identity and known_hosts. Without ``/usr/sbin/sshd`` the tests skip, except under CI (``CI=true``),
where they fail: CI installs it with ``bash .ci/install-sshd``.

Example:
    >>> with running_sshd(Path("/tmp/t")) as server:  # doctest: +SKIP
    ...     SshDevice(server.url, config_file=server.config_file).name
    'ssh://device'
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

SSHD = Path("/usr/sbin/sshd")
ALIAS = "device"  # the Host entry of the client config
SFTP_SERVERS = (
    "/usr/lib/openssh/sftp-server",
    "/usr/libexec/openssh/sftp-server",
    "/usr/libexec/sftp-server",
)


@dataclass(frozen=True)
class Sshd:
    """A running sshd and the client files that reach it."""

    port: int
    config_file: Path  # client config: Host device -> 127.0.0.1:port, our key, our known_hosts
    host_public_key: str  # "ssh-ed25519 AAAA..."
    remote_tmp: Path  # TMPDIR of every session: the device's temp dirs are made here
    folder: Path

    @property
    def url(self) -> str:
        return f"ssh://{ALIAS}"

    def client_config(self, path: Path, *, known_hosts: str | None = None) -> Path:
        """A client config like ``config_file``, with ``known_hosts`` lines instead of the server's key."""
        lines = (
            known_hosts if known_hosts is not None else f"[127.0.0.1]:{self.port} {self.host_public_key}\n"
        )
        (path.parent / f"{path.name}.known_hosts").write_text(lines)
        path.write_text(
            _client_config(self.port, self.folder / "client_key", path.parent / f"{path.name}.known_hosts")
        )
        return path


def require_sshd() -> None:
    """Skip without an sshd binary; under CI (``CI=true``) fail instead, since CI must run these tests."""
    if SSHD.is_file() and shutil.which("ssh") and shutil.which("scp"):
        return
    reason = "install openssh-server (`bash .ci/install-sshd`)"
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI must run the SSH device tests: {reason}")
    pytest.skip(reason)


@contextlib.contextmanager
def running_sshd(folder: Path) -> Iterator[Sshd]:
    """Start ``sshd -D`` on a free port of 127.0.0.1 with keys made in ``folder``; kill it on exit."""
    folder.mkdir(parents=True, exist_ok=True)
    host_key, client_key = folder / "host_key", folder / "client_key"
    for key in (host_key, client_key):
        _keygen(key)
    (folder / "authorized_keys").write_text(Path(f"{client_key}.pub").read_text())
    (remote_tmp := folder / "remote-tmp").mkdir()
    port = free_port()
    (folder / "sshd_config").write_text(_server_config(folder, port, remote_tmp))
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege separation dir, when run as root
    log = (folder / "sshd.log").open("w")
    process = subprocess.Popen([str(SSHD), "-D", "-e", "-f", str(folder / "sshd_config")], stderr=log)
    try:
        _wait_for_port(port, process, folder / "sshd.log")
        public = " ".join(Path(f"{host_key}.pub").read_text().split()[:2])
        server = Sshd(port, folder / "ssh_config", public, remote_tmp, folder)
        server.client_config(server.config_file)
        yield server
    finally:
        process.kill()
        process.wait(timeout=10)
        log.close()


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on (just now)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _keygen(path: Path) -> None:
    done = subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "edge-distill-test", "-f", str(path)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, f"ssh-keygen failed: {done.stderr}"


def _server_config(folder: Path, port: int, remote_tmp: Path) -> str:
    sftp = next((path for path in SFTP_SERVERS if Path(path).is_file()), "internal-sftp")  # scp uses SFTP
    return f"""\
ListenAddress 127.0.0.1
Port {port}
HostKey {folder / "host_key"}
AuthorizedKeysFile {folder / "authorized_keys"}
PidFile {folder / "sshd.pid"}
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PermitRootLogin prohibit-password
SetEnv TMPDIR={remote_tmp}
Subsystem sftp {sftp}
"""


def _client_config(port: int, identity: Path, known_hosts: Path) -> str:
    return f"""\
Host {ALIAS}
  HostName 127.0.0.1
  Port {port}
  User {getpass.getuser()}
  IdentityFile {identity}
  IdentitiesOnly yes
  UserKnownHostsFile {known_hosts}
  GlobalKnownHostsFile /dev/null
"""


def _wait_for_port(port: int, process: subprocess.Popen[bytes], log: Path, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"sshd exited with {process.returncode}: {log.read_text()[-2000:]}")
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"sshd did not listen on 127.0.0.1:{port} within {timeout_s:.0f} s: {log.read_text()}")
