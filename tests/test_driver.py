"""The driver end to end on a local Ray with fake GPUs and a fake train file (see
test_driver_support.FAKE_TRAIN): parallel trainings on distinct GPUs, a full run with the mutator,
the one-GPU fallback, CPU mode, kill + resume, Ctrl-C, and the one-driver-per-run lock.

One Ray instance (4 fake GPUs) is shared by the whole module: ray.init is slow on 2 cores.
Drivers in a subprocess join it through --address.
"""
from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

ray = pytest.importorskip("ray")

from population.config import RunConfig                                   # noqa: E402
from population.driver import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_OK, run_population   # noqa: E402
from population.store import RunStore                                     # noqa: E402
from test_driver_support import branches, events, git, make_seed_repo, trainings, worktrees   # noqa: E402

PROJECT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def cluster():
    if ray.is_initialized():            # another module's Ray: this module needs its fake GPUs
        ray.shutdown()
    # A loopback test cluster without token auth: with it, Ray caches this process's token for
    # good, and a later test's Ray under another HOME would not start. The --address drivers of
    # this module inherit the setting.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAY_AUTH_MODE", "disabled")
        ray.init(address="local", num_cpus=2, num_gpus=4, include_dashboard=False, log_to_driver=False, configure_logging=False)
        yield ray.get_runtime_context().gcs_address
        ray.shutdown()


@pytest.fixture
def seed(tmp_path, monkeypatch):
    record = tmp_path / "record"
    record.mkdir()
    monkeypatch.setenv("AUTORESEARCH_FAKE_RECORD", str(record))
    monkeypatch.setenv("AUTORESEARCH_FAKE_SLEEP", "0.2")
    return make_seed_repo(tmp_path / "seed"), record


def _config(seed_repo: Path, tag: str, **kw) -> RunConfig:
    # sandbox off: the fake train file records what it saw into a host directory, which a sandboxed
    # training cannot write (the sandboxed path: tests/test_wiring.py, tests/test_adversarial.py)
    defaults = dict(tag=tag, repo=str(seed_repo), runs_dir=str(seed_repo / "runs"), budget_s=5.0,
                    workdir=str(seed_repo.parent / "workers"), agent_timeout_s=30.0, sandbox=False)
    return RunConfig(**(defaults | kw))


def _run(cfg: RunConfig) -> tuple[int, str]:
    out = io.StringIO()
    code = run_population(cfg, out=out)
    return code, out.getvalue()


def _terminal_events(evs: list[dict]) -> Counter:
    return Counter(e["id"] for e in evs if e["type"] in ("experiment_finished", "experiment_lost"))


def test_four_workers_train_at_once_each_on_its_own_gpu(cluster, seed, monkeypatch):
    repo, record = seed
    monkeypatch.setenv("AUTORESEARCH_FAKE_BARRIER", "4")     # each waits for the others (up to 30 s)
    monkeypatch.setenv("AUTORESEARCH_FAKE_SLEEP", "0.5")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-must-not-leak")
    code, out = _run(_config(repo, "four", workers=4, noise_runs=4, max_experiments=4))
    assert code == EXIT_OK, out
    runs = trainings(record)
    assert len(runs) == 4
    assert sorted(r["cvd"] for r in runs) == ["0", "1", "2", "3"]
    assert max(r["start"] for r in runs) < min(r["end"] for r in runs), "the four trainings did not overlap"
    assert sorted(r["seed"] for r in runs) == [42, 43, 44, 45]
    for r in runs:
        assert r["env"]["AUTORESEARCH_TIME_BUDGET"] == "5"
        assert "ANTHROPIC_API_KEY" not in r["env"] and "AUTORESEARCH_SMOKE" not in r["env"]
    rows = [e["row"] for e in events(repo / "runs" / "four") if e["type"] == "experiment_finished"]
    assert sorted(row["cuda_visible_devices"] for row in rows) == ["0", "1", "2", "3"]
    assert {row["worker"] for row in rows} == {"w0", "w1", "w2", "w3"}


def test_a_child_trains_during_the_noise_round_and_is_judged_once_the_noise_is_known(cluster, seed, monkeypatch):
    """Four GPUs, three noise runs: the fourth GPU trains a child meanwhile instead of idling."""
    repo, record = seed
    monkeypatch.setenv("AUTORESEARCH_FAKE_BARRIER", "4")     # each waits for the others (up to 30 s)
    code, out = _run(_config(repo, "overlap", workers=4, noise_runs=3, max_experiments=4))
    assert code == EXIT_OK, out
    runs = trainings(record)
    assert len(runs) == 4 and max(r["start"] for r in runs) < min(r["end"] for r in runs), \
        "the child did not train alongside the three noise runs"
    evs = events(repo / "runs" / "overlap")
    kinds = Counter(e["kind"] for e in evs if e["type"] == "experiment_started")
    assert kinds == Counter({"baseline": 3, "child": 1})
    noise_at = next(i for i, e in enumerate(evs) if e["type"] == "noise")
    child = next(e for e in evs if e["type"] == "experiment_started" and e["kind"] == "child")
    # the child's verdict (champion or re-run or nothing) comes after the noise, never before it
    verdicts = [i for i, e in enumerate(evs) if e["type"] == "champion" and e["member"] == child["member"]]
    assert all(i > noise_at for i in verdicts)


def test_full_run_with_the_mutator_leaves_a_consistent_store_and_refs(cluster, seed):
    repo, record = seed
    tag = "full"
    code, out = _run(_config(repo, tag, workers=3, noise_runs=2, population_size=3, tournament_size=2,
                             max_experiments=16))
    assert code == EXIT_OK, out
    run_dir = repo / "runs" / tag
    evs = events(run_dir)
    started = [e["id"] for e in evs if e["type"] == "experiment_started"]
    assert sorted(started) == list(range(16))
    assert _terminal_events(evs) == Counter({i: 1 for i in range(16)})
    assert not any(e["type"] == "experiment_lost" for e in evs)
    assert evs[-1] == {"type": "run_state", "state": "finished", "time": evs[-1]["time"]}
    assert any(e["type"] == "member_culled" for e in evs), "16 experiments in a population of 3 must cull"

    meta = json.loads((run_dir / "run.json").read_text())
    assert meta["state"] == "finished" and meta["noise_std"] > 0
    lineage = pq.read_table(run_dir / "lineage.parquet").to_pandas()
    tsv = (run_dir / "results.tsv").read_text().splitlines()
    assert len(lineage) == 16 and len(tsv) == 1 + 16
    assert set(lineage["kind"]) >= {"baseline", "child"} and set(lineage["worker"]) <= {"w0", "w1", "w2"}

    # Refs: a branch for every commit recorded, m0000 at the seed, best at the champion.
    refs = branches(repo, tag)
    seed_commit = git(repo, "rev-parse", "HEAD").strip()
    assert refs["m0000"] == seed_commit
    for row in lineage.itertuples():
        if row.commit:
            assert refs[row.member] == row.commit, row
    champion = lineage[lineage["champion"]]
    assert len(set(champion["member"])) == 1 and refs["best"] == champion["commit"].iloc[0]
    # the member's id is its first *finished* run (two noise runs may finish in either order)
    assert meta["champion_id"] in set(champion["id"])

    # Worktrees: exactly the living members (culled ones lost theirs, kept their branch).
    living = set(lineage[lineage["alive"]]["member"])
    members_dir = (run_dir / "members").resolve()
    assert worktrees(repo) == {str(repo.resolve())} | {str(members_dir / m) for m in living}
    culled = {e["member"] for e in evs if e["type"] == "member_culled"}
    assert culled and not culled & living and all(m in refs for m in culled)

    # Experiment files, written before the finished events; untrained experiments have no run.log.
    trained = 0
    for row in lineage.itertuples():
        folder = run_dir / "experiments" / str(row.id)
        if row.status in ("ok", "crash", "timeout"):
            trained += 1
            log = (folder / "run.log").read_text()
            assert log.startswith("step 1/1") if row.status == "ok" else "fake: too deep" in log
        else:
            assert not (folder / "run.log").exists()
        if row.kind == "child":
            assert (folder / "prompt.md").read_text().startswith("Lower val_bpb by editing `engine/train.py` only.")
            assert (folder / "transcript.txt").exists()
            if row.commit:
                assert (folder / "diff.patch").read_text().startswith("diff --git a/engine/train.py")
                assert git(repo, "log", "-1", "--format=%s", row.commit).strip() == row.description
    assert trained == len(trainings(record))
    duplicates = lineage[lineage["status"] == "duplicate"]
    assert all("identical" in reason for reason in duplicates["reason"])

    # Bundles: each worker committed in its own clone, a separate repository.
    for worker in ("w0", "w1", "w2"):
        clone = repo.parent / "workers" / tag / worker / "clone"
        assert (clone / ".git").is_dir() and clone.resolve() != repo.resolve()
    children = lineage[(lineage["kind"] == "child") & (lineage["commit"] != "")]
    some_child = children["commit"].iloc[0]
    assert git(repo.parent / "workers" / tag / children["worker"].iloc[0] / "clone", "cat-file", "-t",
               some_child).strip() == "commit"
    assert "ok val_bpb" in out and "champion: m0000" in out


def test_one_gpu_fallback_queues_trainings_and_never_overlaps_them(cluster, seed, monkeypatch):
    repo, record = seed
    monkeypatch.setenv("AUTORESEARCH_FAKE_SLEEP", "0.4")

    @ray.remote(num_gpus=3)
    class Hog:                      # holds three of the four fake GPUs: one GPU is left
        def ready(self):
            return True

    hog = Hog.remote()
    ray.get(hog.ready.remote())
    try:
        code, out = _run(_config(repo, "onegpu", workers=4, noise_runs=1, max_experiments=8))
    finally:
        ray.kill(hog)
    assert code == EXIT_OK, out
    runs = trainings(record)
    assert len(runs) >= 5
    assert len({r["cvd"] for r in runs}) == 1
    for before, after in zip(runs, runs[1:]):
        assert after["start"] >= before["end"], "two trainings shared the GPU"
    rows = [e["row"] for e in events(repo / "runs" / "onegpu") if e["type"] == "experiment_finished"]
    trained_by = {row["worker"] for row in rows if row.get("train_seconds")}
    assert len(trained_by) >= 3, "the workers' trainings should interleave on the one GPU"


def test_cpu_mode_uses_the_smoke_config_and_no_gpu(cluster, seed):
    repo, record = seed
    code, out = _run(_config(repo, "cpu", workers=1, noise_runs=1, max_experiments=2, device="cpu"))
    assert code == EXIT_OK, out
    runs = trainings(record)
    assert runs and all(r["cvd"] == "" for r in runs)
    assert all(r["env"]["AUTORESEARCH_SMOKE"] == "1" and r["env"]["AUTORESEARCH_DEVICE"] == "cpu" for r in runs)
    lineage = pq.read_table(repo / "runs" / "cpu" / "lineage.parquet").to_pandas()
    assert set(lineage[lineage["status"] == "ok"]["gpu"]) == {"cpu"}


def _start_cli(repo: Path, address: str, tag: str, *extra: str) -> subprocess.Popen:
    args = [sys.executable, "-m", "population", "--address", address, "--repo", str(repo), "--runs-dir",
            str(repo / "runs"), "--run", tag, "--budget", "5", "--workdir", str(repo.parent / "workers"),
            "--no-sandbox", *extra]
    return subprocess.Popen(args, cwd=PROJECT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for(predicate, timeout: float, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc.poll() is not None:
            pytest.fail(f"driver exited early ({proc.returncode}):\n{proc.stdout.read()}")
        time.sleep(0.2)
    proc.kill()
    pytest.fail(f"timed out waiting; driver output:\n{proc.stdout.read()}")


def _journal(run_dir: Path) -> list[dict]:
    path = run_dir / "events.jsonl"
    return events(run_dir) if path.exists() else []


def test_killed_driver_resumes_with_every_experiment_exactly_once(cluster, seed, monkeypatch):
    repo, record = seed
    monkeypatch.setenv("AUTORESEARCH_FAKE_SLEEP", "1.0")
    run_dir = repo / "runs" / "kill"
    proc = _start_cli(repo, cluster, "kill", "--workers", "2", "--noise-runs", "2", "--max-experiments", "9")

    def finished_some_and_training():
        evs = _journal(run_dir)
        done = sum(e["type"] == "experiment_finished" for e in evs)
        in_flight = sum(e["type"] == "experiment_started" for e in evs) - done
        return done >= 3 and in_flight >= 1

    _wait_for(finished_some_and_training, 120, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    before = _journal(run_dir)
    in_flight = {e["id"] for e in before if e["type"] == "experiment_started"} - set(_terminal_events(before))
    assert in_flight

    code, out = _run(_config(repo, "kill", resume=True, workers=2, max_experiments=9))
    assert code == EXIT_OK, out
    evs = events(run_dir)
    started = [e["id"] for e in evs if e["type"] == "experiment_started"]
    assert len(started) == len(set(started))
    assert _terminal_events(evs) == Counter({i: 1 for i in started}), "an experiment counted twice or never"
    lost = {e["id"] for e in evs if e["type"] == "experiment_lost"}
    assert lost == in_flight
    finished = [e for e in evs if e["type"] == "experiment_finished"]
    assert len(finished) == 9
    assert evs[-1]["type"] == "run_state" and evs[-1]["state"] == "finished"
    lineage = pq.read_table(run_dir / "lineage.parquet").to_pandas()
    assert len(lineage) == len(started) and set(lineage[lineage["id"].isin(lost)]["status"]) == {"lost"}
    assert len((run_dir / "results.tsv").read_text().splitlines()) == 1 + len(started)
    # Re-queued work kept its kind: the baselines lost at the kill were trained again.
    kinds = Counter(e["kind"] for e in evs if e["type"] == "experiment_started" and e["id"] not in lost)
    assert kinds["baseline"] == 2


def test_sigint_kills_training_and_agent_marks_them_lost_and_exits_130(cluster, seed, monkeypatch):
    repo, record = seed
    monkeypatch.setenv("AUTORESEARCH_FAKE_SLEEP", "120")
    run_dir = repo / "runs" / "int"
    # an agent that thinks while the GPU trains, through a grandchild (as CLI agents run tools)
    agent = f"command:sh -c 'sleep 120 & echo $! > {record}/agent.pid; wait'"
    proc = _start_cli(repo, cluster, "int", "--workers", "1", "--noise-runs", "1", "--agent", agent)
    _wait_for(lambda: any(record.glob("*.started")) and (record / "agent.pid").exists(), 120, proc)
    trainer_pid = int(next(record.glob("*.started")).name.split(".")[0])
    agent_pid = int((record / "agent.pid").read_text())
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == EXIT_INTERRUPTED, output
    assert "Traceback" not in output
    evs = events(run_dir)
    assert evs[-1]["type"] == "run_state" and evs[-1]["state"] == "stopped"
    started = {e["id"] for e in evs if e["type"] == "experiment_started"}
    assert {e["id"] for e in evs if e["type"] == "experiment_lost"} == started
    assert json.loads((run_dir / "run.json").read_text())["state"] == "stopped"
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and any(os.path.exists(f"/proc/{p}") for p in (trainer_pid, agent_pid)):
        time.sleep(0.2)
    assert not os.path.exists(f"/proc/{trainer_pid}"), "the training outlived the driver"
    assert not os.path.exists(f"/proc/{agent_pid}"), "the agent outlived the driver"


def test_a_second_driver_on_the_same_run_refuses(cluster, seed, capsys):
    repo, _ = seed
    code, out = _run(_config(repo, "locked", workers=1, noise_runs=1, max_experiments=1))
    assert code == EXIT_OK, out
    holder = RunStore.open(repo / "runs" / "locked").lock()
    try:
        code, out = _run(_config(repo, "locked", resume=True, workers=1, max_experiments=2))
    finally:
        holder.unlock()
    assert code == EXIT_ERROR
    assert "in use by another driver" in capsys.readouterr().err
    assert sum(e["type"] == "experiment_started" for e in events(repo / "runs" / "locked")) == 1


def test_an_unchanged_child_is_a_duplicate_and_never_trains(cluster, seed):
    repo, record = seed
    code, out = _run(_config(repo, "dup", workers=1, noise_runs=2, max_experiments=4, agents=["command:true"]))
    assert code == EXIT_OK, out
    rows = {e["id"]: e["row"] for e in events(repo / "runs" / "dup") if e["type"] == "experiment_finished"}
    assert [rows[i]["status"] for i in (2, 3)] == ["duplicate", "duplicate"]
    assert "identical to its parent's" in rows[2]["reason"]
    assert len(trainings(record)) == 2                       # only the two baselines trained


def test_a_seed_that_times_out_in_every_baseline_stops_the_run_with_one_line(cluster, seed, monkeypatch, capsys):
    repo, record = seed
    monkeypatch.setenv("AUTORESEARCH_FAKE_SLEEP", "60")
    code, out = _run(_config(repo, "slow", workers=1, noise_runs=1, budget_s=1.0, train_timeout_s=3.0))
    assert code == EXIT_ERROR
    assert "the unmodified seed failed in every baseline run" in capsys.readouterr().err
    evs = events(repo / "runs" / "slow")
    finished = [e["row"] for e in evs if e["type"] == "experiment_finished"]
    assert finished[0]["status"] == "timeout" and "3 s wall-clock limit" in finished[0]["reason"]
    assert evs[-1]["type"] == "run_state" and evs[-1]["state"] == "stopped"


def test_an_accelerator_no_node_has_is_refused_before_anything_is_written(cluster, seed, capsys):
    repo, _ = seed
    code, _ = _run(_config(repo, "h100", accelerator="H100"))
    assert code == EXIT_ERROR
    assert "no alive Ray node has accelerator type H100" in capsys.readouterr().err
    assert not (repo / "runs" / "h100").exists()


def test_a_silent_agent_shows_as_stalled_before_its_timeout_fires(cluster, seed, tmp_path):
    """The watchdog asks each worker when its agent last wrote: a `command:` agent that says nothing
    for longer than --stall-minutes is reported stalled on the console and in run.json, then its
    timeout ends it as an agent error as before."""
    repo, _ = seed
    agent = tmp_path / "silent_agent.sh"
    agent.write_text("#!/bin/sh\nsleep 8\n")
    agent.chmod(0o755)
    code, out = _run(_config(repo, "quiet", device="cpu", workers=1, noise_runs=2, max_experiments=3,
                             agents=[f"command:{agent}"], agent_timeout_s=6.0, stall_minutes=0.05))
    assert code == EXIT_OK, out
    assert "stalled: its agent has printed nothing for" in out
    rows = [e["row"] for e in events(repo / "runs" / "quiet") if e["type"] == "experiment_finished"]
    assert [r["status"] for r in rows if r.get("agent", "").startswith("command:")] == ["agent_error"]
    assert json.loads((repo / "runs" / "quiet" / "run.json").read_text())["stalled"] == []


def test_clean_lists_then_removes_a_finished_runs_worktrees_and_branches_outside_the_champions_ancestry(
        cluster, seed, capsys, monkeypatch):
    from population import cli

    repo, _ = seed
    monkeypatch.setenv("AUTORESEARCH_FAKE_SLEEP", "0.05")
    code, out = _run(_config(repo, "tidy", workers=2, noise_runs=2, population_size=2, max_experiments=8))
    assert code == EXIT_OK, out
    run_dir = repo / "runs" / "tidy"
    refs, trees = branches(repo, "tidy"), worktrees(repo)
    assert len(trees) > 1 and len(refs) > 3
    args = ["clean", "tidy", "--repo", str(repo)]

    holder = RunStore.open(run_dir).lock()                  # a running run is refused
    try:
        assert cli.main(args + ["--yes"]) == EXIT_ERROR
    finally:
        holder.unlock()
    assert "in use by another driver" in capsys.readouterr().err and worktrees(repo) == trees

    assert cli.main(args) == EXIT_OK                          # a dry run lists, removes nothing
    listed = capsys.readouterr().out
    assert "dry run: nothing removed; pass --yes" in listed and "(the champion's ancestry)" in listed
    assert worktrees(repo) == trees and branches(repo, "tidy") == refs
    for tree in trees - {str(repo.resolve())}:
        assert f"  worktree {tree}" in listed

    assert cli.main(args + ["--yes"]) == EXIT_OK
    assert worktrees(repo) == {str(repo.resolve())} and not (run_dir / "members").exists()
    kept = branches(repo, "tidy")
    assert {"best", "m0000"} <= set(kept) and set(kept) < set(refs)
    for name, commit in kept.items():                         # each kept branch is an ancestor of the champion
        subprocess.run(["git", "merge-base", "--is-ancestor", commit, kept["best"]], cwd=repo, check=True)
    assert all(f"  branch population/tidy/{name} " in listed for name in set(refs) - set(kept))
    assert (run_dir / "lineage.parquet").exists()             # the store stays

    code, _ = _run(_config(repo, "tidy", resume=True, max_experiments=10))    # a cleaned run cannot go on
    assert code == EXIT_ERROR and "was cleaned" in capsys.readouterr().err

    # the store deleted by hand: its prunable worktrees and every branch go with --all, and the tag is free again
    code, out = _run(_config(repo, "gone", workers=1, noise_runs=1, max_experiments=3))
    assert code == EXIT_OK, out
    __import__("shutil").rmtree(repo / "runs" / "gone")
    code, _ = _run(_config(repo, "gone", workers=1, noise_runs=1, max_experiments=3))
    assert code == EXIT_ERROR and "clean gone --all --yes" in capsys.readouterr().err
    assert cli.main(["clean", "gone", "--repo", str(repo), "--all", "--yes"]) == EXIT_OK
    assert branches(repo, "gone") == {} and worktrees(repo) == {str(repo.resolve())}
    code, out = _run(_config(repo, "gone", workers=1, noise_runs=1, max_experiments=3))
    assert code == EXIT_OK, out


def test_a_run_started_in_a_subfolder_of_the_repository_keeps_its_store_at_the_root(cluster, seed):
    """`cd engine && python -m population ...` finds the repository around it; the store goes to
    runs/ at its root, and nothing is left in engine/ (issue 29)."""
    repo, _ = seed
    result = subprocess.run([sys.executable, "-m", "population", "--address", cluster, "--run", "sub", "--budget", "5",
                             "--device", "cpu", "--noise-runs", "1", "--max-experiments", "2", "--no-sandbox",
                             "--workdir", str(repo.parent / "workers")],
                            cwd=repo / "engine", env=os.environ | {"PYTHONPATH": str(PROJECT)},
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == EXIT_OK, result.stdout + result.stderr
    assert (repo / "runs" / "sub" / "run.json").exists() and not (repo / "engine" / "runs").exists()
    assert sum(e["type"] == "experiment_finished" for e in events(repo / "runs" / "sub")) == 2
    assert not any(".seed-check" in tree for tree in worktrees(repo))
    assert "Token authentication is enabled" not in result.stdout + result.stderr
