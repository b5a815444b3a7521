"""CPU time of processes and process trees, read from /proc (Linux), for CPU-per-workflow
figures."""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Iterable

TICK = os.sysconf("SC_CLK_TCK")

# `python -m shardflow <command>`: the commands that are parts of a cluster.
_SHARDFLOW_PARTS = ("router", "executor", "coordinator")


def part_of(argv: list[str]) -> str:
    """Which part of a system a process is, from its command line: ``postgres`` for any
    Postgres process (backends rename themselves ``postgres: ...``), the command of a
    ``python -m shardflow <command>``, the module of another ``python -m``, else the
    program's file name (``beam.smp``, ``temporal``)."""
    if not argv:
        return "?"
    program = os.path.basename(argv[0].split(":")[0].split()[0]) if argv[0] else "?"
    if program in ("postgres", "postmaster"):
        return "postgres"
    if "-m" in argv[:-1]:
        module = argv[argv.index("-m") + 1]
        rest = argv[argv.index("-m") + 2 :]
        if module == "shardflow" and rest and rest[0] in _SHARDFLOW_PARTS:
            return rest[0]
        return module
    return program


def process_cpu_ns(pid: int) -> int:
    """CPU time one process has used so far, in nanoseconds (the scheduler's own count,
    finer than the clock ticks of ``/proc/<pid>/stat``; its children's not included)."""
    with open(f"/proc/{pid}/schedstat") as f:
        return int(f.read().split()[0])


def _process(pid: int) -> tuple[int, float, str] | None:
    """(parent pid, CPU seconds, part) of a live process. The CPU seconds include those
    of its children that have exited and been waited for (``cutime``, ``cstime``): a
    Postgres server's autovacuum workers and closed connections' backends exit during a
    phase, and the postmaster collects their time when it reaps them."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    ticks = sum(int(n) for n in fields[11:15])  # utime, stime, cutime, cstime
    return int(fields[1]), ticks / TICK, part_of(argv)


def tree_cpu_parts(roots: Iterable[int], exclude: Iterable[int] = ()) -> dict[str, float]:
    """CPU seconds used so far by the live descendants of ``roots`` and by the children
    they have reaped (roots excluded, and ``exclude`` with its own descendants), by part
    (``part_of``; a reaped child counts under its parent's part)."""
    procs = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            proc = _process(int(entry))
            if proc is not None:
                procs[int(entry)] = proc
    wanted, skip = set(roots), set(exclude)
    parts: dict[str, float] = defaultdict(float)
    for pid, (_ppid, cpu, part) in procs.items():
        if pid in skip or pid in wanted:
            continue
        parent = pid
        seen = 0
        while parent in procs and seen < 64:
            parent = procs[parent][0]
            seen += 1
            if parent in skip:
                break
            if parent in wanted:
                parts[part] += cpu
                break
    return dict(parts)


def parts_spent(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """CPU seconds by part between two readings (a part may appear or go in between)."""
    return {
        part: after.get(part, 0.0) - before.get(part, 0.0) for part in sorted({*before, *after})
    }
