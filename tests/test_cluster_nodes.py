"""The driver across nodes, on CPU: a `ray.cluster_utils.Cluster` with a head without GPUs and
worker nodes with fake GPUs, each node with its own working directory (AUTORESEARCH_WORKDIR set in
that node's environment; the driver passes none), so nothing is shared but what the driver sends.

    - a run's children travel as bundles and land as branches in the driver's repository, every
      experiment recorded once, every worker's node recorded;
    - a node removed mid-training: its experiments are journalled lost and run again elsewhere, the
      run goes on with fewer workers, and a node added later gets replacement workers (to come).

Each test builds its own small cluster (a node is a raylet and a few processes: ~5 s on 2 cores)."""
from __future__ import annotations

import io
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

ray = pytest.importorskip("ray")
from ray.cluster_utils import Cluster                                  # noqa: E402

from population.config import RunConfig                                 # noqa: E402
from population.driver import EXIT_OK, run_population                   # noqa: E402
from test_driver_support import branches, events, git, make_seed_repo   # noqa: E402

GPU_KIND = "H100"
GPUS_PER_NODE = 2

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
                    agent_timeout_s=30.0, status_every_s=3600.0)
    return RunConfig(**(defaults | kw))


def _recorded_once(evs: list[dict]) -> list[dict]:
    """The finished rows, after checking that every started experiment ended exactly once."""
    started = [e["id"] for e in evs if e["type"] == "experiment_started"]
    ends = Counter(e["id"] for e in evs if e["type"] in ("experiment_finished", "experiment_lost"))
    assert sorted(started) == list(range(len(started))), "experiment ids not 0..n-1, each started once"
    assert ends == Counter(started), "an experiment did not end exactly once"
    return [e for e in evs if e["type"] == "experiment_finished"]


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
    node_of = {}
    for row in rows.values():
        if row.get("node_id"):                                  # trained (not a duplicate)
            assert node_of.setdefault(row["worker"], row["node_id"]) == row["node_id"]
            assert row["gpu"] == GPU_KIND
    assert set(node_of.values()) == {node_a, node_b}
    assert max(Counter(node_of.values()).values()) <= GPUS_PER_NODE

    # each worker's clone is on its own node's disk, nowhere else
    for worker, node_id in node_of.items():
        assert (nodes.workdirs[node_id] / "nodes" / worker / "clone" / ".git").is_dir()
        other = node_b if node_id == node_a else node_a
        assert not (nodes.workdirs[other] / "nodes" / worker).exists()

    # children committed in the workers' clones came back as bundles: branches of the driver's repo
    kinds = {e["id"]: e["kind"] for e in events(run_dir) if e["type"] == "experiment_started"}
    children = [row for exp_id, row in rows.items() if kinds[exp_id] == "child" and row["commit"]]
    assert children, "no child was committed"
    refs = branches(repo, "nodes")
    for row in children:
        assert refs[row["branch"].rsplit("/", 1)[1]] == row["commit"]
        if row["worker"] in node_of:                            # the same commit in the worker's clone
            clone = nodes.workdirs[node_of[row["worker"]]] / "nodes" / row["worker"] / "clone"
            git(clone, "cat-file", "-e", f"{row['commit']}^{{commit}}")
