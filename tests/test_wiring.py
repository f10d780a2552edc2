"""The standalone modules wired into the driver: `--sandbox` (population/sandbox.py) around every
training, and the per-node readiness check (population/readiness.py) before the first experiment.

The end-to-end tests share one small local Ray (CPU only) and a fake train file."""
from __future__ import annotations

import errno
import io
import json
import shutil
import socket
import uuid
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from population import readiness, sandbox                                 # noqa: E402
from population.cli import build_parser, config_from_args                  # noqa: E402
from population.config import RunConfig                                    # noqa: E402
from population.driver import EXIT_ERROR, EXIT_OK, Driver, run_population   # noqa: E402
from population.worker import WorkerCore                                   # noqa: E402
from prepare.tasks import get_task                                         # noqa: E402
from test_driver_support import branches, events, make_seed_repo, worktrees    # noqa: E402

# A trainer that tries what a sandbox forbids and reports what happened in its log, then succeeds.
PROBING_TRAIN = '''\
import json, os, socket
def attempt(action):
    try:
        action()
        return "ok"
    except OSError as e:
        return f"failed errno={e.errno}"
def write(path):
    with open(path, "w") as f:
        f.write("x")
checkpoint = os.environ["AUTORESEARCH_CHECKPOINT"]
outcome = {
    "outside": attempt(lambda: write(os.path.join(os.environ["AUTORESEARCH_PROBE_DIR"], "escaped.txt"))),
    "prepare": attempt(lambda: write(os.path.join("prepare", "escaped.txt"))),
    "export": attempt(lambda: write("inside.txt")),
    "output": attempt(lambda: write(os.path.join(os.path.dirname(checkpoint), "note.txt"))),
    "loopback": attempt(lambda: socket.create_connection(("127.0.0.1", int(os.environ["AUTORESEARCH_PROBE_PORT"])),
                                                         timeout=3).close()),
}
with open(checkpoint, "w") as f:
    json.dump({"val": 1.0}, f)
print("probe " + json.dumps(outcome))
print("---")
print("val_bpb:          1.000000")
print("training_seconds: 0.1")
'''


@pytest.fixture(scope="module")
def cluster():
    if ray.is_initialized():
        ray.shutdown()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAY_AUTH_MODE", "disabled")
        ray.init(address="local", num_cpus=2, num_gpus=0, include_dashboard=False, log_to_driver=False, configure_logging=False)
        yield
        ray.shutdown()


def _config(seed_repo: Path, tag: str, **kw) -> RunConfig:
    defaults = dict(tag=tag, repo=str(seed_repo), runs_dir=str(seed_repo / "runs"), budget_s=5.0, device="cpu",
                    workers=1, max_experiments=1, noise_runs=1, workdir=str(seed_repo.parent / "workers"),
                    agent_timeout_s=30.0, status_every_s=3600.0)
    return RunConfig(**(defaults | kw))


def _run(cfg: RunConfig) -> tuple[int, str]:
    out = io.StringIO()
    return run_population(cfg, out=out), out.getvalue()


def _fake_cache(root: Path, tokenizer: bytes) -> Path:
    """The files readiness looks at, with a chosen tokenizer (enough for its checks)."""
    task = get_task("climbmix")
    for path in readiness.required_files(task, root):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"shard")
    readiness.fingerprint_files(task, root)[0].write_bytes(tokenizer)
    return root


# ---------------------------------------------------------------- the flag

def test_sandbox_is_on_by_default_and_no_sandbox_turns_it_off():
    parser = build_parser()
    assert config_from_args(parser.parse_args([])).sandbox is True
    assert config_from_args(parser.parse_args(["--no-sandbox"])).sandbox is False
    assert "bubblewrap" in parser.format_help()


def test_a_driver_where_bwrap_does_not_work_refuses_in_one_line_naming_no_sandbox(cluster, tmp_path, monkeypatch,
                                                                                  capsys):
    monkeypatch.setattr(sandbox, "probe", lambda: "--sandbox needs bubblewrap with user namespaces: no bwrap")
    repo = make_seed_repo(tmp_path / "seed")
    code, out = _run(_config(repo, "nobwrap"))
    error = capsys.readouterr().err
    assert code == EXIT_ERROR and "needs bubblewrap" in error and "--no-sandbox" in error
    assert not (repo / "runs" / "nobwrap").exists()


def test_a_worker_refuses_to_start_where_sandboxes_do_not_work(tmp_path, monkeypatch):
    monkeypatch.setattr(sandbox, "probe", lambda: "--sandbox needs bubblewrap with user namespaces: no bwrap")
    with pytest.raises(sandbox.SandboxUnavailable, match="needs bubblewrap"):
        WorkerCore("w0", "t", "mutate", {"seed": 1, "train_file": "engine/train.py"}, str(tmp_path), use_sandbox=True)
    WorkerCore("w0", "t", "mutate", {"seed": 1, "train_file": "engine/train.py"}, str(tmp_path))   # off: no check


# ---------------------------------------------------------------- sandboxed trainings, end to end

@pytest.mark.skipif(not sandbox.available(), reason="bubblewrap does not work on this machine")
def test_a_sandboxed_training_writes_only_its_output_directory_and_has_no_network(cluster, tmp_path, monkeypatch):
    # outside /tmp on purpose: under HOME, which the sandbox's allowlist leaves out (not merely private)
    outside = Path.home() / ".cache" / f"autoresearch-wiring-{uuid.uuid4().hex[:8]}"
    outside.mkdir(parents=True)
    server = socket.create_server(("127.0.0.1", 0))
    try:
        monkeypatch.setenv("AUTORESEARCH_PROBE_DIR", str(outside))
        monkeypatch.setenv("AUTORESEARCH_PROBE_PORT", str(server.getsockname()[1]))
        monkeypatch.setenv("AUTORESEARCH_CACHE", str(tmp_path / "cache"))   # no prepared cache: no readiness
        repo = make_seed_repo(tmp_path / "seed", train=PROBING_TRAIN)
        code, out = _run(_config(repo, "sandboxed"))                     # the default
        assert code == EXIT_OK, out
        finished = [e for e in events(repo / "runs" / "sandboxed") if e["type"] == "experiment_finished"]
        assert [e["row"]["status"] for e in finished] == ["ok"]
        log = (repo / "runs" / "sandboxed" / "experiments" / "0" / "run.log").read_text()
        probe = json.loads(log.split("probe ", 1)[1].splitlines()[0])
        assert probe["outside"] == f"failed errno={errno.ENOENT}"     # the host's HOME is not in the sandbox at all
        assert probe["prepare"] == f"failed errno={errno.EROFS}"      # the fixed side of its export
        assert probe["export"] == f"failed errno={errno.EROFS}"       # what was committed, read-only
        assert probe["output"] == "ok"                                # its own output directory
        assert probe["loopback"].startswith("failed")
        assert not (outside / "escaped.txt").exists()
    finally:
        server.close()
        shutil.rmtree(outside, ignore_errors=True)


def test_without_the_sandbox_the_same_trainer_reaches_the_network_and_writes_its_export(cluster, tmp_path, monkeypatch):
    """The control: the probe itself detects an open network and a writable export."""
    server = socket.create_server(("127.0.0.1", 0))
    try:
        monkeypatch.setenv("AUTORESEARCH_PROBE_DIR", str(tmp_path))
        monkeypatch.setenv("AUTORESEARCH_PROBE_PORT", str(server.getsockname()[1]))
        monkeypatch.setenv("AUTORESEARCH_CACHE", str(tmp_path / "cache"))
        repo = make_seed_repo(tmp_path / "seed", train=PROBING_TRAIN)
        code, out = _run(_config(repo, "open", sandbox=False))
        # what it wrote into its export's prepare/ is caught all the same, after the training
        assert code == EXIT_ERROR and "export rule" in out
        log = (repo / "runs" / "open" / "experiments" / "0" / "run.log").read_text()
        probe = json.loads(log.split("probe ", 1)[1].splitlines()[0])
        assert probe["loopback"] == "ok" and probe["outside"] == "ok" and probe["prepare"] == "ok"
    finally:
        server.close()


# ---------------------------------------------------------------- readiness

def test_a_worker_checks_its_nodes_cache_against_the_drivers(tmp_path):
    mine = _fake_cache(tmp_path / "mine", b'{"merges": "A"}')
    drivers = _fake_cache(tmp_path / "drivers", b'{"merges": "B"}')
    worker = WorkerCore("w0", "t", "mutate", {"seed": 1, "train_file": "engine/train.py"}, str(tmp_path / "w"))
    same = readiness.cache_fingerprint("climbmix", mine)
    assert worker.ensure_ready("climbmix", same, str(mine)) == same
    with pytest.raises(readiness.NodeNotReady, match="differ from the driver's"):
        worker.ensure_ready("climbmix", readiness.cache_fingerprint("climbmix", drivers), str(mine))


def test_a_node_whose_tokenizer_differs_ends_the_run_before_any_experiment(cluster, tmp_path, monkeypatch, capsys):
    workers_cache = _fake_cache(tmp_path / "node-cache", b'{"merges": "the worker node"}')
    drivers_cache = _fake_cache(tmp_path / "driver-cache", b'{"merges": "the driver node"}')
    monkeypatch.setenv("AUTORESEARCH_CACHE", str(workers_cache))     # what the workers (and trainings) use
    # one machine plays two nodes: the driver's own cache holds another tokenizer
    monkeypatch.setattr(Driver, "_cache_fingerprint",
                        lambda self: readiness.cache_fingerprint(self.task, drivers_cache))
    repo = make_seed_repo(tmp_path / "seed")
    code, out = _run(_config(repo, "mismatch"))
    error = capsys.readouterr().err          # errors are one line on stderr
    assert code == EXIT_ERROR, out
    assert "tokenizer/validation data differ from the driver's" in error
    assert "Traceback" not in error + out
    # a failed start leaves nothing behind (issue 29): no store, no branch, no worktree
    assert not (repo / "runs").exists()
    assert branches(repo, "mismatch") == {} and worktrees(repo) == {str(repo.resolve())}


def test_a_node_with_the_drivers_cache_runs_its_experiments(cluster, tmp_path, monkeypatch):
    cache = _fake_cache(tmp_path / "cache", b'{"merges": "same"}')
    monkeypatch.setenv("AUTORESEARCH_CACHE", str(cache))
    repo = make_seed_repo(tmp_path / "seed")
    code, out = _run(_config(repo, "match"))
    assert code == EXIT_OK, out
    assert "not checked" not in out
    assert [e["row"]["status"] for e in events(repo / "runs" / "match") if e["type"] == "experiment_finished"] == ["ok"]


def test_a_worker_that_cannot_sandbox_is_reported_in_one_line(cluster):
    from population.ray_fleet import raised_line

    @ray.remote
    class Unsandboxable:
        def __init__(self):
            from population.sandbox import SandboxUnavailable
            raise SandboxUnavailable("--sandbox needs bubblewrap with user namespaces: bwrap is not installed")

        def info(self):
            return {}

    with pytest.raises(ray.exceptions.RayActorError) as caught:
        ray.get(Unsandboxable.remote().info.remote(), timeout=60)
    assert raised_line(caught.value, "SandboxUnavailable") == \
        "--sandbox needs bubblewrap with user namespaces: bwrap is not installed"
    assert raised_line(caught.value, "NodeNotReady") is None
