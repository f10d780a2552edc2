"""The command line: every flag documented, every range checked with one line and exit 2, and
refusals (dirty seed, existing run, unreachable cluster) as one line and a non-zero exit."""
from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from population import cli
from population.config import (ConfigError, RunConfig, changed_settings, default_promotion_confidence, default_tag,
                               resolve, validate, with_run_settings)
from test_driver_support import make_seed_repo

PROJECT = Path(__file__).resolve().parent.parent
FLAGS = ["--workers", "--budget", "--agent", "--agent-base-url", "--agent-timeout", "--task", "--run",
         "--runs-dir", "--population-size", "--tournament-size", "--cull", "--max-experiments", "--noise-runs",
         "--train-timeout", "--device", "--resume", "--address", "--accelerator", "--repo", "--seed",
         "--selection", "--promotion-confidence", "--promotion-z", "--confirm-runs", "--promotion-runs", "--max-runs",
         "--endgame"]


def test_help_explains_every_flag_with_its_default(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for flag in FLAGS:
        assert flag in text, flag
    assert text.count("default:") >= len(FLAGS) - 2     # --resume and --help have none
    assert "--ray-num-gpus" not in text                 # test-only flags stay hidden


@pytest.mark.parametrize("argv, needle", [
    (["--workers", "0"], "--workers must be >= 1"),
    (["--budget", "0"], "--budget must be > 0"),
    (["--budget", "abc"], "not a number"),
    (["--budget", "inf"], "not a finite number"),
    (["--tournament-size", "5", "--population-size", "4"], "--tournament-size (5) must be <= --population-size (4)"),
    (["--population-size", "0"], "--population-size must be >= 1"),
    (["--promotion-z", "-0.5"], "--promotion-z must be >= 0"),
    (["--confirm-runs", "0"], "--confirm-runs must be >= 1"),
    (["--promotion-runs", "0"], "--promotion-runs must be >= 1"),
    (["--max-runs", "0"], "--max-runs must be >= 1"),
    (["--endgame", "0.6"], "--endgame must be between 0 and 0.5, got 0.6"),
    (["--confirm-runs", "3", "--selection", "margin"], "--confirm-runs (3) must be <= --max-runs (2) with"),
    (["--promotion-confidence", "1"], "--promotion-confidence must be >= 0.5 and < 1, got 1"),
    (["--promotion-confidence", "0.3"], "--promotion-confidence must be >= 0.5 and < 1"),
    (["--max-experiments", "0"], "--max-experiments must be >= 1"),
    (["--noise-runs", "0"], "--noise-runs must be >= 1"),
    (["--noise-runs", "5", "--max-experiments", "3"], "--noise-runs (5) must be <= --max-experiments (3)"),
    (["--train-timeout", "100", "--budget", "300"], "--train-timeout (100.0 s) must be longer than the budget"),
    (["--agent-timeout", "-1"], "--agent-timeout must be > 0"),
    (["--run", "../etc"], "is not a valid tag"),
    (["--run", "a/b"], "is not a valid tag"),
    (["--run", "a..b"], "must not contain '..'"),
    (["--resume"], "--resume needs --run TAG"),
    (["--cull", "random"], "invalid choice"),
    (["--task", "imagenet"], "invalid choice"),
    (["--device", "tpu"], "invalid choice"),
    (["--seed", "-1"], "--seed must be >= 0"),
    (["--agent", " "], "--agent must not be empty"),
    (["--accelerator", "H100", "--device", "cpu"], "--accelerator needs --device cuda"),
    (["--address", "127.0.0.1:1", "--ray-num-gpus", "2"], "do not go with --address"),
    (["--workers"], "expected one argument"),
    (["--set", "population-size=4"], "--set changes the settings of a resumed run: it needs --resume"),
    (["--run", "r", "--resume", "--set", "max-experiments=3"], "--max-experiments bounds one invocation"),
    (["--run", "r", "--resume", "--set", "budget=10"], "--set cannot change --budget"),
    (["--run", "r", "--resume", "--set", "colour=red"], "--set colour: no such setting; one of workers, "),
    (["--run", "r", "--resume", "--set", "population-size"], "--set takes KEY=VALUE"),
    (["--run", "r", "--resume", "--set", "population-size=x"], "'x' is not an integer"),
    (["--run", "r", "--resume", "--set", "selection=best"], "invalid choice: 'best'"),
])
def test_bad_input_is_one_line_and_exit_2(argv, needle, capsys):
    try:
        code = cli.main(argv)
    except SystemExit as e:
        code = e.code
    assert code == 2
    err = capsys.readouterr().err
    assert needle in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_help_ends_with_three_example_command_lines(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    text = capsys.readouterr().out
    assert "champion" in text and "--set KEY=VALUE" in text and "bounds this invocation" in text
    last = text.rstrip().splitlines()[-4:]
    assert last[0] == "examples:" and all(line.startswith("  python -m population ") for line in last[1:])
    parser = cli.build_parser()
    for line in last[1:]:                 # each example is a valid command line
        cli.config_from_args(parser.parse_args(line.split()[3:]))


def test_set_values_are_parsed_as_their_flags_and_only_given_flags_count_on_resume():
    parser = cli.build_parser()
    argv = ["--run", "r", "--resume", "--workers", "2", "--set", "population-size=4", "--set", "promotion_z=1.5",
            "--set", "agent=claude", "--set", "agent=mutate", "--set", "accelerator=H100"]
    cfg = cli.config_from_args(parser.parse_args(argv), cli.given_fields(argv))
    assert cfg.set_values == {"population_size": 4, "promotion_z": 1.5, "agents": ["claude", "mutate"],
                              "accelerator": "H100"}
    assert cfg.explicit == {"tag", "resume", "workers", "set_values"}
    meta = {"task": "climbmix", "budget_s": 300.0, "device": "cuda",
            "args": {"workers": 2, "population_size": 16, "tournament_size": 16,
                     "promotion_confidence": default_promotion_confidence(2),
                     "selection": "margin", "agents": ["mutate"], "seed": 42, "promotion_z": 1.0}}
    kept = with_run_settings(cfg, meta)
    assert (kept.workers, kept.population_size, kept.selection, kept.agents) == (2, 16, "margin", ["mutate"])
    assert kept.promotion_runs == 1          # a run from before --promotion-runs keeps promoting without re-runs
    assert kept.endgame == 0.0               # ... and from before --endgame, making children to the end
    changed, changes = changed_settings(kept)
    assert changes == {"population_size": [16, 4], "promotion_z": [1.0, 1.5], "agents": [["mutate"], ["claude", "mutate"]],
                       "accelerator": [None, "H100"], "tournament_size": [16, 4]}
    assert changed.tournament_size == 4 and changed.promotion_confidence == default_promotion_confidence(2) \
        and not changed.set_values
    # the workers change: a default promotion confidence follows them, a chosen one stays
    _, changes = changed_settings(kept.replace(set_values={"workers": 4}))
    assert changes == {"workers": [2, 4], "promotion_confidence": [pytest.approx(1 - 0.1 / 2 ** 0.5), 0.95]}
    _, changes = changed_settings(kept.replace(promotion_confidence=0.99, set_values={"workers": 4}))
    assert changes == {"workers": [2, 4]}
    with pytest.raises(ConfigError, match="--tournament-size \\(16\\) must be <= --population-size \\(4\\)"):
        changed_settings(kept.replace(tournament_size=16, population_size=8, set_values={"population_size": 4}))
    # a plain flag that contradicts the run points at --set
    argv = ["--run", "r", "--resume", "--population-size", "8"]
    with pytest.raises(ConfigError, match="runs with --population-size 16; a resumed run keeps its settings "
                                          "\\(got 8\\): to change it from now on, pass --set population-size=8"):
        with_run_settings(cli.config_from_args(parser.parse_args(argv), cli.given_fields(argv)), meta)


def test_a_cpu_run_without_budget_gets_the_short_cpu_budget():
    assert with_run_settings(RunConfig(device="cpu")).budget_s == 60.0
    assert with_run_settings(RunConfig(device="cpu", budget_s=5.0)).budget_s == 5.0
    assert with_run_settings(RunConfig()).budget_s == 300.0


def test_config_defaults_resolve_from_the_number_of_workers():
    cfg = resolve(with_run_settings(RunConfig()), workers=5)
    assert cfg.noise_runs == 3 and cfg.budget_s == 300 and cfg.train_timeout_s == 900
    assert cfg.task == "climbmix" and cfg.device == "cuda" and cfg.agents == ["mutate"]
    assert resolve(with_run_settings(RunConfig(budget_s=60)), workers=1).noise_runs == 3   # measured with one worker too
    assert resolve(with_run_settings(RunConfig(budget_s=60)), workers=1).train_timeout_s == 420
    validate(cfg)


def test_the_tournament_defaults_to_the_whole_population_unless_given():
    parser = cli.build_parser()

    def resolved(*argv):
        return resolve(with_run_settings(cli.config_from_args(parser.parse_args(list(argv)))), workers=2)

    assert resolved("--population-size", "5").tournament_size == 5
    assert resolved().tournament_size == 16
    assert resolved("--tournament-size", "2").tournament_size == 2


def test_default_tag_is_date_based_and_valid():
    tag = default_tag(time.mktime((2026, 3, 5, 14, 3, 4, 0, 0, -1)))
    assert tag == "mar05-140304"
    validate(RunConfig(tag=tag))


def test_a_resumed_run_keeps_its_task_budget_and_device():
    meta = {"task": "enwik8", "budget_s": 120.0, "device": "cpu"}
    cfg = with_run_settings(RunConfig(tag="r", resume=True), meta)
    assert (cfg.task, cfg.budget_s, cfg.device) == ("enwik8", 120.0, "cpu")
    with pytest.raises(ConfigError, match="started with --budget 120.0"):
        with_run_settings(RunConfig(tag="r", resume=True, budget_s=300), meta)
    with pytest.raises(ConfigError, match="started with --task enwik8"):
        with_run_settings(RunConfig(tag="r", resume=True, task="climbmix"), meta)


def _run_cli(args: list[str], cwd: Path = PROJECT, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "population", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


def test_refusals_before_any_ray_start_are_one_line(tmp_path):
    seed = make_seed_repo(tmp_path / "seed")
    runs = tmp_path / "runs"
    (runs / "taken").mkdir(parents=True)
    (runs / "taken" / "run.json").write_text("{}")
    base = ["--repo", str(seed), "--runs-dir", str(runs)]

    existing = _run_cli(base + ["--run", "taken"])
    assert existing.returncode == 1
    assert "run 'taken' already exists" in existing.stderr and "--resume" in existing.stderr

    missing = _run_cli(base + ["--run", "nothing", "--resume"])
    assert missing.returncode == 1 and "no run at" in missing.stderr

    (seed / "engine" / "train.py").write_text("# dirty\n")
    dirty = _run_cli(base + ["--run", "fresh"])
    assert dirty.returncode == 1 and "uncommitted changes in the seed (engine/train.py)" in dirty.stderr

    outside = _run_cli(["--repo", str(tmp_path), "--run", "x"])
    assert outside.returncode == 1 and f"--repo {tmp_path} is not inside a git repository" in outside.stderr
    assert "pass --repo" not in outside.stderr                       # it was passed: no wrong hint

    nowhere = _run_cli(["--repo", str(tmp_path / "nonexistent"), "--run", "x"])
    assert nowhere.returncode == 1 and f"--repo {tmp_path / 'nonexistent'} does not exist" in nowhere.stderr

    deep = _run_cli(["--repo", str(seed), "--runs-dir", str(tmp_path / "missing" / "runs"), "--run", "x"])
    assert deep.returncode == 1 and f"its parent folder {tmp_path / 'missing'} does not exist" in deep.stderr
    assert not (tmp_path / "missing").exists()

    for result in (existing, missing, dirty, outside, nowhere, deep):
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert not (runs / "fresh").exists()


def test_unreachable_cluster_is_one_line_quickly(tmp_path):
    seed = make_seed_repo(tmp_path / "seed")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.monotonic()
    result = _run_cli(["--repo", str(seed), "--runs-dir", str(tmp_path / "runs"), "--run", "x",
                       "--address", f"127.0.0.1:{port}"])
    assert result.returncode == 1
    assert f"cannot reach the Ray cluster at 127.0.0.1:{port}" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert time.monotonic() - start < 30
    assert not (tmp_path / "runs" / "x").exists()
