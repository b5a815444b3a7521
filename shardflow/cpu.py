"""CPU time of process trees, read from /proc (Linux), for CPU-per-workflow figures."""

from __future__ import annotations

import os
from collections.abc import Iterable

TICK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, CPU seconds) of a live process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / TICK


def tree_cpu(roots: Iterable[int], exclude: Iterable[int] = ()) -> float:
    """CPU seconds used so far by the live descendants of ``roots`` (roots excluded)."""
    stats = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _stat(int(entry))
            if stat is not None:
                stats[int(entry)] = stat
    wanted, skip = set(roots), set(exclude)
    total = 0.0
    for pid, (_ppid, cpu) in stats.items():
        if pid in skip or pid in wanted:
            continue
        parent = pid
        seen = 0
        while parent in stats and seen < 64:
            parent = stats[parent][0]
            seen += 1
            if parent in skip:
                break
            if parent in wanted:
                total += cpu
                break
    return total
