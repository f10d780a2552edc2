"""Helpers shared by the driver's tests (no tests here): a fake seed repository whose train file
sleeps, records what it saw (CUDA_VISIBLE_DEVICES, timestamps, seed, environment), saves its
value as its "model" and prints a summary block, and whose fixed side scores that value; and
readers of a run's store."""
from __future__ import annotations

import contextlib
import json
import subprocess
import time
from pathlib import Path

import pytest

# The fake train file: val_bpb depends on its UPPER_CASE constants (so the mutator changes it),
# DEPTH > 12 crashes (so crashes happen), AUTORESEARCH_FAKE_* from the driver's environment steer it.
FAKE_TRAIN = '''\
import json, os, sys, time
LEARNING_RATE = 0.04
DEPTH = 8
WIDTH = 2**7
seed = int(os.environ.get("AUTORESEARCH_SEED", "42"))
start = time.time()
record = os.environ.get("AUTORESEARCH_FAKE_RECORD")
if record:
    with open(os.path.join(record, f"{os.getpid()}.started"), "w") as f:
        f.write(str(start))
barrier = int(os.environ.get("AUTORESEARCH_FAKE_BARRIER", "0"))   # wait until this many trainings started
deadline = time.time() + 30
while record and barrier and time.time() < deadline and \
        sum(name.endswith(".started") for name in os.listdir(record)) < barrier:
    time.sleep(0.05)
time.sleep(float(os.environ.get("AUTORESEARCH_FAKE_SLEEP", "0.3")))
end = time.time()
if record:
    with open(os.path.join(record, f"{os.getpid()}-{start:.6f}.json"), "w") as f:
        json.dump({"cvd": os.environ.get("CUDA_VISIBLE_DEVICES"), "start": start, "end": end, "seed": seed,
                   "cwd": os.getcwd(), "env": dict(os.environ)}, f)
if DEPTH > 12:
    raise SystemExit("fake: too deep")
val = 1.0 + abs(LEARNING_RATE - 0.03) + 0.002 * abs(DEPTH - 10) + 0.0001 * (seed % 7)
checkpoint = os.environ.get("AUTORESEARCH_CHECKPOINT")
if checkpoint:                      # what FAKE_EVALUATOR scores
    with open(checkpoint, "w") as f:
        json.dump({"val": val}, f)
print("step 1/1")
print("---")
print(f"val_bpb:          {val:.6f}")
print(f"training_seconds: {end - start:.1f}")
print("peak_vram_mb:     1024.0")
print(f"depth:            {DEPTH}")
'''


# The fake seed's fixed side: a stand-in for prepare/trusted_eval.py with its command line and its
# go/called-off protocol, scoring the value the fake train file saved. A test stand-in only: the
# real evaluator (tests/test_trusted_eval.py, tests/test_adversarial.py) never reads a number that
# the training wrote.
FAKE_EVALUATOR = '''\
import argparse, json, math, sys
parser = argparse.ArgumentParser()
for flag in ("--task", "--train-file", "--checkpoint", "--device", "--server-argv-json"):
    parser.add_argument(flag)
parser.add_argument("--wait-for-go", action="store_true")
args = parser.parse_args()
if args.wait_for_go and sys.stdin.readline().strip() != "go":
    sys.exit(0)
try:
    with open(args.checkpoint) as f:
        value = json.load(f)["val"]
except (OSError, ValueError, KeyError, TypeError) as error:
    print(json.dumps({"error": f"fake evaluator: unreadable checkpoint ({error})"}))
    sys.exit(1)
if not isinstance(value, (int, float)) or not math.isfinite(value):
    print(json.dumps({"error": f"fake evaluator: no finite value in the checkpoint ({value!r})"}))
    sys.exit(1)
print(json.dumps({"metric": value, "holdout": value + 0.001, "seconds": 0.0}))
'''


def git(root: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args], cwd=root,
                          check=True, capture_output=True, text=True).stdout


def make_seed_repo(root: Path, train: str = FAKE_TRAIN) -> Path:
    """A run repository: prepare/ (faked), engine/train.py (fake trainer), program.md, committed."""
    (root / "prepare").mkdir(parents=True)
    (root / "prepare" / "__init__.py").write_text("MAX_SEQ_LEN = 256  # fixed\n")
    (root / "prepare" / "trusted_eval.py").write_text(FAKE_EVALUATOR)
    (root / "engine").mkdir()
    (root / "engine" / "train.py").write_text(train)
    (root / "program.md").write_text("Lower {metric} by editing `{train_file}` only.\n")
    return commit_seed(root)


def commit_seed(root: Path) -> Path:
    """`root` with what a run ignores, made a git repository with one commit: the seed."""
    (root / ".gitignore").write_text("runs/\n__pycache__/\n")
    git(root, "init", "-q", "-b", "main")
    git(root, "add", "-A")
    git(root, "commit", "-qm", "seed")
    return root


@contextlib.contextmanager
def local_ray(num_cpus: int):
    """A Ray of the test's own (address="local", even where a `ray start` cluster is up), without
    token auth (see tests/conftest.py), shut down at the end."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAY_AUTH_MODE", "disabled")
        ray.init(address="local", num_cpus=num_cpus, num_gpus=0, include_dashboard=False, log_to_driver=False,
                 configure_logging=False)
        try:
            yield ray.get_runtime_context().gcs_address
        finally:
            ray.shutdown()


def events(run_dir: Path) -> list[dict]:
    """The journal's events without their signature fields (_seq, _mac: tests/test_journal_integrity.py)."""
    lines = (run_dir / "events.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in ("_seq", "_mac")} for line in lines if line.strip()]


def trainings(record_dir: Path) -> list[dict]:
    """What each fake training recorded, in start order."""
    return sorted((json.loads(p.read_text()) for p in record_dir.glob("*.json")), key=lambda r: r["start"])


def branches(repo: Path, tag: str) -> dict[str, str]:
    out = git(repo, "for-each-ref", "--format=%(refname:short) %(objectname)", f"refs/heads/population/{tag}/")
    return {name.rsplit("/", 1)[1]: commit for name, commit in (line.split() for line in out.splitlines())}


def worktrees(repo: Path) -> set[str]:
    out = git(repo, "worktree", "list", "--porcelain")
    return {line.split(" ", 1)[1] for line in out.splitlines() if line.startswith("worktree ")}


def wait_for(what: str, condition, timeout_s: float, details=lambda: "") -> None:
    """Poll `condition` until it holds; fail naming `what` (and `details()`) after `timeout_s`."""
    deadline = time.time() + timeout_s
    while not condition():
        assert time.time() < deadline, f"timed out waiting for {what}\n{details()}"
        time.sleep(0.2)
