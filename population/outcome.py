"""A training's outcome, and the rows and files it leaves in the store (pure: no Ray, git or files).

What the trusted evaluation makes of a training: its status (ok, crash, timeout, violation), the
figures the lineage records, the budget rule against the seed's runs, and a champion's gains over
the seed on the validation rows and on the hidden holdout. The driver does the I/O around these.
"""
from __future__ import annotations

import math
from pathlib import Path

from population import budget
from population.config import RunConfig
from population.console import drop_leak_report, reason_headline
from population.policy import SEED_MEMBER
from population.state import PopulationState, holdout_column
from population.summary import parse_summary, tail
from population.training import EVAL_HEADER, TrainResult, evaluation_files
from prepare.tasks import Task

LOG_TAIL_LINES = 40
REPORT_TOLERANCE = 0.01        # a file's own claim better than the evaluator's figure by more: a violation


def training_outcome(result: TrainResult, task: Task, timeout_s: float) -> tuple[str, str, dict]:
    """(status, reason, figures) of one training: ok, crash, timeout or violation. The metric and
    the holdout are the trusted evaluator's; what the file printed is information
    (`reported_<metric>` and its other summary figures)."""
    summary = parse_summary(result.log, task.summary_keys)
    figures = {k: v for k, v in summary.items() if k != task.metric}
    figures["reported_" + task.metric] = summary.get(task.metric)
    figures["busy_seconds"] = result.busy_seconds
    log_tail = tail(result.log, LOG_TAIL_LINES)
    if result.timed_out:
        return "timeout", f"killed at the {timeout_s:g} s wall-clock limit\n{log_tail}", figures
    if result.returncode != 0:
        broken = confinement_rule(result.log, task)
        if broken:
            return "violation", f"{broken}\nexit code {result.returncode}\n{log_tail}", figures
        return "crash", f"exit code {result.returncode}\n{log_tail}", figures
    verdict = result.evaluation or {"error": "the training was not scored", "rule": "crash"}
    if "error" in verdict:
        return verdict.get("rule", "crash"), f"{verdict['error']}\n{log_tail}", figures
    value = verdict.get("metric")
    figures.update({task.metric: value, holdout_column(task.metric): verdict.get("holdout"),
                    "eval_seconds": verdict.get("wall_seconds")})
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return "crash", f"the evaluator gave no finite {task.metric}", figures
    claimed = figures["reported_" + task.metric]
    if claimed is not None and math.isfinite(claimed) and task.better(claimed, value) and \
            abs(claimed - value) > REPORT_TOLERANCE * abs(value):
        figures[task.metric] = figures[holdout_column(task.metric)] = None
        return "violation", (f"report rule: the file claims {task.metric} {claimed:.6f}, the evaluator measured "
                             f"{value:.6f}; under the harness a train file prints no metric of its own"), figures
    return "ok", "", figures


def confinement_rule(log: str, task: Task) -> str | None:
    """Why a training that failed broke a rule, when its log shows it: it reached for the data only
    the evaluator reads (hidden from it), or tried to write where it may not (read-only)."""
    for name in (path.name for path in evaluation_files(task.name, Path("/"))):
        if name in log:
            return f"data rule: the training reached for {name}, which only the evaluator reads"
    if "Read-only file system" in log:
        return "confinement rule: the training tried to write outside its output directory"
    return None


def judged(result: TrainResult, task: Task, config: RunConfig, state: PopulationState,
           member: str) -> tuple[str, str, dict]:
    """training_outcome, then the budget rule for anything but the seed; a rule breaker's score is
    no figure of the run (the reason says why)."""
    status, reason, figures = training_outcome(result, task, config.train_timeout_s)
    if status == "ok" and member != SEED_MEMBER:
        reason = budget_violation(result, figures, config, state) or ""
        status = "violation" if reason else status
    if status != "ok":
        figures[task.metric] = figures[holdout_column(task.metric)] = None
    return status, reason, figures


def where_it_trained(result: TrainResult) -> dict:
    """The lineage row's columns of where and when the training ran."""
    return {"gpu": result.gpu, "node": result.node, "train_seconds": result.seconds,
            "cuda_visible_devices": result.cuda_visible_devices, "node_id": result.extra.get("node_id", ""),
            "train_started_at": result.started_at}


def experiment_log(result: TrainResult) -> str:
    """run.log: the training's log, then the trusted evaluation's, each without its leak report."""
    log = drop_leak_report(result.log)
    return f"{log}\n{EVAL_HEADER}\n{drop_leak_report(result.eval_log)}" if result.evaluation is not None else log


def budget_violation(result: TrainResult, figures: dict, config: RunConfig, state: PopulationState) -> str | None:
    """The budget rule (population/budget.py) against the seed's own runs so far."""
    seed_rows = _ok_rows(state, SEED_MEMBER)
    budget_s = config.budget_s
    return budget.budget_violation(
        budget_s, result.seconds, figures.get("training_seconds"), result.busy_seconds,
        budget.excess((r.get("train_seconds") for r in seed_rows), budget_s),
        budget.excess((r.get("busy_seconds") for r in seed_rows), budget_s),
        config.overhead_allowance_s)


def gains_over_seed(state: PopulationState, member: str) -> dict:
    """The member's gain over the seed on the validation rows and on the hidden holdout (means
    of their ok runs, positive is better), when both have both; {} otherwise."""
    metric, holdout = state.metric, holdout_column(state.metric)
    sign = 1 if state.lower_is_better else -1

    def means(name: str) -> tuple[float, float] | None:
        pairs = [(r[metric], r[holdout]) for r in _ok_rows(state, name)
                 if isinstance(r.get(metric), (int, float)) and isinstance(r.get(holdout), (int, float))]
        return (sum(v for v, _ in pairs) / len(pairs), sum(h for _, h in pairs) / len(pairs)) if pairs else None

    seed, child = means(SEED_MEMBER), means(member)
    if seed is None or child is None:
        return {}
    return {"val_gain": sign * (seed[0] - child[0]), "holdout_gain": sign * (seed[1] - child[1])}


def _ok_rows(state: PopulationState, member: str) -> list[dict]:
    return [state.experiments[i].row for i in state.experiment_ids(member)
            if state.experiments[i].row.get("status") == "ok"]


def duplicate_reason(train_file: str, blob: str | None, parent_blob: str | None, parent: str | None,
                     twin: str | None) -> str | None:
    """Why a child's train file is no new experiment: identical to its parent's or to a member's."""
    if blob == parent_blob:
        return f"{train_file} is identical to its parent's ({parent})"
    if twin is not None:
        return f"{train_file} is identical to {twin}'s"
    return None


def last_baseline_error(state: PopulationState) -> str:
    """The headline of the latest baseline's failure: the rule it broke, else the last line of its
    log (often the train file's own advice)."""
    runs = [state.experiments[i] for i in state.experiment_ids(SEED_MEMBER) if state.experiments[i].phase == "finished"]
    reason = str(runs[-1].row.get("reason") or "") if runs else ""
    return reason_headline(reason) if reason.strip() else "no log"


def train_env(config: RunConfig, seed: int, source: dict[str, str]) -> dict[str, str]:
    """AUTORESEARCH_* for a training: the run's uniform budget, the seed, CPU mode, and the user's
    own AUTORESEARCH_* settings (cache, eval tokens) from the driver's environment."""
    env = {name: value for name, value in source.items()
           if name.startswith("AUTORESEARCH_") and name != "AUTORESEARCH_WORKDIR"}
    env["AUTORESEARCH_TIME_BUDGET"] = f"{config.budget_s:g}"
    env["AUTORESEARCH_SEED"] = str(seed)
    if config.device == "cpu":
        env["AUTORESEARCH_SMOKE"] = "1"
        env["AUTORESEARCH_DEVICE"] = "cpu"
    return env
