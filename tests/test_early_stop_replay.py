"""bench/early_stop_replay.py on tiny stores: a rule that stops a child which beat its parent is caught."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import early_stop_replay  # noqa: E402

from population.store import RunStore  # noqa: E402


def curve(start: float, end: float) -> list:
    return [[i / 10, end + (start - end) * (1 - i / 10) ** 2] for i in range(11)]


def make_store(run_dir: Path) -> Path:
    """Three baselines of m0000 (noise ~0.01), and three children of e0:
    e3 ahead all along and better; e4 behind mid-run by far, yet better at the end (a schedule edit);
    e5 behind all along and worse."""
    store = RunStore.create(run_dir, {"metric": "val_bpb", "lower_is_better": True})
    runs = [  # id, kind, member, parent, curve, final
        (0, "baseline", "m0000", None, curve(10.0, 3.00), 1.000),
        (1, "baseline", "m0000", None, [[f, loss + 0.01] for f, loss in curve(10.0, 3.00)], 1.001),
        (2, "baseline", "m0000", None, [[f, loss - 0.01] for f, loss in curve(10.0, 3.00)], 0.999),
        (3, "child", "m0001", 0, curve(9.5, 2.95), 0.990),
        (4, "child", "m0002", 0, [[f, loss + (0.5 if 0.2 <= f <= 0.8 else 0)] for f, loss in curve(10.0, 2.9)], 0.980),
        (5, "child", "m0003", 0, curve(10.5, 3.20), 1.050),
    ]
    rows = []
    for exp_id, kind, member, parent, points, final in runs:
        rows.append({"id": exp_id, "kind": kind, "member": member, "parent_id": parent, "status": "ok",
                     "val_bpb": final, "seed": exp_id})
        store.write_experiment_files(exp_id, {"curve.json": json.dumps({"points": points})})
    rows.append({"id": 6, "kind": "child", "member": "m0004", "parent_id": 0, "status": "crash"})
    store.write_tables(rows, "val_bpb")
    return run_dir


def test_the_replay_counts_a_stopped_child_that_beat_its_parent(tmp_path, capsys):
    store = early_stop_replay.load_store(make_store(tmp_path / "runs" / "tiny"))
    assert early_stop_replay.pairs(store) == [(3, 0), (4, 0), (5, 0)]       # the crash has no curve
    result = early_stop_replay.replay([store], [0.1, 0.5, 0.9], margin_noise=3.0)
    by_f = {r["fraction"]: r for r in result["fractions"]}
    assert all(r["judged"] == 3 for r in by_f.values())
    assert by_f[0.5]["noise"][0]["noise_runs"] == 2
    assert abs(by_f[0.5]["noise"][0]["noise_sd"] - 0.01) < 1e-9
    assert by_f[0.5]["stopped"] == 2 and by_f[0.5]["stopped_but_better"] == 1     # e4 and e5; e4 beat e0
    assert by_f[0.5]["wrongly_stopped"] == [f"{tmp_path / 'runs' / 'tiny'}#4"]
    assert by_f[0.9]["stopped"] == 1 and by_f[0.9]["stopped_but_better"] == 0     # e5 only
    assert not result["enough_pairs"] and result["verdict"].startswith("too few pairs to validate anything")

    assert early_stop_replay.main([str(tmp_path / "runs" / "tiny"), "--at", "0.5", "--margin-noise", "3"]) == 0
    out = capsys.readouterr().out
    assert "3 parent/child pairs" in out and "too few pairs to validate anything" in out
    assert early_stop_replay.main([str(tmp_path / "runs" / "tiny"), "--json", "--margin-noise", "1000"]) == 0
    assert all(r["stopped"] == 0 for r in json.loads(capsys.readouterr().out)["fractions"])


def test_a_store_without_same_code_runs_has_no_noise_and_judges_nothing(tmp_path):
    run_dir = tmp_path / "lone"
    store = RunStore.create(run_dir, {"metric": "val_bpb"})
    store.write_experiment_files(0, {"curve.json": json.dumps({"points": curve(10, 3)})})
    store.write_experiment_files(1, {"curve.json": json.dumps({"points": curve(11, 4)})})
    store.write_tables([{"id": 0, "kind": "baseline", "member": "m0000", "status": "ok", "val_bpb": 1.0},
                        {"id": 1, "kind": "child", "member": "m0001", "parent_id": 0, "status": "ok",
                         "val_bpb": 1.1}], "val_bpb")
    result = early_stop_replay.replay([early_stop_replay.load_store(run_dir)], [0.5], 3.0)
    assert result["fractions"][0]["judged"] == 0 and result["fractions"][0]["noise"][0]["noise_sd"] is None
    assert "too few pairs" in result["verdict"]


def test_a_missing_store_or_bad_fractions_end_in_one_line_and_exit_2(tmp_path, capsys):
    for argv, said in (([str(tmp_path / "nowhere")], "no run at"),
                       ([str(make_store(tmp_path / "run")), "--at", "0.5,x"], "not a list of fractions"),
                       ([str(tmp_path / "run"), "--at", "1.5"], "between 0 and 1")):
        with pytest.raises(SystemExit) as end:
            early_stop_replay.main(argv)
        assert end.value.code == 2
        error = capsys.readouterr().err
        assert said in error and "Traceback" not in error
