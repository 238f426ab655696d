"""backupagent: backs up web hosts to FTP/FTPS, SFTP or a directory, and explains why a
transfer failed."""

import sys

__version__ = "0.1.0"  # the one place the version is written (pyproject reads it)


def _structlog_without_rich() -> None:
    """Import structlog first, keeping it from importing rich.

    structlog would use rich only to draw tracebacks on a console, and that import
    costs every start (each run-job from cron or a timer) about 80 ms. backupagent
    imports rich itself where it draws: progress on a terminal, tables, `logs`.
    """
    if "structlog" in sys.modules or "rich" in sys.modules:
        return
    sys.modules["rich"] = None  # type: ignore[assignment]  # `import rich` now fails
    try:
        import structlog  # noqa: F401
    finally:
        del sys.modules["rich"]


_structlog_without_rich()
