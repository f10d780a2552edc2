"""Is a difference between two selection rules real? Paired seeds on bench/landscape.py's landscapes.

A 50-seed table (bench/landscape.py) cannot tell apart rules that differ by a fraction of the noise.
Here every seed gives each method the same random stream, and what is reported is the mean and the
standard error of the per-seed differences of the true val_bpb each method hands back, in units of
1e-4 and of the noise std (negative: the first method is better), in the regimes that matter:
- 1 worker at equal numbers of trainings (T each): the selection rule alone;
- 8 workers at equal numbers of trainings (T);
- 8 workers at equal wall time (8 x T trainings) against greedy's T trainings.
Compared: the driver's policy with its defaults (population/policy.py, posterior selection), the
margin rule (MARGIN_RULES, `--selection margin`), the reference's greedy loop and, with
`--candidate`, the defaults with some settings changed. Also reported: lucky promotions and the
trainings spent on re-runs. Pick seeds the rules were not chosen on (`--seed-offset`); `--jobs`
spreads the seeds over processes.

    python bench/landscape_paired.py --seeds 200 --seed-offset 9100 --noise 0.003
    python bench/landscape_paired.py --seeds 200 --seed-offset 4000 --candidate promotion_z=0.5
    python bench/landscape_paired.py --seeds 200 --seed-offset 9400 --noise 0.003 --against before
"""
from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.landscape import (LANDSCAPES, MARGIN_RULES, NOISE_STD, Landscape, Noise, Settings,  # noqa: E402
                             describe, posterior_before_confirmation, run_greedy, run_population)

Rule = Settings | Callable[[int], Settings]     # a rule's settings, or its settings by number of workers


def with_workers(rule: Rule, workers: int) -> Settings:
    return rule(workers) if callable(rule) else replace(rule, workers=workers)


def described(rule: Rule, workers: int) -> str:
    if callable(rule):
        return f"{(rule.__doc__ or rule.__name__).split(chr(10))[0]} ... ({describe(rule(1))}; with {workers} " \
               f"workers: {describe(rule(workers))})"
    return describe(rule)


@dataclass
class Results:
    """True val_bpb per seed, the promotions and the re-runs of one method in one regime."""
    finals: list[float] = field(default_factory=list)
    promotions: int = 0
    lucky: int = 0
    trainings: int = 0
    reruns: int = 0

    def add(self, outcome) -> None:
        self.finals.append(outcome.final_true)
        self.promotions += outcome.promotions
        self.lucky += outcome.lucky
        self.trainings += outcome.trainings
        self.reruns += outcome.reruns

    @property
    def lucky_fraction(self) -> float:
        return self.lucky / self.promotions if self.promotions else 0.0

    @property
    def lucky_text(self) -> str:
        return f"{self.lucky}/{self.promotions} ({self.lucky_fraction:.0%})" if self.promotions else "0"


def paired(a: list[float], b: list[float]) -> tuple[float, float, int]:
    """Mean and standard error of a - b in units of 1e-4, and the seeds where a is strictly better."""
    diffs = [(x - y) * 1e4 for x, y in zip(a, b)]
    se = statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else 0.0
    return statistics.fmean(diffs), se, sum(d < 0 for d in diffs)


def regimes(workers: int) -> tuple[str, str, str]:
    return "1 worker, equal trainings", f"{workers} workers, equal trainings", f"{workers} workers, equal wall time"


def _one_seed(job: tuple) -> tuple:
    """Every method on one seed (in a worker process with --jobs)."""
    seed, trainings, workers, landscape_name, noise, rules = job
    landscape = LANDSCAPES[landscape_name]

    def rng():
        return random.Random(f"{landscape.name}-{seed}")
    greedy = run_greedy(trainings, rng(), noise, landscape)
    one, equal, wall = regimes(workers)
    outcomes = {}
    for name, settings in rules.items():
        outcomes[name, one] = run_population(trainings, rng(), with_workers(settings, 1), noise, landscape)
        outcomes[name, equal] = run_population(trainings, rng(), with_workers(settings, workers), noise, landscape)
        outcomes[name, wall] = run_population(workers * trainings, rng(), with_workers(settings, workers), noise,
                                              landscape)
    return greedy, outcomes


def run(seeds: int, seed_offset: int, trainings: int, workers: int, landscape: Landscape,
        rules: dict[str, Rule], noise: Noise | float = NOISE_STD, progress: bool = False, jobs: int = 1
        ) -> tuple[Results, dict[tuple[str, str], Results]]:
    """Greedy (T trainings), and each rule set in each regime, keyed (rule, regime); seed s gives
    every method the same random stream."""
    greedy = Results()
    results = {(name, regime): Results() for name in rules for regime in regimes(workers)}
    work = [(seed, trainings, workers, landscape.name, noise, rules) for seed in range(seed_offset, seed_offset + seeds)]
    pool = None
    if jobs > 1:
        import multiprocessing
        pool = multiprocessing.get_context("fork").Pool(jobs)
        done = pool.imap(_one_seed, work)
    else:
        done = map(_one_seed, work)
    if progress:
        from tqdm import tqdm
        done = tqdm(done, total=seeds, desc=f"{landscape.name} seeds", unit="seed", file=sys.stderr)
    try:
        for seed_greedy, outcomes in done:
            greedy.add(seed_greedy)
            for key, outcome in outcomes.items():
                results[key].add(outcome)
    finally:
        if pool is not None:
            pool.close()
    return greedy, results


def markdown(greedy: Results, results: dict[tuple[str, str], Results], landscape: Landscape, seeds: int,
             seed_offset: int, baseline_rule: str, noise: Noise | float = NOISE_STD) -> str:
    noise = noise if isinstance(noise, Noise) else Noise.fixed(noise)
    unit = noise.std * 1e4
    lines = [f"Landscape `{landscape.name}`, {noise.describe()}, {seeds} paired seeds from {seed_offset}; "
             f"differences in 1e-4 val_bpb and in noise std ({noise.std:g}) (negative: this row is better), "
             "mean ± standard error; seeds won: strictly better on that seed; re-runs: share of the trainings.",
             "",
             f"| method | true val_bpb (mean) | minus greedy (1e-4) | minus greedy (noise std) | seeds won vs greedy | "
             f"minus {baseline_rule} (1e-4) | lucky promotions | lucky / greedy's | re-runs |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for (name, regime), row in results.items():
        mean, se, won = paired(row.finals, greedy.finals)
        if name != baseline_rule and (baseline_rule, regime) in results:
            base, base_se, _ = paired(row.finals, results[baseline_rule, regime].finals)
            vs_base = f"{base:+.2f} ± {base_se:.2f}"
        else:
            vs_base = "-"
        ratio = row.lucky_fraction / greedy.lucky_fraction if greedy.lucky_fraction else math.nan
        lines.append(f"| {name}, {regime} | {statistics.fmean(row.finals):.5f} | {mean:+.2f} ± {se:.2f} | "
                     f"{mean / unit:+.2f} ± {se / unit:.2f} | {won}/{len(row.finals)} | {vs_base} | "
                     f"{row.lucky_text} | {ratio:.2f} | {row.reruns / max(row.trainings, 1):.1%} |")
    lines.append(f"| greedy, 1 agent, {len(greedy.finals)} seeds | {statistics.fmean(greedy.finals):.5f} | - | - | - | - "
                 f"| {greedy.lucky_text} | 1 | 0 |")
    return "\n".join(lines)


def candidate_settings(assignments: list[str]) -> Settings:
    """The defaults with `name=value` changes (`rerun_optimism=none` re-runs every gain)."""
    types = {f.name: f.type for f in fields(Settings)}
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
        elif "bool" in str(types[name]):
            changes[name] = text.lower() in ("1", "true", "yes")
        else:
            changes[name] = text
    return replace(Settings(), **changes)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=200, help="paired seeds (default 200)")
    parser.add_argument("--seed-offset", type=int, default=9100,
                        help="first seed (default 9100: seeds no rule was chosen on)")
    parser.add_argument("--trainings", type=int, default=100, help="greedy's trainings (default 100)")
    parser.add_argument("--workers", type=int, default=8, help="workers of the parallel regimes (default 8)")
    parser.add_argument("--landscape", choices=(*LANDSCAPES, "all"), default="all")
    parser.add_argument("--noise", type=float, default=NOISE_STD,
                        help=f"run-to-run std: the top of the range of levels (default {NOISE_STD})")
    parser.add_argument("--noise-model", choices=("ranged", "fixed"), default="ranged",
                        help="ranged: a level per code from a third of --noise to --noise, Student-t tails "
                             "(default); fixed: Gaussian of std --noise for every code")
    parser.add_argument("--candidate", nargs="+", metavar="NAME=VALUE", default=None,
                        help="also run the defaults with these settings changed (e.g. promotion_z=0.5 "
                             "population_size=8), compared against the defaults")
    parser.add_argument("--against", choices=("margin", "before"), default="margin",
                        help="the rule the defaults are compared with: the margin rule (default), or posterior "
                             "selection before its confirming re-runs (issue 21's first figures: no re-run, "
                             "confidence 1 - 0.1/workers)")
    parser.add_argument("--jobs", type=int, default=1, help="processes (default 1)")
    args = parser.parse_args(argv)
    if min(args.seeds, args.trainings, args.workers) < 2 or args.seed_offset < 0 or args.jobs < 1 or args.noise < 0:
        parser.exit(2, "error: --seeds, --trainings and --workers must be >= 2, --seed-offset and --noise >= 0, "
                       "--jobs >= 1\n")
    rules: dict[str, Rule] = {"defaults": Settings(), "margin": MARGIN_RULES}
    baseline_rule = "margin"
    if args.against == "before":
        rules = {"defaults": Settings(), "before": posterior_before_confirmation}
        baseline_rule = "before"
    if args.candidate:
        try:
            rules = {"candidate": candidate_settings(args.candidate), "defaults": Settings()}
        except ValueError as e:
            parser.exit(2, f"error: --candidate {e}\n")
        baseline_rule = "defaults"
    noise = (Noise.ranged if args.noise_model == "ranged" else Noise.fixed)(args.noise)
    names = list(LANDSCAPES) if args.landscape == "all" else [args.landscape]
    tables = []
    for name in names:
        greedy, results = run(args.seeds, args.seed_offset, args.trainings, args.workers, LANDSCAPES[name], rules,
                              noise, progress=True, jobs=args.jobs)
        tables.append(markdown(greedy, results, LANDSCAPES[name], args.seeds, args.seed_offset, baseline_rule, noise))
    print("\n".join(f"{name}: {described(settings, args.workers)}" for name, settings in rules.items()) + "\n")
    print("\n\n".join(tables))
    return 0


if __name__ == "__main__":
    sys.exit(main())
