"""The spend ledger (population/ledger.py): per run and per agent backend, and the caps."""
from __future__ import annotations

import pytest

from population.ledger import cap_reached, gpu_hours, ledger


def row(i, kind, agent, status, value=None, cost=None, tokens=None, train=0.0, evaluation=0.0, member=None):
    return {"id": i, "kind": kind, "agent": agent, "status": status, "val_bpb": value, "agent_cost_usd": cost,
            "agent_tokens": tokens, "agent_seconds": 10.0 if kind == "child" else None, "train_seconds": train,
            "eval_seconds": evaluation, "member": member or f"m{i:04d}"}


ROWS = [row(0, "baseline", "none", "ok", 1.00, train=3300, evaluation=300, member="m0000"),
        row(1, "baseline", "none", "ok", 1.02, train=3300, evaluation=300, member="m0000"),
        row(2, "child", "claude", "ok", 0.99, cost=0.50, tokens=1000, train=3300, evaluation=300),
        row(3, "child", "claude", "crash", cost=0.25, tokens=500, train=36),
        row(4, "child", "codex", "ok", 1.005, tokens=2000, train=3300, evaluation=300),
        row(5, "child", "codex", "agent_error", tokens=100)]


def test_the_run_and_each_backend_add_up_what_was_spent():
    total, by = ledger(ROWS, "val_bpb")
    assert total.experiments == 6 and total.agent_cost_usd == pytest.approx(0.75) and total.agent_tokens == 3600
    assert total.gpu_hours == pytest.approx(4 * 1.0 + 36 / 3600)
    claude, codex = by["claude"], by["codex"]
    assert (claude.experiments, claude.keep_rate, claude.crash_rate) == (2, 0.5, 0.5)
    assert claude.best_gain == pytest.approx(0.02) and claude.gain_per(claude.agent_cost_usd) == pytest.approx(0.02 / 0.75)
    assert codex.best_gain == pytest.approx(0.005) and codex.gain_per(codex.agent_cost_usd) is None   # no price
    assert codex.gain_per(codex.gpu_hours) == pytest.approx(0.005)
    assert gpu_hours(ROWS[5]) == 0.0


def test_a_cap_stops_new_proposals_with_one_line_naming_it():
    total, _ = ledger(ROWS, "val_bpb")
    spent = (total.agent_cost_usd, total.gpu_hours)
    assert cap_reached(*spent, None, None) is None and cap_reached(*spent, 1.0, 10.0) is None
    assert "--max-cost cap of $0.5" in cap_reached(*spent, 0.5, None)
    assert "--max-gpu-hours cap of 4" in cap_reached(*spent, None, 4.0)


def test_the_state_keeps_the_runs_spend_as_results_arrive():
    from population.state import PopulationState

    state = PopulationState("val_bpb")
    for r in ROWS:
        state.apply({"type": "experiment_started", "id": r["id"], "kind": r["kind"], "member": r["member"],
                     "parent_id": None if r["kind"] == "baseline" else 0})
        state.apply({"type": "experiment_finished", "id": r["id"], "row": r})
    total, _ = ledger(ROWS, "val_bpb")
    assert state.agent_cost_usd == pytest.approx(total.agent_cost_usd)
    assert state.gpu_hours == pytest.approx(total.gpu_hours)
