"""`python -m tests.bench.versus OTHER_TREE...`: the daemon's accept rate of this tree and of
others, in interleaved rounds against one durable aiosmtpd.

On a machine others share, the quick figure's one round of 30 messages moves by 2x from one
minute to the next, the durable baseline with it, and two bench runs one after the other
compare two different minutes. Here one durable aiosmtpd and a daemon of each tree (this one,
then each OTHER_TREE, a checkout such as `git archive <commit> | tar -x -C DIR`: its `gateway`
package is the one that daemon runs) are started together; each round sends the same count of
10 KB PDF mails over 10 sessions to the durable baseline and then to one daemon (clients in a
process of their own, as in whole.py), lets that daemon settle, and goes on with the next
tree, the order of the trees alternating from round to round. Per tree it prints each round's
daemon / durable ratio, the medians, and the daemon's CPU per message while it accepted (its
own process, and its document workers), a figure load moves less than the rates.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

from tests.bench import load
from tests.bench.baselines import BaselineServer
from tests.bench.daemon import Daemon, cpu_seconds
from tests.bench.whole import SESSIONS, _settle
from tests.conftest import ROOT


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            found += [int(child) for child in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


def _cpu(pid: int) -> tuple[float, float]:
    """CPU seconds of the process, and of its children now alive (the document workers)."""
    workers = 0.0
    for child in _children(pid):
        try:
            workers += cpu_seconds(child)
        except OSError:
            continue
    return cpu_seconds(pid), workers


async def run(trees: list[Path], count: int, rounds: int) -> dict[str, list[dict[str, float]]]:
    work = Path(tempfile.mkdtemp(prefix="bench-versus-"))
    document = load.sized_pdf(10_000)
    (work / "durable-spool").mkdir()
    durable = BaselineServer("smtp", "--durable", str(work / "durable-spool"))
    daemons: dict[str, Daemon] = {}
    results: dict[str, list[dict[str, float]]] = {str(t): [] for t in trees}
    try:
        for number, tree in enumerate(trees):
            daemon = Daemon(work / f"daemon-{number}", env={"PYTHONPATH": str(tree)}, root=tree)
            daemons[str(tree)] = daemon.start()
            await load.send(daemon.smtp_port, load.mails(SESSIONS, document, tag="warm-"), SESSIONS)
            await asyncio.to_thread(_settle, daemon)
        for number in range(rounds):
            order = list(daemons) if number % 2 == 0 else list(reversed(daemons))
            for name in order:
                daemon = daemons[name]
                mails = load.mails(count, document, tag=f"round-{number}-")
                base = await load.accept_rate_apart(durable.port, mails, SESSIONS)
                own, workers = _cpu(daemon.pid)
                rate = await load.accept_rate_apart(daemon.smtp_port, mails, SESSIONS)
                own_after, workers_after = _cpu(daemon.pid)
                await asyncio.to_thread(_settle, daemon)
                figures = {
                    "ratio": rate / base,
                    "daemon": rate,
                    "durable": base,
                    "cpu_ms": 1000 * (own_after - own) / count,
                    "workers_cpu_ms": 1000 * (workers_after - workers) / count,
                    "load": os.getloadavg()[0],
                }
                results[name].append(figures)
                rounded = {k: round(v, 3) for k, v in figures.items()}
                print(json.dumps({"round": number, "tree": name, **rounded}), flush=True)
    finally:
        for daemon in daemons.values():
            daemon.stop()
        durable.stop()
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.versus", description=__doc__)
    parser.add_argument("others", type=Path, nargs="+", help="other trees to compare with")
    parser.add_argument("--messages", type=int, default=300, help="10 KB mails per round")
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    trees = [ROOT, *(t.resolve() for t in args.others)]
    results = asyncio.run(run(trees, args.messages, args.rounds))
    for name, rounds in results.items():
        medians = {k: round(statistics.median(r[k] for r in rounds), 3) for k in rounds[0]}
        ratios = ", ".join(f"{r['ratio']:.2f}" for r in rounds)
        print(f"{name}: daemon / durable median {medians['ratio']:.2f}x ({ratios}); {medians}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
