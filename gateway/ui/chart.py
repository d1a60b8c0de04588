"""The overview's chart of faxes per hour: bar geometry for a server-rendered SVG, no library.

Two bars per hour (out, in) over the last 24 hours, scaled to the busiest hour; the template
(templates/chart.svg.j2, included in the page) draws them with a title per bar and a text
summary, so the chart also reads without seeing it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

WIDTH = 720
HEIGHT = 200
_TOP = 10
_BOTTOM = 30  # room for hour labels
_LEFT = 30


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    count: int
    label: str  # "14:00 UTC: 3 out"
    series: str  # "out" | "in"


@dataclass(frozen=True)
class Chart:
    width: int
    height: int
    bars: list[Bar]
    ticks: list[tuple[float, str]]  # x, "14h"
    max_count: int
    baseline: float
    total_out: int
    total_in: int


def hour_start(now: float | None = None, hours: int = 24) -> float:
    """The start of the first of `hours` whole hours ending with the current one."""
    now = time.time() if now is None else now
    return (now // 3600) * 3600 - (hours - 1) * 3600


def build(start: float, out_counts: list[int], in_counts: list[int]) -> Chart:
    hours = len(out_counts)
    top = max([*out_counts, *in_counts, 1])
    plot_height = HEIGHT - _TOP - _BOTTOM
    slot = (WIDTH - _LEFT) / hours
    bar_width = slot * 0.4
    baseline = HEIGHT - _BOTTOM
    bars: list[Bar] = []
    ticks: list[tuple[float, str]] = []
    for hour in range(hours):
        stamp = time.strftime("%H:00", time.gmtime(start + hour * 3600))
        x0 = _LEFT + hour * slot
        for offset, series, counts in ((0.1, "out", out_counts), (0.5, "in", in_counts)):
            count = counts[hour]
            height = plot_height * count / top
            bars.append(
                Bar(
                    x=round(x0 + slot * offset, 1),
                    y=round(baseline - height, 1),
                    width=round(bar_width, 1),
                    height=round(height, 1),
                    count=count,
                    label=f"{stamp} UTC: {count} {series}",
                    series=series,
                )
            )
        if hour % 3 == 0:
            ticks.append((round(x0 + slot / 2, 1), stamp[:2] + "h"))
    return Chart(
        width=WIDTH,
        height=HEIGHT,
        bars=bars,
        ticks=ticks,
        max_count=top,
        baseline=baseline,
        total_out=sum(out_counts),
        total_in=sum(in_counts),
    )
