"""CPU accounting: what the proxy's core did during a measurement window, and who else used the machine.

The proxy runs alone on its core. The cost of a cell is that core's busy time (user, nice, system, irq,
softirq from /proc/stat: loopback delivery of what the proxy sends is done on the proxy's core, in softirq)
minus the task time of processes that are not the proxy. Task time per process comes from /proc/<pid>/stat.
Other load on the box ("foreign" time) is measured the same way on both cores and flags the window:
on the proxy core it makes the CPU figure uncertain, on the load core it makes requests/s uncertain.
"""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")
# A window is contaminated when foreign task time exceeds both a share of the window and of the work measured.
FOREIGN_SHARE_OF_WINDOW = 0.03
FOREIGN_SHARE_OF_PROXY = 0.05
FOREIGN_SHARE_OF_LOAD_WINDOW = 0.10


@dataclass(frozen=True)
class CorePlan:
    """Which core runs what; ``proxy`` is None on a one-core machine (no pinning: process time only)."""

    proxy: int | None
    load: int | None

    @property
    def proxy_cpus(self) -> frozenset[int] | None:
        return None if self.proxy is None else frozenset({self.proxy})

    @property
    def load_cpus(self) -> frozenset[int] | None:
        return None if self.load is None else frozenset({self.load})


def plan_cores() -> CorePlan:
    """Proxy on the highest allowed core, everything else on the lowest, when there are at least two."""
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < 2:
        return CorePlan(None, None)
    return CorePlan(allowed[-1], allowed[0])


@dataclass(frozen=True)
class CoreTimes:
    """Seconds a core spent in each state since boot."""

    user: float
    nice: float
    system: float
    idle: float
    iowait: float
    irq: float
    softirq: float
    steal: float

    @property
    def tasks(self) -> float:
        return self.user + self.nice + self.system

    @property
    def busy(self) -> float:
        return self.tasks + self.irq + self.softirq


def read_cores() -> dict[int, CoreTimes]:
    cores: dict[int, CoreTimes] = {}
    for line in Path("/proc/stat").read_text().splitlines():
        if not line.startswith("cpu") or line.startswith("cpu "):
            continue
        name, *values = line.split()
        ticks = [int(value) / CLK_TCK for value in values[:8]]
        ticks += [0.0] * (8 - len(ticks))
        cores[int(name[3:])] = CoreTimes(*ticks)
    return cores


def read_processes() -> dict[int, tuple[str, float]]:
    """pid -> (command name, user + system seconds) for every live process on the machine."""
    found: dict[int, tuple[str, float]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        close = stat.rindex(")")
        fields = stat[close + 2 :].split()
        found[int(entry.name)] = (stat[stat.index("(") + 1 : close], (int(fields[11]) + int(fields[12])) / CLK_TCK)
    return found


def own_cpu() -> float:
    """This harness plus its reaped children (load generators that have exited), in seconds."""
    mine = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return mine.ru_utime + mine.ru_stime + children.ru_utime + children.ru_stime


@dataclass(frozen=True)
class Snapshot:
    at: float
    cores: dict[int, CoreTimes]
    processes: dict[int, tuple[str, float]]
    own: float


def snapshot() -> Snapshot:
    return Snapshot(time.monotonic(), read_cores(), read_processes(), own_cpu())


@dataclass
class Window:
    """What happened between two snapshots."""

    seconds: float
    proxy_cpu: float  # the proxy's core busy time minus foreign tasks on it (or process time when not pinned)
    proxy_process_cpu: float  # the proxy's processes alone (user + system)
    proxy_core_foreign: float
    proxy_core_steal: float
    load_core_foreign: float
    foreign_top: list[tuple[str, int, float]] = field(default_factory=list)  # (command, pid, seconds)

    @property
    def proxy_contaminated(self) -> bool:
        limit = max(FOREIGN_SHARE_OF_WINDOW * self.seconds, FOREIGN_SHARE_OF_PROXY * self.proxy_cpu)
        return self.proxy_core_foreign > limit or self.proxy_core_steal > limit

    @property
    def load_contaminated(self) -> bool:
        return self.load_core_foreign > FOREIGN_SHARE_OF_LOAD_WINDOW * self.seconds

    def flags(self) -> list[str]:
        notes: list[str] = []
        if self.proxy_contaminated:
            notes.append(f"proxy core: {self.proxy_core_foreign:.2f} s foreign, {self.proxy_core_steal:.2f} s stolen")
        if self.load_contaminated:
            notes.append(f"load core: {self.load_core_foreign:.2f} s foreign")
        if notes and self.foreign_top:
            notes.append("others: " + ", ".join(f"{name}[{pid}] {secs:.2f}s" for name, pid, secs in self.foreign_top))
        return notes


def _delta(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]], pids: Iterable[int]) -> float:
    total = 0.0
    for pid in pids:
        if pid in after:
            total += after[pid][1] - before.get(pid, (after[pid][0], 0.0))[1]
    return total


def between(
    first: Snapshot, last: Snapshot, plan: CorePlan, proxy_pids: Iterable[int], load_pids: Iterable[int]
) -> Window:
    """Account the window; ``load_pids`` are our live processes on the load core (origins), besides the harness."""
    proxy_pids = set(proxy_pids)
    load_pids = set(load_pids)
    proxy_process = _delta(first.processes, last.processes, proxy_pids)
    ours = proxy_pids | load_pids | {os.getpid()}
    own_children = last.own - first.own  # harness + reaped load generators
    load_ours = _delta(first.processes, last.processes, load_pids) + own_children
    everyone = {pid: last.processes[pid][1] - first.processes.get(pid, ("", 0.0))[1] for pid in last.processes}
    foreign_pids = sorted(((secs, pid) for pid, secs in everyone.items() if pid not in ours and secs > 0), reverse=True)
    top = [(last.processes[pid][0], pid, secs) for secs, pid in foreign_pids[:3]]
    seconds = last.at - first.at
    if plan.proxy is None or plan.load is None:
        all_foreign = sum(secs for secs, _ in foreign_pids)
        return Window(seconds, proxy_process, proxy_process, all_foreign, 0.0, all_foreign, top)
    proxy_core = _core_delta(first, last, plan.proxy)
    load_core = _core_delta(first, last, plan.load)
    proxy_foreign = max(0.0, proxy_core.tasks - proxy_process)
    load_foreign = max(0.0, load_core.tasks - load_ours)
    return Window(
        seconds,
        proxy_cpu=max(proxy_process, proxy_core.busy - proxy_foreign),
        proxy_process_cpu=proxy_process,
        proxy_core_foreign=proxy_foreign,
        proxy_core_steal=proxy_core.steal,
        load_core_foreign=load_foreign,
        foreign_top=top,
    )


def process_cpu(pids: Iterable[int]) -> float:
    processes = read_processes()
    return sum(processes[pid][1] for pid in pids if pid in processes)


def wait_idle(pids: list[int], quiet_s: float = 0.2, max_wait: float = 10.0) -> float:
    """Wait until ``pids`` used no CPU for ``quiet_s`` (a proxy still draining the warm-up's streams, say)."""
    started = time.monotonic()
    quiet_since = started
    last = process_cpu(pids)
    while time.monotonic() - started < max_wait:
        time.sleep(0.05)
        now = process_cpu(pids)
        if now > last:
            last, quiet_since = now, time.monotonic()
        elif time.monotonic() - quiet_since >= quiet_s:
            break
    return time.monotonic() - started


def wait_until_quiet(plan: CorePlan, max_wait: float, busy_share: float = 0.25) -> float:
    """Before a cell, wait (at most ``max_wait`` s) until neither core is busier than ``busy_share``.

    Our origins are idle between cells, so what shows here is other people's load. Returns seconds waited.
    """
    waited = 0.0
    if max_wait <= 0:
        return waited
    cores = [core for core in (plan.proxy, plan.load) if core is not None] or sorted(os.sched_getaffinity(0))
    while True:
        before = read_cores()
        time.sleep(0.5)
        after = read_cores()
        busiest = max((after[core].busy - before[core].busy) / 0.5 for core in cores)
        if busiest <= busy_share or waited >= max_wait:
            return waited
        waited += 0.5


def _core_delta(first: Snapshot, last: Snapshot, core: int) -> CoreTimes:
    a, b = first.cores[core], last.cores[core]
    return CoreTimes(
        b.user - a.user,
        b.nice - a.nice,
        b.system - a.system,
        b.idle - a.idle,
        b.iowait - a.iowait,
        b.irq - a.irq,
        b.softirq - a.softirq,
        b.steal - a.steal,
    )
