"""The command line as users and scripts see it: exit codes, messages, no tracebacks."""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
import re
import subprocess
import sys
from pathlib import Path

from backupagent.ftpserver import LocalFtpServer

from .conftest import WriteConfig
from .helpers import cli


def test_check_reports_all_problems_and_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "jobs.toml"
    path.write_text(
        '[destinations.d]\ntype = "ftp"\nhost = "h"\ntimeot = 3\n\n'
        '[jobs.nightly]\ndestination = "d"\npassive = "no"\nsources = ["/srv"]\n'
        'schedule = "every night"\n'
    )
    result = cli(path, "check")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert "jobs.toml: [destinations.d] timeot: unknown key; did you mean 'timeout'?" in lines
    assert any(line.startswith("jobs.toml: [jobs.nightly] passive: ") for line in lines)
    assert any(line.startswith("jobs.toml: [jobs.nightly] schedule: ") for line in lines)
    assert "Traceback" not in result.stderr


def test_check_ok(write_config: WriteConfig) -> None:
    config = write_config()
    result = cli(config.path, "check")
    assert result.returncode == 0, result.stderr
    assert "OK (1 job, 1 destination)" in result.stdout


def test_config_after_the_command_is_taken_and_wins(
    write_config: WriteConfig, tmp_path: Path
) -> None:
    config = write_config()
    result = cli(None, "check", "-c", str(config.path))
    assert result.returncode == 0, result.stderr
    assert f"{config.path}: OK" in result.stdout
    after = cli(tmp_path / "nope.toml", "check", "--config", str(config.path))
    assert after.returncode == 0 and f"{config.path}: OK" in after.stdout


def test_help_lists_the_exit_codes() -> None:
    for args in ([], ["run-job"]):
        shown = cli(None, *args, "--help").stdout
        assert "Exit codes:" in shown
        for line in ("0   the backup was published", "75  skipped: the same job"):
            assert line in shown


def test_shell_completion_offers_the_job_names(write_config: WriteConfig) -> None:
    config = write_config()
    text = config.path.read_text().replace(
        "[jobs.www]", '[jobs.shop]\ndestination = "test"\nsources = ["/srv"]\n\n[jobs.www]'
    )
    config.path.write_text(text)
    words = f"backupagent --config {config.path} logs "
    result = subprocess.run(
        [sys.executable, "-m", "backupagent"],
        capture_output=True,
        text=True,
        env={
            **os.environ,
            "_BACKUPAGENT_COMPLETE": "bash_complete",
            "COMP_WORDS": words + "s",
            "COMP_CWORD": "4",
        },
        timeout=60,
    )
    assert result.stdout.split() == ["plain,shop"]


def test_config_generate_prints_the_example() -> None:
    example = Path(__file__).parent.parent / "backupagent" / "share" / "jobs.example.toml"
    result = cli(None, "config", "generate")
    assert result.returncode == 0 and result.stdout == example.read_text()


def test_missing_config_file_exits_2(tmp_path: Path) -> None:
    result = cli(tmp_path / "nope.toml", "check")
    assert result.returncode == 2
    assert "cannot read" in result.stderr and "Traceback" not in result.stderr


def test_config_from_environment(write_config: WriteConfig) -> None:
    config = write_config()
    env = {**os.environ, "BACKUPAGENT_CONFIG": str(config.path)}
    result = subprocess.run(
        [sys.executable, "-m", "backupagent", "check"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


def test_unknown_job_exits_2(write_config: WriteConfig) -> None:
    result = cli(write_config().path, "run-job", "nosuch")
    assert result.returncode == 2
    assert "no [jobs.nosuch] table (jobs: www)" in result.stderr


def test_run_job_success_then_logs(write_config: WriteConfig) -> None:
    config = write_config()
    result = cli(config.path, "run-job", "www")
    assert result.returncode == 0, result.stderr
    assert "www: OK" in result.stdout and "Log: " in result.stdout
    logs = cli(config.path, "logs", "www")
    assert logs.returncode == 0
    assert "FTP client command: PASS ****" in logs.stdout
    assert "[passive] FTP client command: EPSV" in logs.stdout


def test_run_job_failure_exits_1_with_suggestion_and_logs_highlight(
    write_config: WriteConfig, ftp_server: LocalFtpServer
) -> None:
    config = write_config()
    ftp_server.block_passive()
    result = cli(config.path, "run-job", "www")
    assert result.returncode == 1
    assert "www: FAILED" in result.stdout
    assert "Suggestion:" in result.stdout
    assert "set passive = false" in result.stdout
    assert "Traceback" not in result.stderr
    headline = result.stdout.splitlines()[0]
    verdict = headline.split(" — ", 1)[1].removesuffix("; nothing was published.")
    assert result.stdout.count(verdict) == 1  # the suggestion does not repeat the headline
    # the evidence first, then the advice under its heading (never an empty heading)
    evidence, advice = result.stdout.split("Evidence:\n", 1)[1].split("Suggestion:\n", 1)
    assert evidence.startswith("  ") and "EPSV" in evidence
    assert advice.split("\n", 1)[0].strip() and "set passive = false" in advice
    logs = cli(config.path, "logs", "www")
    assert "==================== SUGGESTION ====================" in logs.stdout
    run_id = Path(result.stdout.split("Log: ")[1].split()[0]).stem
    by_id = cli(config.path, "logs", "www", "--run", run_id)
    assert by_id.stdout == logs.stdout


def test_second_run_of_same_job_exits_75(write_config: WriteConfig) -> None:
    config = write_config()
    lock = config.agent.state_dir / "locks" / "www.lock"
    lock.parent.mkdir(parents=True)
    with open(lock, "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        result = cli(config.path, "run-job", "www")
        skipped = _json(config.path, "run-job", "www", code=75)  # a script hears it too
    assert skipped["result"] == "skipped" and "already running" in skipped["error"]
    assert result.returncode == 75
    assert "already running" in result.stderr
    assert cli(config.path, "run-job", "www").returncode == 0  # released: runs again


def test_demo_runs_the_whole_story() -> None:
    result = cli(None, "demo", "--clean")
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert out.count("site: OK") == 2 and out.count("site: FAILED") == 1
    assert "Verified: a directory listing in active mode worked from this host." in out


def test_unwritable_log_dir_is_a_clear_failure(write_config: WriteConfig, tmp_path: Path) -> None:
    config = write_config()
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where log_dir should be")
    text = config.path.read_text().replace(f'log_dir = "{tmp_path}/log"', f'log_dir = "{blocker}"')
    config.path.write_text(text)
    result = cli(config.path, "run-job", "www")
    assert result.returncode == 1
    assert f"cannot create {blocker}/www" in result.stderr
    assert "[agent] log_dir" in result.stderr
    assert "Traceback" not in result.stderr


def test_run_job_sigterm_mid_upload_aborts_cleanly(
    write_config: WriteConfig, tmp_path: Path
) -> None:
    import signal
    import time

    (tmp_path / "www" / "big.bin").write_bytes(os.urandom(3_000_000))
    root = tmp_path / "slow-root"
    root.mkdir()
    with LocalFtpServer(root, throttle=300_000) as slow:
        config = write_config()
        config.path.write_text(
            config.path.read_text().replace(
                f"port = {config.destinations['test'].port}", f"port = {slow.port}"
            )
        )
        proc = subprocess.Popen(
            [sys.executable, "-m", "backupagent", "--config", str(config.path), "run-job", "www"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 30
        while not list(root.rglob("*.partial")):  # bounded wait for the upload to begin
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 1, out + err
        assert "www: ABORTED" in out
        assert not [p for p in root.rglob("*") if p.is_file()]
    history = cli(config.path, "history", "www")
    assert history.stdout.splitlines()[1].split("\t")[4] == "aborted"


def test_list_and_history_are_plain_text_when_piped(write_config: WriteConfig) -> None:
    config = write_config(job='schedule = "30 2 * * *"')
    assert cli(config.path, "run-job", "www").returncode == 0
    listing = cli(config.path, "list").stdout.splitlines()
    assert listing[0] == "job\tnow\tschedule\tnext run\tlast result"
    name, now, schedule, next_run, last = listing[1].split("\t")
    assert (name, now, schedule) == ("www", "idle", "30 2 * * *")
    assert ":30:00" in next_run and last.startswith("success (")
    # a verify that failed later is not the job's result
    from backupagent.state import History, Run

    with History(config.agent.state_dir) as db:
        started = dt.datetime.now(dt.UTC)
        db.save(Run("v", "www", "verify", started, "", result="failed", finished=started))
    assert cli(config.path, "list").stdout.splitlines()[1].split("\t")[4].startswith("success (")
    history = cli(config.path, "history", "www").stdout.splitlines()
    assert history[0].split("\t") == [
        "run",
        "started",
        "took",
        "bytes",
        "result",
        "trigger",
        "note",
    ]
    assert history[1].split("\t")[4:6] == ["failed", "verify"]  # every run, newest first
    assert history[2].split("\t")[4:6] == ["success", "manual"]
    assert history[2].split("\t")[3].endswith(" uploaded")


def test_history_says_what_failed_and_what_to_change(
    write_config: WriteConfig, ftp_server: LocalFtpServer
) -> None:
    config = write_config()
    assert cli(config.path, "run-job", "www").returncode == 0
    assert cli(config.path, "verify", "www").returncode == 0
    ftp_server.block_passive()
    assert cli(config.path, "run-job", "www").returncode == 1
    failed, verified, backed_up = (
        line.split("\t") for line in cli(config.path, "history", "www").stdout.splitlines()[1:4]
    )
    assert failed[4] == "failed" and failed[6].startswith("the data connection in passive mode")
    assert "set passive = false" in failed[6]
    assert verified[5] == "verify" and verified[3].endswith(" read")
    assert backed_up[3].endswith(" uploaded")


def test_old_run_logs_are_pruned(write_config: WriteConfig, tmp_path: Path) -> None:
    config = write_config()
    config.path.write_text(config.path.read_text().replace("[agent]\n", "[agent]\nkeep_logs = 2\n"))
    for _ in range(4):
        assert cli(config.path, "run-job", "www").returncode == 0
    logs = sorted((tmp_path / "log" / "www").glob("*.jsonl"))
    history = cli(config.path, "history", "www").stdout.splitlines()[1:]
    assert len(logs) == 2 and len(history) == 4
    assert [p.stem for p in logs] == sorted(line.split("\t")[0] for line in history)[-2:]


# --- --json: what scripts read --------------------------------------------------------

ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


def _json(config: Path | None, *args: str, code: int = 0) -> dict:
    done = cli(config, *args, "--json")
    assert done.returncode == code, done.stdout + done.stderr
    document = json.loads(done.stdout)  # stdout is the document alone
    assert document["format"] == 1
    return document


def test_run_job_list_history_backups_as_json(write_config: WriteConfig) -> None:
    config = write_config(job='schedule = "30 2 * * *"')
    run = _json(config.path, "run-job", "www")
    assert run["result"] == "success" and run["backup_id"].startswith("www-")
    assert ISO_UTC.match(run["started"]) and ISO_UTC.match(run["finished"])
    assert run["files"] == 4 and run["bytes_uploaded"] > 0  # the site less its excludes and links
    assert run["bytes_archived"] > 300_000

    (job,) = _json(config.path, "list")["jobs"]
    assert (job["job"], job["schedule"], job["destinations"]) == ("www", "30 2 * * *", ["test"])
    assert ISO_UTC.match(job["next_run"])
    assert dt.datetime.fromisoformat(job["next_run"]) > dt.datetime.now(dt.UTC)
    assert job["last_run"]["run_id"] == run["run_id"]

    runs = _json(config.path, "history", "www")["runs"]
    assert [r["run_id"] for r in runs] == [run["run_id"]]
    assert runs[0]["bytes_uploaded"] == run["bytes_uploaded"]
    assert runs[0]["started"] == run["started"]

    listed = _json(config.path, "backups", "www")
    assert listed["destination"] == "test" and listed["incomplete"] == []
    (backup,) = listed["backups"]
    assert backup["backup_id"] == run["backup_id"] and backup["readable"]
    assert backup["bytes"] == run["bytes_uploaded"] and backup["files"] == 4
    assert ISO_UTC.match(backup["created"])


def test_verify_and_prune_as_json(write_config: WriteConfig) -> None:
    config = write_config()
    ids = [json.loads(cli(config.path, "run-job", "www", "--json").stdout)["backup_id"]]
    ids.append(json.loads(cli(config.path, "run-job", "www", "--json").stdout)["backup_id"])
    checked = cli(config.path, "verify", "www", "--json")
    assert checked.returncode == 0, checked.stderr
    verified = json.loads(checked.stdout)
    assert verified["format"] == 1 and verified["result"] == "success"
    assert verified["job"] == "www" and "SHA-256 matches" in verified["message"]
    assert Path(verified["log"]).is_file()
    config.path.write_text(config.path.read_text().replace("keep = 3", "keep = 1"))
    planned = cli(config.path, "prune", "www", "--dry-run", "--json")
    assert planned.returncode == 0, planned.stderr
    plan = json.loads(planned.stdout)
    assert plan["dry_run"] is True and plan["stale"] == []
    verdicts = {b["backup_id"]: b["keep"] for b in plan["backups"]}
    assert verdicts == {ids[1]: True, ids[0]: False}
    assert all(b["reasons"] for b in plan["backups"])


def test_a_failed_run_as_json_carries_the_suggestion(
    write_config: WriteConfig, ftp_server: LocalFtpServer
) -> None:
    ftp_server.block_passive()
    run = _json(write_config().path, "run-job", "www", code=1)
    assert run["result"] == "failed" and run["backup_id"] is None
    assert "passive = false" in run["suggestion"]


def test_check_as_json_names_file_table_and_key(tmp_path: Path, write_config: WriteConfig) -> None:
    config = write_config()
    ok = _json(config.path, "check")
    assert ok["ok"] is True and ok["jobs"] == ["www"] and ok["problems"] == []

    config.path.write_text(config.path.read_text().replace("sources = [", "sourcs = ["))
    invalid = _json(config.path, "check", code=2)
    assert invalid["ok"] is False and invalid["jobs"] is None
    (problem,) = invalid["problems"]
    assert (problem["file"], problem["table"], problem["key"]) == (
        "jobs.toml",
        "jobs.www",
        "sourcs",
    )
    assert problem["message"].startswith("unknown key")

    gone = tmp_path / "gone"
    config.path.write_text(config.path.read_text().replace("sourcs = [", f'sources = ["{gone}", '))
    on_host = _json(config.path, "check", code=2)
    (problem,) = on_host["problems"]
    assert (problem["table"], problem["key"]) == ("jobs.www", "sources")
    assert problem["message"] == f"{gone} does not exist"


def test_a_run_the_agent_died_in_is_not_shown_running(write_config: WriteConfig) -> None:
    """A row left "running" by a killed agent: nobody holds the job's lock, so list and
    history show it failed; while a process holds the lock, it is running."""
    from backupagent.state import STOPPED_DURING_RUN, History, Run, job_lock

    config = write_config()
    with History(config.agent.state_dir) as db:
        db.save(Run("r1", "www", "schedule", dt.datetime.now(dt.UTC), "/log/r1"))
    with job_lock(config.agent.state_dir, "www"):  # as the run's own process would
        listed = cli(config.path, "list").stdout.splitlines()[1].split("\t")
        assert listed[1] == "running" and listed[4].startswith("running (")
        assert cli(config.path, "history", "www").stdout.splitlines()[1].split("\t")[4] == "running"
    listed = cli(config.path, "list").stdout.splitlines()[1].split("\t")
    assert listed[1] == "idle" and listed[4].startswith("failed (")
    row = cli(config.path, "history", "www").stdout.splitlines()[1].split("\t")
    assert row[4:] == ["failed", "schedule", STOPPED_DURING_RUN]
    runs = json.loads(cli(config.path, "history", "www", "--json").stdout)["runs"]
    assert runs[0]["result"] == "failed"
