"""When the nightly run happens, and which of its reports are kept. Pure, apart from keep_newest."""

from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path

REPORT_GLOB = "reconciliation-*.*"


def parse_daily_time(text: str) -> dt.time:
    """HH:MM (UTC), as given to --at."""
    try:
        hour, minute = (int(part) for part in text.split(":"))
        return dt.time(hour, minute, tzinfo=dt.UTC)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a time of day HH:MM (UTC)") from None


def next_run(now: dt.datetime, at: dt.time) -> dt.datetime:
    """The first moment at `at` o'clock (UTC) strictly after now."""
    today = dt.datetime.combine(now.astimezone(dt.UTC).date(), at.replace(tzinfo=None), dt.UTC)
    return today if today > now else today + dt.timedelta(days=1)


def keep_newest(report_dir: Path, keep: int) -> list[Path]:
    """Delete all but the newest `keep` reports of each form (.json, .html, .txt); returns the deleted."""
    deleted = []
    by_suffix: dict[str, list[Path]] = {}
    for path in report_dir.glob(REPORT_GLOB):
        if not path.name.endswith(".partial"):
            by_suffix.setdefault(path.suffix, []).append(path)
    for paths in by_suffix.values():
        # Names carry the window's end (reconciliation-20261201T0230Z): their order is time's.
        for path in sorted(paths)[: max(len(paths) - keep, 0)]:
            path.unlink(missing_ok=True)
            deleted.append(path)
    return deleted
