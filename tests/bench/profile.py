"""`python -m tests.bench.profile FILE.folded`: where a py-spy profile of the daemon spent CPU.

`PROFILE=dir make bench-quick` (or any benchmark) runs the daemon under `py-spy record --threads
--format raw`; this prints the functions with the most samples (inclusive: anywhere on the
stack; self: on top), and the share of each thread, so a profile reads as a table in the docs.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from pathlib import Path

_FRAME = re.compile(r"^(?P<name>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")


def _frame_key(frame: str) -> str:
    match = _FRAME.match(frame.strip())
    if not match:
        return frame.strip()
    path = match["file"]
    for marker in ("site-packages/", "lib/python3.11/", "/gateway/"):
        if marker in path:
            path = ("gateway/" if marker == "/gateway/" else "") + path.split(marker, 1)[1]
            break
    return f"{match['name']} ({path})"


def summarize(path: Path, top: int) -> str:
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        thread, frames = frames[0], [_frame_key(f) for f in frames[1:]]
        total += count
        threads[re.sub(r"\s*\(?0x[0-9a-f]+\)?", "", thread).strip() or thread] += count
        for key in set(frames):
            inclusive[key] += count
        if frames:
            own[frames[-1]] += count
    lines = [f"{total} samples on CPU", "", "threads:"]
    lines += [f"  {100 * n / total:5.1f}%  {name}" for name, n in threads.most_common(8)]
    lines += ["", "inclusive (anywhere on the stack):"]
    lines += [f"  {100 * n / total:5.1f}%  {name}" for name, n in inclusive.most_common(top)]
    lines += ["", "self (on top of the stack):"]
    lines += [f"  {100 * n / total:5.1f}%  {name}" for name, n in own.most_common(top)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.profile", description=__doc__)
    parser.add_argument("profile", type=Path)
    parser.add_argument("--top", type=int, default=40)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    print(summarize(args.profile, args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
