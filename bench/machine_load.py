"""How much of the machine other processes used while something was timed (shared by the
bench scripts): on a shared 2-core machine that is what makes timings wander, so every
timing reports it."""

from __future__ import annotations

import os
import time
from pathlib import Path


def cpu_jiffies() -> tuple[int, int] | None:
    """(busy, total) clock ticks of the whole machine from /proc/stat, or None off Linux."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields[:8]) - idle, sum(fields[:8])


class OtherLoad:
    """Share of the machine's CPU time used by *other* processes between start (construction,
    or a later ``start()``) and ``stop()``."""

    def __init__(self) -> None:
        self.start()

    def start(self) -> None:
        self.j0, self.own0 = cpu_jiffies(), time.process_time()

    def stop(self) -> float | None:
        j1, own = cpu_jiffies(), time.process_time() - self.own0
        if self.j0 is None or j1 is None or j1[1] == self.j0[1]:
            return None
        hz = os.sysconf("SC_CLK_TCK")
        busy, total = (j1[0] - self.j0[0]) / hz, (j1[1] - self.j0[1]) / hz
        return max(0.0, busy - own) / total
