"""CLI agents (claude, codex, command:) driven through fake executables on a PATH the test sets."""
from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from population.agents import make_agent
from population.context import build_prompt
from population.guards import enforce_train_file_only, tree_fingerprint

FAKES = Path(__file__).parent / "fake_agents"
PLANTED_OPENAI = "sk-test-PLANTED-openai-0123456789"
PLANTED_ANTHROPIC = "sk-ant-PLANTED-anthropic-0123456789"
PLANTED_FOO = "foo-PLANTED-token-0123456789"
TRAIN = "x = 1\nLR = 0.5\n"


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """Fake agents on PATH, a HOME where they report what they received, planted secrets."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("PATH", f"{FAKES}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("OPENAI_API_KEY", PLANTED_OPENAI)
    monkeypatch.setenv("ANTHROPIC_API_KEY", PLANTED_ANTHROPIC)
    monkeypatch.setenv("FOO_TOKEN", PLANTED_FOO)
    return home


@pytest.fixture
def worktree(tmp_path) -> Path:
    repo = tmp_path / "wt"
    (repo / "engine").mkdir(parents=True)
    (repo / "prepare").mkdir()
    (repo / "engine" / "train.py").write_text(TRAIN)
    (repo / "prepare" / "tasks.py").write_text("FIXED = 1\n")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(repo)]
    subprocess.run(git[:-2] + ["init", "-q", str(repo)], check=True)
    subprocess.run(git + ["add", "."], check=True)
    subprocess.run(git + ["commit", "-q", "-m", "seed"], check=True)
    return repo


def prompt(mode: str) -> str:
    return build_prompt(f"FAKE_MODE: {mode}\n", "climbmix", rows=[], parent_id=0, in_flight=[])


def received_env(home: Path, name: str) -> dict[str, str]:
    lines = (home / f"{name}_env.txt").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line)


def is_running(pid: int) -> bool:
    """Alive and not a zombie (a container's init may never reap orphans)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_claude_edit_is_applied_with_description_cost_and_tokens(home, worktree):
    proposal = make_agent("claude").propose(worktree, prompt("edit"), timeout=30)
    assert proposal.error is None
    assert "# tuned by claude" in (worktree / "engine" / "train.py").read_text()
    assert proposal.description == "claude: append a comment"      # .agent/description wins
    assert proposal.cost_usd == pytest.approx(0.0123)
    assert proposal.tokens == 100 + 20 + 3 + 5
    assert not (worktree / ".agent").exists()                      # scratch space cleaned up


def test_claude_gets_only_its_own_key_and_a_minimal_environment(home, worktree, monkeypatch):
    monkeypatch.setenv("UNRELATED_SETTING", "visible?")
    make_agent("claude").propose(worktree, prompt("nothing"), timeout=30)
    env = received_env(home, "claude")
    assert env["ANTHROPIC_API_KEY"] == PLANTED_ANTHROPIC
    assert "OPENAI_API_KEY" not in env and "FOO_TOKEN" not in env and "UNRELATED_SETTING" not in env
    assert PLANTED_OPENAI not in (home / "claude_env.txt").read_text()


def test_codex_gets_the_openai_key_but_transcripts_are_scrubbed(home, worktree):
    proposal = make_agent("codex").propose(worktree, prompt("leak"), timeout=30)
    env = received_env(home, "codex")
    assert env["OPENAI_API_KEY"] == PLANTED_OPENAI and "ANTHROPIC_API_KEY" not in env
    assert "openai=[REDACTED]" in proposal.transcript
    assert proposal.error is None and proposal.tokens == 230
    assert proposal.description == "codex answer line"             # fallback: DESCRIPTION line


def test_command_agent_with_named_key_never_leaks_secrets(home, worktree):
    agent = make_agent("command:generic-agent {prompt_file} {workdir}", key_env="FOO_TOKEN")
    proposal = agent.propose(worktree, prompt("leak"), timeout=30)
    env = received_env(home, "generic")
    assert env["FOO_TOKEN"] == PLANTED_FOO and "OPENAI_API_KEY" not in env
    everything = proposal.transcript + proposal.description + str(proposal.error)
    for secret in (PLANTED_OPENAI, PLANTED_ANTHROPIC, PLANTED_FOO):
        assert secret not in everything
    assert "foo=[REDACTED]" in proposal.transcript


def test_command_agent_without_prompt_file_reads_stdin(home, worktree):
    proposal = make_agent("command:generic-agent").propose(worktree, prompt("edit"), timeout=30)
    assert proposal.error is None and proposal.description == "generic: append a comment"
    assert proposal.tokens is None and proposal.cost_usd is None
    assert "generic agent finished" in proposal.transcript


def test_edit_of_prepare_is_reverted_and_reported_by_the_guard(home, worktree):
    before = tree_fingerprint(worktree, "prepare")
    proposal = make_agent("claude").propose(worktree, prompt("edit-prepare"), timeout=30)
    assert proposal.error is None
    assert tree_fingerprint(worktree, "prepare") != before
    violations = enforce_train_file_only(worktree, "engine/train.py")
    assert violations == ["prepare/tasks.py", "stray/new_file.txt"]
    assert tree_fingerprint(worktree, "prepare") == before
    assert not (worktree / "stray").exists()
    assert "# tuned by claude" in (worktree / "engine" / "train.py").read_text()


def test_agent_commits_are_undone_so_the_guard_still_sees_them(home, worktree):
    head = subprocess.run(["git", "-C", str(worktree), "rev-parse", "HEAD"], capture_output=True,
                          text=True, check=True).stdout.strip()
    proposal = make_agent("command:generic-agent").propose(worktree, prompt("commit"), timeout=30)
    assert proposal.error is None and "the agent committed" in proposal.transcript
    assert subprocess.run(["git", "-C", str(worktree), "rev-parse", "HEAD"], capture_output=True,
                          text=True, check=True).stdout.strip() == head
    assert enforce_train_file_only(worktree, "engine/train.py") == ["prepare/tasks.py", "stray/new_file.txt"]
    assert "# tuned by generic" in (worktree / "engine" / "train.py").read_text()


def test_a_directory_inside_another_repository_is_left_alone(home, worktree):
    inner = worktree / "engine"          # not a repository's top level: no git reset there
    (worktree / "prepare" / "tasks.py").write_text("staged = True\n")
    subprocess.run(["git", "-C", str(worktree), "add", "prepare/tasks.py"], check=True)
    make_agent("mutate", train_file="train.py").propose(inner, "", timeout=10)
    staged = subprocess.run(["git", "-C", str(worktree), "diff", "--cached", "--name-only"],
                            capture_output=True, text=True, check=True).stdout.split()
    assert staged == ["prepare/tasks.py"]


def test_hanging_agent_is_killed_with_its_children_at_the_limit(home, worktree):
    start = time.monotonic()
    proposal = make_agent("codex").propose(worktree, prompt("hang"), timeout=1.5)
    elapsed = time.monotonic() - start
    assert proposal.error == "agent timed out after 1.5 s"
    assert elapsed < 10
    sleeper = int((home / "hang_pid").read_text())
    time.sleep(0.2)
    assert not is_running(sleeper)


def test_failing_agent_reports_its_exit_code_and_stderr(home, worktree):
    proposal = make_agent("command:generic-agent").propose(worktree, prompt("fail"), timeout=30)
    assert proposal.error == "agent exited with code 3: fake generic failed on purpose"
    assert "fake generic failed on purpose" in proposal.transcript


def test_transcript_is_bounded(home, worktree, tmp_path):
    chatty = tmp_path / "bin" / "chatty"
    chatty.parent.mkdir()
    chatty.write_text("#!/bin/sh\nyes 'a long line of agent chatter' | head -c 3000000\n")
    chatty.chmod(0o755)
    agent = make_agent(f"command:{chatty}", max_transcript_chars=10_000)
    proposal = agent.propose(worktree, "hi", timeout=30)
    assert proposal.error is None
    assert 10_000 <= len(proposal.transcript) < 10_200 and "cut ..." in proposal.transcript
