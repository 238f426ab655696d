"""Test helpers: describe a tree, unpack an archive."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import stat
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import zstandard


def cli(config: Path | None, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """`python -m backupagent [--config CONFIG] ARGS...` as a user would run it."""
    argv = [sys.executable, "-m", "backupagent"]
    if config is not None:
        argv += ["--config", str(config)]
    return subprocess.run(argv + list(args), capture_output=True, text=True, timeout=timeout)


def python_script(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`script` run by this interpreter with the checkout on its path, from `/` (a
    script that drops to another user imports first: the interpreter may be under /root)."""
    return subprocess.run(
        [sys.executable, "-c", script, *args],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)},
        check=True,
        cwd="/",
        timeout=120,
    )


def wait_for(check: Callable[[], object], what: str, timeout: float = 30) -> object:
    """Poll an observable condition (history rows, server files, a process's state),
    bounded: the answer is `check`'s, the timeout only says how long to look."""
    deadline = time.monotonic() + timeout
    while not (value := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)
    return value


def tree(root: Path) -> dict[str, tuple[str, str]]:
    """Every path below root: ('file', sha256) | ('link', target) | ('dir', '')."""
    out: dict[str, tuple[str, str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            if path.is_symlink():
                out[rel] = ("link", os.readlink(path))
            elif path.is_dir():
                out[rel] = ("dir", "")
            else:
                out[rel] = ("file", hashlib.sha256(path.read_bytes()).hexdigest())
    return out


def archived_tree(site: Path) -> dict[str, tuple[str, str]]:
    """`tree(site)` less what the `write_config` job excludes (cache dir, *.log)."""
    return {
        k: v
        for k, v in tree(site).items()
        if not k.startswith("wp-content/cache") and not k.endswith(".log")
    }


def unpack(archive: bytes, dest: Path) -> list[str]:
    """Extract a .tar.zst held in memory; returns the member names in order."""
    raw = decompress(archive)
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tar:
        members = tar.getnames()
        tar.extractall(dest, filter="tar")
    return members


def make_certificates(directory: Path, host: str = "127.0.0.1") -> dict[str, Path]:
    """A throwaway CA and a server certificate for `host` signed by it (PEM files)."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "backupagent test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(host))]),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    files = {
        "ca": directory / "ca.pem",
        "cert": directory / "server.pem",
        "key": directory / "server.key",
    }
    files["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files["cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files["key"].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    files["key"].chmod(0o600)
    fingerprint = hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()
    (directory / "fingerprint").write_text(fingerprint)
    return files


def decompress(data: bytes) -> bytes:
    """All of a zstd stream, across frames (a spooled dump is a frame of its own)."""
    reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data), read_across_frames=True)
    return reader.read()


def plant_backup(
    folder: Path,
    backup_id: str,
    members: list[tuple[tarfile.TarInfo, bytes | None]],
    tar_format: int = tarfile.PAX_FORMAT,
    volume_size: int | None = None,
) -> bytes:
    """A consistent archive and manifest in `folder`, as an attacker who can write to
    the server could make them (cut into volumes of `volume_size`, if given); returns
    the compressed archive."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tar_format) as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    archive = zstandard.ZstdCompressor().compress(raw.getvalue())
    folder.mkdir(parents=True, exist_ok=True)
    step = volume_size or len(archive)
    files = []
    for n, start in enumerate(range(0, len(archive), step), 1):
        piece = archive[start : start + step]
        name = f"{backup_id}.tar.zst.{n:04d}"
        (folder / name).write_bytes(piece)
        files.append(
            {"name": name, "size": len(piece), "sha256": hashlib.sha256(piece).hexdigest()}
        )
    manifest = {
        "format": 1,
        "job": backup_id.split("-2")[0],
        "backup_id": backup_id,
        "created": "2026-11-22T05:00:00+00:00",
        "files": files,
        "archive": {"name": f"{backup_id}.tar.zst", "size": len(archive), "volume_size": step},
        "contents": {"files": len(members)},
    }
    (folder / f"{backup_id}.manifest.json").write_text(json.dumps(manifest))
    return archive


def snapshot(root: Path) -> dict[str, tuple[object, ...]]:
    """Everything below `root`, and root itself: kind, content, mode, owner, mtime."""
    out: dict[str, tuple[object, ...]] = {}
    for path in [root, *sorted(root.rglob("*"))]:
        st = path.lstat()
        content: object = ""
        if stat.S_ISLNK(st.st_mode):
            content = os.readlink(path)
        elif stat.S_ISREG(st.st_mode):
            content = hashlib.sha256(path.read_bytes()).hexdigest()
        out[str(path)] = (
            stat.S_IFMT(st.st_mode),
            content,
            st.st_mode,
            st.st_uid,
            st.st_gid,
            st.st_mtime_ns,
        )
    return out


def peak_rss_mib(argv: list[str]) -> tuple[subprocess.CompletedProcess[str], float]:
    """Run `argv` under a fresh Python whose only child it is; its peak RSS in MiB."""
    wrapper = (
        "import resource, subprocess, sys; "
        "r = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
        "sys.stdout.write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) + '\\n'); "
        "sys.stdout.write(r.stdout); sys.stderr.write(r.stderr); sys.exit(r.returncode)"
    )
    result = subprocess.run(
        [sys.executable, "-c", wrapper, *argv], capture_output=True, text=True, timeout=300
    )
    peak, _, out = result.stdout.partition("\n")
    result.stdout = out
    return result, int(peak) / 1024


class Watched:
    """A destination that tells `published(path)` after each file it published."""

    def __init__(self, inner: Any, published: Callable[[Path], None]) -> None:
        self.inner = inner
        self.published = published

    def publish_file(self, path: Path, name: str, sha256: str, progress: Any = None) -> None:
        self.inner.publish_file(path, name, sha256, progress)
        self.published(path)

    def __getattr__(self, attribute: str) -> Any:
        return getattr(self.inner, attribute)


def agent_table(tmp_path: Path, extra: str = "", spool: Path | None = None) -> str:
    """jobs.toml's [agent] table with every directory under `tmp_path` (the spool
    elsewhere, if given)."""
    return (
        f'[agent]\nstate_dir = "{tmp_path}/state"\nlog_dir = "{tmp_path}/log"\n'
        f'spool_dir = "{spool or tmp_path / "spool"}"\n{extra}\n'
    )


def ftp_table(name: str, server: Any, password_file: Path, extra: str = "") -> str:
    """A [destinations.NAME] table for a LocalFtpServer. `timeout = 5`: pyftpdlib answers
    at once or refuses, so how long the agent would wait never decides an outcome."""
    return (
        f'[destinations.{name}]\ntype = "ftp"\nhost = "{server.host}"\nport = {server.port}\n'
        f'user = "{server.user}"\npassword_file = "{password_file}"\ntimeout = 5\n{extra}\n'
    )


@contextlib.contextmanager
def small_disk(where: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` (`256k`) mounted at `where`, a new directory; root only."""
    from .conftest import require_system

    require_system(os.geteuid() == 0, "mounting a small tmpfs needs root")
    where.mkdir(mode=0o700)
    mount = ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(where)]
    subprocess.run(mount, check=True, capture_output=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=True, capture_output=True)
