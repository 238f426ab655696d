"""The manifest: what a backup holds, written last by the run, read back by restore.

A manifest comes back from a server that may be hostile, so it is parsed into these
models and nothing else: the format version is checked, each volume name must be a
bare file name of that backup, sizes are non-negative integers, hashes 64 hex digits,
and the whole is bounded in size. Keys it does not know are ignored (a newer agent may
add some); a newer format is refused.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

FORMAT = 1
MAX_BYTES = 16 << 20  # a larger manifest is not read

Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
Size = Annotated[int, Field(ge=0, strict=True)]


class ManifestError(Exception):
    """The manifest cannot be trusted; the reason in plain words."""


class _Part(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class Volume(_Part):
    name: str = Field(max_length=255)
    size: Size
    sha256: Sha256


class Archive(_Part):
    name: str = Field(max_length=255)
    size: Size
    volume_size: Size | None = None


class Contents(_Part):
    files: Size = 0
    directories: Size = 0
    symlinks: Size = 0
    bytes: Size = 0


class DatabaseDump(_Part):
    name: str = Field(max_length=255)
    engine: str = Field(default="", max_length=32)
    member: str = Field(default="", max_length=4096)
    size: Size | None = None
    sha256: Sha256 | None = None
    tables: list[str] | Size | None = None
    # rows per table when dumped (the dump's own snapshot), for the restore drill
    rows: dict[Annotated[str, Field(max_length=4096)], Size] | None = Field(
        default=None, max_length=1_000_000
    )


class Encryption(_Part):
    format: str = Field(default="age-encryption.org/v1", max_length=64)
    recipients: list[Annotated[str, Field(max_length=128)]] = Field(default=[], max_length=64)


class Manifest(_Part):
    """A backup's manifest (format 1; files without `format` are from before it was
    written, and read as format 1)."""

    format: int = FORMAT
    job: str = Field(max_length=255)
    backup_id: str = Field(max_length=255)
    created: str = Field(default="", max_length=64)
    finished: str | None = Field(default=None, max_length=64)
    host: str | None = Field(default=None, max_length=255)
    agent_version: str | None = Field(default=None, max_length=64)
    sources: list[str] = []
    files: list[Volume] = Field(min_length=1, max_length=100_000)
    archive: Archive | None = None
    contents: Contents = Contents()
    databases: list[DatabaseDump] = []
    warnings: Size = 0
    encryption: Encryption | None = None
    wordpress: dict[str, Any] | None = None
    # incremental jobs (absent: a full): the backup this one builds on, the paths gone
    # since it, and this backup's index of every path (to compare the next run against)
    kind: Literal["full", "incremental"] = "full"
    parent: str | None = Field(default=None, max_length=255)
    deleted: list[Annotated[str, Field(max_length=4096)]] = Field(default=[], max_length=10_000_000)
    index: Volume | None = None  # the uploaded index: whole after a full, own entries after
    index_sha256: Sha256 | None = None  # an incremental; this: SHA-256 of the whole index
    # every member and where it starts (contents.py): `files` and `restore --include`
    content_index: Volume | None = None

    @model_validator(mode="after")
    def _volumes_of_this_backup(self) -> Manifest:
        pattern = re.compile(rf"^{re.escape(self.backup_id)}\.tar\.zst(\.age)?(\.\d{{4}})?$")
        for i, volume in enumerate(self.files):
            if not pattern.match(volume.name):
                raise ValueError(
                    f"files[{i}].name {volume.name!r} is not a volume of {self.backup_id}"
                )
        if self.archive is not None and not pattern.match(self.archive.name):
            raise ValueError(f"archive.name {self.archive.name!r} is not of {self.backup_id}")
        if self.index is not None and self.index.name not in (
            f"{self.backup_id}.index.zst",
            f"{self.backup_id}.index.zst.age",
        ):
            raise ValueError(f"index.name {self.index.name!r} is not of {self.backup_id}")
        contents = rf"^{re.escape(self.backup_id)}\.contents\.zst(\.age)?$"
        if self.content_index is not None and not re.match(contents, self.content_index.name):
            raise ValueError(
                f"content_index.name {self.content_index.name!r} is not of {self.backup_id}"
            )
        job_run = rf"^{re.escape(self.job)}-\d{{8}}T\d{{6}}\.\d{{3}}Z-[0-9a-f]{{6}}$"
        if self.parent is not None and (
            not re.match(job_run, self.parent) or self.parent >= self.backup_id
        ):
            raise ValueError(f"parent {self.parent!r} is not an earlier backup of {self.job}")
        if (self.kind == "incremental") != (self.parent is not None):
            raise ValueError("kind: an incremental names its parent, a full does not")
        return self

    @property
    def size(self) -> int:
        return sum(volume.size for volume in self.files)

    @property
    def archive_name(self) -> str:
        return self.archive.name if self.archive else self.files[0].name

    @property
    def encrypted(self) -> bool:
        return self.encryption is not None or ".tar.zst.age" in self.archive_name

    def to_json(self) -> bytes:
        return json.dumps(self.model_dump(mode="json"), indent=2).encode() + b"\n"


def parse(data: bytes, backup_id: str) -> Manifest:
    """The manifest of `backup_id` from the server's bytes; ManifestError if unusable."""
    if len(data) > MAX_BYTES:
        raise ManifestError(f"it is over {MAX_BYTES} bytes")
    try:
        raw = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise ManifestError(f"it is not JSON ({str(exc)[:80]})") from None
    if not isinstance(raw, dict):
        raise ManifestError("it is not a JSON object")
    raw.setdefault("backup_id", backup_id)
    version = raw.get("format", FORMAT)
    if isinstance(version, int) and not isinstance(version, bool) and version > FORMAT:
        raise ManifestError(
            f"it has format {version}, written by a newer backupagent: upgrade to read it"
        )
    try:
        manifest = Manifest.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "the manifest"
        raise ManifestError(f"{where}: {first['msg'].removeprefix('Value error, ')}") from None
    if manifest.format != FORMAT:
        raise ManifestError(f"unknown format {manifest.format}")
    if manifest.backup_id != backup_id:
        raise ManifestError(f"it describes {manifest.backup_id!r}, not {backup_id!r}")
    return manifest
