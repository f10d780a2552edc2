"""The enwik8 train file end to end on the CPU: the smoke configuration trains, saves its model for
the trusted evaluator and prints the summary block; failures are one line and a non-zero exit."""
import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from enwik8_support import REPO, smoke_env
from population.summary import parse_summary
from prepare.tasks import get_task

TRAIN_FILE = REPO / get_task("enwik8").train_file


def train(train_file: Path, env: dict, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(train_file)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_smoke_training_saves_a_model_that_the_trusted_evaluator_scores_as_the_fixed_metric(enwik8_cache, tmp_path):
    """Under the harness the file trains, saves and prints no val_bpc of its own; the trusted
    evaluator's val_bpc of that checkpoint equals prepare.enwik8's evaluate_bpc of the same weights."""
    checkpoint = tmp_path / "model.pt"
    env = smoke_env(enwik8_cache, USE_FP8="1", AUTORESEARCH_CHECKPOINT=str(checkpoint))
    done = train(TRAIN_FILE, env)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    summary = parse_summary(done.stdout, get_task("enwik8").summary_keys)
    assert set(summary) == set(get_task("enwik8").summary_keys) - {"val_bpc"}
    assert 4.0 <= summary["training_seconds"] < 30 and summary["total_seconds"] > summary["training_seconds"]
    assert summary["num_steps"] > 6 and summary["depth"] == 2
    assert summary["total_tokens_M"] == round(summary["num_steps"] * 8 * 128 / 1e6, 1)  # smoke: 8 x 128 per step
    assert math.isnan(summary["mfu_percent"])
    assert re.search(r"^precision:\s+fp32$", done.stdout, re.M)
    assert "FP8 is not supported on the CPU" in done.stdout
    assert checkpoint.stat().st_size > 0

    scored = subprocess.run([sys.executable, "-m", "prepare.trusted_eval", "--task", "enwik8", "--train-file",
                             str(TRAIN_FILE), "--checkpoint", str(checkpoint), "--device", "cpu"],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    result = json.loads(scored.stdout.strip().splitlines()[-1])
    assert scored.returncode == 0, result
    fixed = subprocess.run([sys.executable, "-c", (
        "import sys, torch; sys.path.insert(0, 'engine'); import train_enwik8 as t; "
        f"m = t.load_model({str(checkpoint)!r}, torch.device('cpu')); "
        "from prepare.enwik8 import evaluate_bpc; print(evaluate_bpc(lambda x: m(x), 64, 'cpu'))")],
                           cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert fixed.returncode == 0, fixed.stderr[-2000:]
    assert 0.5 < result["metric"] < 9.0 and result["holdout"] > 0
    assert result["metric"] == pytest.approx(float(fixed.stdout.split()[-1]), abs=1e-4)


def test_exploding_training_stops_with_one_line(enwik8_cache, tmp_path):
    """A mutated copy of the train file (as an agent might write it): an absurd learning rate from step 0."""
    (tmp_path / "engine").mkdir()
    source = TRAIN_FILE.read_text()
    exploding = re.sub(r"^LR = .*$", "LR = 1e30", source, flags=re.M)
    exploding = re.sub(r"^WARMUP_RATIO = .*$", "WARMUP_RATIO = 0.0", exploding, flags=re.M)
    assert exploding.count("1e30") == 1 and "WARMUP_RATIO = 0.0" in exploding
    (tmp_path / "engine" / "train_enwik8.py").write_text(exploding)
    shutil.copytree(REPO / "prepare", tmp_path / "prepare")
    done = train(tmp_path / "engine" / "train_enwik8.py",
                 {**smoke_env(enwik8_cache), "PYTHONPATH": str(tmp_path)}, cwd=tmp_path)
    assert done.returncode == 1
    assert re.search(r"^FAIL: training loss \S+ at step \d+ \(NaN or exploded\)", done.stdout, re.M)
    assert "\n---\n" not in done.stdout and "Traceback" not in done.stderr


def test_missing_data_is_one_line_not_a_traceback(tmp_path):
    done = train(TRAIN_FILE, smoke_env(tmp_path / "empty"))
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("FAIL:")
    assert "python -m prepare --task enwik8" in done.stderr
