"""The built-in `openai:MODEL` agent against a real chat-completions server on loopback."""
from __future__ import annotations

import time
from pathlib import Path

import pytest

from population.agents import make_agent, openai_agent
from population.agents.openai_agent import EditError, apply_edits, parse_edits
from population.context import build_prompt
from chat_stub import ChatServer, scripted

TRAIN = "import math\n\nLR = 0.04\nDEPTH = 8\n\n\ndef main():\n    return LR * DEPTH\n"
PLANTED_KEY = "sk-test-PLANTED-0123456789abcdef"


def block(search: str, replace: str) -> str:
    return f"<<<<<<< SEARCH\n{search}=======\n{replace}>>>>>>> REPLACE\n"


def completion(content: str, usage: dict | None = None) -> dict:
    return {"id": "c1", "object": "chat.completion", "model": "test",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            "usage": usage or {"prompt_tokens": 120, "completion_tokens": 30, "total_tokens": 150, "cost": 0.002}}


@pytest.fixture
def serve():
    servers = []

    def start(*replies):
        server = ChatServer(scripted([(r if isinstance(r, tuple) else (200, r, 0.0)) for r in replies]))
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


@pytest.fixture
def worktree(tmp_path) -> Path:
    (tmp_path / "engine").mkdir()
    (tmp_path / "engine" / "train.py").write_text(TRAIN)
    return tmp_path


PROMPT = build_prompt("Improve {metric}.", "climbmix", rows=[], parent_id=0, in_flight=[])


def test_good_edit_is_applied_and_usage_recorded(serve, worktree, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", PLANTED_KEY)
    answer = ("Raise the LR a bit.\n```\n" + block("LR = 0.04\n", "LR = 0.05\n") + "```\n"
              "DESCRIPTION: raise LR 0.04 -> 0.05\n")
    server = serve(completion(answer))
    proposal = make_agent("openai:test-model", base_url=server.url).propose(worktree, PROMPT, timeout=20)
    assert proposal.error is None
    assert (worktree / "engine" / "train.py").read_text() == TRAIN.replace("LR = 0.04", "LR = 0.05")
    assert proposal.description == "raise LR 0.04 -> 0.05"
    assert proposal.tokens == 150 and proposal.cost_usd == pytest.approx(0.002)
    request = server.requests[0]
    assert request["path"] == "/v1/chat/completions" and request["auth"] == f"Bearer {PLANTED_KEY}"
    assert request["body"]["model"] == "test-model"
    user = request["body"]["messages"][-1]["content"]
    assert "Improve val_bpb." in user and "LR = 0.04" in user        # prompt + current train file


def test_key_echoed_by_the_server_is_scrubbed(serve, worktree):
    answer = f"I saw {PLANTED_KEY}\n" + block("DEPTH = 8\n", "DEPTH = 9\n") + f"DESCRIPTION: depth 9 {PLANTED_KEY}\n"
    server = serve(completion(answer))
    agent = make_agent("openai:m", base_url=server.url, api_key=PLANTED_KEY)
    proposal = agent.propose(worktree, PROMPT, timeout=20)
    assert proposal.error is None and "DEPTH = 9" in (worktree / "engine" / "train.py").read_text()
    assert PLANTED_KEY not in proposal.transcript + proposal.description
    assert "[REDACTED]" in proposal.transcript


@pytest.mark.parametrize("answer, message", [
    (block("LR = 0.07\n", "LR = 0.05\n"), "edit block 1: SEARCH text not found"),
    (block("LR = 0.04\n", "LR = 0.05\nLR = 0.05\n") + block("LR = 0.05\n", "LR = 0.06\n"),
     "edit block 2: SEARCH text found 2 times"),
    (block("\n\n", "\n"), "empty SEARCH"),
    ("No edits here.\nDESCRIPTION: nothing", "no edit blocks"),
    ("<<<<<<< SEARCH\nLR = 0.04\n=======\nLR = 0.05\n", "not closed"),
    (block("def main():\n", "def main(:\n"), "does not parse"),
])
def test_broken_edits_give_a_clear_error_and_change_nothing(serve, worktree, answer, message):
    server = serve(completion(answer))
    proposal = make_agent("openai:m", base_url=server.url).propose(worktree, PROMPT, timeout=20)
    assert proposal.error is not None and message in proposal.error
    assert (worktree / "engine" / "train.py").read_text() == TRAIN      # nothing half-applied


def test_rate_limit_is_retried(serve, worktree, monkeypatch):
    monkeypatch.setattr(openai_agent, "_FIRST_RETRY_PAUSE_S", 0.01)
    good = completion(block("DEPTH = 8\n", "DEPTH = 6\n") + "DESCRIPTION: shallower")
    server = serve((429, {"error": {"message": "slow down"}}, 0.0), (200, good, 0.0))
    proposal = make_agent("openai:m", base_url=server.url).propose(worktree, PROMPT, timeout=20)
    assert proposal.error is None and len(server.requests) == 2


def test_http_error_is_recorded(serve, worktree):
    server = serve((401, {"error": {"message": "bad key"}}, 0.0))
    proposal = make_agent("openai:m", base_url=server.url).propose(worktree, PROMPT, timeout=20)
    assert proposal.error.startswith("HTTP 401") and "bad key" in proposal.error
    assert len(server.requests) == 1


def test_slow_server_is_cut_at_the_limit(serve, worktree):
    server = serve((200, completion(block("LR = 0.04\n", "LR = 1.0\n")), 5.0))
    start = time.monotonic()
    proposal = make_agent("openai:m", base_url=server.url).propose(worktree, PROMPT, timeout=1)
    assert proposal.error == "agent timed out after 1 s"
    assert time.monotonic() - start < 3
    assert (worktree / "engine" / "train.py").read_text() == TRAIN


def test_a_read_cut_by_the_deadline_reads_as_the_agent_timing_out(serve):
    """The request's own read timeout is what is left of the deadline, so it may fire before the
    join gives up: that must read as the same timeout, not as a failed request."""
    server = serve((200, completion(block("LR = 0.04\n", "LR = 1.0\n")), 5.0))
    outcome: dict = {}
    make_agent("openai:m", base_url=server.url)._post_with_retries([], 0.5, outcome)
    assert outcome == {"error": "agent timed out after 0.5 s"}


def test_edits_match_whole_lines_only():
    with pytest.raises(EditError, match="not found"):
        apply_edits("XLR = 1\n", parse_edits(block("LR = 1\n", "LR = 2\n")), "t.py")
    assert apply_edits("a = 1\nb = 2\n", parse_edits(block("b = 2\n", "")), "t.py") == "a = 1\n"
