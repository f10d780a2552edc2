"""What the console says about results and the policy's decisions: the PopulationState read into the
console's line formatters (population/console.py). Pure: the driver prints what these return."""
from __future__ import annotations

from population.config import RUN_SETTINGS, shown
from population.console import champion_line, experiment_line, holdout_warning, noise_line
from population.flight import Flight
from population.policy import ENDGAME_GATE, SEED_MEMBER, Cull, Drop, Endgame, NoiseMeasured, Promote, Queue
from population.selection import holdout_lags
from population.state import PopulationState


def decision_lines(decision, event: dict, state: PopulationState, metric: str, lower_is_better: bool,
                   posterior: bool) -> list[str]:
    """The lines a decision (already applied to `state`; `event` as journaled) prints; often none."""
    if isinstance(decision, Promote):
        return promotion_lines(decision, event, state, metric, lower_is_better, posterior)
    if isinstance(decision, Cull):
        return [f"culled {decision.member} ({decision.rule})"]
    if isinstance(decision, NoiseMeasured):
        return [noise_line(metric=metric, std=decision.std, runs=decision.runs, commits=decision.commits,
                           previous=decision.previous, mean=state.members[SEED_MEMBER].mean)]
    if isinstance(decision, Queue) and decision.work.kind == "rerun" and not decision.work.attempts:
        return [f"{decision.work.member} {decision.reason}: re-run on seed {decision.work.seed}"]
    if isinstance(decision, Queue) and decision.work.kind == "baseline" and decision.reason != "the noise phase":
        return [f"noise: {decision.reason}"]
    if isinstance(decision, Drop):
        return [f"e{decision.exp_id:04d} {decision.reason}"]
    if isinstance(decision, Endgame):
        return [endgame_line(decision)]
    return []


def endgame_line(decision: Endgame) -> str:
    spread = "too few edits to tell" if decision.spread is None else f"{decision.spread:.1f} noise std"
    if decision.on:
        return (f"endgame: the edits spread {spread} (under {ENDGAME_GATE:g}), so the last {decision.window} of "
                f"{decision.max_experiments} experiments re-run the best members, then the probable best is champion")
    return f"endgame off: the edits spread {spread}, the best stand out; children to the end"


def promotion_lines(decision: Promote, event: dict, state: PopulationState, metric: str, lower_is_better: bool,
                    posterior: bool) -> list[str]:
    """The new champion, with the posterior's estimate of it when posterior selection chose it, and
    a warning when its gain on the validation rows is not borne out on the holdout rows."""
    member, previous, model = decision.member, decision.previous, state.posterior
    estimate = likely = None
    if posterior and previous and member in model and previous in model:
        estimate = state.estimate(member) * (1 if lower_is_better else -1)
        likely = model.prob_better(member, previous)
    lines = [champion_line(member=member, metric=metric, mean=state.members[member].mean, previous=previous,
                           estimate=estimate, likely=likely)]
    if "val_gain" in event and holdout_lags(event["val_gain"], event["holdout_gain"], state.noise_std):
        lines.append(holdout_warning(member=member, val_gain=event["val_gain"], holdout_gain=event["holdout_gain"]))
    return lines


def result_line(flight: Flight, row: dict, state: PopulationState, metric: str) -> str:
    """An experiment's line once its result is recorded: its value against the champion's mean."""
    member = state.members.get(flight.member)
    champion = state.champion_member()
    description = ""
    if flight.kind == "child":
        retrained = f" (e{flight.work.retrains:04d}'s commit, trained again)" if flight.work.commit else ""
        description = row.get("description", "") + retrained
    return experiment_line(exp_id=flight.exp_id, kind=flight.kind, member=flight.member, parent=flight.parent,
                           worker=flight.worker, status=row["status"], metric=metric, value=row.get(metric),
                           best=champion.mean if champion else None, mean=member.mean if member else None,
                           description=description, reason=row.get("reason", ""))


def lost_line(flight: Flight, why: str, queued: Queue | None) -> str:
    """A lost experiment, and what becomes of its work (a child's: its own commit again, or a new proposal)."""
    plan = ""
    if queued is not None:
        plan = "; queued again" + (" " + queued.reason.removeprefix(f"e{flight.exp_id:04d} lost ")
                                   if flight.work.kind == "child" else "")
    return f"e{flight.exp_id:04d} lost ({why}){plan}"


def limit_reached_line(max_experiments: int, counted: int) -> str:
    """A resumed run that is at its --max-experiments already."""
    return (f"--max-experiments {max_experiments} is reached already: the run counts {counted} experiments, "
            "so nothing new starts; pass a larger --max-experiments to go on")


def settings_lines(changes: dict[str, list], state: PopulationState, population_size: int) -> list[str]:
    """--resume --set: what changed from now on, and how a smaller population shrinks."""
    said = [f"{RUN_SETTINGS[name]} {shown(old)} -> {shown(new)}" for name, (old, new) in changes.items()]
    lines = ["settings changed from now on: " + ", ".join(said)]
    floor = state.population_floor
    if floor is not None:
        lines.append(f"the population shrinks to {population_size} by one member per result ({floor - population_size} "
                     "over it now; the champion and members awaiting confirmation are kept)")
    return lines
