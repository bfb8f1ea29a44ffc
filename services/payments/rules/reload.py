"""Hot reload of the rules file.

The file is looked at every CHECK_INTERVAL_S (its size, modification time and inode, then its
sha256 if one of them changed). A changed file that parses replaces the rule set in force at
once, whole: a purchase is screened by the old rules or by the new, never a mix, and no call
fails. A changed file that does not parse is refused with an alert line naming every problem,
and the rules in force stay; it is read again when it changes again. A file that disappears keeps
the rules in force too (an editor replacing it, or a mount being updated).

Editors and deployment tools should replace the file in one step (write a new file, rename it
over the old one): a file read half written is refused, and taken once complete.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from pathlib import Path

from paysaga.runtime import metrics
from paysaga.runtime.tasks import sleep_or_stop
from services.payments.rules.ruleset import RulesError, RuleSet, parse
from services.payments.rules.screening import RulesInForce

log = logging.getLogger(__name__)

CHECK_INTERVAL_S = 0.5


def load(path: Path) -> RuleSet:
    """The rules of a file; RulesError (with every problem) if the file cannot be read or used."""
    try:
        content = path.read_bytes()
    except OSError as error:
        raise RulesError(f"{path}: cannot be read: {error.strerror or error}") from None
    return parse(content, str(path))


class RulesFileWatcher:
    def __init__(self, path: Path, rules: RulesInForce) -> None:
        self.path = path
        self.rules = rules
        self._seen: tuple[int, int, int] | None = None
        self._refused_sha256 = ""

    def _signature(self) -> tuple[int, int, int] | None:
        try:
            found = self.path.stat()
        except OSError:
            return None
        return (found.st_size, found.st_mtime_ns, found.st_ino)

    def check(self) -> bool:
        """Take the file in if it changed; whether the rules in force were replaced."""
        signature = self._signature()
        if signature is None or signature == self._seen:
            return False
        self._seen = signature
        try:
            content = self.path.read_bytes()
        except OSError:
            return False
        sha256 = hashlib.sha256(content).hexdigest()
        if sha256 in (self.rules.rule_set.sha256, self._refused_sha256):
            return False
        try:
            rule_set = parse(content, str(self.path))
        except RulesError as error:
            self._refused_sha256 = sha256
            metrics.RULES_RELOADS.labels("refused").inc()
            log.error(
                "rules.refused",
                extra={
                    "alert": True,
                    "file": str(self.path),
                    "sha256": sha256,
                    "kept": self.rules.rule_set.sha256,
                    "problems": str(error),
                },
            )
            return False
        previous, self.rules.rule_set = self.rules.rule_set, rule_set
        metrics.RULES_RELOADS.labels("loaded").inc()
        log.warning(
            "rules.loaded",
            extra={"file": str(self.path), "sha256": sha256, "previous": previous.sha256, "rules": len(rule_set.rules)},
        )
        return True

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self.check()
            await sleep_or_stop(stop, CHECK_INTERVAL_S)
