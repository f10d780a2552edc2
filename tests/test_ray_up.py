"""`ray up` for real (issue 28): ray_cluster_local.yaml on loopback nodes (tests/loopback_nodes.py).

The first tests keep ray_cluster_local.yaml to ray_cluster.yaml: the same commands but for the
listed changes (LOCAL_CHANGES), and Ray's schema accepts it.

The last one runs the cluster path end to end, every part real: sshd on 127.0.0.2 (the head),
127.0.0.3 and 127.0.0.4 (workers); `ray up -y` syncs the project to the head (file mounts), runs the
setup commands (pip, the head's git repository) and the head's start commands; the autoscaler on
the head then does the same for each worker (each prepares its own data cache with `python -m
prepare --from-files`); `ray exec` runs `python -m population --address auto --device cpu` on the
head, sandboxed, over a fake seed (test_driver_support: a fake train file and a stand-in
evaluator) whose trainings wait while a gate file exists on their node. Mid-run `ray stop` on
worker node w1 (over ssh) ends its Ray: its experiments are journaled lost and run again, the run
goes on with fewer workers; w1's worker start commands run again (`ray start`), the driver puts a
replacement worker there, which trains; the run finishes with every experiment recorded once.
`ray down` stops the head's Ray. Whatever happens, the nodes end with the test (each node's sshd
is PID 1 of its namespaces: every process the node ran dies with it). `ray up` runs with autoscaler
v1 (RAY_UP_enable_autoscaler_v2=0; ray_cluster_local.yaml's header says why).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from loopback_nodes import LoopbackNodes, NodesUnavailable, unavailable
from test_driver_support import FAKE_TRAIN, branches, make_seed_repo, wait_for

ROOT = Path(__file__).resolve().parents[1]
CLOUD_FILE, LOCAL_FILE = ROOT / "ray_cluster.yaml", ROOT / "ray_cluster_local.yaml"

# What ray_cluster_local.yaml changes in ray_cluster.yaml's commands, nothing else (its header says
# why): per key, (ray_cluster.yaml's text, the local file's text); None drops that command.
NODE_IP = " --node-ip-address=$(echo $SSH_CONNECTION | cut -d' ' -f3)"
LOCAL_CHANGES = {
    "setup_commands": [('"ray[default]==', '"ray==')],
    "head_setup_commands": [('python3 -m pip install -q "boto3>=1.26"', None)],
    "worker_setup_commands": [("python3 -m prepare --num-shards 10",
                               "python3 -m prepare --from-files '*.md' 'docs/*.md' --vocab-size 512")],
    "head_start_ray_commands": [("--autoscaling-config=~/ray_bootstrap_config.yaml",
                                 "--autoscaling-config=~/ray_bootstrap_config.yaml" + NODE_IP)],
    "worker_start_ray_commands": [(" --object-manager-port=8076", " --num-cpus=1" + NODE_IP)],
}
CLUSTER_NAME = yaml.safe_load(LOCAL_FILE.read_text())["cluster_name"]
SAME = ["file_mounts", "rsync_exclude", "initialization_commands"]

NODES = {"head": "127.0.0.2", "w1": "127.0.0.3", "w2": "127.0.0.4"}
TAG, EXPERIMENTS = "loopback", 8
GATE = "~/.cache/autoresearch/gate"        # in each worker's data cache: a sandboxed training sees it

# Before the fake trainer: while the gate file exists on its node, a training waits (up to 90 s).
GATED_TRAIN = '''\
import os as _os, time as _time
_gate, _until = _os.environ.get("AUTORESEARCH_FAKE_GATE", ""), _time.time() + 90
while _gate and _os.path.exists(_gate) and _time.time() < _until:
    _time.sleep(0.1)
''' + FAKE_TRAIN


@pytest.fixture(scope="module")
def files():
    return yaml.safe_load(CLOUD_FILE.read_text()), yaml.safe_load(LOCAL_FILE.read_text())


def localized(key: str, commands: list[str], used: set) -> list[str]:
    """ray_cluster.yaml's commands under `key` with LOCAL_CHANGES applied."""
    out = []
    for command in commands:
        for old, new in LOCAL_CHANGES.get(key, []):
            if old in command:
                used.add((key, old))
                command = None if new is None else command.replace(old, new)
                break
        if command is not None:
            out.append(command)
    return out


def test_the_local_file_runs_ray_cluster_yamls_commands_but_for_the_listed_changes(files):
    cloud, local = files
    for key in SAME:
        assert cloud.get(key) == local.get(key), f"{key}: ray_cluster_local.yaml differs from ray_cluster.yaml"
    used = set()
    for key in LOCAL_CHANGES:
        assert localized(key, cloud.get(key, []), used) == local.get(key, []), \
            f"{key}: ray_cluster_local.yaml drifted from ray_cluster.yaml (tests/test_ray_up.py LOCAL_CHANGES)"
    stale = {(key, old) for key, changes in LOCAL_CHANGES.items() for old, _ in changes} - used
    assert not stale, f"LOCAL_CHANGES no longer match ray_cluster.yaml: {sorted(stale)}"


def test_the_local_file_is_a_local_provider_cluster_that_rays_schema_accepts(files):
    from ray.autoscaler._private.util import prepare_config, validate_config

    local = files[1]
    assert local["provider"] == {"type": "local", "head_ip": NODES["head"], "worker_ips": [NODES["w1"], NODES["w2"]]}
    validate_config(prepare_config(local))


# ---------------------------------------------------------------- the cluster path, for real

class Cluster:
    """The loopback nodes, and the Ray CLI run as a user runs it against ray_cluster_local.yaml."""

    def __init__(self, nodes: LoopbackNodes):
        self.nodes = nodes
        self.env = {**os.environ, "HOME": str(nodes.client_home), "RAY_USAGE_STATS_ENABLED": "0",
                    "RAY_UP_enable_autoscaler_v2": "0"}

    def ray(self, *args: str) -> list[str]:
        """`ray <command> [args] ray_cluster_local.yaml`, from the client's side."""
        return self.nodes.client(["ray", *args[:1], "--log-style", "record", "--log-color", "false", *args[1:],
                                  str(LOCAL_FILE)])

    def run(self, *args: str, timeout: float = 150.0) -> subprocess.CompletedProcess:
        return subprocess.run(self.ray(*args), cwd=ROOT, env=self.env, capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)

    def home(self, name: str) -> Path:
        return self.nodes.nodes[name].home

    def head_state(self) -> dict:
        """The local provider's state on the head (the autoscaler's view of the nodes)."""
        path = self.nodes.nodes["head"].tmp / "ray" / f"cluster-{CLUSTER_NAME}.state"
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return {}

    def head_monitor_log(self) -> str:
        logs = sorted((self.nodes.nodes["head"].tmp / "ray").glob("session_2*/logs/monitor.*"))
        return "\n".join(path.read_text(errors="replace")[-3000:] for path in logs)


@pytest.fixture
def cluster():
    reason = unavailable()
    if reason:
        # CI installs openssh-server and runs as root (.ci/run): there the test must run
        (pytest.fail if os.environ.get("CI") else pytest.skip)(f"loopback nodes: {reason}")
    base = Path(tempfile.mkdtemp(prefix="ray-up-", dir="/var/tmp"))   # not /tmp: each node has its own
    nodes = LoopbackNodes(base, NODES)
    try:
        try:
            nodes.start()
        except NodesUnavailable as error:
            (pytest.fail if os.environ.get("CI") else pytest.skip)(f"loopback nodes: {error}")
        yield Cluster(nodes)
    finally:
        nodes.stop()
        shutil.rmtree(base, ignore_errors=True)


class Output:
    """A command's output, read as it comes."""

    def __init__(self, process: subprocess.Popen):
        self.process, self.lines = process, []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line)

    def text(self) -> str:
        return "".join(self.lines).replace("\r", "")


def journal(run_dir: Path) -> list[dict]:
    """The run's events so far (a line being written is left for the next look)."""
    try:
        lines = (run_dir / "events.jsonl").read_text().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        try:
            out.append(json.loads(line))
        except ValueError:
            break
    return out


def worker_dirs(cluster: Cluster, name: str) -> set[str]:
    """The run's workers whose clone and trainings are on node `name` (its own /tmp)."""
    return {path.name for path in (cluster.nodes.nodes[name].tmp / "autoresearch-population" / TAG).glob("w*")}


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_ray_up_runs_the_population_on_loopback_nodes_and_it_survives_a_node_stopped_for_real(cluster):
    timings, started = {}, time.time()

    def lap(name: str) -> None:
        timings[name] = round(time.time() - started, 1)

    # ray up: the head here, the workers from the head's autoscaler
    up = cluster.run("up", "-y", "--no-config-cache")
    assert up.returncode == 0, up.stdout[-4000:] + up.stderr[-4000:]
    lap("ray up")
    wait_for("both workers set up by the head's autoscaler",
             lambda: all(info["state"] == "running" and info["tags"].get("ray-node-status") == "up-to-date"
                         for info in cluster.head_state().values()) and len(cluster.head_state()) == 3,
             150, lambda: f"{cluster.head_state()}\n{cluster.head_monitor_log()}")
    lap("workers up")

    # what the setup commands left on each node
    home = cluster.nodes.home                           # every node's home, as the node sees it
    head_repo = cluster.home("head") / "autoresearch-population"
    assert subprocess.run(["git", "-C", str(head_repo), "log", "--format=%s"], capture_output=True,
                          text=True).stdout == "seed\n"     # made there: the checkout's .git was not synced
    from population import readiness
    fingerprints = set()
    for name in ("head", "w1", "w2"):
        project = cluster.home(name) / "autoresearch-population"
        assert (project / "population" / "driver.py").is_file()
        if name != "head":                              # rsync_exclude: no .git (the head made its own)
            assert not (project / ".git").exists()
        finder = next((cluster.home(name) / "venv").glob("lib/python3*/site-packages/__editable__*finder.py"))
        assert str(home / "autoresearch-population") in finder.read_text()    # pip install -e . on the node
        cache = cluster.home(name) / ".cache" / "autoresearch"
        if name == "head":
            assert not cache.exists()                   # the head prepares nothing (it trains nothing)
        else:
            fingerprints.add(readiness.cache_fingerprint("climbmix", cache))
    assert len(fingerprints) == 1                       # each worker prepared the same cache itself

    # the run: ray exec on the head, trainings held on both workers until w1 is stopped
    make_seed_repo(cluster.home("head") / "seed", train=GATED_TRAIN)
    gates = {name: cluster.home(name) / ".cache" / "autoresearch" / "gate" for name in ("w1", "w2")}
    for gate in gates.values():
        gate.touch()
    command = (f"cd ~/autoresearch-population && AUTORESEARCH_FAKE_GATE={GATE} python3 -m population "
               f"--address auto --device cpu --repo ~/seed --runs-dir ~/seed/runs --run {TAG} --workers 2 "
               f"--noise-runs 2 --max-experiments {EXPERIMENTS} --budget 5")
    driver = subprocess.Popen(cluster.ray("exec") + [command], cwd=ROOT, env=cluster.env, text=True,
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = Output(driver)
    run_dir = cluster.home("head") / "seed" / "runs" / TAG
    try:
        wait_for("a training on w1", lambda: list((cluster.nodes.nodes["w1"].tmp / "autoresearch-population" / TAG)
                                                  .glob("w*/logs/*.log")), 90, out.text)
        lap("training on w1")
        on_w1 = worker_dirs(cluster, "w1")

        # w1 lost for real: `ray stop` there stops that node's Ray only
        stop = cluster.nodes.ssh("w1", "ray stop")
        assert stop.returncode == 0, stop.stdout + stop.stderr
        assert not any("raylet" in argv for argv in cluster.nodes.processes("w1"))
        assert all(any("raylet" in argv for argv in cluster.nodes.processes(name)) for name in ("head", "w2"))
        wait_for("the driver to go on with fewer workers", lambda: "fewer workers" in out.text(), 60, out.text)
        lap("w1 lost")

        # w1 comes back: its worker start commands again, as the autoscaler runs them
        start = yaml.safe_load(LOCAL_FILE.read_text())["worker_start_ray_commands"]
        again = cluster.nodes.ssh("w1", f"export RAY_HEAD_IP={NODES['head']}; " + "; ".join(start))
        assert again.returncode == 0, again.stdout + again.stderr
        wait_for("a replacement worker on w1", lambda: re.search(r"worker (w\d+) replaces", out.text()), 60, out.text)
        replacement = re.search(r"worker (w\d+) replaces", out.text()).group(1)
        lap("replacement on w1")
        gates["w1"].unlink()                            # only w1's trainings may finish
        wait_for(f"{replacement} to train on w1", lambda: any(
            e["type"] == "experiment_finished" and e["row"]["worker"] == replacement and e["row"].get("node") == "w1"
            for e in journal(run_dir)), 60, out.text)
        gates["w2"].unlink()
        driver.wait(timeout=120)
        lap("run finished")
    finally:
        for gate in gates.values():
            gate.unlink(missing_ok=True)
        if driver.poll() is None:
            driver.kill()
            driver.wait()
    console = out.text()
    assert driver.returncode == 0, console[-6000:]
    assert f"run {TAG} finished" in console

    # every experiment recorded once; the lost ones journaled lost, started on w1, run again
    evs = journal(run_dir)
    started_on = {e["id"]: e for e in evs if e["type"] == "experiment_started"}
    ends = Counter(e["id"] for e in evs if e["type"] in ("experiment_finished", "experiment_lost"))
    assert sorted(started_on) == list(range(len(started_on))) and ends == Counter(list(started_on)), console
    finished = {e["id"]: e["row"] for e in evs if e["type"] == "experiment_finished"}
    rows = list(finished.values())
    lost = [e for e in evs if e["type"] == "experiment_lost"]
    assert len(rows) == EXPERIMENTS and lost
    assert {started_on[e["id"]]["worker"] for e in lost} <= on_w1
    old_w1 = {started_on[e["id"]]["node_id"] for e in lost}
    assert len(old_w1) == 1
    assert sum(started_on[exp_id]["kind"] == "baseline" for exp_id in finished) == 2
    table = pq.read_table(run_dir / "lineage.parquet").to_pandas()
    assert len(table) == len(started_on) and (table["status"] == "lost").sum() == len(lost)

    # trained on both workers (w1 again after its return), never on the head
    trained = [row for row in rows if row.get("node_id")]
    assert {row["node"] for row in trained} == {"w1", "w2"}
    assert not old_w1 & {row["node_id"] for row in trained}
    assert any(row["worker"] == replacement and row["node"] == "w1" for row in trained)
    for row in trained:                                 # each worker's clone on its own node only
        assert row["worker"] in worker_dirs(cluster, row["node"])
        assert row["worker"] not in worker_dirs(cluster, "w2" if row["node"] == "w1" else "w1")
    refs = branches(cluster.home("head") / "seed", TAG)
    children = [row for exp_id, row in finished.items() if started_on[exp_id]["kind"] == "child" and row["commit"]]
    assert children and all(refs[row["branch"].rsplit("/", 1)[1]] == row["commit"] for row in children)

    # ray down: `ray stop` on the head (the local provider stops nothing else: the workers' raylets
    # exit once the head's GCS has been gone for a minute; the nodes end with the test)
    down = cluster.run("down", "-y")
    assert down.returncode == 0, down.stdout[-4000:] + down.stderr[-4000:]
    assert cluster.nodes.processes("head") == []
    lap("ray down")
    print(f"\ntest_ray_up timings (s since start): {timings}")
