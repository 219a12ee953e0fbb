"""The harness's arithmetic: CPU windows and contamination, medians over clean runs, ratios and targets."""

from __future__ import annotations

from benchmarks.proxy import cpu, report
from benchmarks.proxy.cells import CellResult

PLAN = cpu.CorePlan(proxy=1, load=0)
PROXY, ORIGIN, STRANGER = 100, 200, 300


def core(user: float = 0.0, system: float = 0.0, softirq: float = 0.0, idle: float = 0.0) -> cpu.CoreTimes:
    return cpu.CoreTimes(user, 0.0, system, idle, 0.0, 0.0, softirq, 0.0)


def snapshots(
    proxy_core: cpu.CoreTimes, load_core: cpu.CoreTimes, processes: dict[int, tuple[str, float]], own: float = 0.0
) -> tuple[cpu.Snapshot, cpu.Snapshot]:
    first = cpu.Snapshot(10.0, {0: core(), 1: core()}, {pid: (name, 0.0) for pid, (name, _) in processes.items()}, 0.0)
    last = cpu.Snapshot(12.0, {0: load_core, 1: proxy_core}, processes, own)
    return first, last


def test_clean_window_charges_the_proxy_core_busy_time_including_softirq() -> None:
    first, last = snapshots(
        core(user=0.7, system=0.3, softirq=0.1, idle=0.9),
        core(user=1.5, system=0.4),
        {PROXY: ("proxy", 1.0), ORIGIN: ("nginx", 1.2)},
        own=0.7,
    )
    window = cpu.between(first, last, PLAN, [PROXY], [ORIGIN])
    assert window.seconds == 2.0
    assert round(window.proxy_cpu, 6) == 1.1
    assert round(window.proxy_process_cpu, 6) == 1.0
    assert not window.proxy_contaminated and not window.load_contaminated
    assert window.flags() == []


def test_a_stranger_on_the_proxy_core_is_subtracted_and_flagged_by_name() -> None:
    first, last = snapshots(
        core(user=1.2, system=0.3, softirq=0.1),
        core(user=1.0),
        {PROXY: ("proxy", 1.0), ORIGIN: ("nginx", 0.5), STRANGER: ("memcheck", 0.5)},
        own=0.5,
    )
    window = cpu.between(first, last, PLAN, [PROXY], [ORIGIN])
    assert round(window.proxy_core_foreign, 6) == 0.5
    assert round(window.proxy_cpu, 6) == 1.1
    assert window.proxy_contaminated and not window.load_contaminated
    flags = " ".join(window.flags())
    assert "proxy core: 0.50 s foreign" in flags and "memcheck[300]" in flags


def test_a_stranger_on_the_load_core_flags_throughput_only() -> None:
    first, last = snapshots(
        core(user=1.0),
        core(user=1.8),
        {PROXY: ("proxy", 1.0), ORIGIN: ("nginx", 0.5), STRANGER: ("cc1", 0.8)},
        own=0.5,
    )
    window = cpu.between(first, last, PLAN, [PROXY], [ORIGIN])
    assert not window.proxy_contaminated
    assert window.load_contaminated and round(window.load_core_foreign, 6) == 0.8


def cell(peer: str, workload: str, run: int, *, cost: float, rate: float = 1000.0, dirty: bool = False) -> CellResult:
    return CellResult(peer, workload, run, rate=rate, cost=cost, contaminated=dirty)


def test_medians_prefer_clean_runs_and_mark_figures_from_contaminated_ones() -> None:
    results = [
        cell("nginx", "small", 1, cost=20.0),
        cell("nginx", "small", 2, cost=30.0),
        cell("nginx", "small", 3, cost=90.0, dirty=True),
        cell("relay", "small", 1, cost=40.0, dirty=True),
    ]
    figures = report.summarize(results)
    nginx_cost, relay_cost = figures["nginx"].small_cost, figures["relay"].small_cost
    assert nginx_cost is not None and relay_cost is not None
    assert (nginx_cost.median, nginx_cost.low, nginx_cost.high, nginx_cost.dirty) == (25.0, 20.0, 30.0, False)
    assert relay_cost.dirty and relay_cost.text(1) == "40.0*"
    assert nginx_cost.text(1) == "25.0 (20.0-30.0)"


def test_targets_compare_fastpipe_with_peers_of_the_same_run() -> None:
    results = [
        cell("none", "small", 1, cost=0.0, rate=30_000.0),
        cell("nginx", "small", 1, cost=20.0, rate=29_000.0),
        cell("aiohttp", "small", 1, cost=160.0, rate=8_000.0),
        cell("fastpipe", "small", 1, cost=35.0, rate=25_000.0),
    ]
    found = {t.text.split(" (")[0]: t for t in report.targets(report.summarize(results))}
    assert found["CPU per 1 KiB request <= 1.2x nginx"].verdict == "MISSED"  # 1.75x
    assert found["1 KiB req/s within 10% of nginx's"].verdict == "MISSED"  # 25,000 against 29,000: 0.86x

    assert found["CPU per 1 KiB request <= 0.25x aiohttp"].verdict == "met"  # 0.22x
    within = found["1 KiB req/s within 10% of no proxy"]
    assert within.applies and within.verdict == "MISSED"  # nginx is at 0.97x, fastpipe at 0.83x
    assert found["CPU per GiB <= 1.0x nginx"].verdict == "not measured"
    table = report.markdown(report.summarize(results), META)
    assert "| CPU per 1 KiB request <= 1.2x nginx | 1.75x | MISSED |" in table
    assert "| 1 KiB req/s within 10% of nginx's | 13.8% below nginx | MISSED |" in table


META = {
    "date": "today",
    "machine": "test machine",
    "pinning": "proxy alone on CPU 1",
    "origin": "test",
    "generator": "test",
    "runs": 1,
    "duration": 1.0,
}
