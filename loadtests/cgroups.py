"""CPU-capped control groups (v1 and v2): a quota and a usage counter, so that one machine
can model shards that each have their own CPU (``python -m loadtests.scale`` and
``shardflow bench rebalance --cpu-per-shard``).

``CpuGroup.create(name, cores)`` makes a group capped at ``cores`` of a CPU (a CFS quota of
``cores`` times the period); ``add`` moves processes into it (their later children follow);
``usage()`` is the CPU seconds the group used; ``throttled()`` how often the cap bit.
``cap_shard`` puts one shard of a local cluster (its Postgres server with every backend,
and its executors) into a new group; ``ShardCaps`` keeps a benchmark's groups and removes
them. Needs root (or a delegated hierarchy); anything else
is a ``CgroupError`` that says why.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from shardflow.infra.errors import ShardflowError

if TYPE_CHECKING:
    from shardflow.devcluster.dev import DevCluster

ROOT = Path("/sys/fs/cgroup")
PERIOD_US = 100_000


class CgroupError(ShardflowError):
    code = "cgroup_unavailable"


def _v2_root() -> Path | None:
    controllers = ROOT / "cgroup.controllers"
    if controllers.exists() and "cpu" in controllers.read_text().split():
        return ROOT
    return None


def _v1_dirs() -> tuple[Path, Path]:
    """(the cpu hierarchy, the cpuacct hierarchy): one folder when mounted together."""
    for combined in ("cpu,cpuacct", "cpuacct,cpu"):
        if (ROOT / combined / "cpu.cfs_quota_us").exists():
            return ROOT / combined, ROOT / combined
    cpu, acct = ROOT / "cpu", ROOT / "cpuacct"
    if (cpu / "cpu.cfs_quota_us").exists() and (acct / "cpuacct.usage").exists():
        return cpu, acct
    raise CgroupError("no cgroup v2 cpu controller and no v1 cpu/cpuacct hierarchy here")


def _write(path: Path, value: str) -> None:
    try:
        path.write_text(value)
    except ProcessLookupError:
        raise  # a pid that exited meanwhile: the caller decides (add() passes over it)
    except OSError as exc:
        raise CgroupError(f"cannot write {path}: {exc.strerror} (run as root)") from exc


@dataclass
class CpuGroup:
    name: str
    dirs: tuple[Path, ...]  # v2: one folder; v1: the cpu folder, then the cpuacct one
    v2: bool

    @classmethod
    def create(cls, name: str, cores: float) -> CpuGroup:
        """A new group directly under the root (``name`` has no slash)."""
        if cores <= 0:
            raise CgroupError(f"a CPU cap must be positive, not {cores}")
        quota = max(1000, round(cores * PERIOD_US))
        root = _v2_root()
        if root is not None:
            _write(root / "cgroup.subtree_control", "+cpu")
            group = root / name
            _mkdir(group)
            _write(group / "cpu.max", f"{quota} {PERIOD_US}")
            return cls(name, (group,), True)
        cpu, acct = _v1_dirs()
        dirs = tuple(dict.fromkeys((cpu / name, acct / name)))
        for folder in dirs:
            _mkdir(folder)
        _write(cpu / name / "cpu.cfs_period_us", str(PERIOD_US))
        _write(cpu / name / "cpu.cfs_quota_us", str(quota))
        return cls(name, dirs, False)

    def add(self, pid: int) -> None:
        for folder in self.dirs:
            with contextlib.suppress(ProcessLookupError):
                _write(folder / "cgroup.procs", str(pid))

    def usage(self) -> float:
        if self.v2:
            return _stat(self.dirs[0] / "cpu.stat", "usage_usec") / 1e6
        return int((self.dirs[-1] / "cpuacct.usage").read_text()) / 1e9

    def throttled(self) -> int:
        return int(_stat(self.dirs[0] / "cpu.stat", "nr_throttled"))

    def remove(self, attempts: int = 100) -> None:
        """Move what is left to the root group, then delete the group. A process of the
        group can fork between the two (a Postgres server still starting a backend as it
        stops), and the group is then busy: move and delete again, a few times."""
        for folder in self.dirs:
            top = _v2_root() or folder.parent
            for _ in range(attempts):
                with contextlib.suppress(OSError):
                    for pid in (folder / "cgroup.procs").read_text().split():
                        with contextlib.suppress(OSError):
                            (top / "cgroup.procs").write_text(pid)
                with contextlib.suppress(OSError):
                    folder.rmdir()
                if not folder.exists():
                    break
                time.sleep(0.02)


def _mkdir(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CgroupError(f"cannot create {folder}: {exc.strerror} (run as root)") from exc


def _stat(path: Path, key: str) -> float:
    for line in path.read_text().splitlines():
        name, _, value = line.partition(" ")
        if name == key:
            return float(value)
    return 0.0


def descendants(pid: int) -> list[int]:
    """``pid`` and every live process below it."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                text = f.read()
        except OSError:
            continue
        ppid = int(text[text.rindex(")") + 2 :].split()[1])
        parents.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(parents.get(p, []))
    return out


def cap_shard(cluster: DevCluster, shard: str, cores: float, prefix: str) -> CpuGroup:
    """A new group ``prefix-shard`` capped at ``cores``, holding the shard's Postgres server
    (so every backend it starts later too) and the processes the cluster runs for it only
    (its executors; with home shards, its router)."""
    server = cluster.pg.servers[shard].process
    if server is None:
        raise CgroupError(f"the Postgres server of {shard} is not running")
    group = CpuGroup.create(f"{prefix}-{shard}", cores)
    roots = [server.pid] + [
        c.process.pid
        for c in cluster.children
        if cluster.runs_for(c.name, shard) and c.process is not None
    ]
    for root in roots:
        for pid in descendants(root):
            group.add(pid)
    return group


class ShardCaps:
    """The groups of a benchmark's shards, one per shard (``cap``), each capped at
    ``cores`` (None: ``cap`` makes none), removed on leaving the ``async with``; ``used``
    then holds the CPU seconds each one used."""

    def __init__(self, cores: float | None, prefix: str) -> None:
        self.cores = cores
        self.prefix = prefix
        self.groups: dict[str, CpuGroup] = {}
        self.used: dict[str, float] = {}

    def cap(self, cluster: DevCluster, *shards: str) -> None:
        if self.cores is None:
            return
        for shard in shards:
            self.groups[shard] = cap_shard(cluster, shard, self.cores, self.prefix)

    async def __aenter__(self) -> ShardCaps:
        return self

    async def __aexit__(self, *_: object) -> None:
        for shard, group in self.groups.items():
            self.used[shard] = round(group.usage(), 2)
            group.remove()
        self.groups.clear()
