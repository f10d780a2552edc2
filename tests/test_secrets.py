"""Secret hygiene end to end: with keys planted in the environment, agents run, trainings run, the
store records everything, git commits and bundles travel, and then every file written (raw, parquet
decoded, every git object of every repository) is searched for the planted values."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from population import gitops
from population.secrets import leaked_names
from population.state import PopulationState, member_name
from population.store import RunStore
from population.training import TrainJob, run_training
from population.worker import PrepareJob, WorkerCore
from chat_stub import ChatServer
from test_driver_support import FAKE_EVALUATOR

PLANTED = {"OPENAI_API_KEY": "sk-PLANTED-openai-0123456789abcdef",
           "ANTHROPIC_API_KEY": "sk-ant-PLANTED-anthropic-0123456789",
           "FOO_TOKEN": "PLANTED-foo-token-0123456789"}
TRAIN_FILE = "engine/train.py"
SEED_TRAIN = '''import json, os
LR = 0.04
print("environment of the training:", dict(os.environ))
if os.environ.get("AUTORESEARCH_CHECKPOINT"):
    with open(os.environ["AUTORESEARCH_CHECKPOINT"], "w") as f:
        json.dump({"val": 1.0 + abs(LR - 0.05)}, f)
print("---")
print(f"val_bpb:          {1.0 + abs(LR - 0.05):.6f}")
print("training_seconds: 1.0")
print("total_seconds:    1.0")
'''
# A CLI agent that shows the key it was given everywhere it can: its output, its description and,
# with --into-code, the train file itself.
FAKE_AGENT = '''import os, sys
key = os.environ.get("FOO_TOKEN", "unset")
print("my environment:", dict(os.environ))
text = open("engine/train.py").read().replace("LR = 0.04", "LR = 0.05")
if "--into-code" in sys.argv:
    text += f"\\nTOKEN = {key!r}\\n"
open("engine/train.py", "w").write(text)
os.makedirs(".agent", exist_ok=True)
open(".agent/description", "w").write(f"lr 0.05 (key {key})")
'''


# ---------------------------------------------------------------- the search for planted values

def _git_dirs(root: Path) -> list[Path]:
    return sorted({p.parent for p in root.rglob("HEAD") if (p.parent / "objects").is_dir()})


def planted_hits(root: Path, values=PLANTED.values()) -> list[str]:
    """Where under `root` a planted value occurs: any file's raw bytes, any parquet table's cells,
    any object (reachable or not) of any git repository (objects are compressed on disk)."""
    hits = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        data = path.read_bytes()
        if path.suffix == ".parquet":
            data += json.dumps(pq.read_table(path).to_pylist(), default=str).encode()
        hits += [f"{path}: {value}" for value in values if value.encode() in data]
    for git_dir in _git_dirs(root):
        objects = subprocess.run(["git", "--git-dir", str(git_dir), "cat-file", "--batch-all-objects", "--batch"],
                                 capture_output=True, check=True).stdout
        hits += [f"{git_dir} (git object): {value}" for value in values if value.encode() in objects]
    return hits


def test_the_search_finds_values_in_files_parquet_and_git_objects(tmp_path):
    value = "PLANTED-visible-0123456789"
    (tmp_path / "plain.txt").write_text(f"x {value} y")
    pq.write_table(__import__("pyarrow").table({"c": [value] * 50}), tmp_path / "t.parquet", compression="zstd")
    repo = tmp_path / "repo"
    repo.mkdir()
    git = lambda *a: subprocess.run(["git", "-C", str(repo), *a], check=True, capture_output=True)
    git("init", "-q")
    git("-c", "user.name=t", "-c", "user.email=t@e", "commit", "-q", "--allow-empty", "-m", f"msg {value}")
    hits = planted_hits(tmp_path, [value])
    assert any("plain.txt" in h for h in hits) and any("t.parquet" in h for h in hits)
    assert any("(git object)" in h for h in hits)
    assert value.encode() not in b"".join(p.read_bytes() for p in (repo / ".git" / "objects").rglob("*") if p.is_file())


# ---------------------------------------------------------------- fixtures

@pytest.fixture
def planted(monkeypatch, tmp_path):
    for name, value in PLANTED.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))   # agents' HOME: inside the searched tree
    (tmp_path / "home").mkdir()


@pytest.fixture
def seed_repo(tmp_path) -> Path:
    repo = tmp_path / "seed"
    (repo / "engine").mkdir(parents=True)
    (repo / "prepare").mkdir()
    (repo / "prepare" / "fixed.py").write_text("FIXED = 1\n")
    (repo / "prepare" / "trusted_eval.py").write_text(FAKE_EVALUATOR)
    (repo / "program.md").write_text("Make val_bpb lower by editing engine/train.py.\n")
    (repo / TRAIN_FILE).write_text(SEED_TRAIN)
    git = lambda *a: subprocess.run(["git", "-C", str(repo), *a], check=True, capture_output=True)
    git("init", "-q", "-b", "main")
    git("add", "-A")
    git("-c", "user.name=t", "-c", "user.email=t@e", "commit", "-q", "-m", "seed")
    return repo


def echo_the_key(request: dict) -> tuple[int, dict, float]:
    """A chat answer that repeats the caller's Authorization header (its key) in its text and in the
    description, and changes LR."""
    auth = request["auth"] or ""
    answer = (f"Called with {auth}.\n<<<<<<< SEARCH\nLR = 0.04\n=======\nLR = 0.05\n>>>>>>> REPLACE\n"
              f"DESCRIPTION: lr 0.05 ({auth})\n")
    return 200, {"choices": [{"message": {"role": "assistant", "content": answer}}], "usage": {"total_tokens": 10}}, 0.0


@pytest.fixture
def chat_server():
    server = ChatServer(echo_the_key)
    yield server
    server.close()


@pytest.fixture
def fake_agent(tmp_path) -> Path:
    path = tmp_path / "fake_agent.py"
    path.write_text(FAKE_AGENT)
    return path


# ---------------------------------------------------------------- worker, agents, store, git

def _record(store: RunStore, seed_repo_obj, worker: WorkerCore, exp_id: int, seed_commit: str, agent: str) -> str:
    """One child experiment the way the driver records it: journal, files, tables, the child's branch."""
    member = member_name(exp_id)
    store.append({"type": "experiment_started", "id": exp_id, "kind": "child", "member": member, "parent_id": 0,
                  "parent_commit": seed_commit, "worker": worker.name, "agent": agent, "seed": 42, "budget_s": 1.0})
    prompt = "Make val_bpb lower.\nThe one file you may edit: `engine/train.py`\n"
    bundle, ref = gitops.bundle_bytes(seed_repo_obj, seed_commit)
    prepared = worker.prepare(PrepareJob(exp_id=exp_id, commit=seed_commit, bundle_ref=ref,
                                         prepare_fingerprint=_fingerprint(seed_repo_obj), train_file=TRAIN_FILE,
                                         prompt=prompt, branch=gitops.member_branch("t", member), member=member,
                                         agent_timeout_s=60), [bundle])
    assert prepared.status == "ready", prepared.reason
    branch = gitops.member_branch("t", member)
    commit = gitops.fetch_bundle(seed_repo_obj, prepared.bundle, prepared.bundle_ref, f"refs/heads/{branch}")
    result = run_training(TrainJob(exp_id=exp_id, worktree=prepared.worktree, train_file=TRAIN_FILE,
                                   env={"AUTORESEARCH_TIME_BUDGET": "1"}, timeout_s=60, log_path=prepared.log_path,
                                   device="cpu"))
    store.write_experiment_files(exp_id, {"run.log": result.log, "prompt.md": prompt,
                                          "transcript.txt": prepared.transcript,
                                          "diff.patch": gitops.diff(seed_repo_obj, seed_commit, commit)})
    store.append({"type": "experiment_finished", "id": exp_id,
                  "row": {"commit": commit, "branch": branch, "status": "ok", "reason": "", "worker": worker.name,
                          "agent": agent, "description": prepared.description, "val_bpb": 1.0,
                          "agent_seconds": prepared.agent_seconds, "node": result.node, "gpu": result.gpu}})
    return prepared.transcript


def _fingerprint(repo) -> str:
    from population import guards
    return guards.tree_fingerprint(Path(repo.working_tree_dir), "prepare")


def test_worker_agents_store_and_git_never_record_a_planted_key(planted, tmp_path, seed_repo, chat_server, fake_agent):
    repo = gitops.open_run_repo(seed_repo)
    seed_commit = gitops.head_commit(repo)
    openai_spec, command_spec = "openai:fake-model", f"command:{sys.executable} {fake_agent}"
    store = RunStore.create(tmp_path / "runs" / "t", {
        "tag": "t", "task": "climbmix", "metric": "val_bpb", "lower_is_better": True, "budget_s": 1.0,
        "args": {"agents": [openai_spec, command_spec], "agent_base_url": chat_server.url}})
    workers = [WorkerCore("w0", "t", openai_spec, {"base_url": chat_server.url}, workdir=str(tmp_path / "work")),
               WorkerCore("w1", "t", command_spec, {"key_env": "FOO_TOKEN"}, workdir=str(tmp_path / "work"))]
    transcripts = [_record(store, repo, worker, exp_id, seed_commit, worker.agent.spec)
                   for exp_id, worker in enumerate(workers, start=1)]
    state = PopulationState.replay(store.events(), "val_bpb", True)
    store.write_tables(state.lineage_rows(), "val_bpb")

    # the keys did reach the agents (so there was something to leak) and were scrubbed on the way back
    assert chat_server.auth == [f"Bearer {PLANTED['OPENAI_API_KEY']}"]
    assert all("[REDACTED]" in transcript for transcript in transcripts)
    assert "[REDACTED]" in (store.dir / "results.tsv").read_text()
    assert planted_hits(tmp_path) == []


def test_a_key_written_into_the_change_is_caught_before_commit(planted, tmp_path, seed_repo, fake_agent):
    from population.agents import make_agent

    agent = make_agent(f"command:{sys.executable} {fake_agent} --into-code", key_env="FOO_TOKEN")
    proposal = agent.propose(seed_repo, "go", timeout=60)
    assert proposal.error is None and PLANTED["FOO_TOKEN"] not in proposal.description
    diff = gitops.full_diff(seed_repo, "HEAD")
    assert "LR = 0.05" in diff
    assert leaked_names(diff) == ["FOO_TOKEN"]
    assert leaked_names(diff.replace(PLANTED["FOO_TOKEN"], "x")) == []


def test_leaked_names_ignores_short_and_non_secret_values():
    source = {"FOO_TOKEN": "abc", "HOME": "/home/someone", "DB_PASSWORD": "hunter2hunter2"}
    assert leaked_names("abc /home/someone hunter2hunter2", source) == ["DB_PASSWORD"]
    assert leaked_names("key sk-extra-0123456789", {}, extra=[("api_key", "sk-extra-0123456789")]) == ["api_key"]


# ---------------------------------------------------------------- a whole driver run

@pytest.mark.timeout(300)
def test_a_driver_run_never_records_a_planted_key(planted, tmp_path, seed_repo, chat_server):
    from population.config import RunConfig
    from population.driver import run_population

    config = RunConfig(workers=1, budget_s=1, agents=["openai:fake-model"], agent_base_url=chat_server.url,
                       tag="t", runs_dir=str(tmp_path / "runs"), max_experiments=3, noise_runs=1, device="cpu",
                       repo=str(seed_repo), workdir=str(tmp_path / "work"), population_size=4, tournament_size=2)
    out = tmp_path / "console.txt"
    with open(out, "w") as console:
        code = run_population(config, ray_init_kwargs={"num_cpus": 2}, out=console)
    assert code == 0, out.read_text()
    lineage = RunStore.open(tmp_path / "runs" / "t").read_lineage()
    assert ((lineage["kind"] == "child") & (lineage["status"] == "ok")).any()
    assert chat_server.auth and set(chat_server.auth) == {f"Bearer {PLANTED['OPENAI_API_KEY']}"}
    assert planted_hits(tmp_path) == []
