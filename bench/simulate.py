"""Scale past one machine by simulation: the real driver against 1,000 simulated workers.

    python bench/simulate.py                                    # 1,000 workers, 100,000 experiments
    python bench/simulate.py --workers 50 --experiments 2000    # CPU-sized (tests/test_simulate.py)

The driver (population/driver.py's Driver with its real store, state, policy and prompts) runs
unchanged against in-process stand-ins for what lies outside it, handed to it (no module patched
but the store's clock):
- the fleet: population/fake_fleet.py's FakeFleet over a virtual clock, so a "300 s" training costs
  no wall time; its workload (`SimWorkload`) is the simulated workers: an agent changes one constant
  of a synthetic train file; a training returns a summary block whose val_bpb is a cheap landscape
  of those constants plus Gaussian noise;
- git (`SimGit`, the gitops functions the driver calls): commits are names of constant tuples (a
  blob id is the tuple's hash, so duplicates are still caught). Real git is measured separately
  (`--git-samples`): one child's round trip with the real gitops calls, in a repository holding
  `--git-refs` branches.
The virtual clock moves with the simulated events AND with the driver's own measured time (minus
the stand-ins'), so a slow driver delays the GPUs as it would in a real run.

Prints markdown tables: driver time per experiment as the store grows, store sizes, peak RSS,
GPU busy fraction and experiments per GPU-hour.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import math
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from population import gitops  # noqa: E402
from population.config import DEFAULT_SELECTION, SELECTIONS  # noqa: E402
from population.state import member_name  # noqa: E402
from population.training import EVALUATOR_FILE, TrainResult  # noqa: E402
from population.worker import Prepared  # noqa: E402

EPOCH = 1_800_000_000.0          # virtual time.time() at the start of a simulation
GPUS_PER_NODE = 8
PROGRAM_MD = "Lower {metric} by editing `{train_file}`.\n"


# ================================================================ the landscape (pure)

@dataclass
class Landscape:
    """val_bpb as a function of a few constants (in units of a typical agent's step): a bowl whose
    floor lies a few steps away from the seed (all zeros), plus run-to-run Gaussian noise."""
    names: tuple[str, ...] = ("MATRIX_LR", "EMBEDDING_LR", "UNEMBEDDING_LR", "SCALAR_LR", "WARMDOWN_RATIO",
                              "WEIGHT_DECAY", "DEPTH", "ASPECT_RATIO", "HEAD_DIM", "TOTAL_BATCH_SIZE")
    floor: float = 0.950
    noise: float = 0.0004        # the std measured on four identical H200 trainings
    seed: int = 0
    optimum: tuple[float, ...] = ()
    weights: tuple[float, ...] = ()

    def __post_init__(self):
        rng = random.Random(self.seed)
        self.optimum = tuple(rng.choice((-1, 1)) * rng.uniform(1.0, 4.0) for _ in self.names)
        # the seed (all zeros) sits 0.05 above the floor
        raw = [rng.uniform(0.5, 1.5) for _ in self.names]
        scale = 0.05 / sum(w * o * o for w, o in zip(raw, self.optimum))
        self.weights = tuple(w * scale for w in raw)

    def true_value(self, code: tuple[float, ...]) -> float:
        return self.floor + sum(w * (x - o) ** 2 for w, x, o in zip(self.weights, code, self.optimum))

    def observe(self, code: tuple[float, ...], rng: random.Random) -> float:
        return self.true_value(code) + rng.gauss(0.0, self.noise)

    def mutate(self, code: tuple[float, ...], rng: random.Random) -> tuple[tuple[float, ...], int]:
        """One constant moved by about one step (to four decimals, so two agents can still
        propose the same file): (the new code, which constant)."""
        which = rng.randrange(len(code))
        new = round(code[which] + rng.choice((-1, 1)) * rng.uniform(0.2, 1.5), 4)
        return code[:which] + (new,) + code[which + 1:], which


def blob_id(code: tuple[int, ...]) -> str:
    return hashlib.sha1(repr(code).encode()).hexdigest()


# ================================================================ the virtual clock

class Clock:
    """Virtual seconds: jumps to the next simulated event and also moves with the driver's own
    time (wall time spent outside the stand-ins), so the driver's cost delays the simulated GPUs.
    The fake fleet's clock (`now`, `jump_to`)."""

    def __init__(self):
        self.t = 0.0
        self.standin_wall = 0.0           # seconds spent inside the stand-ins (not driver time)
        self.standin_cpu = 0.0
        self._real = time.perf_counter()
        self._standin_mark = 0.0

    def now(self) -> float:
        real = time.perf_counter()
        driver = (real - self._real) - (self.standin_wall - self._standin_mark)
        self.t += max(0.0, driver)
        self._real, self._standin_mark = real, self.standin_wall
        return self.t

    def jump_to(self, t: float) -> None:
        self.t = max(self.now(), t)

    @contextlib.contextmanager
    def standin(self):
        """Time spent in here is the simulation's, not the driver's."""
        wall, cpu = time.perf_counter(), time.thread_time()
        try:
            yield
        finally:
            self.standin_wall += time.perf_counter() - wall
            self.standin_cpu += time.thread_time() - cpu


class VirtualTime:
    """Stands in for the `time` module inside the store (its table rewrites are throttled by
    time.monotonic, which takes no clock): the one module the simulation still patches."""

    def __init__(self, clock: Clock):
        self.clock = clock

    perf_counter = staticmethod(time.perf_counter)
    strftime = staticmethod(time.strftime)
    localtime = staticmethod(time.localtime)

    def time(self) -> float:
        return EPOCH + self.clock.now()

    monotonic = time


# ================================================================ the workers: a workload of the fake fleet

class SimWorkload:
    """What the simulated workers do (population/fake_fleet.py asks): an agent changes one constant
    of its parent; re-runs and baselines train the commit as is; a training returns a summary
    block and the trusted evaluator's figure of the landscape plus noise."""

    def __init__(self, sim: "Simulation"):
        self.sim = sim
        self.rngs: dict[str, random.Random] = {}
        self.train_rng = random.Random(sim.seed + 1)

    def _rng(self, worker: str) -> random.Random:
        if worker not in self.rngs:
            self.rngs[worker] = random.Random(self.sim.seed * 7919 + int(worker[1:]))
        return self.rngs[worker]

    def prepare(self, worker: str, job) -> tuple[Prepared, float]:
        sim, rng = self.sim, self._rng(worker)
        worktree = f"sim://{worker}/{job.exp_id}"
        log_path = f"sim://{worker}/logs/{job.exp_id}.log"
        if job.prompt is None:         # baseline or re-run: the commit as is
            sim.trainings_of[job.exp_id] = (worker, job.commit)
            return Prepared(job.exp_id, "ready", worktree, job.commit, log_path=log_path), sim.worktree_s
        think = sim.agent_s * rng.lognormvariate(0.0, 0.3)
        parent = sim.codes[job.commit]
        code, which = sim.landscape.mutate(parent, rng)
        name = sim.landscape.names[which]
        description = f"{name} step {parent[which]} -> {code[which]}"
        result = Prepared(job.exp_id, "ready", worktree, description=description, log_path=log_path,
                          transcript=f"(simulated agent) {description}\nDESCRIPTION: {description}\n",
                          agent_seconds=think, agent_tokens=int(think * 40), agent_cost_usd=think * 1e-3)
        if rng.random() < sim.agent_error_rate:
            result.status, result.reason = "agent_error", "simulated agent error: timed out"
            return result, think
        commit = hashlib.sha1(f"{sim.seed}:{job.exp_id}:{code}".encode()).hexdigest()
        sim.codes[commit] = code
        sim.trainings_of[job.exp_id] = (worker, commit)
        result.commit, result.bundle, result.bundle_ref = commit, commit.encode(), "refs/population-tmp/sim"
        return result, think

    def train(self, worker: str, job) -> tuple[TrainResult, float]:
        """A training of budget + overhead virtual seconds."""
        sim, rng = self.sim, self.train_rng
        start = sim.clock.t
        worker, commit = sim.trainings_of.pop(job.exp_id)
        seconds = (sim.budget_s + sim.overhead_s) * rng.uniform(0.98, 1.02)
        code = sim.codes[commit]
        evaluation = None
        if rng.random() < sim.crash_rate:
            log, code_rc = "Traceback (most recent call last):\nRuntimeError: simulated crash\n", 1
            seconds *= rng.random()
        else:
            value = sim.landscape.observe(code, rng)
            log = (progress_lines(value) + f"\n---\ntraining_seconds: {sim.budget_s:.1f}\n"
                   f"total_seconds:    {seconds:.1f}\npeak_vram_mb:     45060.2\nmfu_percent:      39.80\n"
                   f"total_tokens_M:   499.6\nnum_steps:        953\nnum_params_M:     50.3\ndepth:            8\n")
            code_rc = 0
            evaluation = {"metric": value, "holdout": value, "wall_seconds": 6.0}   # the trusted evaluator's
        sim.gpu_runs[worker].append((start, start + seconds))
        result = TrainResult(job.exp_id, code_rc, False, seconds, log, "NVIDIA H100 80GB HBM3",
                             f"sim-{worker}", "0", started_at=EPOCH + start, finished_at=EPOCH + start + seconds,
                             evaluation=evaluation, busy_seconds=sim.budget_s + 4.0)
        return result, seconds


def progress_lines(value: float, steps: int = 20) -> str:
    """engine/train.py's `\\r` progress lines for a curve that falls to `value` (the driver keeps
    it as curve.json: population/curves.py)."""
    return "".join(f"\rstep {i:05d} ({100 * i / steps:.1f}%) | loss: {value + 2 * (1 - i / steps) ** 2:.6f} | "
                   f"lrm: 1.00    " for i in range(steps + 1))


def sim_fleet(sim: "Simulation", config):
    """The fake fleet (population/fake_fleet.py) over the simulated workers; its own time (it
    stands in for Ray) is kept out of the driver's."""
    from population.fake_fleet import FakeFleet

    def standin(method):
        def timed(self, *args, **kwargs):
            with sim.clock.standin():
                return method(self, *args, **kwargs)
        return timed

    class SimFleet(FakeFleet):
        prepare = standin(FakeFleet.prepare)
        train = standin(FakeFleet.train)
        cleanup = standin(FakeFleet.cleanup)
        maintain = standin(FakeFleet.maintain)

        @standin
        def wait(self, timeout):
            done = FakeFleet.wait(self, timeout)
            sim.progress()
            return done

    return SimFleet(SimWorkload(sim), config, clock=sim.clock)


# ================================================================ git stand-in

class SimRepo:
    def __init__(self, path: str):
        self.working_tree_dir = path


class SimGit:
    """The gitops calls the driver makes; commits are names of constant tuples."""
    GitOpsError = gitops.GitOpsError
    git = gitops.git
    member_branch = staticmethod(gitops.member_branch)
    best_branch = staticmethod(gitops.best_branch)

    def __init__(self, sim: "Simulation"):
        self.sim = sim
        self.refs: dict[str, str] = {}
        self.calls: Counter = Counter()

    def __getattr__(self, name):
        raise AttributeError(f"SimGit has no {name}: the driver calls a gitops function the simulation lacks")

    def _count(self, name: str) -> None:
        self.calls[name] += 1

    def open_run_repo(self, path) -> SimRepo:
        return SimRepo(str(path))

    def clear_run_ref_locks(self, repo, tag) -> list[str]:
        return []

    def check_seed(self, repo, train_file) -> str:
        return self.sim.seed_commit

    def has_commit(self, repo, commit) -> bool:
        return commit in self.sim.codes

    def set_ref(self, repo, branch, commit) -> None:
        self._count("set_ref")
        self.refs[branch] = commit

    def ref_commit(self, repo, branch):
        return self.refs.get(branch) or self.refs.get(f"refs/heads/{branch}")

    def list_branches(self, repo, prefix):
        refs = {name.removeprefix("refs/heads/"): commit for name, commit in self.refs.items()}
        return {name: commit for name, commit in refs.items() if name.startswith(prefix)}

    def delete_branch(self, repo, branch):
        self.refs.pop(branch, None)
        self.refs.pop(f"refs/heads/{branch}", None)

    def commit_subject(self, repo, commit):
        return f"the change of {commit[:7]}"

    def add_worktree(self, repo, path, branch) -> None:
        self._count("add_worktree")

    def remove_worktree(self, repo, path) -> None:
        self._count("remove_worktree")

    def add_detached_worktree(self, repo, path, commit, branch=None) -> None:
        self._count("add_detached_worktree")

    def bundle_bytes(self, repo, commit, exclude=()) -> tuple[bytes, str]:
        self._count("bundle_bytes")
        return commit.encode(), "refs/population-tmp/sim"

    def fetch_bundle(self, repo, data, bundle_ref, dest_ref=None) -> str:
        self._count("fetch_bundle")
        commit = data.decode()
        if dest_ref:
            self.refs[dest_ref] = commit
        return commit

    def file_blob(self, repo, commit, path):
        self._count("file_blob")
        if path == EVALUATOR_FILE:                      # the seed's fixed side has its evaluator
            return blob_id(("evaluator",)) if commit in self.sim.codes else None
        code = self.sim.codes.get(commit)
        return blob_id(code) if code is not None else None

    def file_text(self, repo, commit, path) -> str:
        """program.md, or the train file as text: its constants; it imports nothing (its metric is made up)."""
        self._count("file_text")
        if path == "program.md":
            return PROGRAM_MD
        return "".join(f"{n} = {v!r}\n" for n, v in zip(self.sim.landscape.names, self.sim.codes[commit]))

    def diff(self, repo, old, new) -> str:
        self._count("diff")
        before, after = self.sim.codes[old], self.sim.codes[new]
        lines = [f"-{n} = {a}\n+{n} = {b}" for n, a, b in zip(self.sim.landscape.names, before, after) if a != b]
        return "--- a/engine/train.py\n+++ b/engine/train.py\n" + "\n".join(lines) + "\n"


# ================================================================ the simulation

class FsyncCounter:
    """os.fsync, counted (the store's durability cost is fsyncs x the disk's latency)."""

    def __init__(self, fsync):
        self.fsync, self.count = fsync, 0

    def __call__(self, fd):
        self.count += 1
        return self.fsync(fd)



@dataclass
class Simulation:
    workers: int
    experiments: int
    budget_s: float = 300.0
    overhead_s: float = 27.0           # start-up, compile, evaluation outside the budget
    agent_s: float = 60.0
    worktree_s: float = 2.0
    crash_rate: float = 0.03
    agent_error_rate: float = 0.02
    seed: int = 0
    population_size: int = 64
    selection: str = DEFAULT_SELECTION     # the driver's --selection
    noise: float = 0.0004
    progress_bar: bool = True
    clock: Clock = field(default_factory=Clock)
    fsyncs: FsyncCounter = field(default_factory=lambda: FsyncCounter(os.fsync))
    landscape: Landscape = None
    codes: dict = field(default_factory=dict)            # commit -> constants
    trainings_of: dict = field(default_factory=dict)     # exp_id -> (worker, commit), until it trains
    gpu_runs: dict = field(default_factory=lambda: defaultdict(list))

    def __post_init__(self):
        self.landscape = Landscape(noise=self.noise, seed=self.seed)
        self.seed_commit = "5eed" * 10
        self.codes[self.seed_commit] = (0.0,) * len(self.landscape.names)
        self._bar = None
        self._driver = None

    def progress(self) -> None:
        if self._bar is None or self._driver is None or self._driver.state is None:
            return
        done = self._driver.finished_count
        if done - self._bar.n >= 100 or done == self.experiments:
            self._bar.update(done - self._bar.n)


def sim_driver_class():
    """The real Driver, with the two setup checks that read real files replaced, and a stopwatch
    (wall and CPU, the stand-ins' time taken out) around what it does per experiment."""
    from population.driver import Driver

    class SimDriver(Driver):
        def __init__(self, *args, sim_clock: Clock, **kwargs):
            super().__init__(*args, **kwargs)
            self.sim_clock = sim_clock
            self.wall = defaultdict(float)
            self.cpu = defaultdict(float)
            self.table_writes: list[tuple[int, float]] = []
            self.finished_count = 0
            self._depth = 0
            self._last_exp = 0

        def _seed_fingerprint(self) -> str:
            return "sim-prepare"

        def _cache_fingerprint(self) -> str:
            return "sim-cache"

        @contextlib.contextmanager
        def _timed(self, exp_id: int):
            self._depth += 1
            if self._depth > 1:
                try:
                    yield
                finally:
                    self._depth -= 1
                return
            wall, cpu = time.perf_counter(), time.thread_time()
            s_wall, s_cpu = self.sim_clock.standin_wall, self.sim_clock.standin_cpu
            try:
                yield
            finally:
                self._depth -= 1
                self.wall[exp_id] += (time.perf_counter() - wall) - (self.sim_clock.standin_wall - s_wall)
                self.cpu[exp_id] += (time.thread_time() - cpu) - (self.sim_clock.standin_cpu - s_cpu)

        def _start(self, slot, train):
            with self._timed(self.state.next_id()):
                super()._start(slot, train)

        def _complete(self, done):
            self._last_exp = max(self._last_exp, done.exp_id)
            with self._timed(done.exp_id):
                super()._complete(done)

        def _record_finished(self, flight, row, *args, **kwargs):
            self.finished_count += 1
            super()._record_finished(flight, row, *args, **kwargs)

        def refresh_tables(self, force: bool = False):
            written = self.store._tables_written_at
            start = time.perf_counter()
            with self._timed(self._last_exp):
                super().refresh_tables(force)
            if self.store._tables_written_at != written:
                self.table_writes.append((len(self.state.experiments), time.perf_counter() - start))

    return SimDriver


@contextlib.contextmanager
def patched_store(sim: Simulation):
    """The store's table throttle on the virtual clock and its fsyncs counted (restored after)."""
    import population.store as store_module

    patches = [(store_module, "time", VirtualTime(sim.clock)), (os, "fsync", sim.fsyncs)]
    saved = [(module, name, getattr(module, name)) for module, name, _ in patches]
    try:
        for module, name, value in patches:
            setattr(module, name, value)
        yield
    finally:
        for module, name, value in saved:
            setattr(module, name, value)


@dataclass
class Outcome:
    code: int
    driver: object
    sim: Simulation
    simgit: SimGit
    run_dir: Path
    wall_s: float
    cpu_s: float


def make_driver(sim: Simulation, runs_dir: Path, tag: str = "sim", simgit: "SimGit | None" = None, **changes):
    """The real driver on the fake fleet over the simulated workers, with the git stand-in (`changes`:
    RunConfig settings, e.g. resume=True, max_experiments=...)."""
    from population.config import RunConfig
    from population.console import Console

    config = RunConfig(tag=tag, repo=str(runs_dir), runs_dir=str(runs_dir), workers=sim.workers,
                       max_experiments=sim.experiments, budget_s=sim.budget_s, agents=["mutate"],
                       population_size=sim.population_size, selection=sim.selection, seed=sim.seed,
                       status_every_s=600.0, sandbox=False).replace(**changes)   # nothing runs: no bwrap needed
    simgit = simgit or SimGit(sim)
    driver = sim_driver_class()(config, console=Console(None), sim_clock=sim.clock, fleet=sim_fleet(sim, config),
                                git=simgit, clock=lambda: EPOCH + sim.clock.now())
    sim._driver = driver
    return driver, simgit


def simulate(sim: Simulation, runs_dir: Path, tag: str = "sim") -> Outcome:
    """Run the real driver against the simulated workers until `sim.experiments` are recorded."""
    from tqdm import tqdm

    driver, simgit = make_driver(sim, runs_dir, tag)
    wall, cpu = time.perf_counter(), time.process_time()
    with patched_store(sim), tqdm(total=sim.experiments, desc=f"{sim.workers} workers", unit="exp",
                                  disable=not sim.progress_bar, mininterval=2.0) as bar:
        sim._bar = bar
        sim.clock.now()
        code = driver.run()
    return Outcome(code, driver, sim, simgit, runs_dir / tag, time.perf_counter() - wall,
                   time.process_time() - cpu)


# ================================================================ figures

def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else math.nan


def checkpoints(experiments: int) -> list[int]:
    """Store sizes to report: 1k, 10k, 100k, ... up to the run's size, and the size itself."""
    sizes = [10 ** k for k in range(3, 9) if 10 ** k < experiments]
    return sizes + [experiments]


def window_costs(costs: dict[int, float], size: int) -> list[float]:
    """Per-experiment driver seconds of the experiments with ids in the last 10% before `size`."""
    low = int(0.9 * size)
    return [costs[i] for i in range(low, size) if i in costs]


def gpu_busy(gpu_runs: dict[str, list[tuple[float, float]]]) -> tuple[float, float]:
    """(busy fraction, window seconds) over the warm window: from the moment every GPU has started
    its first training to the last moment every GPU still starts one."""
    runs = [sorted(r) for r in gpu_runs.values() if r]
    if not runs:
        return math.nan, 0.0
    warm = max(r[0][0] for r in runs)
    end = min(r[-1][0] for r in runs)
    if end <= warm:
        return math.nan, 0.0
    busy = sum(max(0.0, min(b, end) - max(a, warm)) for r in runs for a, b in r)
    return busy / (len(runs) * (end - warm)), end - warm


def champion_true_value(outcome: Outcome) -> tuple[float, float]:
    """(the seed's true val_bpb, the final champion's true val_bpb) on the landscape."""
    sim, state = outcome.sim, outcome.driver.state
    seed = sim.landscape.true_value(sim.codes[sim.seed_commit])
    champion = state.members[state.champion] if state.champion else None
    return seed, sim.landscape.true_value(sim.codes[champion.commit]) if champion else math.nan


def size_of(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def tree_size(path: Path) -> tuple[int, int]:
    """(bytes, files) under `path`."""
    total = files = 0
    for root, _, names in os.walk(path):
        for name in names:
            total += os.path.getsize(os.path.join(root, name))
            files += 1
    return total, files


def fsync_latency(directory: Path, count: int = 30) -> float:
    """Seconds per fsync of a small append in `directory` (the store's disk)."""
    path = directory / ".fsync-probe"
    with open(path, "wb") as f:
        start = time.perf_counter()
        for _ in range(count):
            f.write(b"x" * 200)
            f.flush()
            os.fsync(f.fileno())
        seconds = (time.perf_counter() - start) / count
    path.unlink()
    return seconds


def report(outcome: Outcome, git: dict | None, disk_fsync_s: float | None = None) -> str:
    driver, sim = outcome.driver, outcome.sim
    n = sim.experiments
    lines = [f"\nSimulated population: {sim.workers} workers, {n:,} experiments, budget {sim.budget_s:g} s "
             f"(+{sim.overhead_s:g} s outside it), agent ~{sim.agent_s:g} s, {os.cpu_count()} host cores\n",
             "| store size (experiments) | driver CPU per experiment, median / p99 | driver wall per experiment, median / p99 |",
             "| --- | --- | --- |"]
    for size in checkpoints(n):
        cpu, wall = window_costs(driver.cpu, size), window_costs(driver.wall, size)
        lines.append(f"| {size:,} | {1e3 * statistics.median(cpu):.2f} / {1e3 * percentile(cpu, 0.99):.2f} ms | "
                     f"{1e3 * statistics.median(wall):.2f} / {1e3 * percentile(wall, 0.99):.2f} ms |")
    busy, window = gpu_busy(sim.gpu_runs)
    trainings = sum(len(r) for r in sim.gpu_runs.values())
    mean_train = statistics.fmean(b - a for r in sim.gpu_runs.values() for a, b in r)
    driver_s = sum(driver.wall.values())
    virtual = sim.clock.t
    seed_value, best_value = champion_true_value(outcome)
    events, lineage, results = (size_of(outcome.run_dir / name) for name in ("events.jsonl", "lineage.parquet", "results.tsv"))
    exp_bytes, exp_files = tree_size(outcome.run_dir / "experiments")
    writes = driver.table_writes
    last_write = max(writes, key=lambda w: w[0]) if writes else (0, math.nan)
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rows = [
        ("driver time, all of it (handlers + loop), per experiment",
         f"{1e3 * (outcome.wall_s - sim.clock.standin_wall) / n:.2f} ms wall, "
         f"{1e3 * (outcome.cpu_s - sim.clock.standin_cpu) / n:.2f} ms CPU"),
        ("driver busy / virtual wall time", f"{100 * driver_s / virtual:.2f}% ({virtual / 3600:.1f} virtual h)"),
        ("GPU busy, warm window", f"{100 * busy:.2f}% of {sim.workers} GPUs over {window / 3600:.1f} h"),
        ("trainings per GPU-hour (warm window; limit 3600 / mean training)",
         f"{3600 * busy / mean_train:.2f} (limit {3600 / mean_train:.2f})"),
        ("experiments per GPU-hour, whole run (incl. untrained, ramp-up and drain)",
         f"{3600 * n / (sim.workers * virtual):.2f}"),
        ("trainings / experiments", f"{trainings:,} / {n:,}"),
        ("table rewrites (lineage.parquet + results.tsv)",
         f"{len(writes)}, the last at {last_write[0]:,} rows took {last_write[1]:.2f} s"),
        (f"events.jsonl at {n:,}", f"{events / 1e6:.1f} MB"),
        (f"lineage.parquet at {n:,}", f"{lineage / 1e6:.1f} MB"),
        (f"results.tsv at {n:,}", f"{results / 1e6:.1f} MB"),
        ("experiments/ (run.log, diff.patch, prompt.md, transcript.txt)", f"{exp_bytes / 1e6:.0f} MB in {exp_files:,} files"),
        ("peak RSS (driver + stand-ins)", f"{rss_mb:.0f} MB"),
        ("fsyncs per experiment (journal, experiment files, run.json, tables)", f"{sim.fsyncs.count / n:.1f}"
         + (f"; x {1e3 * disk_fsync_s:.2f} ms on this machine's disk = {1e3 * disk_fsync_s * sim.fsyncs.count / n:.1f} ms"
            " per experiment (not in the figures above when --runs-dir is on tmpfs)" if disk_fsync_s else "")),
        ("true val_bpb: seed -> final champion (floor 0.950)", f"{seed_value:.4f} -> {best_value:.4f}"),
        ("git calls stubbed per experiment", ", ".join(f"{name} {count / n:.2f}"
                                                       for name, count in sorted(outcome.simgit.calls.items()))),
        ("simulation wall time", f"{outcome.wall_s:.0f} s"),
    ]
    if git:
        per_call = ", ".join(f"{name} {1e3 * seconds:.0f}" for name, seconds in sorted(git["driver"].items()))
        git_s = git_per_experiment(git, outcome.simgit.calls, n)
        rate = n / virtual
        rows.append((f"real git calls, median ms ({git['refs']:,} member branches)", per_call))
        rows.append(("real git per experiment on the driver (stubbed calls x their cost)",
                     f"{1e3 * git_s:.0f} ms; driver busy with it: {100 * (driver_s / virtual + git_s * rate):.1f}%"))
        rows.append(("real git per child on its worker (fetch, worktree, commit, bundle)", f"{1e3 * git['worker']:.0f} ms"))
    lines += ["", "| measure | result |", "| --- | --- |"] + [f"| {a} | {b} |" for a, b in rows]
    return "\n".join(lines) + "\n"


# ================================================================ one real git round trip

def _git(cwd: Path, *args: str, stdin: str | None = None) -> None:
    subprocess.run(["git", "-c", "user.name=sim", "-c", "user.email=sim@localhost", *args], cwd=cwd, check=True,
                   capture_output=True, input=stdin, text=True)


def measure_git(work: Path, samples: int, refs: int) -> dict:
    """The gitops calls of `samples` children, for real, each timed: the driver bundles the parent,
    the worker fetches it, checks out a worktree, edits one constant, commits and bundles the child
    back; the driver fetches it, compares blobs, diffs, adds the member's worktree, moves `best` and
    culls one. Returns {"refs", "worker": seconds per child, "driver": {gitops call: seconds}}."""
    from population import gitops as g

    seed = work / "seed"
    (seed / "engine").mkdir(parents=True)
    (seed / "engine" / "train.py").write_text("".join(f"{name} = 0\n" for name in Landscape().names))
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-qm", "seed"]):
        _git(seed, *args)
    repo = g.open_run_repo(seed)
    base = g.head_commit(repo)
    if refs:   # the run repository after `refs` experiments: one branch per member
        _git(seed, "update-ref", "--stdin", stdin="".join(
            f"create refs/heads/{g.member_branch('sim', member_name(i))} {base}\n" for i in range(refs)))
        _git(seed, "pack-refs", "--all")
    clone = g.init_clone(work / "clone")
    driver: dict[str, list[float]] = defaultdict(list)
    worker_s, parent = [], base

    def timed(name, fn, *args):
        start = time.perf_counter()
        value = fn(*args)
        driver[name].append(time.perf_counter() - start)
        return value

    for i in range(samples):
        member = member_name(refs + i)
        branch = g.member_branch("sim", member)
        data, ref = timed("bundle_bytes", g.bundle_bytes, repo, parent)
        start = time.perf_counter()
        if not g.has_commit(clone, parent):
            g.fetch_bundle(clone, data, ref)
        tree = work / "worktrees" / str(i)
        g.add_detached_worktree(clone, tree, parent, branch)
        train = tree / "engine" / "train.py"
        train.write_text(train.read_text().replace(" = ", f" = {i}+", 1))
        child = g.commit_worktree(tree, f"child {i}", ["engine/train.py"])
        child_bundle, child_ref = g.bundle_bytes(clone, child, exclude=[parent])
        g.remove_worktree(clone, tree)
        worker_s.append(time.perf_counter() - start)
        commit = timed("fetch_bundle", g.fetch_bundle, repo, child_bundle, child_ref, f"refs/heads/{branch}")
        timed("file_blob", g.file_blob, repo, commit, "engine/train.py")
        timed("diff", g.diff, repo, parent, commit)
        timed("add_worktree", g.add_worktree, repo, work / "members" / member, branch)
        timed("set_ref", g.set_ref, repo, g.best_branch("sim"), commit)
        timed("remove_worktree", g.remove_worktree, repo, work / "members" / member)
        parent = commit
    return {"refs": refs, "worker": statistics.median(worker_s),
            "driver": {name: statistics.median(times) for name, times in driver.items()}}


def git_per_experiment(git: dict, calls: Counter, experiments: int) -> float:
    """Seconds of real git per experiment on the driver: each stubbed call's rate x its measured cost."""
    return sum(git["driver"][name] * count / experiments for name, count in calls.items() if name in git["driver"])


# ================================================================ CLI

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 2)[2])
    parser.add_argument("--workers", type=int, default=1000, help="simulated workers = GPUs (default: %(default)s)")
    parser.add_argument("--experiments", type=int, default=100_000, help="experiments to record (default: %(default)s)")
    parser.add_argument("--budget", type=float, default=300.0, help="training budget, virtual seconds (default: %(default)s)")
    parser.add_argument("--overhead", type=float, default=27.0,
                        help="virtual seconds of a training outside its budget (default: %(default)s)")
    parser.add_argument("--agent-seconds", type=float, default=60.0, help="median agent time (default: %(default)s)")
    parser.add_argument("--crash-rate", type=float, default=0.03, help="fraction of trainings that crash (default: %(default)s)")
    parser.add_argument("--agent-error-rate", type=float, default=0.02, help="fraction of agent errors (default: %(default)s)")
    parser.add_argument("--population-size", type=int, default=64, help="living members (default: %(default)s)")
    parser.add_argument("--selection", choices=SELECTIONS, default=DEFAULT_SELECTION,
                        help="the driver's selection rule (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="simulation seed (default: %(default)s)")
    parser.add_argument("--runs-dir", default=None,
                        help="where the store goes, e.g. /dev/shm/sim to leave disk latency out (default: a "
                             "temporary folder, removed after)")
    parser.add_argument("--git-samples", type=int, default=20,
                        help="children of the real git round trip (0: skip; default: %(default)s)")
    parser.add_argument("--git-refs", type=int, default=None,
                        help="member branches in the git measurement's repository (default: --experiments)")
    args = parser.parse_args(argv)
    problems = [f"--{name} must be > 0" for name in ("workers", "experiments", "budget", "population_size")
                if getattr(args, name) <= 0]
    problems += [f"--{name.replace('_', '-')} must be in [0, 1)" for name in ("crash_rate", "agent_error_rate")
                 if not 0 <= getattr(args, name) < 1]
    if args.experiments < args.workers + 3:
        problems.append("--experiments must be at least --workers + 3")
    if args.overhead < 0 or args.agent_seconds < 0 or args.git_samples < 0 or (args.git_refs or 0) < 0:
        problems.append("--overhead, --agent-seconds, --git-samples and --git-refs must be >= 0")
    if problems:
        parser.exit(2, f"simulate: error: {'; '.join(problems)}\n")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sim = Simulation(workers=args.workers, experiments=args.experiments, budget_s=args.budget,
                     overhead_s=args.overhead, agent_s=args.agent_seconds, crash_rate=args.crash_rate,
                     agent_error_rate=args.agent_error_rate, seed=args.seed, population_size=args.population_size,
                     selection=args.selection)
    with tempfile.TemporaryDirectory(prefix="simulate-") as tmp:
        runs = Path(args.runs_dir) if args.runs_dir else Path(tmp) / "runs"
        if (runs / "sim").exists():
            print(f"simulate: error: {runs / 'sim'} already exists; pick another --runs-dir", file=sys.stderr)
            return 2
        outcome = simulate(sim, runs)
        if outcome.code != 0:
            print(f"simulate: error: the driver exited with code {outcome.code}", file=sys.stderr)
            return 1
        disk_fsync = fsync_latency(Path(tmp))
        git = None
        if args.git_samples:
            refs = args.experiments if args.git_refs is None else args.git_refs
            git = measure_git(Path(tmp) / "git", args.git_samples, refs)
        print(report(outcome, git, disk_fsync))
    return 0


if __name__ == "__main__":
    sys.exit(main())
