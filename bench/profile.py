"""`python -m bench.profile FILE.folded [N]`: where a py-spy profile spent its time.

Prints the functions with the most samples on the stack (inclusive) and at the
top of the stack (self), from py-spy's folded ("raw") output.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path


def summarize(path: Path, top: int = 25) -> str:
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        for f in set(frames):
            inclusive[f] += n
        own[frames[-1]] += n
    out = [f"{path.name}: {total} samples", "", "inclusive:"]
    out += [f"{100 * n / total:6.1f}%  {f}" for f, n in inclusive.most_common(top)]
    out += ["", "self:"]
    out += [f"{100 * n / total:6.1f}%  {f}" for f, n in own.most_common(top)]
    return "\n".join(out)


if __name__ == "__main__":
    print(summarize(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 25))
