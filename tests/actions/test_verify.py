"""verify --sample: a rotating share of the newest backup's volumes read back per run,
the whole backup over several, and the metric of the last full read-back."""

from __future__ import annotations

import os
import re
from pathlib import Path

from backupagent.ftpserver import LocalFtpServer

from ..conftest import WriteConfig
from ..helpers import cli
from .test_backup import REMOTE

METRIC = "backupagent_last_full_readback_timestamp_seconds"


def _metric(path: Path) -> str | None:
    found = re.search(rf'^{METRIC}{{job="www"}} (\S+)$', path.read_text(), re.M)
    return found.group(1) if found else None


def test_a_sampled_verify_reads_a_share_and_the_rotation_reads_the_whole(
    write_config: WriteConfig, ftp_server: LocalFtpServer, site: Path, tmp_path: Path
) -> None:
    (site / "more.bin").write_bytes(os.urandom(400_000))
    config = write_config(job='volume_size = "64K"')
    config.path.write_text(
        config.path.read_text().replace(
            "[agent]\n", f'[agent]\nmetrics_file = "{tmp_path}/metrics.prom"\n', 1
        )
    )
    assert cli(config.path, "run-job", "www").returncode == 0
    volumes = sorted((ftp_server.root / REMOTE).glob("*.tar.zst.0*"))
    count = len(volumes)
    assert count >= 8
    share = -(-count * 30 // 100)  # ceil(30%)
    rounds = -(-count // share)

    for n in range(1, rounds):
        result = cli(config.path, "verify", "www", "--sample", "30")
        assert result.returncode == 0, result.stdout + result.stderr
        assert f"{share} of {count} volumes read back (a 30% sample)" in result.stdout
        assert f"{n * share} of {count} read back so far" in result.stdout
        assert _metric(tmp_path / "metrics.prom") is None  # not read back in full yet
    last = cli(config.path, "verify", "www", "--sample", "30")
    assert "every volume of it has now been read back" in last.stdout
    assert _metric(tmp_path / "metrics.prom") is not None
    assert list((config.agent.spool_dir / "www").iterdir()) == []

    # the next rotation starts at the first volume: a changed one there is found
    changed = bytearray(volumes[1].read_bytes())
    changed[10] ^= 1
    volumes[1].write_bytes(bytes(changed))
    caught = cli(config.path, "verify", "www", "--sample", "30")
    assert caught.returncode == 1
    assert f"FAILED: {volumes[1].name} does not match its manifest" in caught.stdout


def test_a_full_verify_is_a_full_read_back(
    write_config: WriteConfig, ftp_server: LocalFtpServer, tmp_path: Path
) -> None:
    config = write_config()
    config.path.write_text(
        config.path.read_text().replace(
            "[agent]\n", f'[agent]\nmetrics_file = "{tmp_path}/metrics.prom"\n', 1
        )
    )
    assert cli(config.path, "run-job", "www").returncode == 0
    assert _metric(tmp_path / "metrics.prom") is None
    verified = cli(config.path, "verify", "www")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert _metric(tmp_path / "metrics.prom") is not None


def test_a_sample_outside_0_to_100_is_refused(write_config: WriteConfig) -> None:
    config = write_config()
    for wrong in ("0", "101", "x"):
        result = cli(config.path, "verify", "www", "--sample", wrong)
        assert result.returncode == 2 and "--sample" in result.stderr
        assert "Traceback" not in result.stderr
