"""backupagent: backs up web hosts to FTP/FTPS and explains why a transfer failed."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("backupagent")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"
