"""A backup's manifest (manifest.json beside its files): what was copied when, sizes and sha256,
and the positions a restore needs to put the databases and the streams back in step."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

FORMAT = "paysaga-backup/1"
MANIFEST_FILE = "manifest.json"
READ_BLOCK_BYTES = 1 << 20


class ManifestError(Exception):
    """No manifest, one of another format, or files that do not match it."""


@dataclass(frozen=True)
class DatabaseEntry:
    service: str
    kind: str  # sqlite | postgresql
    file: str  # relative to the backup's directory
    bytes: int
    sha256: str
    # The service's events stream and its last sequence read just before the copy began: every
    # event up to it is the copy's own; later ones are not, and a restore removes them.
    events_stream: str | None
    events_last_seq: int
    sequence_read_at: str
    copied_at: str


@dataclass(frozen=True)
class StreamEntry:
    name: str
    file: str
    bytes: int
    sha256: str
    config: dict[str, Any]
    state: dict[str, Any]
    # Each durable consumer's acknowledgement floor, read before any database was copied: a
    # restore delivers again from just after it (what a restored database handled already, its
    # inbox skips).
    consumer_floors: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Manifest:
    started_at: str
    finished_at: str
    databases: list[DatabaseEntry]
    streams: list[StreamEntry]
    format: str = FORMAT

    def write(self, directory: Path) -> Path:
        path = directory / MANIFEST_FILE
        path.write_text(json.dumps(asdict(self), indent=2, sort_keys=True) + "\n")
        return path

    @classmethod
    def read(cls, directory: Path) -> Manifest:
        path = directory / MANIFEST_FILE
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            raise ManifestError(f"{path}: no manifest here; is {directory} a paysaga backup?") from None
        except ValueError as error:
            raise ManifestError(f"{path}: not JSON ({error})") from None
        if raw.get("format") != FORMAT:
            raise ManifestError(f"{path}: format {raw.get('format')!r}, this tool reads {FORMAT!r}")
        return cls(
            started_at=raw["started_at"],
            finished_at=raw["finished_at"],
            databases=[DatabaseEntry(**entry) for entry in raw["databases"]],
            streams=[StreamEntry(**entry) for entry in raw["streams"]],
        )

    def files(self) -> list[tuple[str, int, str]]:
        entries: list[DatabaseEntry | StreamEntry] = [*self.databases, *self.streams]
        return [(entry.file, entry.bytes, entry.sha256) for entry in entries]


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as data:
        while block := data.read(READ_BLOCK_BYTES):
            digest.update(block)
    return digest.hexdigest()


def check_files(directory: Path, manifest: Manifest) -> list[str]:
    """What does not match the manifest (missing, size, sha256); empty when everything does."""
    problems = []
    for name, size, sha256 in manifest.files():
        path = directory / name
        if not path.is_file():
            problems.append(f"{name}: missing")
        elif path.stat().st_size != size:
            problems.append(f"{name}: {path.stat().st_size} bytes, the manifest says {size}")
        elif sha256_of(path) != sha256:
            problems.append(f"{name}: sha256 differs from the manifest's")
    return problems


def timestamp(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).isoformat(timespec="microseconds")


def parse_timestamp(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text)
