"""Encrypted backups in the age format, readable by the `age` tool without backupagent."""

from __future__ import annotations

import json
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from backupagent.actions.backup import run_job
from backupagent.config import ConfigError, load_config
from backupagent.crypto import generate
from backupagent.ftpserver import LocalFtpServer

from .conftest import WriteConfig, require_system
from .helpers import archived_tree, cli, tree, unpack

REMOTE = Path("backups/site")


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, object]:
    identity = tmp_path / "identity.txt"
    made = cli(None, "keygen", "--out", str(identity))
    assert made.returncode == 0, made.stderr
    recipient = made.stdout.split('encrypt_to = ["')[1].split('"')[0]
    other = tmp_path / "other-identity.txt"
    other.write_text(generate()[0] + "\n")
    return {"identity": identity, "recipient": recipient, "other": other}


def test_keygen_writes_a_private_file_once(keys: dict, tmp_path: Path) -> None:
    identity: Path = keys["identity"]  # type: ignore[assignment]
    assert stat.S_IMODE(identity.stat().st_mode) == 0o600
    assert "AGE-SECRET-KEY-1" in identity.read_text()
    assert str(keys["recipient"]).startswith("age1")
    again = cli(None, "keygen", "--out", str(identity))
    assert again.returncode == 2 and "not overwriting" in again.stderr


def test_age_cli_decrypts_the_backup(
    write_config: WriteConfig, ftp_server: LocalFtpServer, keys: dict, site: Path, tmp_path: Path
) -> None:
    require_system(shutil.which("age") is not None, "the age tool is missing (apt-get install age)")
    config = write_config(job=f'encrypt_to = ["{keys["recipient"]}"]\nvolume_size = "64K"')
    result = run_job(config, "www")
    assert result.outcome == "success", result.error
    names = sorted(p.name for p in (ftp_server.root / REMOTE).iterdir())
    volumes = names[2:]
    assert names[:2] == [
        f"{result.backup_id}.contents.zst.age",
        f"{result.backup_id}.manifest.json",
    ]
    assert len(volumes) > 2
    assert volumes == [
        f"{result.backup_id}.tar.zst.age.{i:04d}" for i in range(1, len(volumes) + 1)
    ]
    # the content index is an age file too: no name of the site in the clear
    listing = (ftp_server.root / REMOTE / names[0]).read_bytes()
    assert listing.startswith(b"age-encryption.org/v1") and b"index.php" not in listing
    manifest_text = (ftp_server.root / REMOTE / names[1]).read_text()
    manifest = json.loads(manifest_text)
    assert manifest["encryption"]["format"] == "age-encryption.org/v1"
    assert manifest["encryption"]["recipients"][0].startswith("sha256:")
    secret = Path(str(keys["identity"])).read_text().splitlines()[-1]
    assert secret not in manifest_text and secret not in result.log_path.read_text()

    # the volumes, joined by cat, are one age file
    clear = subprocess.run(
        f"cat {result.backup_id}.tar.zst.age.* | age -d -i {keys['identity']}",
        shell=True,
        cwd=ftp_server.root / REMOTE,
        capture_output=True,
        check=True,
        timeout=120,
    ).stdout
    unpack(clear, tmp_path / "by-age")
    assert tree(tmp_path / "by-age" / "files" / str(site).lstrip("/")) == archived_tree(site)


def test_restore_needs_the_right_identity(
    write_config: WriteConfig, keys: dict, tmp_path: Path
) -> None:
    config = write_config(job=f'encrypt_to = ["{keys["recipient"]}"]')
    assert run_job(config, "www").outcome == "success"

    missing = cli(config.path, "restore", "www", "--to", str(tmp_path / "a"))
    assert missing.returncode == 1 and "is encrypted (age" in missing.stderr
    assert "--identity" in missing.stderr

    wrong = cli(
        config.path, "restore", "www", "--to", str(tmp_path / "b"), "--identity", str(keys["other"])
    )
    assert wrong.returncode == 1 and "cannot decrypt" in wrong.stderr
    assert not (tmp_path / "b").exists() or not any((tmp_path / "b").iterdir())

    right = cli(
        config.path,
        "restore",
        "www",
        "--to",
        str(tmp_path / "c"),
        "--identity",
        str(keys["identity"]),
    )
    assert right.returncode == 0, right.stdout + right.stderr
    assert any((tmp_path / "c" / "files").rglob("index.php"))


def test_verify_with_and_without_identity(write_config: WriteConfig, keys: dict) -> None:
    config = write_config(job=f'encrypt_to = ["{keys["recipient"]}"]')
    assert run_job(config, "www").outcome == "success"
    hashes_only = cli(config.path, "verify", "www")
    assert hashes_only.returncode == 0 and "contents were not read" in hashes_only.stdout
    full = cli(config.path, "verify", "www", "--identity", str(keys["identity"]))
    assert full.returncode == 0 and "read to the end" in full.stdout


def test_bad_recipient_is_a_config_error(write_config: WriteConfig) -> None:
    with pytest.raises(ConfigError) as info:
        config = write_config(job='encrypt_to = ["age1notakey"]')
        load_config(config.path)
    assert any(
        str(p).startswith("jobs.toml: [jobs.www] encrypt_to: entry 1") for p in info.value.problems
    )


def test_files_of_an_encrypted_backup_reads_only_its_encrypted_index(
    write_config: WriteConfig, ftp_server: LocalFtpServer, keys: dict, site: Path
) -> None:
    config = write_config(job=f'encrypt_to = ["{keys["recipient"]}"]\nvolume_size = "64K"')
    assert run_job(config, "www").outcome == "success"
    ftp_server.sent.clear()
    listed = cli(config.path, "files", "www", "--json", "--identity", str(keys["identity"]))
    assert listed.returncode == 0, listed.stderr
    got = [name for name, _ in ftp_server.sent]
    assert len(got) == 2 and got[1].endswith(".contents.zst.age"), got
    paths = {row["path"] for row in json.loads(listed.stdout)["members"]}
    assert str(site / "index.php") in paths and str(site / "wp-content/uploads/big.bin") in paths
    wrong = cli(config.path, "files", "www", "--identity", str(keys["other"]))
    assert wrong.returncode == 1 and "cannot decrypt" in wrong.stderr
