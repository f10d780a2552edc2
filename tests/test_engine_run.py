"""engine/train.py end to end, as the driver runs it: a subprocess on the CPU smoke configuration."""
from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from population.summary import parse_summary

REPO = Path(__file__).resolve().parents[1]
TRAIN_FILE = REPO / "engine" / "train.py"
SUMMARY_KEYS = ("val_bpb", "training_seconds", "total_seconds", "peak_vram_mb", "mfu_percent",
                "total_tokens_M", "num_steps", "num_params_M", "depth")
EXTRA_KEYS = ("step_ms_p10", "step_ms_p50", "step_ms_p90", "startup_seconds", "compile_seconds",
              "eval_seconds")


def run_train(cache: Path, tmp_path: Path, timeout: float = 300, **env_overrides) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTORESEARCH_")}
    env.update(PYTHONPATH=str(REPO), AUTORESEARCH_CACHE=str(cache), AUTORESEARCH_SMOKE="1",
               AUTORESEARCH_TIME_BUDGET="2", TORCHINDUCTOR_CACHE_DIR=str(tmp_path / "inductor"))
    env.update(env_overrides)
    return subprocess.run([sys.executable, str(TRAIN_FILE)], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_smoke_run_trains_saves_its_model_and_prints_the_summary_block(prepared_cache, tmp_path):
    """Under the harness (AUTORESEARCH_CHECKPOINT set) the file trains, saves and leaves the
    scoring to prepare/trusted_eval.py: its summary has no val_bpb of its own."""
    checkpoint = tmp_path / "model.pt"
    result = run_train(prepared_cache, tmp_path, AUTORESEARCH_CHECKPOINT=str(checkpoint),
                       PYTHONDONTWRITEBYTECODE="1")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "attention: sdpa" in result.stdout.splitlines()
    # torch's bytecode is cached in the data cache even where writing it is switched off
    torch_init = Path(torch.__file__).resolve()
    cached = prepared_cache / "pycache" / torch_init.parent.relative_to("/") / f"__init__.{sys.implementation.cache_tag}.pyc"
    assert cached.is_file()
    summary = parse_summary(result.stdout)
    assert set(SUMMARY_KEYS + EXTRA_KEYS) - {"val_bpb"} <= set(summary), summary
    assert "val_bpb" not in summary and summary["eval_seconds"] == 0.0
    assert summary["training_seconds"] >= 2.0                     # the budget was used up ...
    assert summary["num_steps"] >= 12                             # ... after the 11 untimed steps
    assert summary["total_seconds"] > summary["training_seconds"]
    assert summary["total_tokens_M"] == pytest.approx(summary["num_steps"] * 2 * 4 * 256 / 1e6, abs=0.05)
    assert summary["depth"] == 2 and summary["peak_vram_mb"] == 0.0
    assert math.isnan(summary["mfu_percent"])                     # a CPU has no known bf16 peak
    assert 0 < summary["step_ms_p10"] <= summary["step_ms_p50"] <= summary["step_ms_p90"]
    state = torch.load(checkpoint, map_location="cpu")
    assert state["config"]["n_layer"] == 2 and state["step"] == summary["num_steps"]
    assert "transformer.wte.weight" in state["model"]


def test_nan_loss_stops_at_once_with_one_clear_line(prepared_cache, tmp_path):
    result = run_train(prepared_cache, tmp_path, AUTORESEARCH_FAULT="nan_at_step:3", AUTORESEARCH_TIME_BUDGET="600")
    assert result.returncode == 1
    assert "FAIL: loss is nan at step 3" in result.stdout.splitlines()
    assert "step 00004" not in result.stdout                      # stopped at once
    assert parse_summary(result.stdout) == {}                     # no summary block: a crash


@pytest.mark.parametrize("env, message", [
    ({"AUTORESEARCH_ATTENTION": "flash9"}, "AUTORESEARCH_ATTENTION"),
    ({"AUTORESEARCH_ATTENTION": "flex"}, "needs a CUDA GPU"),   # no FlexAttention backward on a CPU
])
def test_bad_environment_is_one_error_line(tmp_path, env, message):
    result = run_train(tmp_path / "no-cache", tmp_path, **env)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0]


def test_missing_data_is_one_error_line(tmp_path):
    result = run_train(tmp_path / "empty-cache", tmp_path)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "python -m prepare" in result.stderr
