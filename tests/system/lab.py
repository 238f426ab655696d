"""A two-host lab for system tests and the time-to-advice bench: a real FTP server (vsftpd, ProFTPD or Pure-FTPd)
in a "server" network namespace, the agent in a "client" namespace, joined by a veth
pair, with iptables rules to block one FTP data-connection mode for real. Everything
is torn down by the fixture.

The servers run with the timeouts they ship with, and the agent with its own
defaults: a test that shortens one says why the timing cannot change its outcome.
Each lab has its own namespaces and FTP user, so labs run in parallel (pytest-xdist).
"""

from __future__ import annotations

import contextlib
import functools
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..helpers import make_certificates

CLIENT_ADDR = "10.231.7.1"
SERVER_ADDR = "10.231.7.2"
PASV_PORTS = (40000, 40009)
FTP_PASSWORD = "ftp-test-pw"
SERVERS = ("vsftpd", "proftpd", "pure-ftpd")
# where scripts/ftpd-servers unpacks ProFTPD and Pure-FTPd (they conflict with vsftpd)
FTPD_DIR = Path(
    os.environ.get("BACKUPAGENT_FTPD_DIR") or Path(__file__).resolve().parents[2] / ".cache/ftpd"
)

# Only what a test lab needs (addresses, ports, paths, logging); no timeout is set,
# so vsftpd's own defaults apply (connect_timeout=60, idle_session_timeout=300, ...).
VSFTPD_CONF = """\
listen=YES
listen_ipv6=NO
listen_address={server}
listen_port=21
background=NO
anonymous_enable=NO
local_enable=YES
write_enable=YES
local_umask=022
pam_service_name=vsftpd
secure_chroot_dir={base}/empty
seccomp_sandbox=NO
isolate=NO
isolate_network=NO
pasv_enable=YES
pasv_min_port={pasv_min}
pasv_max_port={pasv_max}
port_enable=YES
connect_from_port_20=NO
xferlog_enable=YES
vsftpd_log_file={base}/vsftpd.log
log_ftp_protocol=YES
syslog_enable=NO
userlist_enable=NO
"""

VSFTPD_TLS = """\
ssl_enable=YES
rsa_cert_file={cert}
rsa_private_key_file={key}
allow_anon_ssl=NO
force_local_logins_ssl=YES
force_local_data_ssl=YES
require_ssl_reuse=YES
ssl_ciphers=HIGH
"""

# ProFTPD's own timeouts and its TLS default of requiring session reuse on data
# connections are kept; the rest places it in the lab.
PROFTPD_CONF = """\
ServerName "backupagent lab"
ServerType standalone
DefaultServer on
Port 21
DefaultAddress {server}
SocketBindTight on
UseIPv6 off
User root
Group root
PidFile {base}/proftpd.pid
ScoreboardFile {base}/proftpd.scoreboard
DelayTable none
WtmpLog off
UseReverseDNS off
RequireValidShell off
AuthOrder mod_auth_unix.c
PassivePorts {pasv_min} {pasv_max}
AllowOverwrite on
DefaultRoot ~
Umask 022
SystemLog {base}/proftpd.log
TransferLog none
ModulePath {ftpd}/usr/lib/proftpd
ControlsEngine off
"""

PROFTPD_TLS = """\
LoadModule mod_tls.c
<IfModule mod_tls.c>
TLSEngine on
TLSRequired on
TLSECCertificateFile {cert}
TLSECCertificateKeyFile {key}
TLSVerifyClient off
TLSLog {base}/proftpd-tls.log
</IfModule>
"""


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=check, timeout=60)


@dataclass
class Lab:
    base: Path
    client_ns: str
    server_ns: str
    ftp_root: Path
    user: str
    server: str = "vsftpd"
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    tls: dict[str, Path] = field(default_factory=dict)
    implicit: bool = False
    agents: list[subprocess.Popen[str]] = field(default_factory=list)

    def client(self, *argv: str, **kwargs) -> subprocess.CompletedProcess[str]:
        """Run a command inside the client namespace."""
        return subprocess.run(
            ["ip", "netns", "exec", self.client_ns, *argv],
            capture_output=True,
            text=True,
            timeout=120,
            **kwargs,
        )

    def agent(self, config: Path, *args: str) -> subprocess.CompletedProcess[str]:
        """Run the backupagent CLI on the client host."""
        return self.client(*self._agent_argv(config, *args), env=self._agent_env())

    def agent_background(self, config: Path, *args: str) -> subprocess.Popen[str]:
        """Start the CLI on the client host without waiting for it."""
        agent = subprocess.Popen(
            ["ip", "netns", "exec", self.client_ns, *self._agent_argv(config, *args)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=self._agent_env(),
        )
        self.agents.append(agent)
        return agent

    def _agent_argv(self, config: Path, *args: str) -> list[str]:
        return [sys.executable, "-m", "backupagent", "--config", str(config), *args]

    def _agent_env(self) -> dict[str, str]:
        return {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}

    # --- the FTP server -------------------------------------------------------------

    conf_extra: str = ""

    def start_server(self) -> None:
        """Start the lab's server in the foreground in the server namespace."""
        values = {
            "server": SERVER_ADDR,
            "base": self.base,
            "pasv_min": PASV_PORTS[0],
            "pasv_max": PASV_PORTS[1],
            "ftpd": FTPD_DIR,
            **self.tls,
        }
        argv = getattr(self, f"_{self.server.replace('-', '_')}_argv")(values)
        server = subprocess.Popen(
            ["ip", "netns", "exec", self.server_ns, *argv],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self.procs.append(server)
        _wait_for_listener(self, server)

    def _vsftpd_argv(self, values: dict[str, object]) -> list[str]:
        conf = self.base / "vsftpd.conf"
        text = VSFTPD_CONF.format(**values)
        if self.tls:
            text += VSFTPD_TLS.format(**values) + ("implicit_ssl=YES\n" if self.implicit else "")
        conf.write_text(text + self.conf_extra)
        return ["vsftpd", str(conf)]

    def _proftpd_argv(self, values: dict[str, object]) -> list[str]:
        conf = self.base / "proftpd.conf"
        text = PROFTPD_CONF.format(**values)
        if self.tls:
            text += PROFTPD_TLS.format(**values)
        conf.write_text(text + self.conf_extra)
        return [str(FTPD_DIR / "usr/sbin/proftpd"), "--nodaemon", "--config", str(conf)]

    def _pure_ftpd_argv(self, values: dict[str, object]) -> list[str]:
        argv = [
            str(FTPD_DIR / "usr/sbin/pure-ftpd"),
            f"--bind={SERVER_ADDR},21",
            "--login=unix",
            "--noanonymous",
            "--chrooteveryone",
            "--dontresolve",
            f"--passiveportrange={PASV_PORTS[0]}:{PASV_PORTS[1]}",
            f"--pidfile={self.base}/pure-ftpd.pid",
            "--umask=133:022",
            "--minuid=100",
        ]
        if self.tls:
            # 2: TLS required for logins; the certificate and key in one file
            bundle = self.base / "pure-ftpd.pem"
            bundle.write_bytes(self.tls["key"].read_bytes() + self.tls["cert"].read_bytes())
            bundle.chmod(0o600)
            argv += ["--tls=2", f"--certfile={bundle}"]
        return argv + self.conf_extra.split()

    def server_pids(self) -> list[int]:
        """vsftpd's listener and every session process below it."""
        listeners = [p.pid for p in self.procs if p.poll() is None]
        parents: dict[int, int] = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parents[int(stat.parent.name)] = int(fields[1])
        tree = list(listeners)
        for pid in tree:
            tree.extend(child for child, parent in parents.items() if parent == pid)
        return tree

    def signal_server(self, signum: int) -> None:
        for pid in self.server_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    def kill_server(self) -> None:
        """The server dies: the listener and every session, at once."""
        self.signal_server(signal.SIGKILL)
        for proc in self.procs:
            proc.wait(timeout=10)
        self.procs.clear()

    def iptables(self, ns: str, *rule: str) -> None:
        _run("ip", "netns", "exec", ns, "iptables", *rule)

    def block_active(self) -> None:
        """The client drops every new inbound TCP connection: the server cannot connect back."""
        self.iptables(self.client_ns, "-A", "INPUT", "-p", "tcp", "--syn", "-j", "DROP")

    def block_passive(self) -> None:
        """The server drops connections to its passive port range."""
        self.iptables(
            self.server_ns,
            "-A",
            "INPUT",
            "-p",
            "tcp",
            "--dport",
            f"{PASV_PORTS[0]}:{PASV_PORTS[1]}",
            "-j",
            "DROP",
        )

    def unblock(self) -> None:
        for ns in (self.client_ns, self.server_ns):
            self.iptables(ns, "-F", "INPUT")

    def write_config(
        self, passive: bool, password: str = FTP_PASSWORD, dest: str = "", job: str = ""
    ) -> Path:
        (self.base / "ftp.pass").write_text(password + "\n")
        self.base.joinpath("ftp.pass").chmod(0o600)
        site = self.base / "site"
        if not site.exists():
            (site / "wp-content" / "uploads").mkdir(parents=True)
            (site / "index.php").write_text("<?php echo 'hello';\n")
            (site / "wp-content" / "uploads" / "photo.bin").write_bytes(os.urandom(2_000_000))
            (site / "current").symlink_to("wp-content/uploads")
        path = self.base / "jobs.toml"
        path.write_text(f"""
[agent]
state_dir = "{self.base}/state"
log_dir = "{self.base}/log"
spool_dir = "{self.base}/spool"

[destinations.lab]
type = "ftp"
host = "{SERVER_ADDR}"
user = "{self.user}"
password_file = "{self.base}/ftp.pass"
directory = "backups/site"
keep = 5
{dest}

[jobs.site]
destination = "lab"
passive = {str(passive).lower()}
sources = ["{site}"]
{job}
""")
        return path

    def remote_names(self) -> list[str]:
        d = self.ftp_root / "backups" / "site"
        return sorted(p.name for p in d.iterdir()) if d.exists() else []


@functools.cache
def missing_parts() -> str | None:
    if os.geteuid() != 0:
        return "not root"
    for tool in ("ip", "iptables", "vsftpd", "useradd", "chpasswd"):
        if shutil.which(tool) is None:
            return f"{tool} not installed"
    if not Path("/etc/pam.d/vsftpd").exists():
        return "vsftpd's PAM configuration is missing"
    for binary in ("usr/sbin/proftpd", "usr/sbin/pure-ftpd"):
        if not (FTPD_DIR / binary).exists():
            return f"{FTPD_DIR / binary} is missing: run scripts/ftpd-servers"
    name = f"ba-probe-{os.getpid()}"  # one per process: pytest-xdist workers probe at once
    probe = _run("ip", "netns", "add", name, check=False)
    if probe.returncode != 0:
        return f"cannot create network namespaces: {probe.stderr.strip()}"
    _run("ip", "netns", "del", name, check=False)
    return None


@contextlib.contextmanager
def open_lab(options: dict[str, Any], keep_logs: Path | None = None) -> Iterator[Lab]:
    """The two namespaces with an FTP server, torn down on leaving. Options:
    {"server": "vsftpd" | "proftpd" | "pure-ftpd", "tls": True, "implicit": True,
    "max_rate": N (bytes/s; vsftpd, ProFTPD), "disk": "1M" (the FTP home on a tmpfs)};
    `keep_logs`: copy the agent's run logs there before the lab goes."""
    tag = f"{os.getpid() % 100000}"
    base = Path(tempfile.mkdtemp(prefix="ba-lab-"))
    os.chmod(base, 0o755)
    cns, sns = f"ba-cli-{tag}", f"ba-srv-{tag}"
    veth_c, veth_s = f"bac{tag}", f"bas{tag}"
    user = f"baft{tag}"  # one per lab: parallel labs each have their own home
    lab = Lab(base, cns, sns, base / "home", user, options.get("server", "vsftpd"))
    created_user = mounted = False
    try:
        for ns in (cns, sns):
            _run("ip", "netns", "add", ns)
            _run("ip", "-n", ns, "link", "set", "lo", "up")
        _run(
            "ip",
            "link",
            "add",
            veth_c,
            "netns",
            cns,
            "type",
            "veth",
            "peer",
            "name",
            veth_s,
            "netns",
            sns,
        )
        _run("ip", "-n", cns, "addr", "add", f"{CLIENT_ADDR}/30", "dev", veth_c)
        _run("ip", "-n", sns, "addr", "add", f"{SERVER_ADDR}/30", "dev", veth_s)
        _run("ip", "-n", cns, "link", "set", veth_c, "up")
        _run("ip", "-n", sns, "link", "set", veth_s, "up")

        lab.ftp_root.mkdir()
        if options.get("disk"):
            _run(
                "mount", "-t", "tmpfs", "-o", f"size={options['disk']}", "tmpfs", str(lab.ftp_root)
            )
            mounted = True
        (base / "empty").mkdir()
        try:
            pwd.getpwnam(user)
        except KeyError:
            _run(
                "useradd",
                "--no-create-home",
                "--home-dir",
                str(lab.ftp_root),
                "--shell",
                "/bin/sh",
                user,
            )
            created_user = True
        _run("usermod", "--home", str(lab.ftp_root), user)
        subprocess.run(["chpasswd"], input=f"{user}:{FTP_PASSWORD}\n", text=True, check=True)
        account = pwd.getpwnam(user)
        os.chown(lab.ftp_root, account.pw_uid, account.pw_gid)

        if options.get("tls"):
            lab.tls = make_certificates(base, SERVER_ADDR)
            lab.implicit = bool(options.get("implicit"))
        if options.get("max_rate"):
            rate = options["max_rate"]
            lab.conf_extra += (
                f"TransferRate STOR {rate // 1024}\n"
                if lab.server == "proftpd"
                else f"local_max_rate={rate}\n"
            )
        lab.start_server()
        yield lab
    finally:
        for agent in lab.agents:
            if agent.poll() is None:
                agent.kill()
                agent.communicate()
        if keep_logs is not None and (base / "log").exists():
            shutil.copytree(base / "log", keep_logs, dirs_exist_ok=True)
        lab.signal_server(signal.SIGKILL)  # the listener and every session, stopped or not
        for proc in lab.procs:
            proc.wait(timeout=30)
        for ns in (cns, sns):
            _run("ip", "netns", "del", ns, check=False)
        if mounted:
            _run("umount", "--lazy", str(lab.ftp_root), check=False)
        if created_user:
            _run("userdel", user, check=False)
        shutil.rmtree(base, ignore_errors=True)


def _wait_for_listener(lab: Lab, server: subprocess.Popen[bytes]) -> None:
    """Block until vsftpd accepts on port 21 (bounded), or fail with its stderr.

    Only the connection is checked: with implicit TLS the server says nothing in clear.
    """
    script = (
        "import socket, time\n"
        "end = time.monotonic() + 15\n"
        "while True:\n"
        "    try:\n"
        f"        s = socket.create_connection(('{SERVER_ADDR}', 21), timeout=2)\n"
        "        s.close(); print('listening'); break\n"
        "    except OSError:\n"
        "        if time.monotonic() > end: raise\n"
        "        time.sleep(0.05)\n"
    )
    result = lab.client(sys.executable, "-c", script)
    if result.returncode != 0 or not result.stdout.startswith("listening"):
        server.terminate()
        err = server.stderr.read().decode() if server.stderr else ""
        raise RuntimeError(f"{lab.server} did not start: {result.stderr.strip()} {err.strip()}")
