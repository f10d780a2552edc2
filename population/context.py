"""The prompt an agent gets: program.md, the task, and what the population has learnt so far.

Pure: lineage rows and in-flight records in, one bounded markdown string out. When the context
is too long, the oldest entries of the longest section go first; program.md, the task and the
parent itself are never cut.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

from prepare.tasks import Task, get_task

DEFAULT_MAX_CHARS = 24_000
TRAIN_FILE_LINE = "The one file you may edit: `{train_file}`"
_TRAIN_FILE_PATTERN = re.compile(r"The one file you may edit: `([^`]+)`")
_MAX_BEST = 5
_MAX_FAILURES = 8
IN_FLIGHT_SHOWN = 8                # the newest in-flight experiments a prompt lists
_ERROR_TAIL_LINES = 6
_ERROR_TAIL_CHARS = 500
_DESCRIPTION_CHARS = 200


def train_file_in_prompt(prompt: str) -> str | None:
    """The train file a prompt from build_prompt names (for agents that need the path itself)."""
    match = _TRAIN_FILE_PATTERN.search(prompt)
    return match.group(1) if match else None


def fill_program(program_md: str, task: Task) -> str:
    """Replace program.md's placeholders: {metric}, {direction}, {train_file}, {task}."""
    values = {"metric": task.metric, "direction": "lower" if task.lower_is_better else "higher",
              "train_file": task.train_file, "task": task.name}
    for name, value in values.items():
        program_md = program_md.replace("{" + name + "}", value)
    return program_md


@dataclass
class _Section:
    title: str
    items: list[str]
    drop_from_front: bool = True    # which end holds the least useful entries
    keep: int = 0                   # entries that are never dropped (at the other end)
    dropped: int = 0
    empty_note: str = ""

    def droppable(self) -> bool:
        return len(self.items) > self.keep

    def drop_one(self) -> None:
        self.items.pop(0 if self.drop_from_front else -1)
        self.dropped += 1

    def render(self) -> str:
        if not self.items and not self.dropped and not self.empty_note:
            return ""
        body = list(self.items) or ([self.empty_note] if not self.dropped else [])
        if self.dropped:
            note = f"- ({self.dropped} {'older' if self.drop_from_front else 'more'} entries omitted)"
            body = [note] + body if self.drop_from_front else body + [note]
        return f"## {self.title}\n\n" + "\n".join(body) + "\n"


def build_prompt(program_md: str, task: Task | str, rows: list[dict], parent_id: int,
                 in_flight: list[dict], max_chars: int = DEFAULT_MAX_CHARS) -> str:
    task = get_task(task) if isinstance(task, str) else task
    by_id = {int(row["id"]): row for row in rows if _number(row.get("id")) is not None}
    fixed = fill_program(program_md, task).rstrip() + "\n\n" + _task_section(task, by_id, parent_id, rows)
    sections = [
        _Section("Lineage of your parent (oldest first)", _lineage_items(task, by_id, parent_id),
                 drop_from_front=True, keep=1),
        _Section("Best living members", _best_items(task, rows), drop_from_front=False,
                 empty_note="- (none yet)"),
        _Section("Recent failures (newest last)", _failure_items(rows), drop_from_front=True,
                 empty_note="- (none)"),
        _Section("Being tried right now by other workers", _in_flight_items(in_flight),
                 drop_from_front=True, empty_note="- (nothing else in flight)"),
    ]

    def render() -> str:
        parts = [fixed] + [s.render() for s in sections]
        return "\n".join(part for part in parts if part)

    text = render()
    while len(text) > max_chars:
        candidates = [s for s in sections if s.droppable()]
        if not candidates:
            break
        max(candidates, key=lambda s: sum(map(len, s.items))).drop_one()
        text = render()
    return text


# ---------------------------------------------------------------- sections

def _task_section(task: Task, by_id: dict[int, dict], parent_id: int, rows: list[dict]) -> str:
    direction = "lower" if task.lower_is_better else "higher"
    parent = by_id.get(parent_id)
    if parent is None:
        parent_line = f"experiment #{parent_id}"
    else:
        runs = sum(1 for r in rows if r.get("member") == parent.get("member") and r.get("status") == "ok")
        parent_line = (f"experiment #{parent_id} (member {parent.get('member')}), "
                       f"{task.metric} {_format_metric(_metric(task, parent))}"
                       f" (mean of {runs} run{'s' if runs != 1 else ''})"
                       f": {_quote(parent.get('description'))}")
    return (
        "## This experiment\n\n"
        f"- Task: {task.name}: {task.description}\n"
        f"- Metric: `{task.metric}`, {direction} is better\n"
        f"- {TRAIN_FILE_LINE.format(train_file=task.train_file)}\n"
        f"- Your parent (the code in your worktree): {parent_line}\n"
    )


def _lineage_items(task: Task, by_id: dict[int, dict], parent_id: int) -> list[str]:
    chain, seen, current = [], set(), parent_id
    while current is not None and current in by_id and current not in seen:
        seen.add(current)
        chain.append(by_id[current])
        current = _int_or_none(by_id[current].get("parent_id"))
    return [f"- #{row['id']} {row.get('member')}: {task.metric} {_format_metric(_metric(task, row))}, "
            f"{_quote(row.get('description'))}" for row in reversed(chain)]


def _best_items(task: Task, rows: list[dict]) -> list[str]:
    firsts = [r for r in rows if r.get("kind") in ("baseline", "child") and r.get("status") == "ok"
              and bool(r.get("alive")) and _metric(task, r) is not None]
    firsts.sort(key=lambda r: _metric(task, r) * (1 if task.lower_is_better else -1))
    items = []
    for row in firsts[:_MAX_BEST]:
        crown = " (champion)" if row.get("champion") else ""
        items.append(f"- {row.get('member')}{crown} (#{row['id']}, generation {_int_or_none(row.get('generation'))}): "
                     f"{task.metric} {_format_metric(_metric(task, row))}, {_quote(row.get('description'))}")
    return items


def _failure_items(rows: list[dict]) -> list[str]:
    failures = [r for r in rows if r.get("status") not in (None, "ok", "lost")]
    failures.sort(key=lambda r: int(r["id"]))
    items = []
    for row in failures[-_MAX_FAILURES:]:
        item = f"- #{row['id']} {row.get('status')}: {_quote(row.get('description'))}"
        reason = _error_tail(row.get("reason"))
        if reason:
            item += "\n" + "\n".join("    " + line for line in reason.splitlines())
        items.append(item)
    return items


def _in_flight_items(in_flight: list[dict]) -> list[str]:
    items = []
    for record in in_flight[-IN_FLIGHT_SHOWN:]:
        who = record.get("worker") or "a worker"
        parent = _int_or_none(record.get("parent_id"))
        on = f"from parent #{parent}" if parent is not None else f"({record.get('kind', 'baseline')})"
        what = _quote(record.get("description")) if record.get("description") else "(still being written)"
        items.append(f"- {who} {on}: {what}")
    return items


# ---------------------------------------------------------------- values

def _metric(task: Task, row: dict) -> float | None:
    mean = _number(row.get("metric_mean"))
    return mean if mean is not None else _number(row.get(task.metric))


def _number(value) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


def _int_or_none(value) -> int | None:
    number = _number(value)
    return None if number is None else int(number)


def _format_metric(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.6f}"


def _quote(text) -> str:
    if not isinstance(text, str) or not text.strip():
        return "(no description)"
    text = " ".join(text.split())
    return '"' + (text if len(text) <= _DESCRIPTION_CHARS else text[:_DESCRIPTION_CHARS] + "...") + '"'


def _error_tail(reason) -> str:
    if not isinstance(reason, str) or not reason.strip():
        return ""
    tail = "\n".join(reason.strip().splitlines()[-_ERROR_TAIL_LINES:])
    return tail if len(tail) <= _ERROR_TAIL_CHARS else "..." + tail[-_ERROR_TAIL_CHARS:]
