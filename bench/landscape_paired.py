"""Is a difference between two selection rules real? Paired seeds on bench/landscape.py's landscapes.

A 50-seed table (bench/landscape.py) cannot tell apart rules that differ by a fraction of the noise.
Here every seed gives each method the same random stream, and what is reported is the mean and the
standard error of the per-seed differences of the true val_bpb each method hands back, in units of
1e-4 (negative: the first method is better), for the two regimes that matter:
- 8 workers at equal wall time (8 x T trainings) against greedy's T trainings;
- 1 worker at equal numbers of trainings (T each): the selection rule alone.
Compared: the driver's defaults (population.config: posterior selection), the margin rule before
them (MARGIN_RULES, `--selection margin`), the reference's greedy loop and, with `--candidate`, the
defaults with some settings changed. Pick seeds the rules were not chosen on (`--seed-offset`).

    python bench/landscape_paired.py --seeds 200 --seed-offset 3000
    python bench/landscape_paired.py --seeds 200 --seed-offset 4000 --candidate z=0.5
"""
from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.landscape import (LANDSCAPES, MARGIN_RULES, NOISE_STD, Landscape, PopulationSettings,  # noqa: E402
                             run_greedy, run_population)


@dataclass
class Results:
    """True val_bpb per seed and the promotions of one method in one regime."""
    finals: list[float] = field(default_factory=list)
    promotions: int = 0
    lucky: int = 0

    def add(self, outcome) -> None:
        self.finals.append(outcome.final_true)
        self.promotions += outcome.promotions
        self.lucky += outcome.lucky

    @property
    def lucky_text(self) -> str:
        return f"{self.lucky}/{self.promotions} ({self.lucky / self.promotions:.0%})" if self.promotions else "0"


def paired(a: list[float], b: list[float]) -> tuple[float, float, int]:
    """Mean and standard error of a - b in units of 1e-4, and the seeds where a is strictly better."""
    diffs = [(x - y) * 1e4 for x, y in zip(a, b)]
    se = statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else 0.0
    return statistics.fmean(diffs), se, sum(d < 0 for d in diffs)


def regimes(workers: int) -> tuple[str, str]:
    return f"{workers} workers, equal wall time", "1 worker, equal trainings"


def run(seeds: int, seed_offset: int, trainings: int, workers: int, landscape: Landscape,
        rules: dict[str, PopulationSettings], progress: bool = False
        ) -> tuple[Results, dict[tuple[str, str], Results]]:
    """Greedy (T trainings), and each rule set in each regime, keyed (rule, regime): `workers`
    workers with workers x T trainings, and one worker with T trainings; seed s gives every method
    the same random stream."""
    wall_time, equal_trainings = regimes(workers)
    greedy = Results()
    results = {(name, regime): Results() for name in rules for regime in (wall_time, equal_trainings)}
    iterator = range(seed_offset, seed_offset + seeds)
    if progress:
        from tqdm import tqdm
        iterator = tqdm(iterator, desc=f"{landscape.name} seeds", unit="seed", file=sys.stderr)
    for seed in iterator:
        def rng():
            return random.Random(f"{landscape.name}-{seed}")
        greedy.add(run_greedy(trainings, rng(), NOISE_STD, landscape))
        for name, settings in rules.items():
            results[name, wall_time].add(
                run_population(workers * trainings, rng(), replace(settings, workers=workers), NOISE_STD, landscape))
            results[name, equal_trainings].add(
                run_population(trainings, rng(), replace(settings, workers=1), NOISE_STD, landscape))
    return greedy, results


def markdown(greedy: Results, results: dict[tuple[str, str], Results], landscape: Landscape, seeds: int,
             seed_offset: int, baseline_rule: str) -> str:
    lines = [f"Landscape `{landscape.name}`, {seeds} paired seeds from {seed_offset}; differences in 1e-4 val_bpb "
             "(negative: this row is better), mean ± standard error; seeds won: strictly better on that seed.",
             "",
             f"| method | true val_bpb (mean) | minus greedy | seeds won vs greedy | minus {baseline_rule} | lucky promotions |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for (name, regime), row in results.items():
        vs_greedy = paired(row.finals, greedy.finals)
        if name != baseline_rule and (baseline_rule, regime) in results:
            mean, se, _ = paired(row.finals, results[baseline_rule, regime].finals)
            vs_base = f"{mean:+.2f} ± {se:.2f}"
        else:
            vs_base = "-"
        lines.append(f"| {name}, {regime} | {statistics.fmean(row.finals):.5f} | {vs_greedy[0]:+.2f} ± "
                     f"{vs_greedy[1]:.2f} | {vs_greedy[2]}/{len(row.finals)} | {vs_base} | {row.lucky_text} |")
    lines.append(f"| greedy, 1 agent, {len(greedy.finals)} seeds | {statistics.fmean(greedy.finals):.5f} | - | - | - | "
                 f"{greedy.lucky_text} |")
    return "\n".join(lines)


def candidate_settings(assignments: list[str]) -> PopulationSettings:
    """The defaults with `name=value` changes (`rerun_optimism=none` re-runs every gain)."""
    types = {f.name: f.type for f in fields(PopulationSettings)}
    changes: dict = {}
    for assignment in assignments:
        name, _, text = assignment.partition("=")
        if name not in types or name == "workers" or not text:
            raise ValueError(f"{assignment!r}: expected NAME=VALUE with NAME one of "
                             f"{', '.join(n for n in types if n != 'workers')}")
        if text.lower() == "none":
            changes[name] = None
        elif "float" in str(types[name]):
            changes[name] = float(text)
        elif "int" in str(types[name]):
            changes[name] = int(text)
        else:
            changes[name] = text
    return replace(PopulationSettings(), **changes)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=200, help="paired seeds (default 200)")
    parser.add_argument("--seed-offset", type=int, default=3000,
                        help="first seed (default 3000: seeds no rule was chosen on)")
    parser.add_argument("--trainings", type=int, default=100, help="greedy's trainings (default 100)")
    parser.add_argument("--workers", type=int, default=8, help="workers at equal wall time (default 8)")
    parser.add_argument("--landscape", choices=(*LANDSCAPES, "all"), default="all")
    parser.add_argument("--candidate", nargs="+", metavar="NAME=VALUE", default=None,
                        help="also run the defaults with these settings changed (e.g. z=0.5 population_size=8), "
                             "compared against the defaults")
    args = parser.parse_args(argv)
    if min(args.seeds, args.trainings, args.workers) < 2 or args.seed_offset < 0:
        parser.exit(2, "error: --seeds, --trainings and --workers must be >= 2, --seed-offset >= 0\n")
    rules = {"defaults": PopulationSettings(), "margin": MARGIN_RULES}
    baseline_rule = "margin"
    if args.candidate:
        try:
            rules = {"candidate": candidate_settings(args.candidate), "defaults": PopulationSettings()}
        except ValueError as e:
            parser.exit(2, f"error: --candidate {e}\n")
        baseline_rule = "defaults"
    names = list(LANDSCAPES) if args.landscape == "all" else [args.landscape]
    tables = []
    for name in names:
        greedy, results = run(args.seeds, args.seed_offset, args.trainings, args.workers, LANDSCAPES[name], rules,
                              progress=True)
        tables.append(markdown(greedy, results, LANDSCAPES[name], args.seeds, args.seed_offset, baseline_rule))
    print("\n".join(f"{name}: {settings.describe()}" for name, settings in rules.items()) + "\n")
    print("\n\n".join(tables))
    return 0


if __name__ == "__main__":
    sys.exit(main())
