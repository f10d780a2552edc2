"""The search-quality benchmark on its synthetic landscapes, CPU-small (about 30 seconds).

The bench drives the driver's own policy (population/policy.py). What the comparisons assert is
what the full paired bench (bench/landscape_paired.py, 200 seeds) shows on the noise of one size the
defaults were tuned on: at equal wall time the population wins on both landscapes; at equal
trainings with one worker the posterior selection beats greedy on both, and beats the margin rule
it replaced, with fewer lucky promotions than greedy; the margin rule's re-run rule and the
defaults beat the first rules.
"""
import importlib.util
import math
import random
import statistics
import sys
from dataclasses import replace
from pathlib import Path

import pytest

_SPEC = importlib.util.spec_from_file_location("landscape", Path(__file__).parents[1] / "bench" / "landscape.py")
landscape = importlib.util.module_from_spec(_SPEC)
sys.modules["landscape"] = landscape  # dataclasses look their module up while it loads
_SPEC.loader.exec_module(landscape)

NOISE = landscape.NOISE_STD
ROOT = str(Path(__file__).resolve().parents[1])
if ROOT not in sys.path:      # bench/landscape_paired.py imports bench.landscape, also under a bare `pytest`
    sys.path.insert(0, ROOT)


def with_constants(source: str, **values) -> str:
    for name, value in values.items():
        text = f"2**{value.bit_length() - 1}" if name == "TOTAL_BATCH_SIZE" else repr(value)
        source = "\n".join(f"{name} = {text}" if line.startswith(f"{name} =") else line
                           for line in source.splitlines())
    return source


AT_OPTIMUM = with_constants(landscape.SEED_SOURCE, **landscape.OPTIMA)


# ---- the landscapes ----------------------------------------------------------------------------

def test_true_value_is_the_floor_at_the_optimum_and_above_it_elsewhere():
    for name in ("bowl", "plateau"):
        chosen = landscape.LANDSCAPES[name]
        assert chosen.true_value(AT_OPTIMUM) == pytest.approx(chosen.floor)
        assert chosen.true_value(landscape.SEED_SOURCE) > chosen.floor + 0.003


def test_neutral_constants_do_not_move_the_true_value():
    changed = landscape.SEED_SOURCE.replace("HEAD_DIM = 128", "HEAD_DIM = 64")
    for chosen in landscape.LANDSCAPES.values():
        assert chosen.true_value(changed) == chosen.true_value(landscape.SEED_SOURCE)


def test_plateau_learning_rates_follow_the_batch_size():
    plateau = landscape.PLATEAU
    doubled = with_constants(AT_OPTIMUM, TOTAL_BATCH_SIZE=2**19)
    followed = with_constants(doubled, MATRIX_LR=0.05 * 2 ** 0.5, EMBEDDING_LR=0.8 * 2 ** 0.5)
    batch_term = landscape.PLATEAU_WEIGHTS["TOTAL_BATCH_SIZE"] * 0.6931471805599453 ** 2
    assert plateau.true_value(followed) == pytest.approx(plateau.floor + batch_term)
    assert plateau.true_value(doubled) > plateau.true_value(followed) + 0.0002
    # the bowl has no such interaction: there the old learning rates stay the best
    assert landscape.BOWL.true_value(doubled) < landscape.BOWL.true_value(followed)


def test_plateau_learning_rate_past_twice_its_best_diverges():
    plateau = landscape.PLATEAU
    too_high = plateau.true_value(with_constants(AT_OPTIMUM, MATRIX_LR=0.05 * 2.2))
    as_far_low = plateau.true_value(with_constants(AT_OPTIMUM, MATRIX_LR=0.05 / 2.2))
    assert too_high > as_far_low + 0.004


def test_plateau_edits_are_about_the_noise_and_bowl_edits_larger():
    rng = random.Random(0)
    children = [landscape.mutate_source(landscape.SEED_SOURCE, rng)[0] for _ in range(300)]

    def median_move(chosen):
        base = chosen.true_value(landscape.SEED_SOURCE)
        return statistics.median(abs(chosen.true_value(child) - base) for child in children)

    assert median_move(landscape.PLATEAU) < 2 * NOISE < 4 * NOISE < median_move(landscape.BOWL)


def test_training_noise_has_the_measured_size():
    rng = random.Random(0)
    runs = [landscape.train(landscape.SEED_SOURCE, rng, landscape=landscape.PLATEAU) for _ in range(4000)]
    assert statistics.fmean(runs) == pytest.approx(landscape.PLATEAU.true_value(landscape.SEED_SOURCE), abs=5e-5)
    assert statistics.stdev(runs) == pytest.approx(NOISE, rel=0.1)


def test_ranged_noise_has_a_level_per_code_up_to_its_std_and_heavy_tails():
    noise = landscape.Noise.ranged(0.003)
    rng = random.Random(1)
    codes = [landscape.mutate_source(landscape.SEED_SOURCE, rng)[0] for _ in range(200)]
    levels = [noise.level(code) for code in codes]
    assert 0.001 - 1e-12 <= min(levels) < 0.0015 and 0.0025 < max(levels) <= 0.003
    assert noise.level(codes[0]) == noise.level(codes[0])                 # fixed by the code
    draws = [noise.draw(codes[0], rng) for _ in range(20000)]
    assert statistics.stdev(draws) == pytest.approx(noise.level(codes[0]), rel=0.1)
    kurtosis = statistics.fmean(d ** 4 for d in draws) / statistics.fmean(d ** 2 for d in draws) ** 2
    assert kurtosis > 4                                                     # a Gaussian has 3


# ---- the searches ------------------------------------------------------------------------------

def counting_trainings(monkeypatch) -> list:
    calls = []
    real = landscape.train
    monkeypatch.setattr(landscape, "train", lambda *a, **k: calls.append(1) or real(*a, **k))
    return calls


def test_population_uses_exactly_its_training_budget_and_returns_its_champion(monkeypatch):
    calls = counting_trainings(monkeypatch)
    outcome = landscape.run_population(30, random.Random(1), landscape.Settings(workers=4))
    assert outcome.trainings == len(calls) == 30
    assert landscape.FLOOR <= outcome.held_true <= outcome.final_true <= landscape.true_value(landscape.SEED_SOURCE)
    # three baseline runs (two extra), and the confirming re-runs of members about to be promoted
    assert outcome.confirming == 2 + outcome.reruns


def test_parallel_greedy_uses_exactly_its_training_budget(monkeypatch):
    calls = counting_trainings(monkeypatch)
    outcome = landscape.run_greedy_parallel(25, random.Random(2), workers=8)
    assert len(calls) == outcome.trainings == 25
    assert outcome.final_true <= landscape.true_value(landscape.SEED_SOURCE)
    assert landscape.run_greedy_parallel(1, random.Random(2), workers=8).final_true == \
        landscape.true_value(landscape.SEED_SOURCE)


# ---- the comparisons ---------------------------------------------------------------------------

SEEDS, TRAININGS = 16, 100
PAIRED_SEEDS = 64      # one worker is cheap: more seeds where rules differ by a fraction of the noise


def outcomes(run, chosen, seeds=SEEDS):
    return [run(random.Random(f"{chosen.name}-{seed}"), chosen) for seed in range(seeds)]


def mean(results, attribute="final_true"):
    return statistics.fmean(getattr(o, attribute) for o in results)


@pytest.fixture(scope="module", params=["bowl", "plateau"])
def equal_trainings(request):
    chosen = landscape.LANDSCAPES[request.param]
    new, first, margin = landscape.Settings(), landscape.FIRST_RULES, landscape.MARGIN_RULES

    def population(settings):
        return lambda rng, ls: landscape.run_population(TRAININGS, rng, settings, NOISE, ls)

    return {"greedy": outcomes(lambda rng, ls: landscape.run_greedy(TRAININGS, rng, NOISE, ls), chosen, PAIRED_SEEDS),
            "ours, 8 workers": outcomes(population(new), chosen),
            "ours, 1 worker": outcomes(population(replace(new, workers=1)), chosen, PAIRED_SEEDS),
            "first, 8 workers": outcomes(population(first), chosen),
            "first, 1 worker": outcomes(population(replace(first, workers=1)), chosen),
            "margin, 8 workers": outcomes(population(margin), chosen),
            "margin, 1 worker": outcomes(population(replace(margin, workers=1)), chosen, PAIRED_SEEDS),
            "every gain, 8 workers": outcomes(population(replace(margin, rerun_optimism=None)), chosen),
            "every gain, 1 worker": outcomes(population(replace(margin, workers=1, rerun_optimism=None)), chosen)}


def test_population_wins_at_equal_wall_time():
    for chosen in (landscape.BOWL, landscape.PLATEAU):
        greedy = outcomes(lambda rng, ls: landscape.run_greedy(30, rng, NOISE, ls), chosen, 10)
        ours = outcomes(lambda rng, ls: landscape.run_population(8 * 30, rng, landscape.Settings(workers=8),
                                                                 NOISE, ls), chosen, 10)
        assert mean(ours) < mean(greedy) - NOISE / 2, chosen.name


def test_equal_trainings_beats_greedy(equal_trainings):
    # the champion we hand back, with one worker: better than greedy's tip. On this Gaussian noise of
    # one size (the seed's spread is every code's) the confirming re-runs cost trainings: by a quarter
    # of the noise before them, by about half that since on 200 development seeds (BENCHMARKS.md,
    # issue 21); the ranged noise below is where they pay
    greedy, ours = mean(equal_trainings["greedy"]), equal_trainings["ours, 1 worker"]
    assert mean(ours) < greedy - NOISE / 8
    assert mean(ours, "held_true") <= mean(ours)


def test_posterior_beats_the_margin_rule_at_equal_trainings(equal_trainings):
    assert mean(equal_trainings["ours, 1 worker"]) < mean(equal_trainings["margin, 1 worker"])
    # its re-runs confirm the member it is about to promote and, in the endgame's window (when the
    # edits hide in the noise), the best members: at most the margin rule's plus the window's
    ours = sum(o.reruns for o in equal_trainings["ours, 1 worker"])
    window = round(landscape.Settings().endgame * TRAININGS) * len(equal_trainings["ours, 1 worker"])
    assert 0 < ours <= sum(o.reruns for o in equal_trainings["margin, 1 worker"]) + window
    assert all(o.confirming == 2 + o.reruns for o in equal_trainings["ours, 1 worker"])


@pytest.mark.parametrize("name", ["bowl", "plateau"])
def test_confirming_reruns_halve_greedys_lucky_share_on_noise_that_depends_on_the_code(name):
    # issue 21: with noise levels from a third of 0.003 to 0.003 by code (heavy tails), a code noisier
    # than the seed won on a lucky run; its confirming re-run rarely repeats the luck
    chosen, noise = landscape.LANDSCAPES[name], landscape.Noise.ranged(0.003)
    greedy = outcomes(lambda rng, ls: landscape.run_greedy(TRAININGS, rng, noise, ls), chosen, 48)
    ours = outcomes(lambda rng, ls: landscape.run_population(TRAININGS, rng, landscape.Settings(workers=1), noise, ls),
                    chosen, 48)
    before = outcomes(lambda rng, ls: landscape.run_population(
        TRAININGS, rng, landscape.posterior_before_confirmation(1), noise, ls), chosen, 48)

    def lucky_fraction(results):
        return sum(o.lucky for o in results) / sum(o.promotions for o in results)

    assert lucky_fraction(ours) < 0.5 * lucky_fraction(greedy) < lucky_fraction(before)
    assert mean(ours) < mean(before) < mean(greedy)


def test_new_rules_beat_the_first_rules_at_equal_trainings(equal_trainings):
    new = mean(equal_trainings["ours, 8 workers"]) + mean(equal_trainings["ours, 1 worker"][:SEEDS])
    first = mean(equal_trainings["first, 8 workers"]) + mean(equal_trainings["first, 1 worker"])
    assert new < first


def test_rerun_rule_spends_fewer_trainings_confirming(equal_trainings):
    # margin rule: re-running a gain inside the margin only while it can still clear it, against
    # re-running every gain
    for workers in ("8 workers", "1 worker"):
        new = sum(o.confirming for o in equal_trainings[f"margin, {workers}"][:SEEDS])
        every_gain = sum(o.confirming for o in equal_trainings[f"every gain, {workers}"])
        assert new < 0.8 * every_gain


def test_lucky_promotions_are_rarer_than_greedys_at_equal_trainings(equal_trainings):
    def lucky_fraction(results):
        promotions = sum(o.promotions for o in results)
        assert promotions > 0
        return sum(o.lucky for o in results) / promotions

    ours = equal_trainings["ours, 8 workers"] + equal_trainings["ours, 1 worker"]
    # about two thirds as often since the noise is measured from three runs rather than given (BENCHMARKS.md)
    assert lucky_fraction(ours) < 0.7 * lucky_fraction(equal_trainings["greedy"])


# ---- the table and the CLI ---------------------------------------------------------------------

def test_markdown_table_lists_every_method():
    rows = landscape.compare(seeds=2, trainings=16, workers=4, landscape=landscape.PLATEAU)
    table = landscape.markdown_table(rows, seeds=2, landscape=landscape.PLATEAU)
    lines = table.splitlines()
    assert sum(line.startswith("| ") and "---" not in line for line in lines) == 1 + len(rows) == 6
    for label in ("greedy, 1 agent", "greedy, 4 agents on one branch", "4 workers, equal trainings",
                  "1 worker, equal trainings", "equal wall time", "`plateau`"):
        assert label in table
    wall_time = next(row for row in rows if "wall time" in row.label)
    assert wall_time.trainings == 4 * 16 and wall_time.hours == rows[0].hours


def test_seed_offset_selects_another_set_of_the_same_paired_seeds():
    def finals(seeds, offset):
        rows = landscape.compare(seeds=seeds, trainings=12, workers=2, landscape=landscape.BOWL, seed_offset=offset)
        return [row.finals for row in rows]

    both, second = finals(2, 0), finals(1, 1)
    assert [row[1:] for row in both] == second          # seed 1 is the same runs wherever the set starts
    assert [row[:1] for row in both] != second


def test_cli_prints_the_table_and_refuses_bad_input(capsys):
    assert landscape.main(["--seeds", "2", "--trainings", "8", "--workers", "2", "--landscape", "bowl",
                           "--selection", "margin", "--rerun-optimism", "off", "--tournament-size", "3"]) == 0
    out = capsys.readouterr().out
    assert "| greedy, 1 agent | 8 |" in out and "tournament 3" in out and "re-runs for any gain" in out
    assert "`plateau`" not in out
    assert landscape.main(["--seeds", "1", "--trainings", "8", "--workers", "2", "--landscape", "plateau",
                           "--selection", "margin", "--min-runs", "1", "--max-runs", "3", "--seed-offset", "7"]) == 0
    out = capsys.readouterr().out
    assert "1 seeds from 7" in out and "promoted after at least 1 and at most 3 runs" in out
    assert landscape.main(["--seeds", "1", "--trainings", "8", "--workers", "2", "--landscape", "bowl",
                           "--confidence", "0.9"]) == 0
    out = capsys.readouterr().out
    assert "posterior selection" in out and "promoted at 0.9 probability" in out
    for bad in (["--seeds", "0"], ["--rerun-optimism", "-1"], ["--landscape", "cliff"], ["--max-runs", "0"],
                ["--min-runs", "0"], ["--seed-offset", "-1"], ["--selection", "best"], ["--confidence", "1"]):
        with pytest.raises(SystemExit) as exit_info:
            landscape.main(bad)
        assert exit_info.value.code == 2


# ---- the paired check --------------------------------------------------------------------------

def test_paired_differences_are_per_seed_in_units_of_1e4():
    from bench import landscape_paired
    mean_diff, se, won = landscape_paired.paired([0.9870, 0.9860, 0.9880], [0.9871, 0.9862, 0.9879])
    assert mean_diff == pytest.approx((-1 - 2 + 1) / 3) and won == 2
    assert se == pytest.approx(statistics.stdev([-1, -2, 1]) / math.sqrt(3))


def test_paired_cli_compares_defaults_the_margin_rule_and_a_candidate(capsys):
    from bench import landscape_paired
    assert landscape_paired.main(["--seeds", "2", "--trainings", "8", "--workers", "2", "--landscape", "plateau",
                                  "--jobs", "2"]) == 0
    out = capsys.readouterr().out
    assert "| defaults, 2 workers, equal wall time |" in out and "| margin, 1 worker, equal trainings |" in out
    assert "| defaults, 2 workers, equal trainings |" in out and "re-runs |" in out
    assert "minus margin" in out and "2 paired seeds from 9100" in out and "noise levels" in out
    assert landscape_paired.main(["--seeds", "2", "--trainings", "8", "--workers", "2", "--landscape", "bowl",
                                  "--noise-model", "fixed", "--candidate", "selection=margin", "promotion_z=0.5",
                                  "rerun_optimism=none"]) == 0
    out = capsys.readouterr().out
    assert "candidate: margin selection, population size 16" in out and "z 0.5" in out and "re-runs for any gain" in out
    assert "minus defaults" in out and "| candidate, 1 worker, equal trainings |" in out and "Gaussian noise" in out
    assert landscape_paired.main(["--seeds", "2", "--trainings", "8", "--workers", "2", "--landscape", "bowl",
                                  "--against", "before"]) == 0
    out = capsys.readouterr().out
    assert "minus before" in out and "| before, 2 workers, equal wall time |" in out
    assert "promoted at 0.9 probability" in out and "promoted at 0.95 probability" in out   # 1 - 0.1/workers
    for bad in (["--seeds", "1"], ["--candidate", "workers=3"], ["--candidate", "zz=1"], ["--candidate", "z"],
                ["--jobs", "0"]):
        with pytest.raises(SystemExit) as exit_info:
            landscape_paired.main(bad)
        assert exit_info.value.code == 2
