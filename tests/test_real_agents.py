"""The real agent CLIs (`claude`, `codex`, installed by .ci/run from the npm registry) against
scripted model APIs on loopback (tests/model_servers.py): their own tool loops edit the train file,
their own JSON gives tokens and cost, and every failing script ends as the CLI's own error.

Two levels: `propose` (the agent alone, sandboxed, in a git worktree of the fake seed) for each
script, and whole CPU population runs of the real driver, with and without the sandbox, where the
child's diff is the scripted edit, the description lands in the lineage, a planted key never
reaches the store, the transcripts or the commits, and an agent's failure does not stop the run.
"""
from __future__ import annotations

import io
import shutil
import subprocess
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from model_servers import AnthropicServer, Cut, Fail, Final, Hang, ResponsesServer, Tool, codex_patch
from population import sandbox
from population.agents import make_agent
from population.agents.base import NO_DESCRIPTION
from test_driver_support import make_seed_repo
from test_secrets import planted_hits

TRAIN = "engine/train.py"
BEFORE, AFTER = "LEARNING_RATE = 0.04", "LEARNING_RATE = 0.03"
KEYS = {"ANTHROPIC_API_KEY": "sk-ant-PLANTED-real-cli-0123456789", "OPENAI_API_KEY": "sk-PLANTED-real-cli-0123456789"}
AGENT_TIMEOUT_S = 60.0

needs_claude = pytest.mark.skipif(shutil.which("claude") is None, reason="claude is not installed (.ci/run installs it)")
needs_codex = pytest.mark.skipif(shutil.which("codex") is None, reason="codex is not installed (.ci/run installs it)")
needs_bwrap = pytest.mark.skipif(not sandbox.available(), reason="bubblewrap does not work here")


def claude_read(cwd: str) -> dict:
    return {"file_path": f"{cwd}/{TRAIN}"}


def claude_edit(old: str = BEFORE, new: str = AFTER, path: str = TRAIN):
    return lambda cwd: {"file_path": f"{cwd}/{path}", "old_string": old, "new_string": new}


CLAUDE_EDIT = [Tool("Read", claude_read), Tool("Edit", claude_edit()),
               Final("Lowered the learning rate.\nDESCRIPTION: lr 0.04 -> 0.03 (scripted)")]
CODEX_PATCH = f"*** Begin Patch\n*** Update File: {TRAIN}\n@@\n-{BEFORE}\n+{AFTER}\n*** End Patch\n"
CODEX_EDIT = [Tool("exec", codex_patch(CODEX_PATCH)), Final("Lowered it.\nDESCRIPTION: lr 0.04 -> 0.03 (codex)")]


@pytest.fixture
def keys(monkeypatch):
    for name, value in KEYS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("CLAUDE_CODE_MAX_RETRIES", "0")      # a scripted failure fails at once
    return KEYS


@pytest.fixture
def worktree(tmp_path):
    repo = make_seed_repo(tmp_path / "seed")
    path = tmp_path / "wt"
    subprocess.run(["git", "-C", str(repo), "worktree", "add", "-q", "--detach", str(path)], check=True)
    return path


def propose(spec: str, server, worktree: Path, timeout: float = AGENT_TIMEOUT_S):
    agent = make_agent(spec, base_url=server.url + ("/v1" if spec == "codex" else ""),
                       key_env=["CLAUDE_CODE_MAX_RETRIES"])
    agent.use_sandbox = sandbox.available()
    return agent.propose(worktree, "Lower val_bpb by editing engine/train.py only.", timeout=timeout)


# ---------------------------------------------------------------- the agent alone, each script

@needs_claude
def test_claude_edits_through_its_own_tools_and_reports_usage_and_cost(keys, worktree):
    with AnthropicServer(CLAUDE_EDIT) as server:
        proposal = propose("claude", server, worktree)
    assert proposal.error is None, proposal.transcript[-2000:]
    assert AFTER in (worktree / TRAIN).read_text()
    assert proposal.description == "lr 0.04 -> 0.03 (scripted)"
    assert proposal.tokens >= 3 * 1050 and proposal.cost_usd > 0           # from claude's own JSON
    assert {r["auth"] for r in server.requests} == {keys["ANTHROPIC_API_KEY"]}
    assert keys["ANTHROPIC_API_KEY"] not in proposal.transcript


@needs_codex
def test_codex_patches_through_its_own_tool_and_reports_usage(keys, worktree):
    with ResponsesServer(CODEX_EDIT) as server:
        proposal = propose("codex", server, worktree)
    assert proposal.error is None, proposal.transcript[-2000:]
    assert AFTER in (worktree / TRAIN).read_text()
    assert proposal.description == "lr 0.04 -> 0.03 (codex)"
    assert proposal.tokens == 2 * 1050 and proposal.cost_usd is None     # codex reports tokens, no price
    assert {r["auth"] for r in server.requests} == {f"Bearer {keys['OPENAI_API_KEY']}"}


@pytest.mark.parametrize("cli, server_class, step, needle", [
    pytest.param("claude", AnthropicServer, Fail(500), "500", marks=needs_claude),
    pytest.param("claude", AnthropicServer, Fail(429), "429", marks=needs_claude),
    pytest.param("claude", AnthropicServer, Cut(), "claude", marks=needs_claude),
    pytest.param("codex", ResponsesServer, Fail(500), "temporary errors", marks=needs_codex),   # codex's words for a 500
    pytest.param("codex", ResponsesServer, Fail(429), "429", marks=needs_codex),
    pytest.param("codex", ResponsesServer, Cut(), "stream", marks=needs_codex),
])
def test_a_failing_model_api_is_an_agent_error_with_the_clis_own_message(keys, worktree, cli, server_class, step,
                                                                           needle):
    with server_class([step]) as server:
        proposal = propose(cli, server, worktree)
    assert proposal.error and needle in proposal.error, (proposal.error, proposal.transcript[-1500:])
    assert BEFORE in (worktree / TRAIN).read_text()


@needs_claude
def test_a_model_that_hangs_is_stopped_at_the_agent_timeout(keys, worktree):
    with AnthropicServer([Hang(30)]) as server:
        proposal = propose("claude", server, worktree, timeout=4)
    assert proposal.error == "agent timed out after 4 s" and proposal.seconds < 15


@needs_claude
def test_an_edit_that_does_not_apply_changes_nothing_and_no_description_is_said_so(keys, worktree):
    script = [Tool("Read", claude_read), Tool("Edit", claude_edit(old="NOT IN THE FILE")), Final("I could not find it.")]
    with AnthropicServer(script) as server:
        proposal = propose("claude", server, worktree)
    assert proposal.error is None
    assert (worktree / TRAIN).read_text().count(BEFORE) == 1
    assert proposal.description == NO_DESCRIPTION
    # the CLI's tool loop saw its own tool error and went on (the second request carries it)
    assert "tool_result" in str(server.requests[-1]["body"]["messages"])


# ---------------------------------------------------------------- whole runs of the driver

def population_run(tmp_path, spec: str, server, *, sandboxed: bool, experiments: int):
    from population.config import RunConfig
    from population.driver import run_population

    repo = make_seed_repo(tmp_path / "seed")
    base_url = server.url + ("/v1" if spec == "codex" else "")
    config = RunConfig(tag="real", repo=str(repo), runs_dir=str(repo / "runs"), budget_s=5.0, device="cpu",
                       workers=1, noise_runs=1, max_experiments=experiments, agents=[spec], agent_base_url=base_url,
                       agent_env=["CLAUDE_CODE_MAX_RETRIES"], agent_timeout_s=AGENT_TIMEOUT_S,
                       workdir=str(tmp_path / "workers"), status_every_s=3600.0, sandbox=sandboxed,
                       endgame=0.0)           # every training after the baseline a scripted proposal
    out = io.StringIO()
    code = run_population(config, ray_init_kwargs={"num_cpus": 2}, out=out)
    run_dir = repo / "runs" / "real"
    lineage = pq.read_table(run_dir / "lineage.parquet").to_pandas().set_index("id")
    return code, out.getvalue(), repo, run_dir, lineage


@needs_claude
@pytest.mark.parametrize("sandboxed", [pytest.param(True, marks=needs_bwrap), False], ids=["sandbox", "no-sandbox"])
def test_a_population_run_with_real_claude_records_its_edit_cost_and_failures(keys, tmp_path, sandboxed):
    """Three children in turn: the scripted edit, a Write to prepare/ (a violation the worker
    reverts), an HTTP 500 (the CLI's error); the run goes on to its end."""
    other_file = Tool("Write", lambda cwd: {"file_path": f"{cwd}/prepare/evil.py", "content": "CHEAT = 1\n"})
    script = CLAUDE_EDIT + [other_file, Final("Wrote a helper.\nDESCRIPTION: a helper in prepare/"), Fail(500)]
    with AnthropicServer(script) as server:
        code, out, repo, run_dir, lineage = population_run(tmp_path, "claude", server, sandboxed=sandboxed,
                                                           experiments=5)
    assert code == 0, out
    edit, other, failed = (row for _, row in lineage[lineage.kind == "child"].iterrows())
    assert edit.status == "ok" and edit.description == "lr 0.04 -> 0.03 (scripted)"
    assert edit.agent_tokens >= 3 * 1050 and edit.agent_cost_usd > 0
    diff = (run_dir / "experiments" / str(edit.name) / "diff.patch").read_text()
    assert f"-{BEFORE}" in diff and f"+{AFTER}" in diff
    assert other.status == "violation" and "prepare/evil.py" in other.reason and not other.commit
    assert failed.status == "agent_error" and "500" in failed.reason
    assert planted_hits(repo, KEYS.values()) == []


@needs_codex
@needs_bwrap
def test_a_population_run_with_real_codex_records_its_edit(keys, tmp_path):
    with ResponsesServer(CODEX_EDIT) as server:
        code, out, repo, run_dir, lineage = population_run(tmp_path, "codex", server, sandboxed=True, experiments=2)
    assert code == 0, out
    (child_id, child), = lineage[lineage.kind == "child"].iterrows()
    assert child.status == "ok" and child.description == "lr 0.04 -> 0.03 (codex)" and child.agent_tokens == 2100
    assert f"+{AFTER}" in (run_dir / "experiments" / str(child_id) / "diff.patch").read_text()
    assert planted_hits(repo, KEYS.values()) == []
