"""Turn cell results into medians and spreads, a markdown report with ratios and targets, and a PNG chart.

Ratios are taken between medians of the same harness run: CPU cost against nginx, against the best Python
proxy (aiohttp or Starlette, whichever is cheaper) and against the bare relay; throughput against no proxy.
The TLS-upstream and WebSocket cells get a table of their own, with their ratios against nginx and the relay
and each peer's TLS cost against its own plaintext cost.
A figure marked * comes only from contaminated windows (other load on the box on either core); clean windows
are preferred.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .cells import CellResult
from .peers import PEERS

PYTHON_PROXIES = ("aiohttp", "starlette")


@dataclass(frozen=True)
class Stat:
    median: float
    low: float
    high: float
    count: int
    dirty: bool  # only contaminated windows were available

    def text(self, digits: int = 0, scale: float = 1.0) -> str:
        mid = f"{self.median * scale:,.{digits}f}"
        star = "*" if self.dirty else ""
        if self.count < 2:
            return mid + star
        return f"{mid}{star} ({self.low * scale:,.{digits}f}-{self.high * scale:,.{digits}f})"


def stat(
    cells: Sequence[CellResult], value: Callable[[CellResult], float | None], dirty: Callable[[CellResult], bool]
) -> Stat | None:
    """Median and range over clean cells, or over all cells (marked dirty) when none is clean."""
    clean = [v for c in cells if not dirty(c) and (v := value(c)) is not None]
    chosen, is_dirty = (clean, False) if clean else ([v for c in cells if (v := value(c)) is not None], True)
    if not chosen:
        return None
    return Stat(statistics.median(chosen), min(chosen), max(chosen), len(chosen), is_dirty)


@dataclass
class PeerFigures:
    """Every figure of one peer, summarised over runs."""

    peer: str
    small_rate: Stat | None = None
    small_p99_us: Stat | None = None
    small_cost: Stat | None = None
    bulk_rate: Stat | None = None
    bulk_cost: Stat | None = None
    sse_rate: Stat | None = None
    sse_cost: Stat | None = None
    sse_delay_p50: Stat | None = None
    sse_delay_alone_p50: Stat | None = None
    sse_added_alone: Stat | None = None  # over no proxy's median in the same run
    sse_delay_p99: Stat | None = None
    idle_rss: Stat | None = None
    idle_held: int = 0
    small_tls_rate: Stat | None = None
    small_tls_p99_us: Stat | None = None
    small_tls_cost: Stat | None = None
    bulk_tls_rate: Stat | None = None
    bulk_tls_cost: Stat | None = None
    ws_small_rate: Stat | None = None  # messages/s
    ws_small_p99_us: Stat | None = None  # round trip
    ws_small_cost: Stat | None = None  # µs per echoed message
    ws_bulk_rate: Stat | None = None  # MiB/s, both ways
    ws_bulk_cost: Stat | None = None  # s per GiB, both ways
    errors: int = 0
    failures: list[str] | None = None


def _dirty(cell: CellResult) -> bool:
    # Load-core contamination counts for CPU costs too: a starved load generator sends fewer requests per
    # wakeup of the proxy, and per-request costs rise with the lost batching (seen: +30% on fastpipe).
    return cell.load_contaminated or cell.contaminated


def summarize(results: Iterable[CellResult]) -> dict[str, PeerFigures]:
    by_cell: dict[tuple[str, str], list[CellResult]] = {}
    failures: dict[str, list[str]] = {}
    for cell in results:
        if cell.error:
            failures.setdefault(cell.peer, []).append(f"{cell.workload} run {cell.run}: {cell.error}")
            continue
        by_cell.setdefault((cell.peer, cell.workload), []).append(cell)
    figures: dict[str, PeerFigures] = {}
    for name in PEERS:
        if not any(peer == name for peer, _ in by_cell) and name not in failures:
            continue
        fig = PeerFigures(name, failures=failures.get(name))
        small, bulk = by_cell.get((name, "small"), []), by_cell.get((name, "bulk"), [])
        sse, idle = by_cell.get((name, "sse"), []), by_cell.get((name, "idle"), [])
        fig.small_rate = stat(small, lambda c: c.rate, _dirty)
        fig.small_p99_us = stat(small, lambda c: c.latency_us.get("p99"), _dirty)
        fig.small_cost = stat(small, lambda c: c.cost, _dirty)
        fig.bulk_rate = stat(bulk, lambda c: c.rate, _dirty)
        fig.bulk_cost = stat(bulk, lambda c: c.cost, _dirty)
        fig.sse_rate = stat(sse, lambda c: c.rate, _dirty)
        fig.sse_cost = stat(sse, lambda c: c.cost, _dirty)
        fig.sse_delay_p50 = stat(sse, lambda c: c.event_delay_us.get("p50"), _dirty)
        fig.sse_delay_p99 = stat(sse, lambda c: c.event_delay_us.get("p99"), _dirty)
        fig.sse_delay_alone_p50 = stat(sse, lambda c: c.event_delay_alone_us.get("p50"), lambda c: False)
        fig.idle_rss = stat(idle, lambda c: c.rss_kib_per_stream, lambda c: False)
        fig.idle_held = max((c.idle_established for c in idle), default=0)
        for workload in ("small-tls", "bulk-tls", "ws-small", "ws-bulk"):
            cells = by_cell.get((name, workload), [])
            prefix = workload.replace("-", "_")
            setattr(fig, f"{prefix}_rate", stat(cells, lambda c: c.rate, _dirty))
            setattr(fig, f"{prefix}_cost", stat(cells, lambda c: c.cost, _dirty))
            if hasattr(fig, f"{prefix}_p99_us"):
                setattr(fig, f"{prefix}_p99_us", stat(cells, lambda c: c.latency_us.get("p99"), _dirty))
            fig.errors += sum(c.errors for c in cells)
        fig.errors += sum(c.errors for cells in (small, bulk, sse, idle) for c in cells)
        figures[name] = fig
    none = figures.get("none")
    base = none.sse_delay_alone_p50 if none else None
    for name, fig in figures.items():
        alone = fig.sse_delay_alone_p50
        if name != "none" and alone is not None and base is not None:
            fig.sse_added_alone = Stat(
                alone.median - base.median, alone.low - base.median, alone.high - base.median, alone.count, False
            )
    return figures


def _median(s: Stat | None) -> float | None:
    return s.median if s is not None else None


def ratio(a: Stat | None, b: Stat | None) -> float | None:
    if a is None or b is None or b.median == 0:
        return None
    return a.median / b.median


def best_python(figures: dict[str, PeerFigures], attr: str) -> tuple[str, Stat] | None:
    found = [(name, s) for name in PYTHON_PROXIES if name in figures and (s := getattr(figures[name], attr))]
    return min(found, key=lambda item: item[1].median) if found else None


def _shortfall(share: float | None) -> float | None:
    """How far a throughput ``share`` of a reference falls short of it (0.1: 10% less)."""
    return None if share is None else 1.0 - share


def _of(fig: PeerFigures | None, attr: str) -> Stat | None:
    return getattr(fig, attr) if fig is not None else None


def _cell(s: Stat | None, digits: int = 0, scale: float = 1.0) -> str:
    return s.text(digits, scale) if s is not None else "—"


def _num(value: float | None) -> str:
    return f"{value:,.0f}" if value is not None else "—"


def _x(value: float | None) -> str:
    return f"{value:.2f}x" if value is not None else "—"


@dataclass(frozen=True)
class Target:
    text: str
    measured: float | None
    limit: float
    applies: bool = True

    @property
    def verdict(self) -> str:
        if not self.applies:
            return "n/a"
        if self.measured is None:
            return "not measured"
        return "met" if self.measured <= self.limit else "MISSED"


def targets(figures: dict[str, PeerFigures], subject: str = "fastpipe") -> list[Target]:
    """The issue's targets for fastpipe compiled, each as a ratio (or an absolute figure) from this run."""
    fp = figures.get(subject)
    if fp is None:
        return []
    get = figures.get
    nginx, relay, aiohttp, none = get("nginx"), get("relay"), get("aiohttp"), get("none")
    found: list[Target] = [
        Target("CPU per 1 KiB request <= 1.2x nginx", ratio(fp.small_cost, _of(nginx, "small_cost")), 1.2),
        Target("1 KiB req/s within 10% of nginx's", _shortfall(ratio(fp.small_rate, _of(nginx, "small_rate"))), 0.10),
        Target("CPU per 1 KiB request <= 0.25x aiohttp", ratio(fp.small_cost, _of(aiohttp, "small_cost")), 0.25),
        Target("CPU per GiB <= 1.0x nginx", ratio(fp.bulk_cost, _of(nginx, "bulk_cost")), 1.0),
        Target("CPU per GiB <= 1.2x bare relay", ratio(fp.bulk_cost, _of(relay, "bulk_cost")), 1.2),
        Target("CPU per SSE stream <= 1.0x nginx", ratio(fp.sse_cost, _of(nginx, "sse_cost")), 1.0),
    ]
    for label, attr in (("1 KiB req/s", "small_rate"), ("16 MiB MiB/s", "bulk_rate"), ("SSE streams/s", "sse_rate")):
        base = getattr(none, attr) if none else None
        ng = ratio(getattr(nginx, attr) if nginx else None, base)
        mine = ratio(getattr(fp, attr), base)
        applies = ng is not None and ng >= 0.9
        found.append(Target(f"{label} within 10% of no proxy (nginx is: {_x(ng)})", _shortfall(mine), 0.10, applies))
    found.append(Target("RSS per idle streaming connection < 16 KiB", _median(fp.idle_rss), 16.0))
    found += [
        Target(
            "CPU per 1 KiB request, TLS upstream <= 1.2x nginx",
            ratio(fp.small_tls_cost, _of(nginx, "small_tls_cost")),
            1.2,
        ),
        Target("CPU per GiB, TLS upstream <= 1.2x nginx", ratio(fp.bulk_tls_cost, _of(nginx, "bulk_tls_cost")), 1.2),
        Target(
            "CPU per 1 KiB request, gateway route <= 1.2x nginx",
            ratio(_of(get("fastpipe-route"), "small_cost"), _of(nginx, "small_cost")),
            1.2,
        ),
        Target(
            "CPU per GiB, WebSocket bulk <= 1.2x bare relay", ratio(fp.ws_bulk_cost, _of(relay, "ws_bulk_cost")), 1.2
        ),
    ]
    return found


PLAIN_FIGURES = ("small_cost", "small_rate", "bulk_cost", "bulk_rate", "sse_cost", "sse_rate", "idle_rss")
NEW_COSTS = ("small_tls_cost", "bulk_tls_cost", "ws_small_cost", "ws_bulk_cost")


def tls_and_websocket(figures: dict[str, PeerFigures]) -> list[str]:
    """The TLS-upstream and WebSocket cells: costs, throughput and same-run ratios; empty when none ran."""
    if not any(getattr(fig, attr) is not None for fig in figures.values() for attr in NEW_COSTS):
        return []
    lines = [
        "**TLS upstream and WebSocket cells** (the proxy's CPU per unit of work; the client speaks plaintext to "
        "the proxy, the proxy TLS to the origin; WebSocket: echo, closed loop, per GiB counts the payload both ways)",
        "",
        "| peer | µs per 1 KiB request, TLS upstream | s per GiB, TLS upstream | µs per WebSocket message (1 KiB) "
        "| s per GiB, WebSocket (1 MiB messages) |",
        "| --- | --- | --- | --- | --- |",
    ]
    shown = [(name, fig) for name, fig in figures.items() if any(getattr(fig, attr) for attr in NEW_COSTS)]
    for name, fig in shown:
        if name == "none":
            continue
        lines.append(
            f"| {PEERS[name].label} | {_cell(fig.small_tls_cost, 1)} | {_cell(fig.bulk_tls_cost, 2)} | "
            f"{_cell(fig.ws_small_cost, 1)} | {_cell(fig.ws_bulk_cost, 2)} |"
        )
    lines += [
        "",
        "| peer | TLS 1 KiB req/s | TLS p99 ms | TLS 16 MiB MiB/s | WebSocket msg/s | WebSocket p99 ms "
        "| WebSocket bulk MiB/s (both ways) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    rows = [(name, fig) for name, fig in figures.items() if fig.small_tls_rate or fig.ws_small_rate or fig.ws_bulk_rate]
    for name, fig in rows:
        label = "no proxy (client to origin, over TLS in the TLS cells)" if name == "none" else PEERS[name].label
        lines.append(
            f"| {label} | {_cell(fig.small_tls_rate)} | {_cell(fig.small_tls_p99_us, 2, 1e-3)} | "
            f"{_cell(fig.bulk_tls_rate)} | {_cell(fig.ws_small_rate)} | {_cell(fig.ws_small_p99_us, 2, 1e-3)} | "
            f"{_cell(fig.ws_bulk_rate)} |"
        )
    nginx, relay = figures.get("nginx"), figures.get("relay")
    lines += [
        "",
        "| peer | TLS req CPU / nginx | TLS GiB CPU / nginx | WS msg CPU / nginx | WS msg CPU / relay "
        "| WS GiB CPU / nginx | WS GiB CPU / relay | own TLS / plaintext, per req | own TLS / plaintext, per GiB |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, fig in shown:
        if name == "none":
            continue
        cells = [
            ratio(fig.small_tls_cost, _of(nginx, "small_tls_cost")),
            ratio(fig.bulk_tls_cost, _of(nginx, "bulk_tls_cost")),
            ratio(fig.ws_small_cost, _of(nginx, "ws_small_cost")),
            ratio(fig.ws_small_cost, _of(relay, "ws_small_cost")),
            ratio(fig.ws_bulk_cost, _of(nginx, "ws_bulk_cost")),
            ratio(fig.ws_bulk_cost, _of(relay, "ws_bulk_cost")),
            ratio(fig.small_tls_cost, fig.small_cost),
            ratio(fig.bulk_tls_cost, fig.bulk_cost),
        ]
        lines.append(f"| {name} | " + " | ".join(_x(value) for value in cells) + " |")
    lines += ["", "The bare relay takes no part in the TLS cells: relaying TLS bytes would be TLS passthrough."]
    return lines


def usage_capture(figures: dict[str, PeerFigures]) -> str:
    """What a route with usage capture adds per SSE stream over plain fastpipe, this run; empty if not both ran."""
    plain, usage = _of(figures.get("fastpipe"), "sse_cost"), _of(figures.get("fastpipe-usage"), "sse_cost")
    if plain is None or usage is None:
        return ""
    added = usage.median - plain.median
    nginx = ratio(usage, _of(figures.get("nginx"), "sse_cost"))
    return (
        f'Usage capture (`fastpipe-usage`: one route with `usage = "openai"`): {usage.median:,.0f} µs per SSE '
        f"stream against {plain.median:,.0f} for plain fastpipe, {_x(ratio(usage, plain))} ({added:+,.0f} µs per "
        f"stream); {_x(nginx)} nginx's."
    )


def markdown(figures: dict[str, PeerFigures], meta: dict[str, Any]) -> str:
    lines: list[str] = []
    add = lines.append
    add(f"### Proxy benchmark, {meta['date']}")
    add("")
    add(
        f"{meta['machine']}; {meta['pinning']}. Origin: {meta['origin']}; load: {meta['generator']}. "
        f"fastpipe at {meta.get('fastpipe', 'unknown')}. "
        f"{meta['runs']} run(s) x {meta['duration']:g} s per cell; median (min-max over runs); "
        "* = only contaminated windows (other load on the box)."
    )
    add("")
    plain_start = len(lines)  # the plaintext HTTP tables, dropped below when no such cell ran
    add("**CPU cost of the proxy** (its core's busy time / work done; lower is better)")
    add("")
    wanted = int(meta.get("settings", {}).get("idle_connections", 0))
    add(
        "| peer | µs per 1 KiB request | s per GiB (16 MiB bodies) | µs per SSE stream "
        f"| KiB RSS per idle stream ({wanted:,} held) |"
    )
    add("| --- | --- | --- | --- | --- |")
    for name, fig in figures.items():
        if name == "none":
            continue
        idle = _cell(fig.idle_rss, 1)
        if fig.idle_rss is not None and fig.idle_held < wanted:
            idle += f" (only {fig.idle_held:,} held)"
        add(
            f"| {PEERS[name].label} | {_cell(fig.small_cost, 1)} | {_cell(fig.bulk_cost, 2)} | "
            f"{_cell(fig.sse_cost)} | {idle} |"
        )
    add("")
    add("**Throughput and latency** (as seen by the load generator)")
    add("")
    add(
        "| peer | 1 KiB req/s | p99 ms | 16 MiB MiB/s | SSE streams/s "
        "| SSE event delay p50 µs, alone / loaded | added by the proxy, alone / loaded | loaded p99 µs |"
    )
    add("| --- | --- | --- | --- | --- | --- | --- | --- |")
    none = figures.get("none")
    base_alone, base_loaded = _median(_of(none, "sse_delay_alone_p50")), _median(_of(none, "sse_delay_p50"))
    for name, fig in figures.items():
        alone, loaded, p99 = _median(fig.sse_delay_alone_p50), _median(fig.sse_delay_p50), _median(fig.sse_delay_p99)
        delays = f"{_num(alone)} / {_num(loaded)}"
        added = "—"
        if name != "none" and None not in (alone, loaded, base_alone, base_loaded):
            assert alone is not None and loaded is not None and base_alone is not None and base_loaded is not None
            added = f"{alone - base_alone:,.0f} / {loaded - base_loaded:,.0f}"
        add(
            f"| {PEERS[name].label} | {_cell(fig.small_rate)} | {_cell(fig.small_p99_us, 2, 1e-3)} | "
            f"{_cell(fig.bulk_rate)} | {_cell(fig.sse_rate)} | {delays} | {added} | {_num(p99)} |"
        )
    add("")
    add("**Ratios** (CPU cost: peer / reference; throughput: peer / no proxy)")
    add("")
    add(
        "| peer | req CPU / nginx | req CPU / best Py | GiB CPU / nginx | GiB CPU / relay | SSE CPU / nginx "
        "| SSE CPU / best Py | req/s / none | MiB/s / none | streams/s / none |"
    )
    add("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    nginx, relay = figures.get("nginx"), figures.get("relay")
    best_small, best_sse = best_python(figures, "small_cost"), best_python(figures, "sse_cost")
    references: list[tuple[str, Stat | None]] = [
        ("small_cost", _of(nginx, "small_cost")),
        ("small_cost", best_small[1] if best_small else None),
        ("bulk_cost", _of(nginx, "bulk_cost")),
        ("bulk_cost", _of(relay, "bulk_cost")),
        ("sse_cost", _of(nginx, "sse_cost")),
        ("sse_cost", best_sse[1] if best_sse else None),
        ("small_rate", _of(none, "small_rate")),
        ("bulk_rate", _of(none, "bulk_rate")),
        ("sse_rate", _of(none, "sse_rate")),
    ]
    for name, fig in figures.items():
        if name != "none":
            add(f"| {name} | " + " | ".join(_x(ratio(getattr(fig, attr), ref)) for attr, ref in references) + " |")
    if best_small or best_sse:
        add("")
        add(
            "Best Python proxy: "
            f"per request {best_small[0] if best_small else '—'}, per SSE stream {best_sse[0] if best_sse else '—'}."
        )
    usage = usage_capture(figures)
    if usage:
        add("")
        add(usage)
    if not any(getattr(fig, attr) is not None for fig in figures.values() for attr in PLAIN_FIGURES):
        del lines[plain_start:]
    extra = tls_and_websocket(figures)
    if extra:
        add("")
        lines.extend(extra)
    found = targets(figures)
    add("")
    if found:
        add("**Targets** (fastpipe, compiled Pipe)")
        add("")
        add("| target | measured | verdict |")
        add("| --- | --- | --- |")
        for target in found:
            if target.measured is None and not any(figures[name].failures for name in figures):
                continue  # its cells were not part of this run
            if target.measured is None:
                shown = "—"
            elif "within 10%" in target.text:
                reference = "nginx" if "of nginx" in target.text else "no proxy"
                shown = (
                    f"{target.measured:.1%} below {reference}" if target.measured > 0 else f"at or above {reference}"
                )
            elif "RSS" in target.text:
                shown = f"{target.measured:.1f} KiB"
            else:
                shown = f"{target.measured:.2f}x"
            add(f"| {target.text} | {shown} | {target.verdict} |")
    else:
        add("**Targets**: fastpipe (compiled) was not measured in this run.")
    notes = meta.get("notes", [])
    skipped = meta.get("skipped", {})
    failed = {name: fig.failures for name, fig in figures.items() if fig.failures}
    if skipped or failed or notes:
        add("")
        for name, reason in skipped.items():
            add(f"- skipped {name}: {reason}")
        for name, failures in failed.items():
            for failure in failures or []:
                add(f"- {name} failed: {failure}")
        for note in notes:
            add(f"- {note}")
    return "\n".join(lines) + "\n"


PANELS: Sequence[tuple[str, str, str, bool]] = (
    ("small_cost", "CPU µs per 1 KiB request", "lower is better", True),
    ("bulk_cost", "CPU s per GiB (16 MiB bodies)", "lower is better", False),
    ("sse_cost", "CPU µs per 100-event SSE stream", "lower is better", True),
    ("idle_rss", "KiB RSS per idle stream", "lower is better", False),
    ("small_rate", "1 KiB requests/s", "higher is better", False),
    ("bulk_rate", "16 MiB bodies, MiB/s", "higher is better", False),
    ("sse_rate", "SSE streams/s (paced)", "higher is better", False),
    ("sse_added_alone", "µs added per SSE event (alone)", "lower is better", False),
    ("small_tls_cost", "CPU µs per 1 KiB request, TLS upstream", "lower is better", True),
    ("bulk_tls_cost", "CPU s per GiB, TLS upstream", "lower is better", False),
    ("ws_small_cost", "CPU µs per WebSocket message (1 KiB)", "lower is better", True),
    ("ws_bulk_cost", "CPU s per GiB, WebSocket (1 MiB messages)", "lower is better", False),
)
COLORS = {"none": "#9e9e9e", "reference": "#2e7d32", "relay": "#6d4c41", "fastpipe": "#1565c0", "python": "#ef6c00"}


def _short(value: float) -> str:
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def chart(figures: dict[str, PeerFigures], meta: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [panel for panel in PANELS if any(getattr(f, panel[0]) is not None for f in figures.values())]
    panels = panels or list(PANELS[:1])
    columns = 4
    rows_of_panels = -(-len(panels) // columns)
    fig, axes = plt.subplots(rows_of_panels, columns, figsize=(19, 4 * rows_of_panels), squeeze=False)
    for axis in list(axes.flat)[len(panels) :]:
        axis.axis("off")
    for axis, (attr, title, hint, log_scale) in zip(axes.flat, panels, strict=False):
        rows = [(name, s) for name, f in figures.items() if (s := getattr(f, attr)) is not None]
        if not rows:
            axis.set_title(f"{title}\n(not measured)")
            axis.axis("off")
            continue
        names = [PEERS[name].name + ("*" if s.dirty else "") for name, s in rows]
        medians = [s.median for _, s in rows]
        low = [s.median - s.low for _, s in rows]
        high = [s.high - s.median for _, s in rows]
        colors = [COLORS[PEERS[name].kind] for name, _ in rows]
        positions = list(range(len(rows)))
        axis.barh(positions, medians, xerr=[low, high], color=colors, capsize=3)
        axis.set_yticks(positions, names)
        axis.invert_yaxis()
        if log_scale and max(medians) > 20 * max(min(medians), 1e-9):
            axis.set_xscale("log")
        axis.set_title(f"{title}\n({hint})", fontsize=10)
        for pos, (_, s) in zip(positions, rows, strict=True):
            axis.annotate("  " + _short(s.median), (s.high, pos), va="center", fontsize=8)  # right of the whisker
        axis.grid(axis="x", alpha=0.3)
    fig.suptitle(f"fastpipe and peers as reverse proxies: {meta['date']}, {meta['machine']}", fontsize=11)
    fig.text(
        0.5,
        0.005,
        meta["pinning"] + "; bars: median, whiskers: min-max over runs; * contaminated",
        ha="center",
        fontsize=8,
    )
    fig.tight_layout(rect=(0, 0.02, 1, 0.97))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
