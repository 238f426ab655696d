"""Diagnosis: what a failure means and what the user should change, as pure functions.

- common.py: categories, the Diagnosis and ProbeResult records, `passive_setting`
- ftp.py: the FTP dialogue's rules (FTP_RULES), `diagnose`, `is_transient`
- dumps.py: database dumps and wp-config.php (`diagnose_dump`, `wordpress_diagnosis`)
- advice.py: `suggestion_text`, the words shown to the user
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
    wordpress_diagnosis,
)
from backupagent.diagnosis.ftp import (
    FTP_RULES,
    NO_GREETING,
    Certificate,
    Facts,
    Failure,
    FailureKind,
    Line,
    Rule,
    diagnose,
    is_transient,
    matching_rule,
)

__all__ = [
    "DUMP_ERRORS",
    "DUMP_TOOL_PACKAGES",
    "FTP_RULES",
    "NOT_A_MODE_PROBLEM",
    "NO_GREETING",
    "Category",
    "Certificate",
    "Diagnosis",
    "DumpFailure",
    "Facts",
    "Failure",
    "FailureKind",
    "Line",
    "ProbeResult",
    "Rule",
    "diagnose",
    "diagnose_dump",
    "is_transient",
    "matching_rule",
    "mode_name",
    "passive_setting",
    "suggestion_text",
    "wordpress_diagnosis",
]
