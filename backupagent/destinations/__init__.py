"""Where backups go. base.py is the seam the actions see; each type is one module or
package here, registered in OPENERS by the `type` of its [destinations.NAME] table.

A new type: write its module with an `open_for_job(config, job, name, hooks, cancel)`
that returns a base.Destination, add its settings model to config.py's
DESTINATION_MODELS, and add one line to OPENERS.
"""

from __future__ import annotations

import importlib
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from backupagent.config import Config
    from backupagent.destinations.base import Destination, Hooks

# type -> the module whose open_for_job opens it (imported only when used)
OPENERS = {
    "ftp": "backupagent.destinations.ftp.destination",
    "local": "backupagent.destinations.local",
    "sftp": "backupagent.destinations.sftp",
}


def open_destination(
    config: Config,
    job: str,
    hooks: Hooks | None = None,
    cancel: threading.Event | None = None,
    name: str | None = None,
) -> Destination:
    """The job's destination `name` (by default its first), ready for one action
    (nothing is connected yet)."""
    name = name or config.jobs[job].destination_names[0]
    module = importlib.import_module(OPENERS[config.destinations[name].type])
    destination: Destination = module.open_for_job(config, job, name, hooks, cancel)
    return destination
