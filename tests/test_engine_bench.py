"""bench/engine.py's parsing and table (pure parts; the runs themselves are GPU work)."""
from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest

BENCH_FILE = Path(__file__).resolve().parents[1] / "bench" / "engine.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_engine_under_test", BENCH_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def progress_line(step, pct, ms):
    return f"\rstep {step:05d} ({pct:.1f}%) | loss: 6.0 | lrm: 1.00 | dt: {ms}ms | tok/sec: 1 | mfu: 1.0% | "


def test_reference_style_log_gets_step_percentiles_from_its_progress_lines(bench):
    """A file without step_ms_* keys (the reference's): untimed steps 0..10 are left out."""
    lines = [progress_line(s, 0.0, 30_000 if s == 0 else 500) for s in range(11)]
    lines += [progress_line(s, 10.0 * (s - 10), 300 + s) for s in range(11, 21)]
    log = "".join(lines) + "\n---\nval_bpb:          0.990000\ntraining_seconds: 300.1\ntotal_seconds:    389.7\n"
    metrics = bench.derived(bench.parse_summary(log), log)
    assert metrics["val_bpb"] == pytest.approx(0.99)
    assert metrics["step_ms_p10"] == 311 and metrics["step_ms_p90"] == 319
    assert metrics["outside_budget_seconds"] == pytest.approx(89.6)


def test_summary_keeps_text_values_and_its_own_step_keys(bench):
    log = progress_line(20, 50.0, 999) + "\n---\nattention:        flex\nstep_ms_p10:      300.0\nstep_ms_p90:      330.0\n"
    metrics = bench.derived(bench.parse_summary(log), log)
    assert metrics["attention"] == "flex"
    assert metrics["step_ms_p10"] == 300.0                      # the file's own figure wins
    assert metrics["step_p90_over_p10"] == pytest.approx(1.1)


def test_table_marks_missing_values(bench):
    table = bench.format_table([{"attention": "sdpa", "returncode": 0, "val_bpb": 0.5, "mfu_percent": math.nan}])
    header, row = table.splitlines()
    cells = dict(zip(header.split(), row.split()))
    assert cells["val_bpb"] == "0.5000" and cells["mfu%"] == "-" and cells["steps"] == "-"


def test_json_has_no_nan(bench):
    assert bench._nan_to_none({"a": [math.nan, 1.0], "b": math.nan}) == {"a": [None, 1.0], "b": None}
