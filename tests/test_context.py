"""build_prompt: program.md + task + lineage context, bounded without losing what matters."""
from __future__ import annotations

import math

from population.context import build_prompt, fill_program, train_file_in_prompt
from prepare.tasks import get_task

PROGRAM = "# Program\nEdit only `{train_file}`; aim for the {direction} `{metric}` on task {task}.\n"
NAN = math.nan


def row(id, member, kind="child", parent_id=None, status="ok", value=NAN, mean=None, alive=True,
        champion=False, description="", reason="", generation=1):
    return {"id": id, "kind": kind, "member": member, "parent_id": NAN if parent_id is None else parent_id,
            "status": status, "val_bpb": value, "metric_mean": value if mean is None else mean,
            "alive": alive, "champion": champion, "description": description, "reason": reason,
            "generation": generation}


ROWS = [
    row(0, "m0000", kind="baseline", value=1.0, description="baseline", generation=0),
    row(1, "m0001", parent_id=0, value=0.99, description="MATRIX_LR 0.04 -> 0.05"),
    row(2, "m0002", parent_id=1, value=0.98, mean=0.981, champion=True, description="SwiGLU MLP", generation=2),
    row(3, "m0002", kind="rerun", parent_id=1, value=0.982, champion=True, description="SwiGLU MLP", generation=2),
    row(4, "m0003", parent_id=2, status="crash", description="DEPTH 8 -> 16",
        reason="Traceback (most recent call last):\n  ...\ntorch.OutOfMemoryError: CUDA out of memory"),
    row(5, "m0004", parent_id=0, value=1.01, alive=False, description="culled idea"),
    row(6, "m0005", parent_id=2, status="lost", description="lost in a node failure"),
]
IN_FLIGHT = [{"id": 7, "worker": "w1", "parent_id": 2, "description": "rotary base 50000"},
             {"id": 8, "worker": "w2", "parent_id": 0}]


def section(text: str, title: str) -> str:
    return text.split(f"## {title}", 1)[1].split("\n## ", 1)[0]


def test_prompt_holds_program_task_lineage_best_failures_and_in_flight():
    text = build_prompt(PROGRAM, "climbmix", ROWS, parent_id=2, in_flight=IN_FLIGHT)
    assert text.startswith("# Program\nEdit only `engine/train.py`; aim for the lower `val_bpb` on task climbmix.")
    assert train_file_in_prompt(text) == "engine/train.py"
    assert "experiment #2 (member m0002), val_bpb 0.981000 (mean of 2 runs)" in text

    lineage = section(text, "Lineage of your parent")
    assert lineage.index("#0 m0000") < lineage.index("#1 m0001") < lineage.index("#2 m0002")
    assert "culled idea" not in lineage and "#4" not in lineage

    best = section(text, "Best living members")
    assert best.index("m0002 (champion)") < best.index("m0001") < best.index("m0000")
    assert "m0004" not in best and "#3" not in best                    # culled member, rerun row

    failures = section(text, "Recent failures")
    assert "#4 crash" in failures and "CUDA out of memory" in failures
    assert "lost in a node failure" not in text

    in_flight = section(text, "Being tried right now")
    assert 'w1 from parent #2: "rotary base 50000"' in in_flight
    assert "w2 from parent #0: (still being written)" in in_flight


def test_enwik8_task_names_its_metric_and_file():
    text = build_prompt(PROGRAM, get_task("enwik8"), [], parent_id=0, in_flight=[])
    assert "`val_bpc`" in text and train_file_in_prompt(text) == "engine/train_enwik8.py"
    assert "{metric}" not in text and "{train_file}" not in text
    assert "(none yet)" in text and "(nothing else in flight)" in text


def long_history(depth: int, failures: int) -> list[dict]:
    rows = [row(0, "m0000", kind="baseline", value=1.0, description="baseline", generation=0)]
    for i in range(1, depth):
        rows.append(row(i, f"m{i:04d}", parent_id=i - 1, value=1.0 - i * 1e-4, generation=i,
                        description=f"ancestor step {i} " + "x" * 150))
    for j in range(failures):
        rows.append(row(depth + j, f"f{j}", parent_id=depth - 1, status="crash", description=f"failure {j}",
                        reason="\n".join(f"error line {k} " + "y" * 100 for k in range(20))))
    return rows


def test_long_context_is_bounded_dropping_the_oldest_but_never_program_task_or_parent():
    rows = long_history(depth=200, failures=30)
    parent = 199
    text = build_prompt(PROGRAM, "climbmix", rows, parent_id=parent, in_flight=IN_FLIGHT * 10, max_chars=6000)
    assert len(text) <= 6000
    assert text.startswith(fill_program(PROGRAM, get_task("climbmix")).rstrip())
    assert train_file_in_prompt(text) == "engine/train.py"
    lineage = section(text, "Lineage of your parent")
    assert f"#{parent} m0199" in lineage                                   # the parent survives
    assert "older entries omitted" in lineage and "#0 m0000" not in lineage
    assert "#198 m0198" in lineage                                        # newest ancestors kept
    failures = section(text, "Recent failures")
    assert '"failure 29"' in failures and '"failure 0"' not in failures     # newest failures kept
    assert "error line 19" in failures and "error line 0 " not in failures  # error tails, not heads


def test_bigger_budget_keeps_more_and_program_is_never_cut():
    rows = long_history(depth=100, failures=5)
    small = build_prompt(PROGRAM, "climbmix", rows, parent_id=99, in_flight=[], max_chars=5000)
    large = build_prompt(PROGRAM, "climbmix", rows, parent_id=99, in_flight=[], max_chars=50_000)
    assert len(small) <= 5000 < len(large) <= 50_000
    assert large.count("ancestor step") > small.count("ancestor step")
    huge_program = PROGRAM + "z" * 10_000
    text = build_prompt(huge_program, "climbmix", rows, parent_id=99, in_flight=[], max_chars=2000)
    assert "z" * 10_000 in text and train_file_in_prompt(text) == "engine/train.py"
    assert "#99 m0099" in text


def test_missing_parent_row_and_garbage_values_do_not_break_the_prompt():
    rows = [{"id": 0, "kind": "baseline", "member": "m0000", "parent_id": None, "status": "ok",
             "val_bpb": "garbage", "metric_mean": None, "alive": True, "description": None}]
    text = build_prompt(PROGRAM, "climbmix", rows, parent_id=42, in_flight=[{"worker": "w9"}])
    assert "experiment #42" in text and "w9" in text
