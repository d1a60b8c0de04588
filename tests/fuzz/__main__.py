"""python -m tests.fuzz TARGET SECONDS [CORPUS_DIR]: fuzz one target for a bounded time."""

from __future__ import annotations

import sys
from pathlib import Path

import atheris

with atheris.instrument_imports():
    from tests.fuzz import targets

_SEEDS = Path(__file__).parent / "seeds"


def main(argv: list[str]) -> None:
    if len(argv) < 3 or argv[1] not in targets.TARGETS:
        names = ", ".join(targets.TARGETS)
        raise SystemExit(f"usage: python -m tests.fuzz {{{names}}} SECONDS [CORPUS_DIR]")
    name, seconds = argv[1], int(argv[2])
    corpus = Path(argv[3]) if len(argv) > 3 else Path("var/fuzz") / name
    corpus.mkdir(parents=True, exist_ok=True)
    seeds = _SEEDS / name
    args = [
        argv[0],
        f"-max_total_time={seconds}",
        "-timeout=5",  # one input past 5 s is a hang: reported as a failure
        "-rss_limit_mb=2048",
        f"-artifact_prefix={corpus}/",
        str(corpus),
    ]
    if seeds.is_dir():
        args.append(str(seeds))
    atheris.Setup(args, targets.TARGETS[name])
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
