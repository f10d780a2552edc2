"""The search-quality benchmark on its synthetic landscape, CPU-small (a few seconds)."""
import importlib.util
import random
import statistics
import sys
from pathlib import Path

import pytest

_SPEC = importlib.util.spec_from_file_location("landscape", Path(__file__).parents[1] / "bench" / "landscape.py")
landscape = importlib.util.module_from_spec(_SPEC)
sys.modules["landscape"] = landscape  # dataclasses look their module up while it loads
_SPEC.loader.exec_module(landscape)


def at_optimum(source: str) -> str:
    for name, value in landscape.OPTIMA.items():
        text = f"2**{value.bit_length() - 1}" if name == "TOTAL_BATCH_SIZE" else repr(value)
        source = "\n".join(f"{name} = {text}" if line.startswith(f"{name} =") else line
                           for line in source.splitlines())
    return source


def test_true_value_is_the_floor_at_the_optimum_and_above_it_elsewhere():
    assert landscape.true_value(at_optimum(landscape.SEED_SOURCE)) == pytest.approx(landscape.FLOOR)
    assert landscape.true_value(landscape.SEED_SOURCE) > landscape.FLOOR + 0.005


def test_neutral_constants_do_not_move_the_true_value():
    changed = landscape.SEED_SOURCE.replace("HEAD_DIM = 128", "HEAD_DIM = 64")
    assert landscape.true_value(changed) == landscape.true_value(landscape.SEED_SOURCE)


def test_training_noise_has_the_measured_size():
    rng = random.Random(0)
    runs = [landscape.train(landscape.SEED_SOURCE, rng) for _ in range(4000)]
    assert statistics.fmean(runs) == pytest.approx(landscape.true_value(landscape.SEED_SOURCE), abs=5e-5)
    assert statistics.stdev(runs) == pytest.approx(landscape.NOISE_STD, rel=0.1)


def test_population_uses_exactly_its_training_budget_and_returns_its_champion():
    outcome = landscape.run_population(30, random.Random(1), landscape.PopulationSettings(workers=4))
    assert outcome.trainings == 30
    assert landscape.FLOOR <= outcome.final_true <= landscape.true_value(landscape.SEED_SOURCE)


@pytest.fixture(scope="module")
def rows():
    return landscape.compare(seeds=10, trainings=40, workers=8)


def test_population_wins_at_equal_wall_time(rows):
    greedy, equal_time = rows[0], rows[-1]
    assert equal_time.trainings == 8 * greedy.trainings and equal_time.hours == greedy.hours
    assert equal_time.mean < greedy.mean


def test_noise_margin_makes_lucky_promotions_rarer_at_equal_trainings(rows):
    greedy, equal_trainings = rows[0], rows[1]
    assert equal_trainings.trainings == greedy.trainings
    assert equal_trainings.promotions > 0
    assert equal_trainings.lucky_fraction < greedy.lucky_fraction / 2


def test_markdown_table_lists_every_method(rows):
    table = landscape.markdown_table(rows, seeds=10)
    lines = table.splitlines()
    assert sum(line.startswith("| ") and "---" not in line for line in lines) == 1 + len(rows)  # header + rows
    assert "greedy, 1 agent" in table and "equal wall time" in table


def test_cli_prints_the_table_and_refuses_bad_input(capsys):
    assert landscape.main(["--seeds", "2", "--trainings", "8", "--workers", "2"]) == 0
    assert "| greedy, 1 agent | 8 |" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        landscape.main(["--seeds", "0"])
    assert exit_info.value.code == 2
