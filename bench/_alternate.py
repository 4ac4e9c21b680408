"""Run benches on a base commit and on the working tree alternately, in one session.

(A tool, not a bench of its own: the leading underscore keeps ``make bench`` from running
it without a base.)

A change that should not cost speed (a refactor) is judged by running each bench's
headline on the base commit and on the head in turns (base, head, base, head, …), so the
machine's drift hits both alike, and comparing the medians of their headline ratios:

    .venv/bin/python bench/_alternate.py --base fb3a5d6 --runs 3 bench/graphql_overhead.py bench/ingest.py

The base runs from a temporary git worktree of ``--base`` with the same virtualenv. Each
bench prints its own figure and baseline; this script reads the ``headline: … ratio=X``
line of each run and prints, per bench, every run's ratio, both medians and the head's
median over the base's. Goal (issue 11): at least 0.9 for every bench. The last line is
the headline (the worst bench).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEADLINE = re.compile(r"^headline: .* ratio=([0-9.]+) ")
GOAL = 0.9


def run_bench(tree: Path, bench: str, extra: list[str]) -> float:
    """Run ``bench`` from ``tree`` (its code on the path) and return its headline ratio."""
    environment = {**os.environ, "PYTHONPATH": str(tree)}
    finished = subprocess.run([sys.executable, str(tree / bench), *extra], cwd=tree, env=environment,
                              capture_output=True, text=True, check=False)
    lines = [HEADLINE.match(line) for line in finished.stdout.splitlines()]
    found = [match for match in lines if match]
    if finished.returncode != 0 or not found:
        sys.stderr.write(finished.stdout[-3000:] + finished.stderr[-3000:])
        raise SystemExit(f"{bench} in {tree} failed (exit {finished.returncode})")
    return float(found[-1].group(1))


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--base", required=True, help="The commit to compare with (e.g. the issue's base).")
    parser.add_argument("--runs", type=int, default=3, help="Runs of each side, alternating.")
    parser.add_argument("benches", nargs="+", help="Bench scripts, relative to the repository root.")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="shuiwu-base-") as scratch:
        base_tree = Path(scratch) / "base"
        subprocess.run(["git", "worktree", "add", "--detach", str(base_tree), args.base], cwd=ROOT, check=True,
                       capture_output=True)
        try:
            worst = None
            for bench in args.benches:
                base_ratios: list[float] = []
                head_ratios: list[float] = []
                for run in range(args.runs):
                    base_ratios.append(run_bench(base_tree, bench, []))
                    head_ratios.append(run_bench(ROOT, bench, []))
                    print(f"{bench} run {run + 1}: base {base_ratios[-1]:.2f}  head {head_ratios[-1]:.2f}", flush=True)
                base_median, head_median = statistics.median(base_ratios), statistics.median(head_ratios)
                relative = head_median / base_median
                print(f"{bench}: base median {base_median:.2f}, head median {head_median:.2f}, head/base {relative:.2f}")
                if worst is None or relative < worst[1]:
                    worst = (bench, relative)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(base_tree)], cwd=ROOT, check=False,
                           capture_output=True)
    assert worst is not None
    print(f"headline: head vs base, worst bench ({worst[0]}) ratio={worst[1]:.2f} goal=>={GOAL}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
