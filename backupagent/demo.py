"""`backupagent demo`: the whole story on 127.0.0.1 in a few seconds, no set-up.

1. back up an example site to a throwaway FTP server in passive mode;
2. the server's passive ports get blocked: the run fails, and the agent says why
   and what to change, after checking that active mode works;
3. the suggested change is made in the demo's jobs.toml and the run succeeds.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from rich.console import Console

from backupagent.actions.backup import run_job
from backupagent.config import load_config
from backupagent.ftpserver import LocalFtpServer

JOBS_TOML = """\
# The demo's jobs.toml: a copy of what you would put in /etc/backupagent/jobs.toml.
[agent]
state_dir = "{base}/state"
log_dir   = "{base}/log"
spool_dir = "{base}/spool"

[destinations.demo-ftp]
type = "ftp"
host = "127.0.0.1"
port = {port}
user = "{user}"
password_file = "{base}/ftp.pass"
directory = "/backups/www"
timeout = 5
keep = 3

[jobs.site]
destination = "demo-ftp"
passive = true
sources = ["{base}/www"]
exclude = ["wp-content/cache/", "*.log"]
"""


def make_example_site(root: Path) -> None:
    """A small WordPress-shaped tree with a cache and a log to exclude and a symlink."""
    files = {
        "index.php": "<?php require __DIR__ . '/wp-blog-header.php';\n",
        "wp-config.php": "<?php define('DB_NAME', 'wordpress');\n",
        "wp-content/themes/demo/style.css": "body { font-family: serif; }\n" * 50,
        "wp-content/uploads/2026/11/notes.txt": "backups are only as good as restores\n" * 200,
        "wp-content/cache/page-1.html": "<html>cached</html>\n",
        "debug.log": "PHP Notice: demo\n",
    }
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    (root / "wp-content/uploads/2026/11/photo.bin").write_bytes(os.urandom(256 * 1024))
    (root / "wp-content/uploads/latest").symlink_to("2026/11")


def run_demo(keep: bool = True) -> int:
    """Run the three steps; returns 0 when every step behaved as expected."""
    out = Console(highlight=False, soft_wrap=True)
    from backupagent.summary import print_summary

    base = Path(tempfile.mkdtemp(prefix="backupagent-demo-"))
    make_example_site(base / "www")
    ftp_root = base / "ftp-root"
    ftp_root.mkdir()
    with LocalFtpServer(ftp_root) as server:
        (base / "ftp.pass").write_text(server.password + "\n")
        os.chmod(base / "ftp.pass", 0o600)
        jobs = base / "jobs.toml"
        jobs.write_text(JOBS_TOML.format(base=base, port=server.port, user=server.user))
        out.print(
            f"[bold]backupagent demo[/] — FTP server on 127.0.0.1:{server.port}, files in {base}"
        )

        out.rule("1. Back up the example site in passive mode")
        first = run_job(load_config(jobs), "site")
        print_summary(first)

        out.rule("2. A firewall now blocks the server's passive ports")
        server.block_passive()
        second = run_job(load_config(jobs), "site")
        print_summary(second)

        out.rule("3. Apply the suggestion (passive = false) and run again")
        jobs.write_text(jobs.read_text().replace("passive = true", "passive = false"))
        out.print(f"Edited {jobs}: [jobs.site] passive = false", markup=False)
        third = run_job(load_config(jobs), "site")
        print_summary(third)

    out.rule("Where things are")
    out.print(f"jobs.toml:        {jobs}", markup=False)
    out.print(
        f"run logs:         {base / 'log' / 'site'}  (backupagent --config {jobs} logs site)",
        markup=False,
    )
    out.print(f"uploaded backups: {ftp_root / 'backups' / 'www'}", markup=False)
    for path in sorted((ftp_root / "backups" / "www").iterdir()):
        out.print(f"  {path.name}  {path.stat().st_size} bytes", markup=False)
    expected = (first.exit_code, second.exit_code, third.exit_code) == (0, 1, 0)
    if not keep:
        import shutil

        shutil.rmtree(base)
    return 0 if expected else 1
