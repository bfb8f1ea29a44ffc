"""CPU time and memory of the processes under test, read from /proc (Linux)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK")
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # After the command name: state is field 3, utime field 14 and stime field 15 (1-based).
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS_PER_S


def resident_bytes(pid: int) -> int:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE_BYTES


@dataclass
class ProcessUsage:
    """What one process used between start() and stop(), sampled for its peak memory."""

    pid: int
    cpu_start_s: float = 0.0
    cpu_s: float = 0.0
    peak_rss_bytes: int = 0

    def start(self) -> None:
        self.cpu_start_s = cpu_seconds(self.pid)
        self.peak_rss_bytes = resident_bytes(self.pid)

    def sample(self) -> None:
        self.peak_rss_bytes = max(self.peak_rss_bytes, resident_bytes(self.pid))

    def stop(self) -> None:
        self.sample()
        self.cpu_s = cpu_seconds(self.pid) - self.cpu_start_s


@dataclass
class Usage:
    """CPU and memory of named processes over one measured window."""

    processes: dict[str, ProcessUsage] = field(default_factory=dict)

    @classmethod
    def of(cls, pids: dict[str, int]) -> Usage:
        return cls({name: ProcessUsage(pid) for name, pid in pids.items()})

    def start(self) -> None:
        for process in self.processes.values():
            process.start()

    def sample(self) -> None:
        for process in self.processes.values():
            process.sample()

    def stop(self) -> None:
        for process in self.processes.values():
            process.stop()

    @property
    def total_cpu_s(self) -> float:
        return sum(process.cpu_s for process in self.processes.values())
