"""Driver overhead and GPU utilisation, measured with fake GPUs and a fake train file.

    python bench/driver_overhead.py                       # both measurements, default sizes
    python bench/driver_overhead.py --experiments 40 --scaled-train 30 --scaled-agent 6

1. Overhead: a 1 s fake training and the instant `mutate` agent. Per experiment, the driver's own
   time (git bundles and fetches, prompt, scheduling, journal, files, tables, culls) is timed inside
   the driver; the GPU's idle gap between two trainings is read from the fake trainer's records.
   Target: median driver time < 0.5 s.
2. Pipelining: agents that think for --scaled-agent seconds (a command agent that sleeps, then
   appends a unique comment) and trainings of --scaled-train seconds. The fraction of wall time each
   fake GPU was training, once warm (from the moment every GPU has started, to the last training
   start). Target: >= 95%.

Prints a markdown table (the lead copies it into BENCHMARKS.md). Runs on a CPU-only machine: Ray
gets `--gpus` fake GPUs; the fake trainer only sleeps.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from test_driver_support import FAKE_EVALUATOR  # noqa: E402  (the fixed side's stand-in the driver's tests use)

# Saves its value where the harness asks (AUTORESEARCH_CHECKPOINT): FAKE_EVALUATOR scores it.
FAKE_TRAIN = '''\
import json, os, time
LEARNING_RATE = 0.04
DEPTH = 8
start = time.time()
time.sleep(float(os.environ["AUTORESEARCH_FAKE_SLEEP"]))
end = time.time()
with open(os.path.join(os.environ["AUTORESEARCH_FAKE_RECORD"], f"{os.getpid()}-{start:.6f}.json"), "w") as f:
    json.dump({"gpu": os.environ.get("CUDA_VISIBLE_DEVICES"), "start": start, "end": end}, f)
val = 1.0 + abs(LEARNING_RATE - 0.03) + 0.001 * abs(DEPTH - 10)
if os.environ.get("AUTORESEARCH_CHECKPOINT"):
    with open(os.environ["AUTORESEARCH_CHECKPOINT"], "w") as f:
        json.dump({"val": val}, f)
print("---")
print("peak_vram_mb: 1000.0")
'''

# An agent that thinks for a while, then makes a change no other child has (no duplicates).
SLOW_AGENT = ("command:sh -c 'sleep {seconds}; echo \"# tweak $(date +%s%N)\" >> engine/train.py; "
              "echo DESCRIPTION: tweak'")


def make_seed(root: Path) -> Path:
    (root / "prepare").mkdir(parents=True)
    (root / "prepare" / "__init__.py").write_text("MAX_SEQ_LEN = 256\n")
    (root / "prepare" / "trusted_eval.py").write_text(FAKE_EVALUATOR)
    (root / "engine").mkdir()
    (root / "engine" / "train.py").write_text(FAKE_TRAIN)
    (root / "program.md").write_text("Lower {metric} by editing `{train_file}`.\n")
    (root / ".gitignore").write_text("runs/\n__pycache__/\n")
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-qm", "seed"]):
        subprocess.run(["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost", *args], cwd=root,
                       check=True, capture_output=True)
    return root


def timed_driver_class():
    """The driver with a stopwatch around everything it does per experiment."""
    from population.driver import Driver

    class TimedDriver(Driver):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.cost = defaultdict(float)

        def _start(self, slot, train):
            exp_id, start = self.state.next_id(), time.perf_counter()
            super()._start(slot, train)
            self.cost[exp_id] += time.perf_counter() - start

        def _complete(self, done):      # a training starts inside the fleet when its worker's GPU frees
            start = time.perf_counter()
            super()._complete(done)
            self.cost[done.exp_id] += time.perf_counter() - start

    return TimedDriver


def run(work: Path, name: str, *, gpus: int, experiments: int, train_s: float, agent: str) -> tuple:
    """One run; returns (driver, trainings in start order, wall seconds)."""
    from tqdm import tqdm

    from population.config import RunConfig
    from population.console import Console

    seed = make_seed(work / name)
    record = work / f"{name}-record"
    record.mkdir()
    os.environ["AUTORESEARCH_FAKE_RECORD"] = str(record)
    os.environ["AUTORESEARCH_FAKE_SLEEP"] = str(train_s)
    config = RunConfig(tag=name, repo=str(seed), runs_dir=str(seed / "runs"), workdir=str(work / "workers"),
                       workers=gpus, noise_runs=gpus, max_experiments=experiments, budget_s=max(train_s, 1.0),
                       agents=[agent], population_size=max(4, gpus), tournament_size=2, agent_timeout_s=600,
                       sandbox=False)   # the fake train file records to the host
    driver = timed_driver_class()(config, console=Console(None))
    done = threading.Event()

    def progress():
        with tqdm(total=experiments, desc=name, unit="exp") as bar:
            while not done.wait(0.5):
                state = driver.state
                if state is not None:
                    bar.n = sum(1 for e in state.experiments.values() if e.phase == "finished")
                    bar.refresh()

    watcher = threading.Thread(target=progress, daemon=True)
    watcher.start()
    start = time.time()
    code = driver.run()
    wall = time.time() - start
    done.set()
    watcher.join()
    if code != 0:
        raise SystemExit(f"bench run {name} failed with exit code {code}")
    runs = sorted((json.loads(p.read_text()) for p in record.glob("*.json")), key=lambda r: r["start"])
    return driver, runs, wall


def gaps(runs: list[dict]) -> list[float]:
    """Idle seconds between consecutive trainings on the same GPU."""
    by_gpu = defaultdict(list)
    for r in runs:
        by_gpu[r["gpu"]].append(r)
    return [b["start"] - a["end"] for rs in by_gpu.values() for a, b in zip(rs, rs[1:])]


def busy_fractions(runs: list[dict]) -> dict[str, float]:
    """Per GPU: training time / wall time over the warm window (every GPU started -> last start)."""
    by_gpu = defaultdict(list)
    for r in runs:
        by_gpu[r["gpu"]].append(r)
    warm = max(rs[0]["start"] for rs in by_gpu.values())
    end = min(rs[-1]["start"] for rs in by_gpu.values())
    if end <= warm:
        return {}
    fractions = {}
    for gpu, rs in sorted(by_gpu.items()):
        busy = sum(max(0.0, min(r["end"], end) - max(r["start"], warm)) for r in rs)
        fractions[gpu] = busy / (end - warm)
    return fractions


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gpus", type=int, default=2, help="fake GPUs = workers (default: %(default)s)")
    parser.add_argument("--experiments", type=int, default=30, help="experiments of the overhead run (default: %(default)s)")
    parser.add_argument("--scaled-train", type=float, default=30.0, help="training seconds of the scaled run (default: %(default)s)")
    parser.add_argument("--scaled-agent", type=float, default=6.0, help="agent seconds of the scaled run (default: %(default)s)")
    parser.add_argument("--scaled-experiments", type=int, default=12, help="experiments of the scaled run (default: %(default)s)")
    parser.add_argument("--skip-scaled", action="store_true", help="only the overhead run")
    args = parser.parse_args()
    if args.gpus < 1 or args.experiments < args.gpus + 2 or args.scaled_experiments < 3 * args.gpus:
        print("bench: need --gpus >= 1, --experiments >= gpus + 2, --scaled-experiments >= 3 * gpus", file=sys.stderr)
        return 2

    import ray
    ray.init(address="local", num_gpus=args.gpus, num_cpus=max(2, os.cpu_count() or 2), include_dashboard=False,
             log_to_driver=False, configure_logging=False)
    rows = []
    with tempfile.TemporaryDirectory(prefix="driver-bench-") as tmp:
        work = Path(tmp)
        driver, runs, wall = run(work, "overhead", gpus=args.gpus, experiments=args.experiments, train_s=1.0,
                                 agent="mutate")
        costs = list(driver.cost.values())
        idle = gaps(runs)
        rows += [
            ("driver time per experiment, median / p90 (1 s training, instant agent)",
             f"{statistics.median(costs):.3f} s / {percentile(costs, 0.9):.3f} s", "< 0.5 s"),
            ("GPU idle between two trainings, median / p90 (driver + Ray + process start)",
             f"{statistics.median(idle):.3f} s / {percentile(idle, 0.9):.3f} s", ""),
            ("overhead run", f"{args.experiments} experiments, {len(runs)} trainings, {wall:.1f} s wall", ""),
        ]
        if not args.skip_scaled:
            agent = SLOW_AGENT.format(seconds=args.scaled_agent)
            driver, runs, wall = run(work, "scaled", gpus=args.gpus, experiments=args.scaled_experiments,
                                     train_s=args.scaled_train, agent=agent)
            fractions = busy_fractions(runs)
            shown = ", ".join(f"GPU {gpu}: {100 * f:.1f}%" for gpu, f in fractions.items()) or "n/a (too short)"
            rows += [
                (f"GPU training time once warm (agent {args.scaled_agent:g} s, training {args.scaled_train:g} s)",
                 shown, ">= 95%"),
                ("scaled run", f"{args.scaled_experiments} experiments, {len(runs)} trainings, {wall:.1f} s wall", ""),
            ]
    ray.shutdown()
    print(f"\nDriver benchmark: {args.gpus} fake GPUs / workers, {os.cpu_count()} host cores\n")
    print("| measure | result | target |\n| --- | --- | --- |")
    for measure, result, target in rows:
        print(f"| {measure} | {result} | {target} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
