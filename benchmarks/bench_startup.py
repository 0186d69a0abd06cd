"""Start-up: CPU seconds of `latentprobe --help`, `latentprobe evaluate --help` and an argument
error, each run as a fresh process (the version first on PYTHONPATH is the one timed).

    python benchmarks/bench_startup.py [--repeats 3]
    python benchmarks/paired.py --base c3a2660 -- python benchmarks/bench_startup.py   # before and after

Prints one line per command (median CPU seconds, user + system, and wall seconds) and a JSON
object of the medians on its last line.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

COMMANDS = {
    "help": ["--help"],
    "evaluate_help": ["evaluate", "--help"],
    "argument_error": ["train", "--epochs", "x"],
}


def cpu_seconds(args: list[str]) -> tuple[float, float]:
    """(CPU, wall) seconds of one `python -m latentprobe ARGS` process."""
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "latentprobe", *args], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    _, _, usage = os.wait4(process.pid, 0)
    return usage.ru_utime + usage.ru_stime, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs of each command (the median is shown)")
    args = parser.parse_args()
    medians = {}
    for name, command in COMMANDS.items():
        runs = [cpu_seconds(command) for _ in range(args.repeats)]
        cpu, wall = statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)
        print(f"latentprobe {' '.join(command)}: {cpu:.2f} s CPU, {wall:.2f} s wall (median of {args.repeats})")
        medians[f"{name}_cpu_s"] = round(cpu, 3)
    print(json.dumps(medians))


if __name__ == "__main__":
    main()
