"""backupagent: backs up web hosts to FTP/FTPS and explains why a transfer failed."""

__version__ = "0.1.0"  # the one place the version is written (pyproject reads it)
