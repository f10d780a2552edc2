"""A population run on the enwik8 task, end to end on the CPU: the real driver (`python -m
population --task enwik8`, its own local Ray), the offline mutate agent, the real enwik8 train file
in its smoke configuration, on the shared stub cache. What it leaves in the store is checked."""
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from enwik8_support import REPO, smoke_env
from prepare.tasks import get_task
from test_driver_support import commit_seed, events

TAG = "enwik8-smoke"
EXPERIMENTS = 4


def make_enwik8_seed_repo(root: Path) -> Path:
    """A run repository holding the project's enwik8 train file, prepare/ and program.md, committed."""
    task = get_task("enwik8")
    shutil.copytree(REPO / "prepare", root / "prepare", ignore=shutil.ignore_patterns("__pycache__"))
    (root / task.train_file).parent.mkdir(parents=True)
    shutil.copy(REPO / task.train_file, root / task.train_file)
    shutil.copy(REPO / "program.md", root / "program.md")
    return commit_seed(root)


@pytest.fixture(scope="module")
def enwik8_run(enwik8_cache, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    root = tmp_path_factory.mktemp("enwik8-population")
    repo = make_enwik8_seed_repo(root / "seed")
    # 2 s of training and 4,096 scored characters: the smallest run that still trains and scores
    # RAY_ADDRESS=local: a Ray of its own, even where `ray start` left a cluster that ray.init() would join
    env = smoke_env(enwik8_cache, AUTORESEARCH_EVAL_TOKENS="4096", RAY_AUTH_MODE="disabled", RAY_ADDRESS="local")
    for name in ("AUTORESEARCH_SMOKE", "AUTORESEARCH_DEVICE", "AUTORESEARCH_TIME_BUDGET"):
        env.pop(name)                               # the driver sets these for each training
    done = subprocess.run(
        [sys.executable, "-m", "population", "--task", "enwik8", "--device", "cpu", "--workers", "2",
         "--max-experiments", str(EXPERIMENTS), "--budget", "2", "--agent", "mutate", "--run", TAG,
         "--repo", str(repo), "--runs-dir", str(root / "runs"), "--workdir", str(root / "workers"),
         "--ray-num-cpus", "2"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=420)
    return root / "runs" / TAG, done


def test_a_population_run_on_enwik8_lands_in_the_store_under_val_bpc(enwik8_run):
    run_dir, done = enwik8_run
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    meta = json.loads((run_dir / "run.json").read_text())
    assert (meta["task"], meta["metric"], meta["state"]) == ("enwik8", "val_bpc", "finished")

    lineage = pq.read_table(run_dir / "lineage.parquet").to_pandas()
    assert "val_bpc" in lineage.columns and "val_bpb" not in lineage.columns
    assert sorted(lineage["id"]) == list(range(EXPERIMENTS))
    assert (lineage["kind"] == "child").any(), "no child was proposed"

    header, *rows = (run_dir / "results.tsv").read_text().splitlines()
    assert header.split("\t") == ["commit", "val_bpc", "memory_gb", "status", "description"]
    assert len(rows) == EXPERIMENTS

    finished = [e for e in events(run_dir) if e["type"] == "experiment_finished"]
    assert sorted(e["id"] for e in finished) == list(range(EXPERIMENTS))
    for row in lineage.itertuples():
        if row.status == "ok":
            # bits per character of a barely trained byte model: well under 8, well over 0
            assert 0.5 < row.val_bpc < 8.5, row
            assert row.training_seconds >= 2.0 and row.depth >= 1, row
        else:
            assert row.reason.strip() and math.isnan(row.val_bpc), row

    trained_children = lineage[(lineage["kind"] == "child") & lineage["status"].isin(["ok", "crash", "timeout"])]
    assert len(trained_children) >= 1, lineage[["id", "kind", "status", "reason"]]
    assert (lineage[lineage["kind"] == "baseline"]["status"] == "ok").all(), lineage[["id", "status", "reason"]]
    child = run_dir / "experiments" / str(trained_children["id"].iloc[0])
    assert (child / "diff.patch").read_text().startswith("diff --git a/engine/train_enwik8.py")
    assert "device cpu, precision fp32" in (child / "run.log").read_text()
