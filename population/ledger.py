"""What a run spent, per experiment, per agent backend and in all (pure: lineage rows in, figures out).

Agent tokens, dollars and seconds are what each agent reported (Claude Code's JSON gives dollars;
Codex gives tokens only; the mutator spends nothing). GPU-hours are the GPU held by an experiment:
its training's wall seconds and its trusted evaluation's. Per backend (the agent spec): how many
children, how many ok ("keep rate"), how many crashed, and the best gain over the seed its
children reached, per dollar and per GPU-hour. `cap_reached` tells the driver when a spending cap
(`--max-cost`, `--max-gpu-hours`) stops new proposals.
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

CRASHED = ("crash", "timeout")


def _number(value) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and \
        math.isfinite(value) else 0.0


def gpu_hours(row: dict) -> float:
    """The GPU an experiment held: its training and its evaluation (0 for one never trained)."""
    return (_number(row.get("train_seconds")) + _number(row.get("eval_seconds"))) / 3600.0


def agent_cost(row: dict) -> float:
    """The dollars its agent reported (0 when none: the mutator, Codex)."""
    return _number(row.get("agent_cost_usd"))


@dataclass
class Spend:
    experiments: int = 0
    ok: int = 0
    crashed: int = 0
    agent_tokens: int = 0
    agent_cost_usd: float = 0.0
    agent_seconds: float = 0.0
    gpu_hours: float = 0.0
    best_gain: float | None = None          # the best gain over the seed of a child (positive is better)
    values: list[float] = field(default_factory=list, repr=False)

    def add(self, row: dict, metric: str) -> None:
        self.experiments += 1
        self.ok += row.get("status") == "ok"
        self.crashed += row.get("status") in CRASHED
        self.agent_tokens += int(_number(row.get("agent_tokens")))
        self.agent_cost_usd += agent_cost(row)
        self.agent_seconds += _number(row.get("agent_seconds"))
        self.gpu_hours += gpu_hours(row)
        if row.get("status") == "ok" and isinstance(row.get(metric), (int, float)):
            self.values.append(float(row[metric]))

    @property
    def keep_rate(self) -> float | None:
        return self.ok / self.experiments if self.experiments else None

    @property
    def crash_rate(self) -> float | None:
        return self.crashed / self.experiments if self.experiments else None

    def gain_per(self, spent: float) -> float | None:
        return self.best_gain / spent if self.best_gain is not None and spent > 0 else None


def ledger(rows: Iterable[dict], metric: str, lower_is_better: bool = True) -> tuple[Spend, dict[str, Spend]]:
    """(the whole run, per agent backend of its children). The seed's mean is the reference of gains."""
    rows = list(rows)
    total, by_backend = Spend(), {}
    seed = [float(r[metric]) for r in rows if r.get("member") == "m0000" and r.get("status") == "ok"
            and isinstance(r.get(metric), (int, float))]
    for row in rows:
        total.add(row, metric)
        if row.get("kind") == "child":
            by_backend.setdefault(str(row.get("agent") or "?"), Spend()).add(row, metric)
    if seed:
        reference = sum(seed) / len(seed)
        sign = 1.0 if lower_is_better else -1.0
        for spend in [total, *by_backend.values()]:
            if spend.values:
                spend.best_gain = max(sign * (reference - value) for value in spend.values)
    return total, by_backend


def cap_reached(cost_usd: float, used_gpu_hours: float, max_cost_usd: float | None,
                max_gpu_hours: float | None) -> str | None:
    """Why no new proposal may start (one line naming the cap), or None."""
    if max_cost_usd is not None and cost_usd >= max_cost_usd:
        return f"the --max-cost cap of ${max_cost_usd:g} is reached (${cost_usd:.2f} spent on agents)"
    if max_gpu_hours is not None and used_gpu_hours >= max_gpu_hours:
        return f"the --max-gpu-hours cap of {max_gpu_hours:g} is reached ({used_gpu_hours:.2f} GPU-hours used)"
    return None
