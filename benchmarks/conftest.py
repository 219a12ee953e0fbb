"""Summarise the Pipe overhead benchmarks as ns per chunk and ratios measured in the same run."""

from __future__ import annotations

from typing import Any

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--chart", default=None, help="write a PNG chart of ns per chunk to this path")


def _per_chunk_ns(config: pytest.Config) -> dict[tuple[str, str], float]:
    session = getattr(config, "_benchmarksession", None)
    figures: dict[tuple[str, str], float] = {}
    for bench in getattr(session, "benchmarks", []) or []:
        params: dict[str, Any] = bench.params or {}
        chunks = bench.extra_info.get("chunks")
        if "wrapper" in params and chunks:
            figures[(params["wrapper"], params["loop_name"])] = bench.stats.min / chunks * 1e9
    return figures


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    figures = _per_chunk_ns(config)
    if not figures:
        return
    write = terminalreporter.write_line
    write("")
    write("Pipe overhead (best round, ns per chunk; 'added' is over the raw source in the same run)")
    write(f"{'loop':8} {'wrapper':18} {'ns/chunk':>9} {'added':>8}")
    for loop_name in sorted({loop for _, loop in figures}):
        raw = figures.get(("raw", loop_name))
        for wrapper in ("raw", "pipe-c", "pipe-py", "agen-passthrough"):
            value = figures.get((wrapper, loop_name))
            if value is None or raw is None:
                continue
            write(f"{loop_name:8} {wrapper:18} {value:9.1f} {value - raw:8.1f}")
        compiled, generator = figures.get(("pipe-c", loop_name)), figures.get(("agen-passthrough", loop_name))
        if raw is not None and compiled is not None and generator is not None and generator > raw:
            write(
                f"{loop_name:8} compiled Pipe adds {compiled - raw:.1f} ns (target <= 25), "
                f"{(compiled - raw) / (generator - raw):.2f}x what the passthrough adds (target <= 0.33)"
            )
    chart = config.getoption("--chart")
    if chart:
        _draw(figures, chart)
        write(f"chart written to {chart}")


def _draw(figures: dict[tuple[str, str], float], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    loops = sorted({loop for _, loop in figures})
    wrappers = ["raw", "pipe-c", "pipe-py", "agen-passthrough"]
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / len(loops)
    for index, loop_name in enumerate(loops):
        values = [figures.get((wrapper, loop_name), 0.0) for wrapper in wrappers]
        positions = [w + index * width for w in range(len(wrappers))]
        bars = ax.bar(positions, values, width, label=loop_name)
        ax.bar_label(bars, fmt="%.0f", fontsize=8)
    ax.set_xticks([w + width * (len(loops) - 1) / 2 for w in range(len(wrappers))], wrappers)
    ax.set_ylabel("ns per chunk (lower is better)")
    ax.set_title("Consuming 100,000 chunks: raw source vs wrappers")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
