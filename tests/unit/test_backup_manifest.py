"""A backup's manifest says what each file must be; a file missing, cut short or changed is
reported, and a manifest of another format is refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from paysaga.ops.backup.manifest import (
    DatabaseEntry,
    Manifest,
    ManifestError,
    StreamEntry,
    check_files,
    sha256_of,
)


def backup(directory: Path) -> Manifest:
    (directory / "streams").mkdir(parents=True)
    (directory / "ledger.db").write_bytes(b"ledger" * 100)
    (directory / "streams" / "LEDGER_EVENTS.tar.s2").write_bytes(b"events" * 50)
    manifest = Manifest(
        "2026-12-01T00:00:00+00:00",
        "2026-12-01T00:00:01+00:00",
        [
            DatabaseEntry(
                "ledger",
                "sqlite",
                "ledger.db",
                600,
                sha256_of(directory / "ledger.db"),
                "LEDGER_EVENTS",
                42,
                "2026-12-01T00:00:00+00:00",
                "2026-12-01T00:00:00.5+00:00",
            )
        ],
        [
            StreamEntry(
                "LEDGER_EVENTS",
                "streams/LEDGER_EVENTS.tar.s2",
                300,
                sha256_of(directory / "streams" / "LEDGER_EVENTS.tar.s2"),
                {"name": "LEDGER_EVENTS"},
                {"messages": 42},
                {"payments-from-ledger-standard": 40},
            )
        ],
    )
    manifest.write(directory)
    return manifest


def test_a_manifest_reads_back_as_written_and_matches_its_files(tmp_path: Path) -> None:
    written = backup(tmp_path)
    assert Manifest.read(tmp_path) == written
    assert check_files(tmp_path, written) == []


def test_a_missing_a_shortened_and_a_changed_file_are_each_reported(tmp_path: Path) -> None:
    manifest = backup(tmp_path)
    (tmp_path / "ledger.db").write_bytes(b"ledger" * 99)
    (tmp_path / "streams" / "LEDGER_EVENTS.tar.s2").write_bytes(b"EVENTS" * 50)
    assert check_files(tmp_path, manifest) == [
        "ledger.db: 594 bytes, the manifest says 600",
        "streams/LEDGER_EVENTS.tar.s2: sha256 differs from the manifest's",
    ]
    (tmp_path / "ledger.db").unlink()
    assert check_files(tmp_path, manifest)[0] == "ledger.db: missing"


def test_a_manifest_of_another_format_is_refused(tmp_path: Path) -> None:
    backup(tmp_path)
    raw = json.loads((tmp_path / "manifest.json").read_text())
    (tmp_path / "manifest.json").write_text(json.dumps(raw | {"format": "something-else/9"}))
    with pytest.raises(ManifestError, match="format"):
        Manifest.read(tmp_path)
