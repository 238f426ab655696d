"""OpenSSH's sshd on a loopback port, with its own host key, config and user key in
a private directory, run in the foreground (-D) and stopped by the caller.

Used by the SFTP tests and bench/sftp_throughput.py. Logins are for the current user
(root in CI) with the generated key, or with a password where `password` is given
(then a throwaway system user is created and removed).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


def missing() -> str | None:
    """Why sshd cannot run here, or None."""
    if not Path(SSHD).exists():
        return "OpenSSH's sshd is not installed (Debian: openssh-server)"
    if os.geteuid() != 0:
        return "sshd needs root to run as a test server"
    return None


@dataclass
class Sshd:
    directory: Path
    port: int
    user: str
    key_file: Path  # the client's private key
    host_key: Path  # the server's private host key
    fingerprint: str  # SHA256:... as ssh-keygen -l prints it
    root: Path  # a directory the user may write, for backups
    password: str | None = None
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start (or restart) sshd and wait until it accepts connections."""
        self.process = subprocess.Popen(
            [SSHD, "-D", "-e", "-f", str(self.directory / "sshd_config")],
            stdout=subprocess.DEVNULL,
            stderr=(self.directory / "sshd.log").open("ab"),
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                log = (self.directory / "sshd.log").read_text(errors="replace")
                raise RuntimeError(f"sshd exited: {log[-2000:]}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), 1) as probe,
            ):
                if probe.recv(4).startswith(b"SSH-"):
                    return
            time.sleep(0.05)
        raise RuntimeError("sshd did not start within 20 s")

    def kill(self) -> None:
        """SIGKILL sshd and every session it forked (a crash, not a clean stop)."""
        if self.process is None:
            return
        subprocess.run(["pkill", "-KILL", "-f", str(self.directory / "sshd_config")], check=False)
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signal.SIGKILL)
        self.process.wait()
        self.process = None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _keygen(path: Path, kind: str = "ed25519") -> str:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", kind, "-N", "", "-f", str(path)], check=True, timeout=30
    )
    out = subprocess.run(
        ["ssh-keygen", "-l", "-f", str(path) + ".pub"], capture_output=True, text=True, check=True
    ).stdout
    return out.split()[1]


@contextlib.contextmanager
def running_sshd(
    directory: Path, password: str | None = None, subsystem: str = "internal-sftp"
) -> Iterator[Sshd]:
    """sshd for the duration of the block; with `password`, for a new user with it;
    `subsystem` serves SFTP (a command line, or sshd's own)."""
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o755)
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # its privilege separation dir
    host_key = directory / "host_ed25519"
    fingerprint = _keygen(host_key)
    key_file = directory / "client_ed25519"
    _keygen(key_file)
    user = pwd.getpwuid(os.geteuid()).pw_name
    created = None
    if password is not None:
        created = f"bask{secrets.token_hex(3)}"
        subprocess.run(["useradd", "-M", "-d", str(directory), created], check=True)
        subprocess.run(["chpasswd"], input=f"{created}:{password}".encode(), check=True)
        user = created
    root = directory / "files"
    if created:  # the user must reach it: pytest's directories are private to root
        root = Path(tempfile.mkdtemp(prefix="backupagent-sshd-", dir="/var/tmp")) / "files"
        os.chmod(root.parent, 0o755)
    root.mkdir()
    if created:
        shutil.chown(root, created, created)
    keys = directory / "authorized_keys"
    keys.write_text((directory / "client_ed25519.pub").read_text())
    keys.chmod(0o644)
    port = _free_port()
    (directory / "sshd_config").write_text(
        f"""Port {port}
ListenAddress 127.0.0.1
HostKey {host_key}
PidFile {directory}/sshd.pid
AuthorizedKeysFile {keys}
StrictModes no
PermitRootLogin prohibit-password
PasswordAuthentication {"yes" if password else "no"}
KbdInteractiveAuthentication no
UsePAM {"yes" if password else "no"}
Subsystem sftp {subsystem}
LogLevel VERBOSE
"""
    )
    server = Sshd(directory, port, user, key_file, host_key, fingerprint, root, password)
    try:
        server.start()
        yield server
    finally:
        server.kill()
        if created:
            subprocess.run(["userdel", created], check=False)
            shutil.rmtree(root.parent, ignore_errors=True)
