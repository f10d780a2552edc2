"""The driver across nodes, on CPU: a `ray.cluster_utils.Cluster` with a head without GPUs and
worker nodes with fake GPUs, each node with its own working directory (AUTORESEARCH_WORKDIR set in
that node's environment; the driver passes none), so nothing is shared but what the driver sends.

    - a run's children travel as bundles and land as branches in the driver's repository, every
      experiment recorded once, every worker's node recorded;
    - a node removed mid-training: its experiments are journalled lost and run again elsewhere, the
      run goes on with fewer workers, and a node added later gets replacement workers.

The module shares one cluster (its head starts in ~20 s on 2 busy cores, a node in ~4 s); the last
test removes node a and adds node c."""
from __future__ import annotations

import io
import threading
import time
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

ray = pytest.importorskip("ray")
from ray.cluster_utils import Cluster                                  # noqa: E402

from population.config import RunConfig                                 # noqa: E402
from population import readiness                                        # noqa: E402
from population.driver import EXIT_OK, run_population                  # noqa: E402
from population.fleet import Slot                                       # noqa: E402
from population.ray_fleet import Joining, RayFleet, free_slots          # noqa: E402
from test_driver_support import FAKE_TRAIN, branches, events, git, make_seed_repo   # noqa: E402

GPU_KIND = "H100"
GPUS_PER_NODE = 2

# Before the fake trainer: while the file AUTORESEARCH_FAKE_GATE exists, a training waits (up to
# 60 s) unless its worktree lies under the directory the file names; so a test decides on which
# node trainings may finish.
GATED_TRAIN = '''\
import os as _os, time as _time
_gate = _os.environ.get("AUTORESEARCH_FAKE_GATE")
_until = _time.time() + 60
while _gate and _os.path.exists(_gate) and _time.time() < _until:
    with open(_gate) as _f:
        _allowed = _f.read().strip()
    if _allowed and _os.getcwd().startswith(_allowed):
        break
    _time.sleep(0.1)
''' + FAKE_TRAIN


class Nodes:
    """A test cluster whose GPU nodes each have their own working directory."""

    def __init__(self, root: Path):
        self.root = root
        self.cluster = Cluster(initialize_head=True, connect=False,
                               head_node_args={"num_cpus": 1, "num_gpus": 0, "include_dashboard": False})
        self.workdirs: dict[str, Path] = {}     # node id -> its working directory
        self.handles: dict[str, object] = {}

    def add_gpu_node(self, name: str) -> str:
        workdir = self.root / name
        workdir.mkdir(parents=True)
        node = self.cluster.add_node(num_cpus=1, num_gpus=GPUS_PER_NODE,
                                     resources={f"accelerator_type:{GPU_KIND}": 1},
                                     env_vars={"AUTORESEARCH_WORKDIR": str(workdir)})
        self.workdirs[node.node_id] = workdir
        self.handles[node.node_id] = node
        return node.node_id

    def alive(self) -> list[str]:
        return list(self.handles)

    def remove(self, node_id: str) -> None:
        self.cluster.remove_node(self.handles.pop(node_id))

    def shutdown(self) -> None:
        self.cluster.shutdown()


@pytest.fixture(scope="module")
def nodes(tmp_path_factory):
    """Head (no GPUs) plus nodes a and b; the module's last test removes a and adds c."""
    if ray.is_initialized():
        ray.shutdown()
    root = tmp_path_factory.mktemp("cluster")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAY_AUTH_MODE", "disabled")            # as the other Ray tests (see test_driver)
        patch.setenv("AUTORESEARCH_CACHE", str(root / "no-cache"))   # no prepared cache: readiness not compared
        patch.delenv("AUTORESEARCH_WORKDIR", raising=False)
        cluster = Nodes(root / "nodes")
        try:
            cluster.add_gpu_node("node-a")
            cluster.add_gpu_node("node-b")
            ray.init(address=cluster.cluster.address, include_dashboard=False, log_to_driver=False,
                     configure_logging=False)
            yield cluster
        finally:
            if ray.is_initialized():
                ray.shutdown()
            cluster.shutdown()


def _config(repo: Path, tag: str, **kw) -> RunConfig:
    # no workdir: each worker takes its own node's AUTORESEARCH_WORKDIR
    defaults = dict(tag=tag, repo=str(repo), runs_dir=str(repo / "runs"), budget_s=5.0, accelerator=GPU_KIND,
                    agent_timeout_s=30.0, status_every_s=3600.0, sandbox=False)   # the fake train file records to the host
    return RunConfig(**(defaults | kw))


def _recorded_once(evs: list[dict]) -> list[dict]:
    """The finished rows, after checking that every started experiment ended exactly once."""
    started = [e["id"] for e in evs if e["type"] == "experiment_started"]
    ends = Counter(e["id"] for e in evs if e["type"] in ("experiment_finished", "experiment_lost"))
    assert sorted(started) == list(range(len(started))), "experiment ids not 0..n-1, each started once"
    assert ends == Counter(started), "an experiment did not end exactly once"
    return [e for e in evs if e["type"] == "experiment_finished"]


def _wait_for(what: str, condition, console: io.StringIO, timeout_s: float = 90.0) -> None:
    deadline = time.time() + timeout_s
    while not condition():
        assert time.time() < deadline, f"timed out waiting for {what}; the driver said:\n{console.getvalue()}"
        time.sleep(0.1)


def _training_logs(workdir: Path, tag: str) -> list[Path]:
    """The run's trainings started on a node: each one's run.log is in its worker's logs/ there."""
    return list(workdir.glob(f"{tag}/*/logs/*.log"))


def test_free_slots_are_the_capacity_no_live_worker_takes_on_nodes_not_refused():
    capacity = [("a", "H100"), ("a", "H100"), ("b", "H100"), ("b", "H100"), ("c", "H100")]
    assert free_slots(capacity, used=["a", "b", "b"], refused=set()) == [("a", "H100"), ("c", "H100")]
    assert free_slots(capacity, used=["a", "b", "b"], refused={"c"}) == [("a", "H100")]
    assert free_slots(capacity, used=["a", "a", "a"], refused=set()) == capacity[2:]   # oversubscribed a
    assert free_slots([], used=[], refused=set()) == []


@ray.remote(num_cpus=0)
class StubWorker:
    """Answers like a WorkerActor starting on a node whose cache is (or is not) the driver's."""

    def __init__(self, cache_matches: bool):
        self.cache_matches = cache_matches

    def info(self) -> dict:
        return {"hostname": "stub-host", "agent": "mutate"}

    def ensure_ready(self) -> str:
        if not self.cache_matches:
            raise readiness.NodeNotReady("node stub-host: tokenizer/validation data differ from the driver's")
        return "fingerprint"


def test_a_replacement_takes_the_dead_slot_once_ready_and_a_node_that_is_not_is_refused(nodes):
    out = io.StringIO()
    fleet = RayFleet(RunConfig(workers=2), "t", lambda index: {}, lambda commit: (b"", ""),
                     lambda line: print(line, file=out))
    fleet.slots = [Slot("w0", None, "gone-node", GPU_KIND, "mutate", dead=True),
                   Slot("w1", None, "gone-node", GPU_KIND, "mutate", dead=True)]
    for position, matches in ((0, True), (1, False)):
        stub = StubWorker.remote(matches)
        slot = Slot(f"w{2 + position}", stub, f"node-{position}", GPU_KIND, "mutate")
        fleet.joining[position] = Joining(slot, [stub.info.remote(), stub.ensure_ready.remote()], time.time())
    _wait_for("the stubs to answer", lambda: (fleet._admit_replacements() or not fleet.joining), out, 60)

    assert [s.name for s in fleet.slots] == ["w2", "w1"]           # w1's replacement was refused
    assert fleet.slots[0].hostname == "stub-host" and not fleet.slots[0].dead
    assert fleet.refused_nodes == {"node-1"}
    console = out.getvalue()
    assert "worker w2 replaces w0 on node node-0 (stub-host): 1 of 2 workers" in console
    assert "replacement worker w3 on node node-1 failed: node stub-host: tokenizer/validation data differ" in console


def test_children_travel_as_bundles_between_nodes_and_land_as_branches(nodes, tmp_path, monkeypatch):
    node_a, node_b = nodes.alive()
    monkeypatch.setenv("AUTORESEARCH_FAKE_SLEEP", "0.2")
    repo = make_seed_repo(tmp_path / "seed")
    out = io.StringIO()
    code = run_population(_config(repo, "nodes", noise_runs=2, max_experiments=8), out=out)
    assert code == EXIT_OK, out.getvalue()

    run_dir = repo / "runs" / "nodes"
    rows = {e["id"]: e["row"] for e in _recorded_once(events(run_dir))}
    assert len(rows) == 8
    table = pq.read_table(run_dir / "lineage.parquet").to_pandas()
    assert sorted(table["id"]) == sorted(rows)                     # one lineage row per experiment

    # one worker per GPU of the two GPU nodes, none on the head; each trains on its own node
    started = {e["id"]: e for e in events(run_dir) if e["type"] == "experiment_started"}
    node_of = {}
    for exp_id, start in started.items():
        assert node_of.setdefault(start["worker"], start["node_id"]) == start["node_id"]
        if rows[exp_id].get("node_id"):                         # trained (not a duplicate)
            assert rows[exp_id]["node_id"] == start["node_id"]
            assert rows[exp_id]["gpu"] == GPU_KIND
    assert Counter(node_of.values()) == Counter({node_a: GPUS_PER_NODE, node_b: GPUS_PER_NODE})

    # each worker's clone is on its own node's disk, nowhere else
    for worker, node_id in node_of.items():
        assert (nodes.workdirs[node_id] / "nodes" / worker / "clone" / ".git").is_dir()
        other = node_b if node_id == node_a else node_a
        assert not (nodes.workdirs[other] / "nodes" / worker).exists()

    # children committed in the workers' clones came back as bundles: branches of the driver's repo
    children = [row for exp_id, row in rows.items() if started[exp_id]["kind"] == "child" and row["commit"]]
    assert children, "no child was committed"
    refs = branches(repo, "nodes")
    for row in children:
        assert refs[row["branch"].rsplit("/", 1)[1]] == row["commit"]
        clone = nodes.workdirs[node_of[row["worker"]]] / "nodes" / row["worker"] / "clone"
        git(clone, "cat-file", "-e", f"{row['commit']}^{{commit}}")   # made there, in the worker's clone


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_lost_node_is_rerun_elsewhere_and_replaced_when_capacity_returns(nodes, tmp_path, monkeypatch):
    """Node a dies while its trainings run (a gate holds every training until then); the run goes on
    on node b, node c joins and gets replacement workers, and the run ends with every experiment
    recorded once: the lost ones journalled lost and run again, never counted twice."""
    node_a, node_b = nodes.alive()
    gate = tmp_path / "gate"
    gate.write_text("-")                                        # no training may finish yet
    monkeypatch.setenv("AUTORESEARCH_FAKE_GATE", str(gate))
    monkeypatch.setenv("AUTORESEARCH_FAKE_SLEEP", "0.2")
    repo = make_seed_repo(tmp_path / "seed", train=GATED_TRAIN)
    out = io.StringIO()
    result = {}
    driver = threading.Thread(target=lambda: result.setdefault(
        "code", run_population(_config(repo, "loss", noise_runs=2, max_experiments=12), out=out)))
    driver.start()
    try:
        _wait_for("a training on node a", lambda: _training_logs(nodes.workdirs[node_a], "loss"), out)
        nodes.remove(node_a)
        _wait_for("the driver to go on with fewer workers", lambda: "fewer workers" in out.getvalue(), out)
        node_c = nodes.add_gpu_node("node-c")
        gate.write_text(str(nodes.workdirs[node_c]))            # only node c's trainings may finish
        _wait_for("a replacement worker training on node c",
                  lambda: _training_logs(nodes.workdirs[node_c], "loss"), out)
    finally:
        gate.unlink(missing_ok=True)                            # everyone may finish now
        driver.join(timeout=180)
    console = out.getvalue()
    assert not driver.is_alive(), console
    assert result["code"] == EXIT_OK, console

    evs = events(repo / "runs" / "loss")
    rows = _recorded_once(evs)
    assert len(rows) == 12                                      # lost experiments do not count
    lost = [e for e in evs if e["type"] == "experiment_lost"]
    started_on = {e["id"]: e["node_id"] for e in evs if e["type"] == "experiment_started"}
    assert lost and all(started_on[e["id"]] == node_a for e in lost)
    table = pq.read_table(repo / "runs" / "loss" / "lineage.parquet").to_pandas()
    assert len(table) == len(started_on) and (table["status"] == "lost").sum() == len(lost)
    kinds = {e["id"]: e["kind"] for e in evs if e["type"] == "experiment_started"}
    assert sum(kinds[e["id"]] == "baseline" for e in rows) == 2   # a lost baseline ran again
    trained_on = Counter(e["row"].get("node_id") for e in rows if e["row"].get("node_id"))
    assert node_a not in trained_on
    assert trained_on[node_c] >= 1 and trained_on[node_b] >= 1
    assert "replaces" in console
