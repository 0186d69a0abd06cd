"""Two versions of latentprobe side by side: one command run in turn against each, with ratios.

    python benchmarks/paired.py --base c3a2660 [--pairs 3] -- python benchmarks/bench_patch_ae.py encode

The base commit is checked out into a worktree (``git worktree``, in a temporary folder, removed
when the pairs are done); then the command runs with ``PYTHONPATH`` pointing at the base's ``src`` and at this
tree's ``src`` in turn, B A B A … (the base first), so both versions meet the same machine state.
Each run's wall and CPU seconds and peak resident memory come from the operating system
(``os.wait4``); a benchmark may also print one JSON object on its last line, whose numbers are
reported too. Every ratio is this tree over the base, pair by pair, with the median.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@contextmanager
def checkout(commit: str):
    """A detached checkout of ``commit`` in a temporary folder, for as long as the block runs."""
    with tempfile.TemporaryDirectory(prefix="latentprobe-base-") as folder:
        path = Path(folder) / "tree"
        subprocess.run(["git", "worktree", "add", "--detach", str(path), commit], cwd=ROOT, check=True,
                       capture_output=True)
        try:
            yield path
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(path)], cwd=ROOT, capture_output=True)


def run_once(command: list[str], src: Path) -> dict:
    """One run of ``command`` with ``src`` first on the import path: OS figures + the JSON it printed."""
    env = {**os.environ, "PYTHONPATH": f"{src}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        started = time.perf_counter()
        process = subprocess.Popen(command, env=env, stdout=out, stderr=err, cwd=ROOT)
        _, status, usage = os.wait4(process.pid, 0)  # the child's own CPU time and peak memory
        wall = time.perf_counter() - started
        out.seek(0)
        err.seek(0)
        lines, errors = [line for line in out.read().splitlines() if line.strip()], err.read()
    code = os.waitstatus_to_exitcode(status)
    if code not in (0, 2):  # 2: an argument error, which start-up benchmarks ask for
        sys.exit(f"error: {' '.join(command)} failed with {code} under {src}:\n{errors[-2000:]}")
    figures = {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime, "peak_rss_gib": usage.ru_maxrss / 2**20}
    if lines:
        try:
            figures |= {k: v for k, v in json.loads(lines[-1]).items() if isinstance(v, (int, float))}
        except json.JSONDecodeError:
            pass
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="c3a2660", help="git commit to compare against")
    parser.add_argument("--pairs", type=int, default=3, help="runs of each version, alternating")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command to run")
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command after --")
    results = {"base": [], "this": []}
    with checkout(args.base) as base:
        for pair in range(args.pairs):
            for name, src in (("base", base / "src"), ("this", ROOT / "src")):
                figures = run_once(command, src)
                results[name].append(figures)
                print(f"pair {pair + 1} {name}: " + ", ".join(f"{k} {v:.4g}" for k, v in figures.items()), flush=True)
    print(f"\n{' '.join(command)}: this tree against {args.base}, {args.pairs} pairs (medians; ratio this/base "
          f"pair by pair)")
    for key in results["this"][0]:
        if not all(key in r for r in results["base"]):
            continue
        base = [r[key] for r in results["base"]]
        this = [r[key] for r in results["this"]]
        ratios = [t / b for t, b in zip(this, base) if b]
        print(f"  {key:24s} base {statistics.median(base):10.4g}   this {statistics.median(this):10.4g}   "
              f"ratio {statistics.median(ratios) if ratios else float('nan'):.3f} "
              f"({', '.join(f'{r:.3f}' for r in ratios)})")


if __name__ == "__main__":
    main()
