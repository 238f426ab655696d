"""Diagnosis: what a failure means and what the user should change, as pure functions.

- common.py: categories, the Diagnosis and ProbeResult records, `passive_setting`
- dumps.py: database dumps and wp-config.php (`diagnose_dump`, `wordpress_diagnosis`)
- advice.py: `suggestion_text`, the words shown to the user

The FTP dialogue's rules live with FTP: destinations/ftp/diagnosis.py.
"""

from backupagent.diagnosis.advice import suggestion_text
from backupagent.diagnosis.common import (
    NOT_A_MODE_PROBLEM,
    Category,
    Diagnosis,
    ProbeResult,
    mode_name,
    passive_setting,
)
from backupagent.diagnosis.dumps import (
    DUMP_ERRORS,
    DUMP_TOOL_PACKAGES,
    DumpFailure,
    diagnose_dump,
    hook_diagnosis,
    wordpress_diagnosis,
)

__all__ = [
    "DUMP_ERRORS",
    "DUMP_TOOL_PACKAGES",
    "NOT_A_MODE_PROBLEM",
    "Category",
    "Diagnosis",
    "DumpFailure",
    "ProbeResult",
    "diagnose_dump",
    "hook_diagnosis",
    "mode_name",
    "passive_setting",
    "suggestion_text",
    "wordpress_diagnosis",
]
