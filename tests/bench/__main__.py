"""`python -m tests.bench` (`make bench`): run the benchmarks, print each, then a summary table.

Each benchmark runs `--rounds` times, both sides each round, and the medians are reported.
Options bound the counts (defaults keep the whole run well under two minutes on 2 cores) or
pick benchmarks by name. The work directory is a fresh temp dir under $TMPDIR; point TMPDIR at
the disk the gateway's data.dir will live on, since fsync cost is a property of the disk (on
tmpfs it is free, and the durability ratios say nothing).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path

from tests.bench import acceptance, assembly, cluster, commit, pipeline, sharedfiles, store, whole
from tests.bench.common import Result, median_of, production_logging, report, table

# In-process benchmarks of one part each (postgresql: accept and webhook rates on a shared
# store, one and two nodes; shared: where that store keeps a message, bytea or an S3 PUT), then
# the whole daemon as a subprocess (whole.py).
PARTS = ("smtp", "assembly", "pipeline", "store", "commit", "postgresql", "shared")
BENCHMARKS = PARTS + tuple(whole.FIGURES)


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.bench", description=__doc__)
    parser.add_argument("--messages", type=int, default=200, help="SMTP messages per run")
    parser.add_argument("--iterations", type=int, default=30, help="assembly runs per figure")
    parser.add_argument("--jobs", type=int, default=50, help="jobs through the pipeline")
    parser.add_argument("--store-jobs", type=int, default=500, help="jobs written to the store")
    parser.add_argument("--rounds", type=int, default=5, help="rounds per benchmark (median)")
    parser.add_argument(
        "--only", choices=BENCHMARKS, action="append", help="run only these (repeatable)"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a small version of each (make bench-quick): one round, small counts",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.messages, args.iterations, args.jobs, args.store_jobs = 24, 5, 10, 100
        args.rounds = 1
    for name in ("messages", "iterations", "jobs", "store_jobs", "rounds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


def say(text: str) -> None:
    print(text, flush=True)


Benchmark = Callable[[Path], Awaitable[list[Result]]]


def chosen_benchmarks(args: argparse.Namespace) -> list[tuple[str, str, Benchmark]]:
    """(name, title, the benchmark) for each one to run, in order."""
    chosen = args.only or PARTS
    found: list[tuple[str, str, Benchmark]] = []
    if "smtp" in chosen:
        for pages in (1, 20):

            async def smtp(work: Path, pages: int = pages) -> list[Result]:
                return await acceptance.run(work, args.messages, pages)

            found.append((f"smtp-{pages}", acceptance.title(args.messages, pages), smtp))
    if "assembly" in chosen:

        async def assemble(work: Path) -> list[Result]:
            return await asyncio.to_thread(assembly.run, args.iterations)

        found.append(("assembly", assembly.title(args.iterations), assemble))
    if "pipeline" in chosen:

        async def outbound(work: Path) -> list[Result]:
            return await pipeline.run(work, args.jobs)

        found.append(("pipeline", pipeline.title(args.jobs), outbound))
    if "store" in chosen:

        async def jobs(work: Path) -> list[Result]:
            return await asyncio.to_thread(store.run, work, args.store_jobs)

        found.append(("store", store.title(args.store_jobs), jobs))
    if "postgresql" in chosen:

        async def shared(work: Path) -> list[Result]:
            return await cluster.run(work, args.messages)

        found.append(("postgresql", cluster.title(args.messages), shared))
    if "shared" in chosen:
        copies = max(10, args.store_jobs // 10)

        async def placed(work: Path) -> list[Result]:
            return await sharedfiles.run(work, copies)

        found.append(("shared", sharedfiles.title(copies), placed))
    if "commit" in chosen:

        async def grouped(work: Path) -> list[Result]:
            return await commit.run(work, args.store_jobs)

        found.append(("commit", commit.title(args.store_jobs), grouped))
    return found


async def run_whole(args: argparse.Namespace, work: Path) -> list[Result]:
    """The whole-daemon figures: each runs its own rounds (a daemon start is costly)."""
    sizes = whole.QUICK if args.quick else replace(whole.FULL, rounds=min(args.rounds, 3))
    results: list[Result] = []
    for name, figure in whole.FIGURES.items():
        if args.only and name not in args.only:
            continue
        say(f"whole daemon: {name}")
        directory = work / f"whole-{name}"
        directory.mkdir()
        for result in await figure(directory, sizes):
            report(result)
            results.append(result)
    return results


async def run_all(args: argparse.Namespace, work: Path) -> list[Result]:
    results = await run_parts(args, work)
    return results + await run_whole(args, work)


async def run_parts(args: argparse.Namespace, work: Path) -> list[Result]:
    results: list[Result] = []
    for name, title, benchmark in chosen_benchmarks(args):
        say(f"{title}, {args.rounds} rounds")
        rounds = []
        for number in range(args.rounds):
            directory = work / f"{name}-{number}"
            directory.mkdir()
            rounds.append(await benchmark(directory))
        for result in median_of(rounds):
            report(result)
            results.append(result)
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    with tempfile.TemporaryDirectory(prefix="fax-gateway-bench-") as directory:
        say(
            f"fax-gateway benchmarks: Python {platform.python_version()}, "
            f"{os.cpu_count()} CPUs, {platform.system()} {platform.machine()}, work dir {directory}"
        )
        say("ratio = the gateway's cost per item / the baseline's (1.0x = no overhead)\n")
        started = time.perf_counter()
        with production_logging():
            results = asyncio.run(run_all(args, Path(directory)))
        say(f"\n{table(results)}")
        say(f"\nfinished in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
