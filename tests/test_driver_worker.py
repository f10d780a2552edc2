"""The worker without Ray: preparing a child in a node-local clone (guards, bundles), and the
training subprocess (environment, hard limit, process-group kill)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from population import gitops, guards
from population.agents import Proposal
from population.sandbox import TOOLCHAIN_ENV_NAMES
from population.training import TrainJob, run_training, training_env
from population.worker import PrepareJob, WorkerCore, child_process_groups, stop_process_groups
from test_driver_support import make_seed_repo


class FakeAgent:
    """Edits files as told; stands in for a real agent."""
    spec = "fake"

    def __init__(self, edits: dict[str, str], error: str | None = None):
        self.edits, self.error = edits, error

    def propose(self, worktree: Path, prompt: str, *, timeout: float) -> Proposal:
        for path, text in self.edits.items():
            (Path(worktree) / path).parent.mkdir(parents=True, exist_ok=True)
            (Path(worktree) / path).write_text(text)
        return Proposal("raise depth", f"prompt was {len(prompt)} chars", 0.5, tokens=12, cost_usd=0.01,
                        error=self.error)


@pytest.fixture
def setup(tmp_path):
    seed = make_seed_repo(tmp_path / "seed")
    repo = gitops.open_run_repo(seed)
    core = WorkerCore("w0", "t", "mutate", {"train_file": "engine/train.py"}, workdir=str(tmp_path / "workers"))
    data, ref = gitops.bundle_bytes(repo, gitops.head_commit(repo))
    job = PrepareJob(exp_id=5, commit=gitops.head_commit(repo), bundle_ref=ref,
                     prepare_fingerprint=guards.tree_fingerprint(seed, "prepare"), train_file="engine/train.py",
                     prompt="make it better", branch="population/t/m0001", member="m0001", agent_timeout_s=10)
    return seed, repo, core, job, data


def test_child_is_committed_in_the_workers_own_clone_and_comes_back_as_a_bundle(setup, tmp_path):
    seed, repo, core, job, data = setup
    core.agent = FakeAgent({"engine/train.py": "DEPTH = 10\n"})
    result = core.prepare(job, [data])
    assert result.status == "ready", result.reason
    clone_dir = Path(core.clone.working_tree_dir)
    assert clone_dir.is_relative_to(tmp_path / "workers" / "t" / "w0") and not clone_dir.is_relative_to(seed)
    assert Path(result.worktree).is_relative_to(tmp_path / "workers")
    assert result.description == "raise depth" and result.agent_tokens == 12
    child = gitops.fetch_bundle(repo, result.bundle, result.bundle_ref, "refs/heads/population/t/m0001")
    assert child == result.commit != job.commit
    assert gitops.ref_commit(repo, "population/t/m0001") == child
    assert "+DEPTH = 10" in gitops.diff(repo, job.commit, child)
    assert "Member: m0001" in repo.commit(child).message
    core.cleanup(job.exp_id)
    assert not Path(result.worktree).exists()


def test_a_commit_already_in_the_clone_needs_no_bundle(setup):
    _, _, core, job, data = setup
    core.agent = FakeAgent({"engine/train.py": "DEPTH = 11\n"})
    core.prepare(job, [data])
    job.exp_id, job.branch = 6, "population/t/m0002"
    assert core.prepare(job, [b"not a bundle"]).status == "ready"


def test_changes_outside_the_train_file_are_a_violation_and_reverted(setup):
    seed, _, core, job, data = setup
    core.agent = FakeAgent({"engine/train.py": "DEPTH = 10\n", "prepare/__init__.py": "MAX_SEQ_LEN = 1\n",
                            "prepare/evil.py": "X = 1\n"})
    result = core.prepare(job, [data])
    assert result.status == "violation"
    assert "prepare/__init__.py" in result.reason and "prepare/evil.py" in result.reason
    assert result.commit == "" and result.bundle is None
    worktree = Path(result.worktree)
    assert (worktree / "prepare" / "__init__.py").read_text() == (seed / "prepare" / "__init__.py").read_text()
    assert not (worktree / "prepare" / "evil.py").exists()
    assert "MAX_SEQ_LEN = 1" in result.diff          # the record shows what the agent tried


def test_a_key_pasted_into_the_change_is_refused_and_not_recorded(setup, monkeypatch):
    _, _, core, job, data = setup
    monkeypatch.setenv("FOO_TOKEN", "PLANTED-token-0123456789")
    core.agent = FakeAgent({"engine/train.py": "TOKEN = 'PLANTED-token-0123456789'\n"})
    result = core.prepare(job, [data])
    assert result.status == "violation" and "FOO_TOKEN" in result.reason
    assert result.commit == "" and result.bundle is None
    assert "PLANTED" not in result.diff + result.reason + result.transcript + result.description


def test_agent_error_is_recorded_without_a_commit(setup):
    _, _, core, job, data = setup
    core.agent = FakeAgent({"engine/train.py": "half an edit"}, error="agent timed out after 10 s")
    result = core.prepare(job, [data])
    assert result.status == "agent_error" and "timed out" in result.reason and result.commit == ""


def test_a_dead_agent_base_url_is_an_agent_error_with_its_whole_message(setup, monkeypatch):
    """The built-in openai: agent against a port nobody listens on: the reason the lineage row
    records is the request's whole error, up to `Connection refused` (issue 29)."""
    import socket

    from population.agents import make_agent, openai_agent

    monkeypatch.setattr(openai_agent, "_FIRST_RETRY_PAUSE_S", 0.01)
    with socket.socket() as probe:                     # a free port, closed again: nothing listens there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    _, _, core, job, data = setup
    core.agent = make_agent("openai:test-model", base_url=f"http://127.0.0.1:{port}/v1", train_file="engine/train.py")
    result = core.prepare(job, [data])
    assert result.status == "agent_error" and result.commit == ""
    assert result.reason.startswith(f"request to http://127.0.0.1:{port}/v1/chat/completions failed: ConnectionError: ")
    assert "HTTPConnectionPool(host='127.0.0.1'" in result.reason and "Connection refused" in result.reason


def test_a_prepare_directory_unlike_the_seeds_is_refused_before_training(setup):
    _, _, core, job, data = setup
    job.prompt, job.branch = None, None                     # a baseline: train the commit as is
    job.prepare_fingerprint = "0" * 64
    result = core.prepare(job, [data])
    assert result.status == "violation" and "prepare/" in result.reason


def _job(tmp_path, script: str, timeout_s: float = 30, device: str = "cuda", env=None) -> TrainJob:
    worktree = tmp_path / "wt"
    worktree.mkdir(exist_ok=True)
    (worktree / "train.py").write_text(script)
    return TrainJob(exp_id=1, worktree=str(worktree), train_file="train.py", env=env or {"AUTORESEARCH_SEED": "7"},
                    timeout_s=timeout_s, log_path=str(tmp_path / "logs" / "1.log"), device=device)


def test_training_environment_is_minimal_and_has_no_keys(tmp_path, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-secret-value")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    job = _job(tmp_path, "", env={"AUTORESEARCH_SEED": "7", "AUTORESEARCH_HF_TOKEN": "x" * 10})
    env = training_env(job, dict(os.environ))
    assert env["CUDA_VISIBLE_DEVICES"] == "3" and env["AUTORESEARCH_SEED"] == "7"
    assert env["PYTHONPATH"] == job.worktree
    assert "ANTHROPIC_API_KEY" not in env and "AUTORESEARCH_HF_TOKEN" not in env
    torch_settings = {name for name in env if name.startswith(("TORCHINDUCTOR_", "TRITON_", "TORCH_", "PYTORCH_"))}
    assert set(env) - torch_settings <= {"PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "USER", "LD_LIBRARY_PATH",
                                         "CUDA_HOME", "CUDA_PATH", "HF_HOME", "HF_HUB_OFFLINE", "XDG_CACHE_HOME",
                                         "VIRTUAL_ENV", "CONDA_PREFIX", "PYTHONPATH", "PYTHONUNBUFFERED",
                                         "CUDA_VISIBLE_DEVICES", "AUTORESEARCH_SEED", *TOOLCHAIN_ENV_NAMES}
    assert "OMP_NUM_THREADS" not in env          # a GPU training keeps torch's own thread count
    job.device = "cpu"
    cpu_env = training_env(job, dict(os.environ))
    assert cpu_env["CUDA_VISIBLE_DEVICES"] == "" and cpu_env["OMP_NUM_THREADS"] == "1"


def test_training_sees_the_nodes_torch_settings_as_a_plain_run_would(tmp_path):
    """Settings that change inductor's config (and so its cache key) must reach every training."""
    node_env = {"PATH": "/usr/bin", "TORCHINDUCTOR_COMPILE_THREADS": "4", "TRITON_CACHE_DIR": "/c/triton",
                "TORCH_CUDA_ARCH_LIST": "9.0", "PYTORCH_ALLOC_CONF": "expandable_segments:True",
                "RAY_ADDRESS": "auto", "PYTHONDONTWRITEBYTECODE": "1", "TORCH_TOKEN": "tok-secret"}
    env = training_env(_job(tmp_path, ""), node_env)
    assert env["TORCHINDUCTOR_COMPILE_THREADS"] == "4" and env["TRITON_CACHE_DIR"] == "/c/triton"
    assert env["TORCH_CUDA_ARCH_LIST"] == "9.0" and env["PYTORCH_ALLOC_CONF"] == "expandable_segments:True"
    assert "RAY_ADDRESS" not in env and "PYTHONDONTWRITEBYTECODE" not in env
    assert "TORCH_TOKEN" not in env  # a prefix never lets a secret through


INDUCTOR_CONFIG = """
import json, torch._inductor.config as config
print(json.dumps({name: repr(value) for name, value in config.save_config_portable().items()}))
"""


def test_a_training_configures_inductor_as_a_plain_run_on_its_node_does(tmp_path):
    """Inductor's config is part of its cache key: a training must read the same config from its
    environment as a plain `python train.py` on the node, or it misses the cache that run warmed."""
    node_env = dict(os.environ, CXX="/opt/toolchain/bin/g++", CC="/opt/toolchain/bin/gcc")
    env = training_env(_job(tmp_path, ""), node_env)
    assert env["CXX"] == "/opt/toolchain/bin/g++" and env["CC"] == "/opt/toolchain/bin/gcc"
    runs = [subprocess.Popen([sys.executable, "-c", INDUCTOR_CONFIG], env=run_env, stdout=subprocess.PIPE, text=True)
            for run_env in (node_env, {**env, "PYTHONPATH": os.pathsep.join(sys.path)})]
    plain, training = (json.loads(run.communicate(timeout=120)[0]) for run in runs)
    assert "/opt/toolchain/bin/g++" in plain["cpp.cxx"]
    assert {name for name in plain if plain[name] != training.get(name)} == set()


def test_training_runs_in_the_worktree_and_captures_the_log(tmp_path):
    script = "import os, sys\nprint('cwd', os.getcwd())\nprint('path', os.environ['PYTHONPATH'])\n" \
             "print('oops', file=sys.stderr)\nsys.exit(3)\n"
    result = run_training(_job(tmp_path, script, device="cpu"))
    assert result.returncode == 3 and not result.timed_out
    assert f"cwd {tmp_path / 'wt'}" in result.log and "oops" in result.log
    assert result.gpu == "cpu" and result.cuda_visible_devices == ""
    assert (tmp_path / "logs" / "1.log").read_text() == result.log


def test_training_past_its_limit_is_killed_with_its_whole_process_group(tmp_path):
    pid_file = tmp_path / "grandchild.pid"
    script = ("import subprocess, sys, time\n"
              "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
              f"open({str(pid_file)!r}, 'w').write(str(p.pid))\n"
              "print('started', flush=True)\ntime.sleep(60)\n")
    start = time.monotonic()
    result = run_training(_job(tmp_path, script, timeout_s=2.0))
    assert result.timed_out and time.monotonic() - start < 20
    assert "started" in result.log
    grandchild = int(pid_file.read_text())
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and _alive(grandchild):
        time.sleep(0.1)
    assert not _alive(grandchild)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_a_stop_finds_and_kills_the_process_groups_a_worker_started():
    import subprocess
    agent = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    plain = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])   # not a group leader
    try:
        groups = child_process_groups(os.getpid())
        assert agent.pid in groups and plain.pid not in groups
        stop_process_groups([agent.pid], grace_s=2)
        assert agent.wait(timeout=10) is not None
        assert plain.poll() is None
    finally:
        for proc in (agent, plain):
            proc.kill()
            proc.wait()
