"""make_agent specs and the offline `mutate` agent."""
from __future__ import annotations

import ast
import random
import subprocess
import sys
from pathlib import Path

import pytest

from population.agents import AgentSpecError, make_agent
from population.agents.mutate import find_candidates, mutate_source
from population.context import build_prompt

TRAIN_SOURCE = '''\
import os
from prepare import MAX_SEQ_LEN, TIME_BUDGET

ASPECT_RATIO = 64
HEAD_DIM = 128
WINDOW_PATTERN = "SSSL"
TOTAL_BATCH_SIZE = 2**19
EMBEDDING_LR = 0.6
MATRIX_LR = 0.04
ADAM_BETAS = (0.8, 0.95)
WARMUP_RATIO = 0.0
WARMDOWN_RATIO = 0.5
DEPTH = 8
DEVICE_BATCH_SIZE = 96
MUON_MOMENTUM = 0.95
MOMENTUM_STEPS = 300
LOG_EVERY = 25
SEED = 42
EVAL_TOKENS = 1000  # fixed, do not modify
if os.environ.get("AUTORESEARCH_SMOKE"):
    DEPTH = 2


def main():
    lr = MATRIX_LR * 2
    return lr
'''


def assignments(source: str) -> dict[str, str]:
    """Module-level NAME -> source text of its value (first assignment)."""
    found = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            found.setdefault(node.targets[0].id, ast.unparse(node.value))
    return found


def test_candidates_skip_fixed_seed_zero_and_non_numeric():
    names = {c.name for c in find_candidates(TRAIN_SOURCE)}
    assert {"MATRIX_LR", "DEPTH", "TOTAL_BATCH_SIZE", "DEVICE_BATCH_SIZE", "WARMDOWN_RATIO"} <= names
    assert names.isdisjoint({"SEED", "EVAL_TOKENS", "WARMUP_RATIO", "WINDOW_PATTERN", "ADAM_BETAS", "LOG_EVERY"})


def evaluate(expression: str):
    """Value of a number literal or `2 ** N` (literal_eval refuses powers)."""
    return eval(compile(ast.parse(expression, mode="eval"), "<constant>", "eval"), {"__builtins__": {}})


@pytest.mark.parametrize("seed", range(60))
def test_mutate_changes_one_or_two_constants_and_still_parses(seed):
    new_source, description = mutate_source(TRAIN_SOURCE, random.Random(seed))
    ast.parse(new_source)
    before, after = assignments(TRAIN_SOURCE), assignments(new_source)
    changed = sorted(name for name in before if before[name] != after[name])
    assert 1 <= len(changed) <= 2
    for name in changed:
        assert f"{name} {before[name].replace(' ', '')} -> " in description.replace("2 ** ", "2**")
        old, new = evaluate(before[name]), evaluate(after[name])
        assert type(old) is type(new) and new > 0
        if name == "MUON_MOMENTUM":                  # scaled through 1 - value
            assert 0.5 <= (1 - new) / (1 - old) <= 2.0 + 1e-6
        elif isinstance(old, float):
            assert 0.5 <= new / old <= 2.0 + 1e-9
            if name.endswith("RATIO"):
                assert new <= 1.0
        elif old & (old - 1) == 0:                 # powers of two stay powers of two
            assert new & (new - 1) == 0 and new in (old // 2, old * 2)
        elif old <= 16:
            assert new in (old - 1, old + 1, old // 2, old * 2)
        else:
            assert new in (round(old * 0.8), round(old * 1.25), old // 2, old * 2)
    # Everything outside the changed lines is untouched.
    untouched = [line for line in TRAIN_SOURCE.splitlines() if not line.startswith(tuple(changed))]
    assert all(line in new_source.splitlines() for line in untouched)


def test_mutate_is_deterministic_given_a_seed_and_varies_across_seeds():
    outcomes = {mutate_source(TRAIN_SOURCE, random.Random(seed))[1] for seed in range(10)}
    assert mutate_source(TRAIN_SOURCE, random.Random(7)) == mutate_source(TRAIN_SOURCE, random.Random(7))
    assert len(outcomes) > 5


def test_mutate_rejects_a_file_without_constants():
    with pytest.raises(ValueError, match="no UPPER_CASE numeric constants"):
        mutate_source("x = 1\nNAME = 'text'\n", random.Random(0))


@pytest.fixture
def worktree(tmp_path: Path) -> Path:
    (tmp_path / "engine").mkdir()
    (tmp_path / "engine" / "train.py").write_text(TRAIN_SOURCE)
    return tmp_path


def test_mutate_agent_edits_the_train_file_named_in_the_prompt(worktree):
    prompt = build_prompt("Do one thing.", "climbmix", rows=[], parent_id=0, in_flight=[])
    first = make_agent("mutate", seed=3).propose(worktree, prompt, timeout=10)
    assert first.error is None and first.tokens == 0
    assert (worktree / "engine" / "train.py").read_text() != TRAIN_SOURCE
    assert " -> " in first.description and first.description in first.transcript
    # Same seed, same parent: the same proposal.
    (worktree / "engine" / "train.py").write_text(TRAIN_SOURCE)
    assert make_agent("mutate", seed=3).propose(worktree, prompt, timeout=10).description == first.description


def test_mutate_agent_reports_a_missing_train_file_as_its_error(tmp_path):
    proposal = make_agent("mutate", train_file="engine/train.py").propose(tmp_path, "", timeout=10)
    assert proposal.error and "engine/train.py" in proposal.error


@pytest.mark.parametrize("spec", ["bogus", "openai:", "command:", "", "claude:extra"])
def test_unknown_spec_lists_the_valid_ones(spec):
    with pytest.raises(AgentSpecError) as info:
        make_agent(spec)
    message = str(info.value)
    assert "\n" not in message and "mutate" in message and "openai:MODEL" in message


def test_unknown_option_is_refused_and_inapplicable_options_are_ignored():
    with pytest.raises(AgentSpecError, match="colour"):
        make_agent("mutate", colour="red")
    assert make_agent("mutate", base_url="http://x", model=None).spec == "mutate"


def test_cli_agent_without_its_program_names_the_install(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    for spec, install in (("claude", "npm i -g @anthropic-ai/claude-code"), ("codex", "npm i -g @openai/codex")):
        with pytest.raises(AgentSpecError) as info:
            make_agent(spec)
        message = str(info.value)
        assert "\n" not in message and spec in message and install in message
    with pytest.raises(AgentSpecError, match="aider"):
        make_agent("command:aider --yes {prompt_file}")


def test_openai_agent_needs_a_key_for_the_default_server(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(AgentSpecError, match="OPENAI_API_KEY"):
        make_agent("openai:gpt-test")
    assert make_agent("openai:local", base_url="http://127.0.0.1:1/v1").spec == "openai:local"


def test_make_agent_errors_are_single_lines_in_a_subprocess():
    """The spec error is what the CLI prints: one line, no traceback (checked through Python)."""
    code = ("from population.agents import make_agent, AgentSpecError\n"
            "try:\n    make_agent('nope')\nexcept AgentSpecError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1]).stdout
    assert out.count("\n") == 1 and out.startswith("unknown agent spec 'nope'")
