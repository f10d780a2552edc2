"""Search quality on a cheap landscape (issue 9): our population against the reference's greedy loop.

A synthetic "train file" holds autoresearch's hyperparameter block; its TRUE val_bpb is a known
function of those UPPER_CASE constants, and every "training" returns the true value plus Gaussian
noise of the size measured on identical H200 trainings (std 0.0004, REFERENCE.md). Everything runs
in-process: no Ray, no git, no GPU; one training is a function call. Two landscapes:
- bowl: a separable bowl in log space around hidden optima; most harmful edits are clearly worse
  than the noise, most helpful ones are small (the first landscape of this bench, unchanged);
- plateau: the regime of the autoresearch logs: most single edits move val_bpb by less than or about
  the noise, the best learning rates scale with the square root of the batch size, and a learning
  rate past twice its best diverges (a steep penalty).

Both searches use the project's own offline mutator (`population.agents.mutate`), so they differ
only in how they select:
- greedy (the reference's program.md): one branch; train the child once; keep it if its single
  noisy val_bpb is strictly lower than the incumbent's, else revert. Also run by N agents on one
  branch (each child starts from the tip of the moment) to measure what asynchrony costs it.
- population (ours): the real `PopulationState` fed with journal events and the real selection
  rules: baseline trained `noise_runs` times to measure the noise, tournament selection of parents,
  aging, a champion promoted only past the noise margin, confirming re-runs; N asynchronous workers
  (a worker picks its next parent from what has finished so far).

Compared at equal numbers of trainings, and at equal wall time (N workers against one sequential
agent for the same hours, so N times the trainings). Reported: the TRUE value of the result each
method hands back (our champion, the greedy branch tip), the best true value it still holds (our
best living member: the gap to the champion is the price of promoting only past the noise margin),
the trainings spent re-running code already trained, and how often a lucky-noise child was
promoted/kept although its true value was not better than the incumbent's.

    python bench/landscape.py --seeds 50 --trainings 100 --workers 8
"""
from __future__ import annotations

import argparse
import functools
import heapq
import math
import random
import statistics
import sys
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from population.agents.mutate import find_candidates, mutate_source  # noqa: E402
from population.config import (DEFAULT_CONFIRM_RUNS, DEFAULT_MAX_RUNS, DEFAULT_POPULATION_SIZE,  # noqa: E402
                               DEFAULT_PROMOTION_Z, DEFAULT_SELECTION,
                               DEFAULT_TOURNAMENT_SIZE, MAX_NOISE_RUNS_DEFAULT, RERUN_OPTIMISM, SELECTIONS,
                               default_promotion_confidence)
from population.selection import (choose_culls, estimate_noise, posterior_choice,  # noqa: E402
                                  promotion_decision, tournament_select)
from population.state import PopulationState  # noqa: E402

METRIC = "val_bpb"
NOISE_STD = 0.0004          # std of val_bpb over identical trainings (REFERENCE.md, four H200s)

SEED_SOURCE = '''"""A synthetic train file: autoresearch's hyperparameter block, nothing else."""
ASPECT_RATIO = 64
HEAD_DIM = 128
TOTAL_BATCH_SIZE = 2**19
EMBEDDING_LR = 0.6
UNEMBEDDING_LR = 0.004
MATRIX_LR = 0.04
SCALAR_LR = 0.5
WEIGHT_DECAY = 0.2
WARMDOWN_RATIO = 0.5
DEPTH = 8
DEVICE_BATCH_SIZE = 128
'''

# ---- the landscapes --------------------------------------------------------------------------

# bowl: TRUE val_bpb = FLOOR + sum of WEIGHT * ln(value / OPTIMUM)**2 over the constants that matter;
# the others (HEAD_DIM, DEVICE_BATCH_SIZE, SCALAR_LR) are neutral, as many real edits are.
# Weights make the baseline about 1% above the floor and most single edits worth 0.0002-0.003,
# the same order as the noise (most kept changes in the autoresearch logs are below it).
FLOOR = 0.9850
OPTIMA = {"ASPECT_RATIO": 56, "TOTAL_BATCH_SIZE": 2**18, "EMBEDDING_LR": 0.8, "UNEMBEDDING_LR": 0.006,
          "MATRIX_LR": 0.05, "WEIGHT_DECAY": 0.1, "WARMDOWN_RATIO": 0.7, "DEPTH": 10}
WEIGHTS = {"ASPECT_RATIO": 0.010, "TOTAL_BATCH_SIZE": 0.006, "EMBEDDING_LR": 0.004, "UNEMBEDDING_LR": 0.004,
           "MATRIX_LR": 0.020, "WEIGHT_DECAY": 0.003, "WARMDOWN_RATIO": 0.010, "DEPTH": 0.012}

# plateau: the same bowl shape with weights 2-10x smaller, so that about half of the single edits move
# val_bpb by less than the noise and the median edit by about the noise (the baseline sits ~10 noise
# std above the floor); the best MATRIX_LR and EMBEDDING_LR grow with sqrt(TOTAL_BATCH_SIZE) (an
# interaction a one-constant edit cannot follow), and MATRIX_LR past twice its best diverges.
PLATEAU_WEIGHTS = {"ASPECT_RATIO": 0.002, "TOTAL_BATCH_SIZE": 0.002, "EMBEDDING_LR": 0.001,
                   "UNEMBEDDING_LR": 0.001, "MATRIX_LR": 0.004, "WEIGHT_DECAY": 0.001,
                   "WARMDOWN_RATIO": 0.002, "DEPTH": 0.004}
DIVERGENCE_SLOPE = 0.05     # val_bpb per unit of ln(MATRIX_LR / best) past ln 2


@functools.lru_cache(maxsize=1 << 16)
def _constants(source: str) -> tuple[tuple[str, float], ...]:
    return tuple((c.name, float(2 ** c.value if c.power_of_two_exponent else c.value))
                 for c in find_candidates(source))


def constants(source: str) -> dict[str, float]:
    """The numeric UPPER_CASE constants of a train file (`2**N` read as its value)."""
    return dict(_constants(source))


def bowl_value(values: dict[str, float]) -> float:
    return FLOOR + sum(w * math.log(values[name] / OPTIMA[name]) ** 2 for name, w in WEIGHTS.items())


def plateau_optima(values: dict[str, float]) -> dict[str, float]:
    lr_scale = math.sqrt(values["TOTAL_BATCH_SIZE"] / 2**18)   # the square-root LR-batch rule
    return {**OPTIMA, "EMBEDDING_LR": OPTIMA["EMBEDDING_LR"] * lr_scale,
            "MATRIX_LR": OPTIMA["MATRIX_LR"] * lr_scale}


def plateau_value(values: dict[str, float]) -> float:
    optima = plateau_optima(values)
    bowl = sum(w * math.log(values[name] / optima[name]) ** 2 for name, w in PLATEAU_WEIGHTS.items())
    past_stable = math.log(values["MATRIX_LR"] / optima["MATRIX_LR"]) - math.log(2.0)
    return FLOOR + bowl + DIVERGENCE_SLOPE * max(0.0, past_stable)


@dataclass(frozen=True)
class Landscape:
    name: str
    floor: float
    value: Callable[[dict[str, float]], float]   # true val_bpb from the constants

    def true_value(self, source: str) -> float:
        return self.value(constants(source))


BOWL = Landscape("bowl", FLOOR, bowl_value)
PLATEAU = Landscape("plateau", FLOOR, plateau_value)
LANDSCAPES = {landscape.name: landscape for landscape in (BOWL, PLATEAU)}


def true_value(source: str, landscape: Landscape = BOWL) -> float:
    return landscape.true_value(source)


def train(source: str, rng: random.Random, noise_std: float = NOISE_STD, landscape: Landscape = BOWL) -> float:
    """One 'training': the true value plus run-to-run noise."""
    return landscape.true_value(source) + rng.gauss(0.0, noise_std)


@dataclass
class Outcome:
    final_true: float          # true val_bpb of the result the method hands back
    trainings: int
    held_true: float = math.nan  # best true val_bpb among what it still holds (greedy: its tip)
    promotions: int = 0        # greedy: kept children; population: champion changes
    lucky: int = 0             # promotions whose true value was not better than the incumbent's
    confirming: int = 0        # trainings of code already trained (extra baseline runs, re-runs)


# ---- (b) the reference: one greedy branch ----------------------------------------------------

def run_greedy(trainings: int, rng: random.Random, noise_std: float = NOISE_STD,
               landscape: Landscape = BOWL) -> Outcome:
    """program.md's loop: baseline once, then keep a child iff its one run is strictly lower."""
    current = SEED_SOURCE
    current_measured = train(current, rng, noise_std, landscape)
    outcome = Outcome(final_true=math.nan, trainings=trainings)
    for _ in range(trainings - 1):
        child, _ = mutate_source(current, rng)
        measured = train(child, rng, noise_std, landscape)
        if measured < current_measured:
            outcome.promotions += 1
            outcome.lucky += landscape.true_value(child) >= landscape.true_value(current)
            current, current_measured = child, measured
    outcome.final_true = outcome.held_true = landscape.true_value(current)
    return outcome


def run_greedy_parallel(trainings: int, rng: random.Random, workers: int, noise_std: float = NOISE_STD,
                        landscape: Landscape = BOWL) -> Outcome:
    """The same loop run by `workers` agents on one branch: the baseline once, then each free agent
    mutates the tip of the moment, and a finished child becomes the tip iff its one run is lower
    than the tip's. What asynchrony costs a search that has no selection beyond the keep rule."""
    tip = SEED_SOURCE
    tip_measured = train(tip, rng, noise_std, landscape)
    outcome = Outcome(final_true=math.nan, trainings=trainings)
    running: list = []      # heap of (finish time, order, child)
    started = 1

    def start(now: float) -> None:
        nonlocal started
        child, _ = mutate_source(tip, rng)
        heapq.heappush(running, (now + 1.0 + rng.uniform(0.0, 0.2), started, child))
        started += 1

    while started < min(trainings, workers + 1):
        start(1.0)
    while running:
        now, _, child = heapq.heappop(running)
        measured = train(child, rng, noise_std, landscape)
        if measured < tip_measured:
            outcome.promotions += 1
            outcome.lucky += landscape.true_value(child) >= landscape.true_value(tip)
            tip, tip_measured = child, measured
        if started < trainings:
            start(now)
    outcome.final_true = outcome.held_true = landscape.true_value(tip)
    return outcome


# ---- (a) ours: the population, driven through the real state and selection -----------------

@dataclass
class PopulationSettings:
    """The selection settings the bench runs; by default the driver's own (population.config)."""
    workers: int = 8
    population_size: int = DEFAULT_POPULATION_SIZE
    tournament_size: int | None = DEFAULT_TOURNAMENT_SIZE   # None: the whole population
    cull: str = "age"
    selection: str = DEFAULT_SELECTION      # posterior | margin
    confidence: float | None = None         # posterior: P(better) that promotes; None: the driver's 1 - 0.1/workers
    z: float = DEFAULT_PROMOTION_Z          # margin: the promotion margin in standard errors
    max_runs: int = DEFAULT_MAX_RUNS
    min_runs: int = DEFAULT_CONFIRM_RUNS    # trainings behind a member before it can be promoted
    noise_runs: int = MAX_NOISE_RUNS_DEFAULT
    rerun_optimism: float | None = RERUN_OPTIMISM   # None: re-run every positive gain (the first rule)

    @property
    def k(self) -> int:
        return self.tournament_size or self.population_size

    @property
    def promotion_confidence(self) -> float:
        return self.confidence or default_promotion_confidence(self.workers)

    @property
    def posterior(self) -> bool:
        return self.selection == "posterior"

    def describe(self) -> str:
        if self.posterior:
            confidence = self.confidence or "1 - 0.1/workers"
            return (f"posterior selection, population size {self.population_size}, tournament {self.k}, cull by "
                    f"{self.cull}, promoted at {confidence} probability of being better than the champion "
                    f"with at least {self.min_runs} trainings of it and its descendants")
        optimism = "any gain" if self.rerun_optimism is None else \
            f"gains within {self.rerun_optimism:g} standard error of the margin"
        return (f"margin selection, population size {self.population_size}, tournament {self.k}, cull by "
                f"{self.cull}, z {self.z:g}, promoted after at least {min(self.min_runs, self.max_runs)} and at most "
                f"{self.max_runs} runs, re-runs for {optimism}")


# The rules this bench started with (config.py's tournament of 3, a re-run for every positive gain).
FIRST_RULES = PopulationSettings(population_size=8, tournament_size=3, selection="margin", z=2.0, max_runs=3,
                                 min_runs=1, rerun_optimism=None)
# The driver's defaults before "confirm once" (sessions 2-5): the whole population as tournament,
# promotion on one run past 2 standard errors, re-runs while a gain can still clear the margin.
PREVIOUS_RULES = PopulationSettings(population_size=8, tournament_size=None, selection="margin", z=2.0,
                                    max_runs=3, min_runs=1, rerun_optimism=1.0)
# The margin rule "confirm once" (sessions 7-8's defaults): z 1 on the mean of two runs.
MARGIN_RULES = PopulationSettings(selection="margin")


@dataclass
class _Simulation:
    """An asynchronous run of `workers` trainers over one PopulationState."""
    settings: PopulationSettings
    rng: random.Random
    noise_std: float
    landscape: Landscape
    state: PopulationState = field(default_factory=lambda: PopulationState(METRIC))
    sources: dict[str, str] = field(default_factory=dict)     # commit -> train file
    running: list = field(default_factory=list)                # heap of (finish time, id, commit, value)
    reruns: deque = field(default_factory=deque)               # members waiting for a confirming run
    undecided: list[str] = field(default_factory=list)         # finished before the noise was known
    outcome: Outcome = field(default_factory=lambda: Outcome(math.nan, 0))

    def true_value(self, member: str) -> float:
        return self.landscape.true_value(self.sources[self.state.members[member].commit])

    def start(self, now: float, kind: str, member: str, parent_id: int | None, commit: str) -> None:
        exp_id = self.state.next_id()
        self.state.apply({"type": "experiment_started", "id": exp_id, "kind": kind, "member": member,
                          "parent_id": parent_id, "parent_commit": "", "worker": "", "agent": "mutate",
                          "seed": exp_id, "budget_s": 300.0, "time": now})
        value = train(self.sources[commit], self.rng, self.noise_std, self.landscape)
        finish = now + 1.0 + self.rng.uniform(0.0, 0.2)   # trainings take about the same time
        heapq.heappush(self.running, (finish, exp_id, commit, value))
        self.outcome.trainings += 1
        self.outcome.confirming += kind == "rerun" or (kind == "baseline" and exp_id > 0)

    def start_next(self, now: float) -> None:
        """What a free worker does: a pending re-run first, else a child of a tournament winner."""
        while self.reruns:
            member = self.state.members[self.reruns.popleft()]
            if member.alive:
                self.start(now, "rerun", member.name, member.first_id, member.commit)
                return
        candidates = self.state.candidates(estimated=self.settings.posterior)
        if candidates:
            parent = self.state.members[tournament_select(candidates, self.settings.k, self.rng).member]
            parent_id, parent_source = parent.first_id, self.sources[parent.commit]
        else:  # nothing has finished yet: children of the baseline
            parent_id, parent_source = 0, SEED_SOURCE
        child, _ = mutate_source(parent_source, self.rng)
        commit = f"c{self.state.next_id()}"
        self.sources[commit] = child
        self.start(now, "child", f"m{self.state.next_id():05d}", parent_id, commit)

    def finish(self, now: float, exp_id: int, commit: str, value: float) -> None:
        self.state.apply({"type": "experiment_finished", "id": exp_id,
                          "row": {"commit": commit, "status": "ok", METRIC: value, "finished_at": now}})
        exp = self.state.experiments[exp_id]
        if exp.kind == "baseline":
            baseline = self.state.members[exp.member]
            if len(baseline.runs) == self.settings.noise_runs:
                self.state.apply({"type": "noise", "std": estimate_noise(baseline.runs), "time": now})
                self.state.apply({"type": "champion", "member": baseline.name, "time": now})
                for member in self.undecided:
                    self.decide(now, member)
                self.undecided.clear()
        elif self.state.champion is None:
            self.undecided.append(exp.member)
        else:
            self.decide(now, exp.member)
        self.cull(now)

    def decide(self, now: float, name: str) -> None:
        member, champion = self.state.members[name], self.state.members[self.state.champion]
        if not member.alive or name == champion.name:
            return
        if self.settings.posterior:
            best = posterior_choice(self.state.candidates(estimated=True), champion.name, self.state.posterior,
                                    confidence=self.settings.promotion_confidence,
                                    min_evidence=self.settings.min_runs)
            if best is not None:
                self.promote(now, best, champion.name)
            return
        decision = promotion_decision(member.runs, champion.runs, self.state.noise_std, z=self.settings.z,
                                      max_runs=self.settings.max_runs, min_runs=self.settings.min_runs,
                                      rerun_optimism=self.settings.rerun_optimism)
        if decision == "promote":
            self.promote(now, name, champion.name)
        elif decision == "rerun":
            self.reruns.append(name)

    def promote(self, now: float, name: str, champion: str) -> None:
        self.outcome.promotions += 1
        self.outcome.lucky += self.true_value(name) >= self.true_value(champion)
        self.state.apply({"type": "champion", "member": name, "time": now})

    def cull(self, now: float) -> None:
        waiting = set(self.reruns) | {e.member for e in self.state.in_flight() if e.kind == "rerun"}
        protect = frozenset(waiting | {self.state.champion} | set(self.undecided))
        if self.settings.posterior:
            protect |= self.state.awaiting_confirmation(self.settings.min_runs)
        for name in choose_culls(self.state.candidates(estimated=self.settings.posterior),
                                 self.settings.population_size, self.settings.cull,
                                 self.settings.k, self.rng, protect=protect):
            self.state.apply({"type": "member_culled", "member": name, "time": now})


def run_population(trainings: int, rng: random.Random, settings: PopulationSettings | None = None,
                   noise_std: float = NOISE_STD, landscape: Landscape = BOWL) -> Outcome:
    """`trainings` trainings by `settings.workers` asynchronous workers; the champion is the result."""
    settings = settings or PopulationSettings()
    sim = _Simulation(settings, rng, noise_std, landscape)
    sim.sources["c0"] = SEED_SOURCE
    noise_runs = min(settings.noise_runs, settings.workers, trainings)   # as the driver: min(workers, 3)
    settings = sim.settings = replace(settings, noise_runs=max(1, noise_runs))
    for _ in range(noise_runs):   # the baseline on the first workers; the rest start children of it
        sim.start(0.0, "baseline", "m00000", None, "c0")
    while sim.outcome.trainings < min(settings.workers, trainings):
        sim.start_next(0.0)
    while sim.running:
        now, exp_id, commit, value = heapq.heappop(sim.running)
        sim.finish(now, exp_id, commit, value)
        if sim.outcome.trainings < trainings:
            sim.start_next(now)
    sim.outcome.final_true = sim.true_value(sim.state.champion)
    sim.outcome.held_true = min(sim.true_value(member.name) for member in sim.state.living())
    return sim.outcome


# ---- the comparison --------------------------------------------------------------------------

@dataclass
class Row:
    label: str
    trainings: int
    hours: float               # wall time in trainings of one worker (~5 min + overhead each)
    finals: list[float] = field(default_factory=list)
    held: list[float] = field(default_factory=list)
    promotions: int = 0
    lucky: int = 0
    confirming: int = 0

    @property
    def mean(self) -> float:
        return statistics.fmean(self.finals)

    @property
    def held_mean(self) -> float:
        return statistics.fmean(self.held)

    @property
    def lucky_fraction(self) -> float:
        return self.lucky / self.promotions if self.promotions else 0.0

    @property
    def confirming_fraction(self) -> float:
        return self.confirming / (self.trainings * len(self.finals)) if self.finals else 0.0

    def add(self, outcome: Outcome) -> None:
        self.finals.append(outcome.final_true)
        self.held.append(outcome.held_true)
        self.promotions += outcome.promotions
        self.lucky += outcome.lucky
        self.confirming += outcome.confirming


def _plans(trainings: int, workers: int, settings: PopulationSettings) -> list[tuple[str, Callable, int, float]]:
    """(label, run(trainings, rng, noise, landscape) -> Outcome, trainings, hours) of each method."""
    def population(plan_settings: PopulationSettings) -> Callable:
        return lambda n, rng, noise, landscape: run_population(n, rng, plan_settings, noise, landscape)

    plans = [("greedy, 1 agent", run_greedy, trainings, trainings),
             (f"greedy, {workers} agents on one branch, equal trainings",
              lambda n, rng, noise, landscape: run_greedy_parallel(n, rng, workers, noise, landscape),
              trainings, 1 + math.ceil((trainings - 1) / workers)),
             (f"population, {workers} workers, equal trainings", population(settings), trainings,
              math.ceil(trainings / workers)),
             ("population, 1 worker, equal trainings", population(replace(settings, workers=1)), trainings,
              trainings),
             (f"population, {workers} workers, equal wall time", population(settings), trainings * workers,
              trainings)]
    return [plans[0], plans[3]] if workers == 1 else plans


def compare(seeds: int, trainings: int, workers: int, settings: PopulationSettings | None = None,
            noise_std: float = NOISE_STD, landscape: Landscape = BOWL, progress: bool = False,
            seed_offset: int = 0) -> list[Row]:
    """Greedy with T trainings (1 agent, and N agents on one branch) against ours with T trainings
    (N workers, and 1 worker) and with T x N trainings on N workers (the same hours as one agent).
    Seed s gives every method the same random stream, so the seeds pair up; `seed_offset` picks
    another set of seeds (to check that a difference is not the noise of one set)."""
    settings = replace(settings or PopulationSettings(), workers=workers)
    plans = _plans(trainings, workers, settings)
    rows = [Row(label, n, hours) for label, _, n, hours in plans]
    iterator = range(seed_offset, seed_offset + seeds)
    if progress:
        from tqdm import tqdm
        iterator = tqdm(iterator, desc=f"{landscape.name} seeds", unit="seed", file=sys.stderr)
    for seed in iterator:
        for row, (_, run, n, _) in zip(rows, plans):
            row.add(run(n, random.Random(f"{landscape.name}-{seed}"), noise_std, landscape))
    return rows


def markdown_table(rows: list[Row], seeds: int, noise_std: float = NOISE_STD,
                   settings: PopulationSettings | None = None, landscape: Landscape = BOWL,
                   seed_offset: int = 0) -> str:
    """The comparison as a markdown table (for BENCHMARKS.md), with a line saying what was run."""
    settings = settings or PopulationSettings()
    baseline = landscape.true_value(SEED_SOURCE)
    greedy = rows[0]
    lines = [f"Landscape `{landscape.name}` (`bench/landscape.py`): noise std {noise_std}, baseline true "
             f"val_bpb {baseline:.4f}, optimum {landscape.floor:.4f}; {seeds} seeds"
             f"{f' from {seed_offset}' if seed_offset else ''}; {settings.describe()}. "
             "Wall time in training slots (one training = one slot). Held: the best true value the method "
             "still holds at the end (our best living member, greedy's tip). Confirming: trainings of code "
             "already trained. A lucky promotion: promoted/kept although its true value is not better "
             "than the incumbent's.",
             "",
             "| method | trainings | wall time | true val_bpb of the result (mean ± sd) | gap closed | "
             "better than greedy (seeds) | held (mean) | confirming | promotions | lucky promotions |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for row in rows:
        sd = statistics.stdev(row.finals) if len(row.finals) > 1 else 0.0
        closed = (baseline - row.mean) / (baseline - landscape.floor)
        wins = "-" if row is greedy else \
            f"{sum(a < b for a, b in zip(row.finals, greedy.finals))}/{len(row.finals)}"
        lines.append(f"| {row.label} | {row.trainings} | {row.hours:g} | {row.mean:.5f} ± {sd:.5f} | "
                     f"{closed:.0%} | {wins} | {row.held_mean:.5f} | {row.confirming_fraction:.0%} | "
                     f"{row.promotions} | {row.lucky} ({row.lucky_fraction:.0%}) |")
    return "\n".join(lines)


def _optimism(text: str) -> float | None:
    if text.lower() in ("off", "none", "any"):
        return None
    value = float(text)
    if value < 0 or not math.isfinite(value):
        raise argparse.ArgumentTypeError("must be a number >= 0, or 'off'")
    return value


def main(argv: list[str] | None = None) -> int:
    defaults = PopulationSettings()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=50, help="independent repetitions (default 50)")
    parser.add_argument("--trainings", type=int, default=100,
                        help="trainings of the greedy agent, about one night (default 100)")
    parser.add_argument("--workers", type=int, default=8, help="parallel workers of the population (default 8)")
    parser.add_argument("--landscape", choices=(*LANDSCAPES, "all"), default="all")
    parser.add_argument("--population-size", type=int, default=defaults.population_size)
    parser.add_argument("--tournament-size", type=int, default=None,
                        help="parents: best of this many members (default: the whole population)")
    parser.add_argument("--cull", choices=("age", "tournament"), default=defaults.cull)
    parser.add_argument("--selection", choices=SELECTIONS, default=defaults.selection,
                        help="posterior (the driver's default) or margin (the rule before it)")
    parser.add_argument("--confidence", type=float, default=None,
                        help="posterior: probability of being better that promotes (default: the driver's, "
                             "1 - 0.1/workers)")
    parser.add_argument("--z", type=float, default=defaults.z, help="margin: promotion margin in standard errors")
    parser.add_argument("--max-runs", type=int, default=defaults.max_runs, help="runs of one member at most")
    parser.add_argument("--min-runs", type=int, default=defaults.min_runs,
                        help="trainings behind a member before it can be promoted: its own and its descendants' "
                             "(posterior), or its own, a first run past the margin re-run to confirm it (margin) "
                             "(default %(default)s)")
    parser.add_argument("--seed-offset", type=int, default=0,
                        help="first seed (default 0): another offset gives an independent set of seeds")
    parser.add_argument("--rerun-optimism", type=_optimism, default=defaults.rerun_optimism,
                        help="re-run a candidate only if its gain plus this many standard errors can clear "
                             "the margin after --max-runs runs; 'off' re-runs every gain (default 1)")
    parser.add_argument("--noise", type=float, default=NOISE_STD, help=f"run-to-run std (default {NOISE_STD})")
    args = parser.parse_args(argv)
    for name in ("seeds", "trainings", "workers", "population_size", "tournament_size", "max_runs", "min_runs"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.exit(2, f"error: --{name.replace('_', '-')} must be >= 1\n")
    if args.noise < 0 or args.z < 0 or args.seed_offset < 0:
        parser.exit(2, "error: --noise, --z and --seed-offset must be >= 0\n")
    if args.confidence is not None and not 0.5 <= args.confidence < 1:
        parser.exit(2, "error: --confidence must be >= 0.5 and < 1\n")
    settings = PopulationSettings(workers=args.workers, population_size=args.population_size,
                                  tournament_size=args.tournament_size, cull=args.cull, selection=args.selection,
                                  confidence=args.confidence, z=args.z,
                                  max_runs=args.max_runs, min_runs=args.min_runs,
                                  rerun_optimism=args.rerun_optimism)
    names = list(LANDSCAPES) if args.landscape == "all" else [args.landscape]
    tables = []
    for name in names:
        rows = compare(args.seeds, args.trainings, args.workers, settings, args.noise, LANDSCAPES[name],
                       progress=True, seed_offset=args.seed_offset)
        tables.append(markdown_table(rows, args.seeds, args.noise, settings, LANDSCAPES[name], args.seed_offset))
    print("\n\n".join(tables))
    return 0


if __name__ == "__main__":
    sys.exit(main())
