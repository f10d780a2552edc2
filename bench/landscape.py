"""Search quality on a cheap landscape (issue 9): our population against the reference's greedy loop.

A synthetic "train file" holds autoresearch's hyperparameter block; its TRUE val_bpb is a known
function of those UPPER_CASE constants, and every "training" returns the true value plus noise.
The noise is drawn from a range (`Noise.ranged`, the default): each code has its own level, between
a third of `--noise` and `--noise` (log-uniform, fixed by the code's text), and its runs scatter with
heavy tails (Student-t, 4 degrees of freedom, scaled to that level); `--noise-model fixed` is the
Gaussian of one size the defaults were first tuned on (std 0.0004, measured on four identical H200
trainings, REFERENCE.md). Everything runs in-process: no Ray, no git, no GPU; one training is a
function call. Two landscapes:
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
- population (ours): the driver's own policy (population/policy.py) over the real `PopulationState`,
  its decisions applied as the driver journals them: the noise phase, tournament selection of
  parents, promotion, re-runs, culls; N asynchronous workers (a free worker takes what the policy
  hands out, given what has finished so far).

Compared at equal numbers of trainings, and at equal wall time (N workers against one sequential
agent for the same hours, so N times the trainings). Reported: the TRUE value of the result each
method hands back (our champion, the greedy branch tip), the best true value it still holds (our
best living member: the gap to the champion is the price of promoting only past the noise margin),
the trainings spent re-running code already trained, and how often a lucky-noise child was
promoted/kept although its true value was not better than the incumbent's.

    python bench/landscape.py --seeds 50 --trainings 100 --workers 8
    python bench/landscape.py --seeds 50 --noise 0.003                 # heavy, code-dependent noise
    python bench/landscape.py --seeds 50 --noise 0.0004 --noise-model fixed
"""
from __future__ import annotations

import argparse
import functools
import hashlib
import heapq
import math
import random
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from population.agents.mutate import find_candidates, mutate_source  # noqa: E402
from population.config import SELECTIONS  # noqa: E402
from population.policy import SEED_MEMBER, Policy, Promote, Settings, apply  # noqa: E402
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


@dataclass(frozen=True)
class Noise:
    """Run-to-run noise: each code's level lies in [std * low, std] (log-uniform, fixed by the
    code's text: a code-dependent level), its runs scatter around the true value as a Student-t of
    `dof` degrees of freedom scaled to that level (heavy tails); dof None is a Gaussian."""
    std: float = NOISE_STD
    low: float = 1.0               # 1: every code has the level `std`
    dof: float | None = None

    @classmethod
    def ranged(cls, std: float) -> "Noise":
        """The bench's default: levels from std/3 to std, tails of a t with 4 degrees of freedom."""
        return cls(std, 1 / 3, 4.0)

    @classmethod
    def fixed(cls, std: float) -> "Noise":
        """One Gaussian level for every code (the model the defaults were first tuned on)."""
        return cls(std)

    def level(self, source: str) -> float:
        if self.low >= 1.0:
            return self.std
        return self.std * self.low ** _unit(source)

    def draw(self, source: str, rng: random.Random) -> float:
        z = rng.gauss(0.0, 1.0)
        if self.dof is not None:        # t = z / sqrt(chi2/dof), variance dof/(dof-2): scaled to 1
            z *= math.sqrt((self.dof - 2.0) / rng.gammavariate(self.dof / 2.0, 2.0))
        return self.level(source) * z

    def describe(self) -> str:
        if self.low >= 1.0 and self.dof is None:
            return f"Gaussian noise std {self.std:g}"
        return (f"noise levels {self.std * self.low:.2g}-{self.std:g} by code, "
                + (f"Student-t tails ({self.dof:g} dof)" if self.dof else "Gaussian"))


@functools.lru_cache(maxsize=1 << 16)
def _unit(source: str) -> float:
    """A number in [0, 1) fixed by the code's text."""
    return int.from_bytes(hashlib.blake2b(source.encode(), digest_size=8).digest(), "big") / 2 ** 64


def as_noise(noise: "Noise | float") -> Noise:
    return noise if isinstance(noise, Noise) else Noise.fixed(noise)


def train(source: str, rng: random.Random, noise: "Noise | float" = NOISE_STD, landscape: Landscape = BOWL) -> float:
    """One 'training': the true value plus run-to-run noise (a float: Gaussian of that std)."""
    return landscape.true_value(source) + as_noise(noise).draw(source, rng)


@dataclass
class Outcome:
    final_true: float          # true val_bpb of the result the method hands back
    trainings: int
    held_true: float = math.nan  # best true val_bpb among what it still holds (greedy: its tip)
    promotions: int = 0        # greedy: kept children; population: champion changes
    lucky: int = 0             # promotions whose true value was not better than the incumbent's
    confirming: int = 0        # trainings of code already trained (extra baseline runs, re-runs)
    reruns: int = 0            # of which re-runs of members (the margin rule's confirmations)


# ---- (b) the reference: one greedy branch ----------------------------------------------------

def run_greedy(trainings: int, rng: random.Random, noise_std: "Noise | float" = NOISE_STD,
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


def run_greedy_parallel(trainings: int, rng: random.Random, workers: int, noise_std: "Noise | float" = NOISE_STD,
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


# ---- (a) ours: the population, the driver's policy over the real state -------------------

def describe(settings: Settings) -> str:
    s = settings.resolved()
    if s.posterior:
        confidence = settings.promotion_confidence or "1 - 0.1/sqrt(workers)"
        return (f"posterior selection, population size {s.population_size}, tournament {s.tournament_size}, cull by "
                f"{s.cull}, promoted at {confidence} probability of being better than the champion "
                f"with at least {s.confirm_runs} trainings of it and its descendants"
                + (f" and {s.promotion_runs} of its own (a confirming re-run first)" if s.promotion_runs > 1 else ""))
    optimism = "any gain" if s.rerun_optimism is None else \
        f"gains within {s.rerun_optimism:g} standard error of the margin"
    return (f"margin selection, population size {s.population_size}, tournament {s.tournament_size}, cull by "
            f"{s.cull}, z {s.promotion_z:g}, promoted after at least {min(s.confirm_runs, s.max_runs)} and at most "
            f"{s.max_runs} runs, re-runs for {optimism}")


# The rules this bench started with (config.py's tournament of 3, a re-run for every positive gain).
FIRST_RULES = Settings(population_size=8, tournament_size=3, selection="margin", promotion_z=2.0, max_runs=3,
                       confirm_runs=1, rerun_optimism=None)
# The driver's defaults before "confirm once" (sessions 2-5): the whole population as tournament,
# promotion on one run past 2 standard errors, re-runs while a gain can still clear the margin.
PREVIOUS_RULES = Settings(population_size=8, selection="margin", promotion_z=2.0, max_runs=3, confirm_runs=1,
                          rerun_optimism=1.0)
# The margin rule "confirm once" (sessions 7-8's defaults): z 1 on the mean of two runs.
MARGIN_RULES = Settings(selection="margin")


def posterior_before_confirmation(workers: int) -> Settings:
    """Posterior selection as issue 21's first figures had it: promoted on the posterior alone, no
    confirming re-run, at the Bonferroni confidence 1 - 0.1/workers."""
    return Settings(workers=workers, promotion_runs=1, promotion_confidence=1 - 0.1 / workers)


class _Simulation:
    """An asynchronous run of `workers` trainers: the policy's work handed out, its decisions
    applied to the state as the driver journals them (no Ray, no git, no files)."""

    def __init__(self, settings: Settings, rng: random.Random, noise: Noise, landscape: Landscape):
        self.state = PopulationState(METRIC)
        self.policy = Policy(settings, rng)
        self.rng, self.noise, self.landscape = rng, noise, landscape
        self.sources = {"c0": SEED_SOURCE}          # commit -> train file
        self.running: list = []                     # heap of (finish time, id, commit, value)
        self.members = 0
        self.outcome = Outcome(math.nan, 0)

    def true_value(self, member: str) -> float:
        return self.landscape.true_value(self.sources[self.state.members[member].commit])

    def decide(self, decisions, now: float) -> None:
        for decision in decisions:
            if isinstance(decision, Promote) and decision.previous is not None:
                self.outcome.promotions += 1
                self.outcome.lucky += self.true_value(decision.member) >= self.true_value(decision.previous)
            apply(self.state, decision, now)

    def start_next(self, now: float) -> None:
        """What a free worker does: what the policy hands out (a queued baseline or re-run, else a
        child of its tournament's winner)."""
        handed = self.policy.next_work(self.state)
        work, exp_id = handed.work, self.state.next_id()
        if work.kind == "child":
            self.members += 1
            member, parent_id = f"m{self.members:04d}", self.state.first_id(work.parent)
            parent = self.state.members.get(work.parent)
            commit = f"c{exp_id + 1}"
            self.sources[commit], _ = mutate_source(self.sources[parent.commit if parent else "c0"], self.rng)
        else:
            member, parent_id = work.member, self.state.origin(work.member)[1]
            commit = self.state.members[member].commit if member in self.state.members else "c0"
        self.state.apply(handed.started(exp_id, member, parent_id, time=now))
        value = train(self.sources[commit], self.rng, self.noise, self.landscape)
        finish = now + 1.0 + self.rng.uniform(0.0, 0.2)   # trainings take about the same time
        heapq.heappush(self.running, (finish, exp_id, commit, value))
        self.outcome.trainings += 1
        self.outcome.confirming += work.kind == "rerun" or (work.kind == "baseline" and exp_id > 0)
        self.outcome.reruns += work.kind == "rerun"

    def finish(self, now: float, exp_id: int, commit: str, value: float) -> None:
        self.state.apply({"type": "experiment_finished", "id": exp_id, "time": now,
                          "row": {"commit": commit, "status": "ok", METRIC: value, "finished_at": now}})
        self.decide(self.policy.on_result(self.state, exp_id), now)


def run_population(trainings: int, rng: random.Random, settings: Settings | None = None,
                   noise_std: "Noise | float" = NOISE_STD, landscape: Landscape = BOWL) -> Outcome:
    """`trainings` trainings by `settings.workers` asynchronous workers; the champion is the result."""
    settings = replace(settings or Settings(), max_experiments=trainings).resolved()
    sim = _Simulation(settings, rng, as_noise(noise_std), landscape)
    sim.decide(sim.policy.on_start(sim.state), 0.0)
    while sim.outcome.trainings < min(settings.workers, trainings):
        sim.start_next(0.0)
    while sim.running:
        now, exp_id, commit, value = heapq.heappop(sim.running)
        sim.finish(now, exp_id, commit, value)
        if sim.policy.can_hand_out(sim.state):
            sim.start_next(now)
    champion = sim.state.champion or SEED_MEMBER
    sim.outcome.final_true = sim.true_value(champion) if champion in sim.state.members else \
        landscape.true_value(SEED_SOURCE)
    sim.outcome.held_true = min((sim.true_value(member.name) for member in sim.state.living()),
                                default=sim.outcome.final_true)
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


def _plans(trainings: int, workers: int, settings: Settings) -> list[tuple[str, Callable, int, float]]:
    """(label, run(trainings, rng, noise, landscape) -> Outcome, trainings, hours) of each method."""
    def population(plan_settings: Settings) -> Callable:
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


def compare(seeds: int, trainings: int, workers: int, settings: Settings | None = None,
            noise_std: "Noise | float" = NOISE_STD, landscape: Landscape = BOWL, progress: bool = False,
            seed_offset: int = 0) -> list[Row]:
    """Greedy with T trainings (1 agent, and N agents on one branch) against ours with T trainings
    (N workers, and 1 worker) and with T x N trainings on N workers (the same hours as one agent).
    Seed s gives every method the same random stream, so the seeds pair up; `seed_offset` picks
    another set of seeds (to check that a difference is not the noise of one set)."""
    settings = replace(settings or Settings(), workers=workers)
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


def markdown_table(rows: list[Row], seeds: int, noise_std: "Noise | float" = NOISE_STD,
                   settings: Settings | None = None, landscape: Landscape = BOWL,
                   seed_offset: int = 0) -> str:
    """The comparison as a markdown table (for BENCHMARKS.md), with a line saying what was run."""
    settings = settings or Settings()
    baseline = landscape.true_value(SEED_SOURCE)
    greedy = rows[0]
    lines = [f"Landscape `{landscape.name}` (`bench/landscape.py`): {as_noise(noise_std).describe()}, baseline true "
             f"val_bpb {baseline:.4f}, optimum {landscape.floor:.4f}; {seeds} seeds"
             f"{f' from {seed_offset}' if seed_offset else ''}; {describe(settings)}. "
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
    defaults = Settings()
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
                             "1 - 0.1/sqrt(workers))")
    parser.add_argument("--z", type=float, default=defaults.promotion_z,
                        help="margin: promotion margin in standard errors")
    parser.add_argument("--max-runs", type=int, default=defaults.max_runs, help="runs of one member at most")
    parser.add_argument("--min-runs", type=int, default=defaults.confirm_runs,
                        help="trainings behind a member before it can be promoted: its own and its descendants' "
                             "(posterior), or its own, a first run past the margin re-run to confirm it (margin) "
                             "(default %(default)s)")
    parser.add_argument("--seed-offset", type=int, default=0,
                        help="first seed (default 0): another offset gives an independent set of seeds")
    parser.add_argument("--rerun-optimism", type=_optimism, default=defaults.rerun_optimism,
                        help="re-run a candidate only if its gain plus this many standard errors can clear "
                             "the margin after --max-runs runs; 'off' re-runs every gain (default 1)")
    parser.add_argument("--noise-runs", type=int, default=None,
                        help="baseline trainings of the noise phase (default: the driver's, 3)")
    parser.add_argument("--noise", type=float, default=NOISE_STD,
                        help=f"run-to-run std: the top of the range of levels (default {NOISE_STD})")
    parser.add_argument("--noise-model", choices=("ranged", "fixed"), default="ranged",
                        help="ranged: a level per code from a third of --noise to --noise, Student-t tails "
                             "(default); fixed: Gaussian of std --noise for every code")
    args = parser.parse_args(argv)
    for name in ("seeds", "trainings", "workers", "population_size", "tournament_size", "max_runs", "min_runs",
                 "noise_runs"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.exit(2, f"error: --{name.replace('_', '-')} must be >= 1\n")
    if args.noise < 0 or args.z < 0 or args.seed_offset < 0:
        parser.exit(2, "error: --noise, --z and --seed-offset must be >= 0\n")
    if args.confidence is not None and not 0.5 <= args.confidence < 1:
        parser.exit(2, "error: --confidence must be >= 0.5 and < 1\n")
    settings = Settings(workers=args.workers, population_size=args.population_size,
                        tournament_size=args.tournament_size, cull=args.cull, selection=args.selection,
                        promotion_confidence=args.confidence, promotion_z=args.z, max_runs=args.max_runs,
                        confirm_runs=args.min_runs, rerun_optimism=args.rerun_optimism, noise_runs=args.noise_runs)
    noise = (Noise.ranged if args.noise_model == "ranged" else Noise.fixed)(args.noise)
    names = list(LANDSCAPES) if args.landscape == "all" else [args.landscape]
    tables = []
    for name in names:
        rows = compare(args.seeds, args.trainings, args.workers, settings, noise, LANDSCAPES[name],
                       progress=True, seed_offset=args.seed_offset)
        tables.append(markdown_table(rows, args.seeds, noise, settings, LANDSCAPES[name], args.seed_offset))
    print("\n\n".join(tables))
    return 0


if __name__ == "__main__":
    sys.exit(main())
