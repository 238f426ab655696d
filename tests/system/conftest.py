"""The lab fixture: see lab.py. System tests skip without root, namespaces and the
servers, unless BACKUPAGENT_SYSTEM_TESTS=required (CI), where that is a failure."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..conftest import require_system
from .lab import Lab, missing_parts, open_lab

__all__ = ["Lab"]


@pytest.fixture
def lab(request: pytest.FixtureRequest) -> Iterator[Lab]:
    """A lab with the options given by indirect parametrization (see open_lab).
    BACKUPAGENT_LAB_LOGS=DIR keeps each test's run logs under DIR/TEST for reading."""
    missing = missing_parts()
    require_system(missing is None, missing or "")
    keep = os.environ.get("BACKUPAGENT_LAB_LOGS")
    logs = Path(keep) / request.node.name if keep else None
    with open_lab(getattr(request, "param", {}), logs) as lab:
        yield lab
