"""The live console view: one line per event and a status line every minute (pure formatting,
plus a tiny writer that stamps the time)."""
from __future__ import annotations

import math
import re
import sys
import time
from typing import TextIO

_DESCRIPTION_CHARS = 80


def _value(value) -> str:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return "n/a"
    return "n/a" if math.isnan(value) else f"{value:.4f}"


def _short(text: str, limit: int = _DESCRIPTION_CHARS) -> str:
    text = " ".join(str(text or "").split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def elided(text: str, limit: int = 100) -> str:
    """One line of at most `limit` characters, its middle cut: an error's end says what happened
    (`... [Errno 111] Connection refused`), its start where."""
    text = " ".join(str(text or "").split())
    if len(text) <= limit:
        return text
    head = (limit - 5) * 3 // 5
    return f"{text[:head]} ... {text[len(text) - (limit - 5 - head):]}"


def experiment_line(*, exp_id: int, kind: str, member: str, parent: str | None, worker: str, status: str,
                    metric: str, value, best, mean=None, description: str = "", reason: str = "") -> str:
    """`e0012 m0007<-m0003 w2 ok val_bpb 0.9921 (champion 0.9903) 'raise MATRIX_LR to 0.05'`: `best`
    is the champion's mean (the member the policy promoted, not the lowest value seen)."""
    who = f"{member}<-{parent}" if kind == "child" and parent else f"{member} {kind}"
    line = f"e{exp_id:04d} {who} {worker} {status}"
    if status == "ok":
        extra = [f"mean {_value(mean)}"] if kind == "rerun" and mean is not None else []
        if best is not None:
            extra.append(f"champion {_value(best)}")
        line += f" {metric} {_value(value)}" + (f" ({', '.join(extra)})" if extra else "")
    elif reason:
        line += f" [{elided(reason_headline(reason), 120)}]"
    if description:
        line += f" '{_short(description)}'"
    return line


# nanobind's report at interpreter exit (triton's bindings, in every training that imports torch's
# compiler): ~30 lines, each of exactly one of these shapes, after the training's own output.
_LEAK_REPORT = re.compile(r"^(nanobind: leaked \d+ (instances|types|functions|keep_alive records)!"
                          r"| - leaked (instance|type|function) .*| - \.\.\. skipped remainder"
                          r"|nanobind: this is likely caused by a reference counting issue in the binding code\."
                          r"|See https://nanobind\.readthedocs\.io/en/latest/refleaks\.html)$")


_LEFT_OUT = "lines of nanobind's leak report at exit left out]"


def drop_leak_report(text: str) -> str:
    """`text` (a run.log, a failure's reason) without nanobind's leak report at exit, one line saying
    how many lines were left out; every other line as it was (an error never matches its shapes)."""
    lines = text.split("\n")
    kept = [line for line in lines if not _LEAK_REPORT.match(line)]
    dropped = len(lines) - len(kept)
    if not dropped:
        return text
    return "\n".join(kept).rstrip("\n") + f"\n[{dropped} {_LEFT_OUT}\n"


def duration(seconds: float) -> str:
    """`45 s`, `12 min`: how long, in the unit a person reads."""
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


def reason_headline(reason: str) -> str:
    """The line of a failure's reason worth one line: a broken rule's own sentence when it names
    one ("causality rule: ..."), else the last line of the log tail (often the file's own advice)."""
    lines = [part.strip() for part in str(reason).strip().splitlines()
             if part.strip() and not _LEAK_REPORT.match(part) and not part.endswith(_LEFT_OUT)]
    if not lines:
        return str(reason)
    return lines[0] if " rule: " in f" {lines[0]}" else lines[-1]


def status_line(*, finished: int, ok: int, in_flight: int, training: int, workers: int, alive: int,
                champion: str | None, metric: str, best, elapsed_s: float, max_experiments: int | None,
                waiting_for_gpu: int | None = None, stalled: int = 0) -> str:
    """The minute's status. `training`: trainings that hold a GPU now; `waiting_for_gpu`: trainings
    submitted but queued for a GPU (the one-GPU fallback queues all but one). Without
    `waiting_for_gpu` the line reads "{training}/{workers} training", as before the split. `best`:
    the champion's mean. A run resumed past --max-experiments says so instead of `16/5`."""
    total = f"/{max_experiments}" if max_experiments and finished <= max_experiments else ""
    past = f" (past --max-experiments {max_experiments})" if max_experiments and finished > max_experiments else ""
    best_text = f"{champion} {metric} {_value(best)}" if champion else "none yet"
    hours, rest = divmod(int(elapsed_s), 3600)
    if waiting_for_gpu is None:
        gpus = f"{training}/{workers} training"
    else:
        gpus = f"{training} training, {waiting_for_gpu} waiting for a GPU ({workers} worker{'s' if workers != 1 else ''})"
    quiet = f" ({stalled} stalled)" if stalled else ""
    return (f"status: {finished}{total} finished{past} ({ok} ok), {in_flight} in flight{quiet}, "
            f"{gpus}, {alive} alive, champion {best_text}, "
            f"elapsed {hours:d}:{rest // 60:02d}:{rest % 60:02d}")


class Console:
    """Writes stamped lines to a stream (stdout by default); silent when `out` is None."""

    def __init__(self, out: TextIO | None = sys.stdout, clock=time.time):
        self.out = out
        self.clock = clock

    def line(self, text: str) -> None:
        if self.out is None:
            return
        stamp = time.strftime("%H:%M:%S", time.localtime(self.clock()))
        print(f"[{stamp}] {text}", file=self.out, flush=True)

    def error(self, text: str) -> None:
        print(f"population: error: {text}", file=sys.stderr, flush=True)


def champion_line(*, member: str, metric: str, mean: float, previous: str | None = None,
                  estimate: float | None = None, likely: float | None = None) -> str:
    """`champion: m0007 val_bpb 0.990100 (was m0003, estimate 0.990300, 97% likely better than m0003)`."""
    why = f", estimate {estimate:.6f}, {likely:.0%} likely better than {previous}" if likely is not None else ""
    return f"champion: {member} {metric} {mean:.6f}" + (f" (was {previous}{why})" if previous else "")


def holdout_warning(*, member: str, val_gain: float, holdout_gain: float) -> str:
    return (f"warning: champion {member} gains {val_gain:.6f} over the seed on the validation rows but "
            f"{holdout_gain:.6f} on the hidden holdout: possibly selected for the validation set rather than better")


def noise_line(*, metric: str, std: float, runs: int, commits: int, previous: float | None = None,
               mean: float | None = None) -> str:
    """`noise: val_bpb std 0.000412 from 3 runs of 1 commit, mean 0.998000` (or `(was ...)` when refined)."""
    tail_text = f" (was {previous:.6f})" if previous is not None else f", mean {mean:.6f}" if mean is not None else ""
    return f"noise: {metric} std {std:.6f} from {runs} runs of {commits} commit{'s' if commits != 1 else ''}{tail_text}"


def run_line(*, tag: str, task: str, workers: int, agents: list[str], budget_s: float, device: str, sandbox: bool,
             store, default_budget: bool = False) -> str:
    """The run's first line; `default_budget`: the budget is the device's default, said so."""
    budget = f"budget {budget_s:g} s" + (f" (the {device.upper()} default; --budget to change)" if default_budget else "")
    return (f"run {tag}: task {task}, {workers} worker{'s' if workers != 1 else ''} ({', '.join(sorted(set(agents)))}), "
            f"{budget}, device {device}, "
            f"{'sandboxed' if sandbox else 'NOT sandboxed (--no-sandbox)'}, store {store}")
