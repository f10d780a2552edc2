"""Fault injection: each fault of issue #10 done for real to a small CPU run of the real driver
(local Ray, the fake train file of test_driver_support), then what the system did is checked, and
that nothing was lost or counted twice (fault_support.assert_nothing_lost_or_twice).

Faults the older suites already inject are not repeated here (docs/FAULTS.md lists them all).
One Ray instance is shared by the module; drivers in a subprocess join it through --address.
"""
from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

ray = pytest.importorskip("ray")

from fault_support import (BETTER_LR, FAULT_TRAINS, agent_spec, assert_nothing_lost_or_twice,   # noqa: E402
                           journal, git_hanging_on_ref, rows_by_description, write_plan, write_sitecustomize)
from population.config import RunConfig                                                 # noqa: E402
from population.driver import EXIT_ERROR, EXIT_OK, run_population                       # noqa: E402
from population.training import EVAL_HEADER                                              # noqa: E402
from test_driver_support import branches, git, make_seed_repo                            # noqa: E402

PROJECT = Path(__file__).resolve().parent.parent
AGENT_TIMEOUT_S = 6.0


@pytest.fixture(scope="module")
def cluster():
    if ray.is_initialized():
        ray.shutdown()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAY_AUTH_MODE", "disabled")       # see tests/test_driver.py
        # address="local": a Ray of our own, even where another test's `ray start` cluster is up
        ray.init(address="local", num_cpus=4, num_gpus=0, include_dashboard=False, log_to_driver=False, configure_logging=False)
        yield ray.get_runtime_context().gcs_address
        ray.shutdown()


def _config(repo: Path, tag: str, **kw) -> RunConfig:
    defaults = dict(tag=tag, repo=str(repo), runs_dir=str(repo / "runs"), budget_s=5.0, device="cpu",
                    workers=1, noise_runs=2, workdir=str(repo.parent / "workers"),
                    agent_timeout_s=AGENT_TIMEOUT_S, status_every_s=3600.0, sandbox=False,   # records to the host
                    endgame=0.0)       # each plan's steps are its trainings: no re-runs of the best at the end
    return RunConfig(**(defaults | kw))


def _run(cfg: RunConfig) -> tuple[int, str]:
    out = io.StringIO()
    return run_population(cfg, out=out), out.getvalue()


# ================================================================ trainings and agents that fail

AGENT_FAULTS = {
    "agent-hangs": {"action": "hang"},
    "agent-crashes": {"action": "crash"},
    "agent-edits-forbidden-files": {"action": "forbidden"},
    "agent-leaves-index-lock": {"action": "git-lock"},
}


@pytest.fixture(scope="module")
def faulty_run(cluster, tmp_path_factory):
    """One run whose scripted agent injects every training and agent fault in turn (one child each)."""
    root = tmp_path_factory.mktemp("faulty")
    repo = make_seed_repo(root / "seed")
    steps = [(name, {"action": "train", "train": text}) for name, text in FAULT_TRAINS.items()]
    steps += list(AGENT_FAULTS.items())
    plan = write_plan(root / "plan", steps)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AUTORESEARCH_FAKE_SLEEP", "0.05")
        code, out = _run(_config(repo, "faulty", agents=[agent_spec(plan)], max_experiments=2 + len(steps)))
    assert code == EXIT_OK, out
    run_dir = repo / "runs" / "faulty"
    events = assert_nothing_lost_or_twice(run_dir)
    return repo, run_dir, events


TRAINING_FAULTS = {        # fault -> what the reason must say
    "syntax-error": ["exit code 1", "SyntaxError"],
    "import-error": ["exit code 1", "ModuleNotFoundError: No module named 'numpy_that_does_not_exist_anywhere'"],
    "oom-sigkill": ["exit code -9", "allocating 80 GiB"],
    "oom-exit-137": ["exit code 137", "CUDA out of memory"],
    "nan-loss": ["checkpoint rule"],
    "no-summary": ["checkpoint rule"],
    "garbage-log": ["checkpoint rule"],
}


@pytest.mark.parametrize("fault", list(TRAINING_FAULTS))
def test_a_failing_training_is_a_crash_with_its_log_and_the_run_goes_on(faulty_run, fault):
    repo, run_dir, events = faulty_run
    row = rows_by_description(events)[fault]
    assert row["status"] == "crash"
    for needle in TRAINING_FAULTS[fault]:
        assert needle in row["reason"], row["reason"]
    log = (run_dir / "experiments" / str(row["id"]) / "run.log").read_text().split(EVAL_HEADER)[0]
    assert log.strip() and log.strip().splitlines()[-1] in row["reason"]
    # the crashed child keeps its commit and branch (it is in the lineage), but never becomes a member
    assert branches(repo, "faulty")[_member(events, row["id"])] == row["commit"]
    lineage = pq.read_table(run_dir / "lineage.parquet").to_pandas().set_index("id")
    assert not lineage.loc[row["id"], "alive"] and lineage.loc[row["id"], "status"] == "crash"


def _member(events: list[dict], exp_id: int) -> str:
    return next(e["member"] for e in events if e["type"] == "experiment_started" and e["id"] == exp_id)


def _kind(events: list[dict], exp_id: int) -> str:
    return next(e["kind"] for e in events if e["type"] == "experiment_started" and e["id"] == exp_id)


@pytest.mark.parametrize("fault", ["agent-hangs", "agent-crashes"])
def test_an_agent_that_hangs_or_crashes_is_an_agent_error_without_a_commit(faulty_run, fault):
    repo, run_dir, events = faulty_run
    row = rows_by_description(events)[fault]
    assert row["status"] == "agent_error" and row["commit"] == ""
    assert {"agent-hangs": f"agent timed out after {AGENT_TIMEOUT_S:g} s",
            "agent-crashes": "agent exited with code 3: fault agent: segmentation fault"}[fault] in row["reason"]
    assert _member(events, row["id"]) not in branches(repo, "faulty")
    if fault == "agent-hangs":     # killed at its limit, not waited for
        assert row["agent_seconds"] < AGENT_TIMEOUT_S + 10


def test_an_agent_that_edits_forbidden_files_is_a_violation_and_nothing_of_it_lands(faulty_run):
    repo, run_dir, events = faulty_run
    row = rows_by_description(events)["agent-edits-forbidden-files"]
    assert row["status"] == "violation" and row["commit"] == ""
    assert row["reason"] == "changed files other than engine/train.py: evil.py, prepare/__init__.py, program.md"
    diff = (run_dir / "experiments" / str(row["id"]) / "diff.patch").read_text()
    assert "MAX_SEQ_LEN = 1  # cheat" in diff           # the record shows what was tried
    assert _member(events, row["id"]) not in branches(repo, "faulty")
    for refname in branches(repo, "faulty"):         # no member's commit carries the edits
        assert git(repo, "show", f"population/faulty/{refname}:prepare/__init__.py") == "MAX_SEQ_LEN = 256  # fixed\n"
    assert not (repo / "evil.py").exists()


def test_an_index_lock_left_by_an_agent_is_cleared_and_its_change_still_judged(faulty_run):
    repo, run_dir, events = faulty_run
    row = rows_by_description(events)["agent-leaves-index-lock"]
    assert row["status"] == "ok", row["reason"]
    assert "DEPTH = 7" in (run_dir / "experiments" / str(row["id"]) / "diff.patch").read_text()
    assert "index.lock" in (run_dir / "experiments" / str(row["id"]) / "transcript.txt").read_text()


# ================================================================ a worker process killed

def _parent_pid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _in_background(target) -> threading.Thread:
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread


def test_a_training_whose_ray_worker_is_killed_is_lost_and_trained_again(cluster, tmp_path, monkeypatch):
    record = tmp_path / "record"
    record.mkdir()
    monkeypatch.setenv("AUTORESEARCH_FAKE_RECORD", str(record))
    monkeypatch.setenv("AUTORESEARCH_FAKE_SLEEP", "1.5")
    repo = make_seed_repo(tmp_path / "seed")
    killed = {}

    def kill_the_first_trainings_worker():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not killed:
            started = list(record.glob("*.started"))
            if started:
                trainer = int(started[0].name.split(".")[0])
                killed.update(trainer=trainer, worker=_parent_pid(trainer))
                os.kill(killed["worker"], signal.SIGKILL)
            time.sleep(0.05)

    killer = _in_background(kill_the_first_trainings_worker)
    code, out = _run(_config(repo, "killtrain", max_experiments=2, agents=["mutate"]))
    killer.join(5)
    assert code == EXIT_OK, out
    assert killed, "no training started"
    events = assert_nothing_lost_or_twice(repo / "runs" / "killtrain")
    lost = [e for e in events if e["type"] == "experiment_lost"]
    assert [e["id"] for e in lost] == [0] and "train failed" in lost[0]["reason"]
    assert "e0000 lost" in out and "queued again" in out
    baselines = [e["row"] for e in events if e["type"] == "experiment_finished" and _kind(events, e["id"]) == "baseline"]
    assert [row["status"] for row in baselines] == ["ok", "ok"], baselines     # the lost one trained again
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _alive(killed["trainer"]):
        time.sleep(0.1)
    assert not _alive(killed["trainer"]), "the training outlived its Ray worker"


def test_a_worker_actor_killed_while_its_agent_works_is_lost_retired_and_its_work_moves(cluster, tmp_path):
    repo = make_seed_repo(tmp_path / "seed")
    pid_file = tmp_path / "agent.pids"
    plan = write_plan(tmp_path / "plan", [("wait-for-kill", {"action": "wait-for-kill", "pid_file": str(pid_file)})])
    pids = []

    def kill_the_agents_worker():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not pid_file.exists():
            time.sleep(0.05)
        time.sleep(0.2)
        pids.extend(int(p) for p in pid_file.read_text().split())
        os.kill(pids[0], signal.SIGKILL)           # the worker actor's process

    killer = _in_background(kill_the_agents_worker)
    try:
        # both workers run the plan's agent: whichever proposes first takes the step and is killed (which
        # worker proposes first is a race between the baseline's preparation and the other's agent)
        code, out = _run(_config(repo, "killactor", workers=2, max_experiments=3, noise_runs=1,
                                 agents=[agent_spec(plan), agent_spec(plan)]))
    finally:
        killer.join(5)
        if len(pids) == 2 and _alive(pids[1]):
            os.killpg(pids[1], signal.SIGKILL)        # the agent its dead worker left behind
    assert code == EXIT_OK, out
    events = assert_nothing_lost_or_twice(repo / "runs" / "killactor")
    lost = [e["id"] for e in events if e["type"] == "experiment_lost"]
    started = {e["id"]: e for e in events if e["type"] == "experiment_started"}
    assert len(lost) == 1 and started[lost[0]]["kind"] == "child"
    victim = started[lost[0]]["worker"]
    assert f"worker {victim} died" in out
    assert all(started[i]["worker"] != victim for i in started if i > lost[0])     # the dead worker gets no more


# ================================================================ the driver killed at each stage, resumed

def _start_driver(repo: Path, address: str, tag: str, *extra: str, env: dict | None = None) -> subprocess.Popen:
    args = [sys.executable, "-m", "population", "--address", address, "--repo", str(repo), "--runs-dir",
            str(repo / "runs"), "--run", tag, "--budget", "5", "--device", "cpu", "--workers", "1",
            "--noise-runs", "2", "--workdir", str(repo.parent / "workers"), "--no-sandbox", "--endgame", "0", *extra]
    return subprocess.Popen(args, cwd=PROJECT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=os.environ | (env or {}), start_new_session=True)


def _kill_when(marker: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    """SIGKILL the driver's whole process group (it, and a git it may be running) once `marker` exists."""
    deadline = time.monotonic() + timeout
    while not marker.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(f"the driver never reached the stage ({proc.poll()}):\n{proc.communicate()[0]}")
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(30)


@pytest.fixture
def better_child(tmp_path, monkeypatch):
    """A seed whose agent makes a child clearly better than the seed (so it must be promoted)."""
    monkeypatch.setenv("AUTORESEARCH_FAKE_SLEEP", "0.1")
    repo = make_seed_repo(tmp_path / "seed")
    step = {"action": "set", "line": BETTER_LR}
    plan = write_plan(tmp_path / "plan", [("better-lr", step), ("better-lr-again", step)])
    hook = write_sitecustomize(tmp_path / "hook")
    return repo, agent_spec(plan), {"PYTHONPATH": f"{hook}{os.pathsep}{PROJECT}",
                                    "AUTORESEARCH_FAULT_MARKER": str(tmp_path / "stage-reached")}


def test_driver_killed_just_before_recording_a_result_reruns_it_on_resume(cluster, better_child, tmp_path, capsys):
    repo, agent, env = better_child
    proc = _start_driver(repo, cluster, "before", "--max-experiments", "3", "--agent", agent, "--confirm-runs", "1",
                         env=env | {"AUTORESEARCH_FAULT_STAGE": "before:experiment_finished:3"})
    marker = Path(env["AUTORESEARCH_FAULT_MARKER"])
    deadline = time.monotonic() + 120
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    # two drivers on one run: while the first one lives, a second refuses and writes nothing
    run_dir = repo / "runs" / "before"
    journal_before = (run_dir / "events.jsonl").read_bytes()
    code, _ = _run(_config(repo, "before", resume=True, max_experiments=3, agents=[agent], confirm_runs=1))
    assert code == EXIT_ERROR
    assert f"run before is in use by another driver (pid {proc.pid})" in capsys.readouterr().err
    assert (run_dir / "events.jsonl").read_bytes() == journal_before
    _kill_when(marker, proc)

    assert [e["type"] for e in journal(run_dir)].count("experiment_finished") == 2     # the child's is missing
    code, out = _run(_config(repo, "before", resume=True, max_experiments=3, agents=[agent], confirm_runs=1))
    assert code == EXIT_OK, out
    events = assert_nothing_lost_or_twice(run_dir)
    assert [e["id"] for e in events if e["type"] == "experiment_lost"] == [2]
    finished = {e["id"]: e["row"] for e in events if e["type"] == "experiment_finished"}
    assert sorted(finished) == [0, 1, 3] and finished[3]["status"] == "ok"
    assert [e["member"] for e in events if e["type"] == "champion"][-1] == _member(events, 3)


def test_a_child_past_the_margin_is_confirmed_by_a_second_run_before_it_is_promoted(cluster, tmp_path, monkeypatch):
    """The margin rule ("confirm once"): the clearly better child is trained again on another seed,
    and only the mean of both runs makes it champion."""
    monkeypatch.setenv("AUTORESEARCH_FAKE_SLEEP", "0.1")
    repo = make_seed_repo(tmp_path / "seed")
    # one better child; after it, children that train (a comment appended), so that no instant
    # duplicate lets the worker take every id while the better child still trains
    agent = agent_spec(write_plan(tmp_path / "plan", [("better-lr", {"action": "set", "line": BETTER_LR})]))
    code, out = _run(_config(repo, "confirm", max_experiments=5, agents=[agent], selection="margin"))
    assert code == EXIT_OK, out
    events = assert_nothing_lost_or_twice(repo / "runs" / "confirm")
    started = {e["id"]: e for e in events if e["type"] == "experiment_started"}
    child = _member(events, 2)
    reruns = [i for i in sorted(started) if started[i]["kind"] == "rerun"]
    assert [started[i]["member"] for i in reruns] == [child]           # once, and only the child
    assert started[reruns[0]]["seed"] != started[2]["seed"]
    order = [(e["type"], e.get("id"), e.get("member")) for e in events
             if e["type"] in ("experiment_finished", "champion")]
    assert order.index(("champion", None, child)) > order.index(("experiment_finished", reruns[0], None))
    assert [e["member"] for e in events if e["type"] == "champion"] == ["m0000", child]
    assert f"{child} beats the champion past the noise margin on 1 of 2 runs: re-run on seed" in out


def test_a_better_child_is_promoted_once_its_own_child_confirms_it_without_a_rerun(cluster, tmp_path, monkeypatch):
    """The default rule (posterior): the clearly better child is the parent of the next child the
    worker prepares (the best estimate; the one prepared while it trained is the seed's), and becomes
    champion when that grandchild's result backs it: two trainings inform it, none a re-run."""
    monkeypatch.setenv("AUTORESEARCH_FAKE_SLEEP", "0.1")
    repo = make_seed_repo(tmp_path / "seed")
    agent = agent_spec(write_plan(tmp_path / "plan", [("better-lr", {"action": "set", "line": BETTER_LR})]))
    code, out = _run(_config(repo, "posterior", max_experiments=5, agents=[agent]))
    assert code == EXIT_OK, out
    events = assert_nothing_lost_or_twice(repo / "runs" / "posterior")
    started = {e["id"]: e for e in events if e["type"] == "experiment_started"}
    assert [started[i]["kind"] for i in sorted(started)] == ["baseline", "baseline", "child", "child", "child"]
    child = _member(events, 2)
    grandchild = min(i for i in started if started[i]["parent_id"] == 2)   # bred from the best estimate
    order = [(e["type"], e.get("id"), e.get("member")) for e in events
             if e["type"] in ("experiment_finished", "champion")]
    promoted = order.index(("champion", None, child))
    assert order.index(("experiment_finished", 2, None)) < order.index(("experiment_finished", grandchild, None)) \
        < promoted                                                        # not on its own run: after its child's
    assert [e["member"] for e in events if e["type"] == "champion"] == ["m0000", child]
    assert f"champion: {child}" in out and "likely better than m0000" in out


def test_a_champion_better_on_validation_only_is_flagged_against_the_hidden_holdout(cluster, tmp_path, monkeypatch):
    """The seed's evaluator gives every model the same holdout score: the promoted child's gain on
    the validation rows is not there on the holdout, and the console and the journal say so."""
    monkeypatch.setenv("AUTORESEARCH_FAKE_SLEEP", "0.1")
    repo = make_seed_repo(tmp_path / "seed")
    evaluator = repo / "prepare" / "trusted_eval.py"
    evaluator.write_text(evaluator.read_text().replace('"holdout": value + 0.001', '"holdout": 1.5'))
    git(repo, "commit", "-qam", "an evaluator whose holdout never moves")
    agent = agent_spec(write_plan(tmp_path / "plan", [("better-lr", {"action": "set", "line": BETTER_LR})]))
    code, out = _run(_config(repo, "overfit", max_experiments=5, agents=[agent]))
    assert code == EXIT_OK, out
    events = journal(repo / "runs" / "overfit")
    promoted = [e for e in events if e["type"] == "champion" and e["member"] != "m0000"]
    assert promoted and promoted[-1]["val_gain"] > 0.005 and promoted[-1]["holdout_gain"] == pytest.approx(0)
    assert f"warning: champion {promoted[-1]['member']} gains" in out and "hidden holdout" in out


def test_driver_killed_just_after_recording_a_result_makes_its_decision_on_resume(cluster, better_child):
    repo, agent, env = better_child
    proc = _start_driver(repo, cluster, "after", "--max-experiments", "3", "--agent", agent, "--confirm-runs", "1",
                         env=env | {"AUTORESEARCH_FAULT_STAGE": "after:experiment_finished:3"})
    _kill_when(Path(env["AUTORESEARCH_FAULT_MARKER"]), proc)
    run_dir = repo / "runs" / "after"
    assert not any(e["type"] == "champion" and e["member"] != "m0000" for e in journal(run_dir))

    code, out = _run(_config(repo, "after", resume=True, max_experiments=3, agents=[agent], confirm_runs=1))
    assert code == EXIT_OK, out
    events = assert_nothing_lost_or_twice(run_dir)
    assert not any(e["type"] == "experiment_lost" for e in events)
    assert sum(e["type"] == "experiment_started" for e in events) == 3       # nothing trained twice
    child = _member(events, 2)
    assert [e["member"] for e in events if e["type"] == "champion"] == ["m0000", child]
    refs = branches(repo, "after")
    assert refs["best"] == refs[child]
    assert (run_dir / "members" / child / "engine" / "train.py").read_text().count(BETTER_LR) == 1


@pytest.mark.parametrize("ref", ["best", "m0001"])      # promoting the seed; fetching the child's bundle
def test_driver_killed_inside_git_update_ref_resumes_over_the_lock_it_left(cluster, better_child, tmp_path, ref):
    repo, agent, env = better_child
    marker = Path(env["AUTORESEARCH_FAULT_MARKER"])
    path = git_hanging_on_ref(tmp_path / "bin", repo, f"refs/heads/population/ingit/{ref}", marker)
    proc = _start_driver(repo, cluster, "ingit", "--max-experiments", "3", "--agent", agent, env=env | {"PATH": path})
    _kill_when(marker, proc)
    lock = repo / ".git" / "refs" / "heads" / "population" / "ingit" / f"{ref}.lock"
    assert lock.exists(), "the kill should have left git's ref lock behind"
    run_dir = repo / "runs" / "ingit"

    code, out = _run(_config(repo, "ingit", resume=True, max_experiments=3, agents=[agent]))
    assert code == EXIT_OK, out
    assert f"removed the stale git lock of refs/heads/population/ingit/{ref}" in out
    events = assert_nothing_lost_or_twice(run_dir)
    assert not lock.exists()
    refs = branches(repo, "ingit")
    champion = [e["member"] for e in events if e["type"] == "champion"][-1]
    assert refs["best"] == refs[champion]
    # every branch holds a recorded commit, except the branch of a child lost before its result
    # (kept: the agent's work stays reachable, the lineage marks that member lost)
    recorded = {e["row"]["commit"] for e in events if e["type"] == "experiment_finished"}
    lost_members = {_member(events, e["id"]) for e in events if e["type"] == "experiment_lost"}
    assert all(commit in recorded or name in lost_members for name, commit in refs.items() if name != "best")


# ================================================================ the store and git at start-up

def test_a_torn_journal_line_and_a_corrupt_lineage_at_start_up_are_repaired_on_resume(cluster, tmp_path, monkeypatch,
                                                                                      capsys):
    monkeypatch.setenv("AUTORESEARCH_FAKE_SLEEP", "0.05")
    repo = make_seed_repo(tmp_path / "seed")
    code, out = _run(_config(repo, "torn", max_experiments=2))
    assert code == EXIT_OK, out
    run_dir = repo / "runs" / "torn"
    complete = (run_dir / "events.jsonl").read_bytes()
    with open(run_dir / "events.jsonl", "ab") as f:      # a crash in the middle of an append
        f.write(b'{"type":"experiment_started","id":2,"kind":"chi')
    (run_dir / "lineage.parquet").write_bytes(b"PAR1\x00\x00 half a file")

    code, out = _run(_config(repo, "torn", resume=True, max_experiments=3))
    assert code == EXIT_OK, out
    assert (run_dir / "events.jsonl").read_bytes().startswith(complete)
    events = assert_nothing_lost_or_twice(run_dir)       # parquet readable again, one row per experiment
    assert sum(e["type"] == "experiment_finished" for e in events) == 3

    # a corrupt line in the middle, or a broken run.json, is refused in one line; nothing is written
    lines = (run_dir / "events.jsonl").read_bytes().split(b"\n")
    lines[3] = b"GARBAGE" + lines[3][7:]
    (run_dir / "events.jsonl").write_bytes(b"\n".join(lines))
    _refused_without_a_write(repo, "torn", run_dir, "events.jsonl line 4 is corrupt", capsys)
    (run_dir / "run.json").write_text('{"tag": "torn", "task": ')
    _refused_without_a_write(repo, "torn", run_dir, "cannot read", capsys)


def test_an_event_the_driver_did_not_write_is_refused_on_resume_in_one_line(cluster, tmp_path, monkeypatch, capsys):
    """A training or an agent that reached the journal (without the sandbox) appends a champion:
    the journal is signed with the run's key, so --resume refuses it and names the line."""
    monkeypatch.setenv("AUTORESEARCH_FAKE_SLEEP", "0.05")
    repo = make_seed_repo(tmp_path / "seed")
    code, out = _run(_config(repo, "forged", max_experiments=2))
    assert code == EXIT_OK, out
    run_dir = repo / "runs" / "forged"
    lines = (run_dir / "events.jsonl").read_text().count("\n")
    with open(run_dir / "events.jsonl", "a") as journal:
        journal.write('{"type": "champion", "member": "m0001", "time": 0}\n')
    _refused_without_a_write(repo, "forged", run_dir, f"events.jsonl line {lines + 1}", capsys)


def test_a_deleted_journal_is_refused_on_resume_and_nothing_the_run_recorded_changes(cluster, tmp_path, monkeypatch,
                                                                                      capsys):
    """Issue 29: events.jsonl deleted, then --resume started the run over (tables rewritten, branches
    moved). Now one line, exit 1, every file and branch as it was; restored, the run goes on."""
    monkeypatch.setenv("AUTORESEARCH_FAKE_SLEEP", "0.05")
    repo = make_seed_repo(tmp_path / "seed")
    code, out = _run(_config(repo, "deleted", max_experiments=4))
    assert code == EXIT_OK, out
    run_dir = repo / "runs" / "deleted"
    journal_bytes, refs = (run_dir / "events.jsonl").read_bytes(), branches(repo, "deleted")
    (run_dir / "events.jsonl").unlink()
    _refused_without_a_write(repo, "deleted", run_dir, "events.jsonl is missing, but the run's key .journal.key "
                                                       "shows that it recorded events", capsys)
    assert branches(repo, "deleted") == refs and not (run_dir / "events.jsonl").exists()
    (run_dir / "events.jsonl").write_bytes(journal_bytes[:journal_bytes.rindex(b"\n", 0, -1) + 1])   # cut the end
    _refused_without_a_write(repo, "deleted", run_dir, "events were cut off its end", capsys)
    (run_dir / "events.jsonl").write_bytes(journal_bytes)
    code, out = _run(_config(repo, "deleted", resume=True, max_experiments=5))
    assert code == EXIT_OK, out
    assert_nothing_lost_or_twice(run_dir)


def _refused_without_a_write(repo: Path, tag: str, run_dir: Path, needle: str, capsys) -> None:
    from population import cli
    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file() and p.name != ".lock"}
    code = cli.main(["--repo", str(repo), "--runs-dir", str(repo / "runs"), "--run", tag, "--resume",
                     "--max-experiments", "4"])
    err = capsys.readouterr().err
    assert code == EXIT_ERROR and needle in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file() and p.name != ".lock"} == before


def test_git_lock_files_left_behind_do_not_stop_a_resume(cluster, tmp_path, monkeypatch):
    monkeypatch.setenv("AUTORESEARCH_FAKE_SLEEP", "0.05")
    repo = make_seed_repo(tmp_path / "seed")
    code, out = _run(_config(repo, "locks", max_experiments=1, noise_runs=1))
    assert code == EXIT_OK, out
    # what a killed driver, a killed worker and the user's own git leave behind
    refs = repo / ".git" / "refs" / "heads" / "population" / "locks"
    for name in ("m0000.lock", "best.lock"):
        (refs / name).write_text("")
    user_lock = repo / ".git" / "index.lock"
    user_lock.write_text("")
    clone = repo.parent / "workers" / "locks" / "w0" / "clone" / ".git"
    (clone / "index.lock").write_text("")
    (clone / "refs" / "heads" / "population" / "locks").mkdir(parents=True, exist_ok=True)
    (clone / "refs" / "heads" / "population" / "locks" / "m0001.lock").write_text("")

    code, out = _run(_config(repo, "locks", resume=True, max_experiments=3, noise_runs=1))   # the run's own
    assert code == EXIT_OK, out
    assert_nothing_lost_or_twice(repo / "runs" / "locks")
    assert not list(refs.glob("*.lock"))             # the run's own refs: only this driver writes them
    assert user_lock.exists()                        # the user's index is not the run's to unlock
    assert not list(clone.rglob("*.lock"))           # a worker starts from a fresh clone


# ================================================================ a full disk

class _FullDisk:
    """Writes through population.store fail with ENOSPC from the `after`-th write of a file named
    like `target` on (half of that write lands first, as on a real full disk) until `free()`."""

    def __init__(self, target: str, after: int):
        self.target, self.left, self.full, self.failures = target, after, False, 0

    def check(self, name: str) -> bool:
        if not self.full and self.target in name:
            self.left -= 1
            self.full = self.left < 0
        return self.full

    def wrap(self, handle, name: str):
        disk = self

        class Handle:
            def write(self, data):
                if disk.check(name):
                    disk.failures += 1
                    handle.write(data[: len(data) // 2])
                    handle.flush()
                    raise OSError(28, os.strerror(28), name)
                return handle.write(data)

            def __getattr__(self, attr):
                return getattr(handle, attr)

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                return handle.__exit__(*exc)

        return Handle()


@pytest.mark.parametrize("target, after", [("lineage.parquet", 4), ("events.jsonl", 4), ("run.log", 1)])
def test_a_full_disk_stops_the_run_in_one_line_and_the_previous_store_stays_intact(cluster, tmp_path, monkeypatch,
                                                                                  capsys, target, after):
    from population import driver, store

    monkeypatch.setenv("AUTORESEARCH_FAKE_SLEEP", "0.05")
    repo = make_seed_repo(tmp_path / "seed")
    run_dir = repo / "runs" / "full"
    disk = _FullDisk(target, after)
    real_os, real_open = store.os, open

    snapshots = {}

    class Os:            # population.store's view of os: its files are on the full disk
        def __getattr__(self, attr):
            return getattr(real_os, attr)

        def fdopen(self, fd, *args, **kw):
            return disk.wrap(real_os.fdopen(fd, *args, **kw), real_os.readlink(f"/proc/self/fd/{fd}"))

        def replace(self, src, dst):       # remember the last good version of each file
            real_os.replace(src, dst)
            snapshots[Path(dst).name] = Path(dst).read_bytes()

    def journal_open(path, mode="r", *args, **kw):
        handle = real_open(path, mode, *args, **kw)
        return disk.wrap(handle, str(path)) if "a" in mode else handle

    monkeypatch.setattr(store, "os", Os())
    monkeypatch.setattr(store, "open", journal_open, raising=False)
    monkeypatch.setattr(driver, "TABLES_EVERY_S", 0.0)     # rewrite the tables after every event
    monkeypatch.setattr(driver, "TABLES_MAX_SHARE", None)
    code, out = _run(_config(repo, "full", max_experiments=4))
    monkeypatch.undo()
    err = capsys.readouterr().err
    assert disk.failures >= 1
    assert code == EXIT_ERROR, out
    assert "No space left on device" in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    for name in ("lineage.parquet", "results.tsv", "run.json"):     # the last good version of each
        if name in snapshots:
            assert (run_dir / name).read_bytes() == snapshots[name], name
    assert not list(run_dir.glob(".*.tmp"))
    good = journal(run_dir)                           # every complete line is an event; no torn line
    assert (run_dir / "events.jsonl").read_bytes().endswith(b"\n")

    # space freed: the run resumes and nothing is lost or counted twice
    monkeypatch.setenv("AUTORESEARCH_FAKE_SLEEP", "0.05")
    code, out = _run(_config(repo, "full", resume=True, max_experiments=4))
    assert code == EXIT_OK, out
    events = assert_nothing_lost_or_twice(run_dir)
    assert events[: len(good)] == good


# ================================================================ bad input: one line, non-zero exit

@pytest.mark.parametrize("argv, needle", [
    (["--tournament-size", "0"], "--tournament-size must be >= 1"),
    (["--workers", "-3"], "--workers must be >= 1"),
    (["--workers", "2.5"], "'2.5' is not an integer"),
    (["--budget", "-5"], "--budget must be > 0"),
    (["--budget", "nan"], "not a finite number"),
    (["--train-timeout", "-1"], "must be longer than the budget"),
    (["--agent-timeout", "0"], "--agent-timeout must be > 0"),
    (["--max-experiments", "-2"], "--max-experiments must be >= 1"),
    (["--noise-runs", "many"], "'many' is not an integer"),
    (["--population-size", "-1"], "--population-size must be >= 1"),
    (["--seed", "1e3"], "'1e3' is not an integer"),
    (["--runs-dir", " "], "--runs-dir must not be empty"),
    (["--address", " "], "--address must not be empty"),
    (["--accelerator", "H100;rm -rf ~"], "is not an accelerator type"),
    (["--run", "/etc/passwd"], "is not a valid tag"),
    (["--run", "a\\b"], "is not a valid tag"),
    (["--run", "~root"], "is not a valid tag"),
    (["--run", ".hidden"], "is not a valid tag"),
    (["--run", "tag with spaces"], "is not a valid tag"),
    (["--run", "x" * 65], "is not a valid tag"),
    (["--run", "tab\there"], "is not a valid tag"),
])
def test_a_flag_out_of_range_is_one_line_and_exit_2(argv, needle, capsys):
    from population import cli
    try:
        code = cli.main(argv)
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err
    assert code == 2 and needle in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


@pytest.fixture
def seed_args(tmp_path):
    repo = make_seed_repo(tmp_path / "seed")
    return repo, ["--repo", str(repo), "--runs-dir", str(repo / "runs"), "--run", "bad", "--device", "cpu"]


@pytest.mark.parametrize("argv, needle, exit_code", [        # a bad --agent is a bad flag: exit 2 (issue 29)
    (["--agent", "gpt-5"], "unknown agent spec 'gpt-5'", 2),
    (["--agent", "command:"], "unknown agent spec 'command:'", 2),
    (["--agent", "openai:"], "unknown agent spec 'openai:'", 2),
    (["--agent", "mutate:fast"], "unknown agent spec 'mutate:fast'", 2),
    (["--agent", "command:sh -c 'unbalanced"], "cannot parse the command line", 2),
    (["--agent", "mutate", "--agent", "no-such-agent"], "unknown agent spec 'no-such-agent'", 2),
    (["--address", "not-a-host-port"], "is not HOST:PORT", EXIT_ERROR),
    (["--address", "ray://127.0.0.1:1"], "cannot reach the Ray cluster at ray://127.0.0.1:1", EXIT_ERROR),
])
def test_a_bad_agent_spec_or_cluster_address_is_one_line_before_anything_is_written(seed_args, argv, needle, exit_code,
                                                                                    capsys, monkeypatch):
    from population import cli
    repo, base = seed_args
    monkeypatch.setattr(ray, "is_initialized", lambda: False)   # as in a fresh CLI process (the address is checked)
    code = cli.main(base + argv)
    err = capsys.readouterr().err
    assert code == exit_code and needle in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (repo / "runs" / "bad").exists()


def test_a_missing_data_cache_is_refused_before_the_run_starts(cluster, tmp_path, monkeypatch, capsys):
    """The real train file and prepare/ with no prepared data on the only node: one line naming
    the fix, before a run directory or a training exists."""
    import shutil
    from population import cli

    repo = tmp_path / "seed"
    (repo / "engine").mkdir(parents=True)
    shutil.copytree(PROJECT / "prepare", repo / "prepare", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(PROJECT / "engine" / "train.py", repo / "engine" / "train.py")
    shutil.copy(PROJECT / "program.md", repo / "program.md")
    (repo / ".gitignore").write_text("runs/\n__pycache__/\n")
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "seed")
    monkeypatch.setenv("AUTORESEARCH_CACHE", str(tmp_path / "no-cache-here"))
    code = cli.main(["--repo", str(repo), "--runs-dir", str(repo / "runs"), "--run", "nocache", "--device", "cpu",
                     "--workers", "1", "--noise-runs", "1", "--budget", "5", "--workdir", str(tmp_path / "workers")])
    err = capsys.readouterr().err
    assert code == EXIT_ERROR
    assert "no prepared data for task climbmix" in err and str(tmp_path / "no-cache-here") in err, err
    assert "run `python -m prepare` first" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (repo / "runs" / "nocache").exists()
    assert not (tmp_path / "workers").exists()


def test_a_git_command_that_fails_is_one_line_with_gits_own_words(cluster, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("AUTORESEARCH_FAKE_SLEEP", "0.05")
    repo = make_seed_repo(tmp_path / "seed")
    code, out = _run(_config(repo, "squat", max_experiments=1, noise_runs=1))
    assert code == EXIT_OK, out
    member = repo / "runs" / "squat" / "members" / "m0000"
    git(repo, "worktree", "remove", "--force", str(member))
    member.write_text("a file where the member's worktree goes\n")
    journal_before = (repo / "runs" / "squat" / "events.jsonl").read_bytes()

    code, _ = _run(_config(repo, "squat", resume=True, max_experiments=2, noise_runs=1))
    err = capsys.readouterr().err
    assert code == EXIT_ERROR
    assert "git worktree failed: fatal:" in err and "already exists" in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert (repo / "runs" / "squat" / "events.jsonl").read_bytes().startswith(journal_before)


def test_a_corrupt_bundle_from_a_worker_is_that_childs_crash_and_the_run_goes_on(cluster, tmp_path, monkeypatch):
    """The driver imports every child as a bundle; a broken one (here the first child's, cut in
    half on arrival) is recorded against that child, never imported, and the run goes on."""
    from population import gitops

    monkeypatch.setenv("AUTORESEARCH_FAKE_SLEEP", "0.05")
    real_fetch, cut = gitops.fetch_bundle, []

    def fetch_first_child_cut(repo, data, bundle_ref, dest_ref=None):
        if dest_ref is not None and not cut:
            cut.append(dest_ref)
            data = data[: len(data) // 2]
        return real_fetch(repo, data, bundle_ref, dest_ref)

    monkeypatch.setattr(gitops, "fetch_bundle", fetch_first_child_cut)
    repo = make_seed_repo(tmp_path / "seed")
    code, out = _run(_config(repo, "cutbundle", max_experiments=4))
    assert code == EXIT_OK, out
    events = assert_nothing_lost_or_twice(repo / "runs" / "cutbundle")
    rows = [e["row"] for e in events if e["type"] == "experiment_finished"]
    broken = [r for r in rows if "bundle could not be imported" in r["reason"]]
    assert len(broken) == 1 and broken[0]["status"] == "crash" and not broken[0]["commit"], broken
    assert cut and cut[0].rsplit("/", 1)[1] not in branches(repo, "cutbundle")
    assert sum(r["status"] == "ok" for r in rows) >= 2
