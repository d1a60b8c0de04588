"""What every benchmark shares: its result and how it is printed, the configuration, logging."""

from __future__ import annotations

import contextlib
import os
import statistics
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from gateway import log
from gateway.config import Config, SmtpConfig, config_from_dict
from tests.conftest import BASE_CONFIG, merge

# One sender sends every benchmark message; the daily per-sender limit must not refuse them.
# The limit stays on (not 0) so its store query is part of what is measured, as in production.
_NO_PRACTICAL_LIMIT = 1_000_000


@dataclass(frozen=True)
class Result:
    """One comparison: the gateway's figure, the baseline's, in `unit`, and what they mean.

    `ratio` is always a cost ratio, the gateway's cost per item over the baseline's: for a rate
    (higher is better) that is baseline / gateway, for a time per item gateway / baseline.
    So 3.0 reads "the gateway spends three times what the baseline spends on each item".
    """

    what: str
    unit: str
    gateway: float
    baseline: float
    baseline_name: str
    higher_is_better: bool
    meaning: str  # one line; "{ratio}" and "{share}" (1 / ratio) are replaced, formatted
    ratios: tuple[float, ...] = ()  # each round's ratio, when this is a median of rounds
    target: str = ""  # what the issue asks of this figure, when it asks something

    @property
    def ratio(self) -> float:
        if self.higher_is_better:
            return self.baseline / self.gateway
        return self.gateway / self.baseline

    def explain(self) -> str:
        share = f"{1 / self.ratio:.2f}x" if self.ratio else "-"
        return self.meaning.replace("{ratio}", f"{self.ratio:.1f}").replace("{share}", share)


def median_of(rounds: list[list[Result]]) -> list[Result]:
    """Each comparison's median gateway and median baseline figure over the rounds.

    Every round measures both sides, so a moment of noise (another process on the 2 cores)
    spoils one round's pair rather than the result.
    """
    combined = []
    for same in zip(*rounds, strict=True):
        first = same[0]
        if any(r.what != first.what for r in same):
            raise ValueError("rounds measured different things")
        combined.append(
            replace(
                first,
                gateway=statistics.median(r.gateway for r in same),
                baseline=statistics.median(r.baseline for r in same),
                ratios=tuple(r.ratio for r in same),
            )
        )
    return combined


def figure(value: float) -> str:
    """A figure with three significant digits, without exponents."""
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def report(result: Result) -> None:
    """Print one result as soon as it is measured."""
    print(f"  {result.what}")
    print(f"    gateway   {figure(result.gateway):>10} {result.unit}")
    print(f"    baseline  {figure(result.baseline):>10} {result.unit}  ({result.baseline_name})")
    print(f"    ratio     {result.ratio:>10.1f}x  {result.explain()}")
    if result.target:
        print(f"    target    {result.target}")
    if len(result.ratios) > 1:
        low, high = min(result.ratios), max(result.ratios)
        print(
            f"              (median of {len(result.ratios)} rounds; ratios {low:.1f}-{high:.1f}x)"
        )


def table(results: list[Result]) -> str:
    """The compact summary printed at the end."""
    width = max(len(r.what) for r in results)
    lines = [
        f"{'benchmark':<{width}}  {'gateway':>10}  {'baseline':>10}  {'unit':<7}  {'ratio':>6}"
        f"  {'spread':>11}  target",
        "-" * (width + 72),
    ]
    for r in results:
        lines.append(
            f"{r.what:<{width}}  {figure(r.gateway):>10}  {figure(r.baseline):>10}  "
            f"{r.unit:<7}  {r.ratio:>5.1f}x  {_spread(r):>11}  {r.target}".rstrip()
        )
    return "\n".join(lines)


def _spread(result: Result) -> str:
    if len(result.ratios) < 2:
        return ""
    return f"{min(result.ratios):.1f}-{max(result.ratios):.1f}x"


def bench_config(data_dir: Path, override: dict[str, Any] | None = None) -> Config:
    """A valid configuration for a benchmark, its data under `data_dir`."""
    data = merge(
        BASE_CONFIG,
        {
            "data": {"dir": str(data_dir)},
            # A fixed name: the SMTP server would otherwise ask DNS for its own once.
            "smtp": {"hostname": "bench.local"},
            "limits": {"faxes_per_sender_per_day": _NO_PRACTICAL_LIMIT},
        },
    )
    data = merge(data, override or {})
    # Every benchmark client is 127.0.0.1: the whole of the document-check slots is its share,
    # as for a gateway behind one MTA (README), not the default half.
    smtp = data["smtp"]
    total = smtp.get("max_concurrent_data", SmtpConfig.model_fields["max_concurrent_data"].default)
    smtp.setdefault("max_concurrent_data_per_ip", total)
    return config_from_dict(data, env={})


@contextlib.contextmanager
def production_logging() -> Iterator[None]:
    """Log as the daemon does (JSON lines at info level), into /dev/null.

    The gateway logs a line per state transition; that cost is part of what it does, so it is
    kept in the measurement. Only the output is thrown away, to keep the report readable.
    """
    with open(os.devnull, "w") as sink:
        log.configure("info", stream=sink, json=True)
        try:
            yield
        finally:
            log.configure("warning")
