"""The app's data logic (population/lineage_view.py) and figures (population/lineage_charts.py)."""
from __future__ import annotations

import io
import json
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest

from population import lineage_charts as charts
from population import lineage_view as lv
from storegen import make_corrupt_run, make_empty_run, make_run


@pytest.fixture(scope="module")
def normal(tmp_path_factory) -> lv.RunData:
    return lv.load_run(make_run(tmp_path_factory.mktemp("runs") / "mar5", n=60))


def test_load_normal_run_reads_every_row_with_documented_dtypes(normal):
    raw = pd.read_parquet(normal.path / "lineage.parquet")
    assert normal.metric == "val_bpb" and normal.lower_is_better
    assert normal.source == "lineage.parquet" and normal.notes == []
    assert normal.frame["id"].tolist() == sorted(raw["id"].tolist())
    assert normal.frame["parent_id"].dtype == "Int64"
    assert normal.frame["alive"].dtype == bool
    assert normal.frame["val_bpb"].isna().sum() == raw["status"].ne("ok").sum()


def test_metric_name_comes_from_run_json(tmp_path):
    run = lv.load_run(make_run(tmp_path / "e8", n=20, metric="val_bpc"))
    assert run.metric == "val_bpc"
    assert run.frame["val_bpc"].notna().any() and "val_bpb" not in run.frame


def test_unreadable_run_json_guesses_metric_from_parquet_columns(tmp_path):
    run_dir = make_run(tmp_path / "e8", n=10, metric="val_bpc")
    (run_dir / "run.json").write_text('{"metric": ')
    run = lv.load_run(run_dir)
    assert run.metric == "val_bpc"
    assert any(level == "warning" and "run.json" in text for level, text in run.notes)


def test_corrupt_parquet_falls_back_to_results_tsv(tmp_path):
    run = lv.load_run(make_corrupt_run(tmp_path / "bad", "parquet", n=15))
    assert run.source == "results.tsv"
    assert len(run.frame) == 15
    assert any(level == "warning" and "lineage.parquet" in text for level, text in run.notes)
    tsv = pd.read_csv(run.path / "results.tsv", sep="\t")
    assert (run.frame["status"] == "crash").sum() == (tsv["status"] == "crash").sum()
    assert run.frame.loc[run.frame["status"] == "crash", "val_bpb"].isna().all()   # not 0.0


def test_missing_parquet_is_an_info_note(tmp_path):
    run = lv.load_run(make_corrupt_run(tmp_path / "half", "missing_parquet", n=8))
    assert run.source == "results.tsv" and len(run.frame) == 8
    assert [level for level, _ in run.notes] == ["info"]
    # No timings in results.tsv: unknown, not zero; the tree is laid out by recording order.
    assert math.isnan(lv.run_totals(run.frame, "val_bpb", True)["gpu_hours"])
    assert lv.x_title(run.frame, "time") == "experiment #"
    assert lv.x_positions(run.frame, "time").tolist() == list(range(8))


def test_torn_events_line_is_reported(tmp_path):
    run_dir = make_corrupt_run(tmp_path / "torn", "events", n=8)
    run = lv.load_run(run_dir)
    assert len(run.frame) == 8
    assert any("torn" in text for _, text in run.notes)
    meta = json.loads((run_dir / "run.json").read_text())
    (run_dir / "run.json").write_text(json.dumps(meta | {"state": "running"}))
    assert lv.load_run(run_dir).notes == []   # live: an append in progress, not worth a note


def test_empty_and_missing_runs_never_raise(tmp_path):
    empty = lv.load_run(make_empty_run(tmp_path / "new"))
    assert empty.frame.empty and empty.live
    assert ("info", "No experiments recorded yet.") in empty.notes
    missing = lv.load_run(tmp_path / "nope")
    assert missing.frame.empty and missing.notes[0][0] == "warning"


def test_partial_columns_are_filled(tmp_path):
    run_dir = tmp_path / "thin"
    run_dir.mkdir()
    pd.DataFrame({"id": [0, 1, 2], "parent_id": [None, 0, 1], "status": ["ok", "ok", "crash"],
                  "val_bpb": [1.0, 0.99, None]}).to_parquet(run_dir / "lineage.parquet")
    run = lv.load_run(run_dir)
    assert set(lv.FLOAT_COLUMNS) <= set(run.frame.columns)
    assert run.frame["agent"].eq("").all() and not run.frame["alive"].any()
    assert lv.ancestry(run.frame, 2) == [0, 1, 2]
    assert lv.run_totals(run.frame, "val_bpb", True)["failed"] == 1


def test_champion_from_run_json_then_flags_then_best(normal):
    frame, meta = normal.frame, normal.meta
    assert lv.champion_id(frame, meta, "val_bpb", True) == meta["champion_id"]
    assert lv.champion_id(frame, {}, "val_bpb", True) == meta["champion_id"]   # the champion flag
    member = frame.loc[frame["id"] == 5, "member"].iloc[0]
    assert lv.champion_id(frame, {"champion_id": member}, "val_bpb", True) == \
        frame.loc[frame["member"] == member, "id"].min()
    unflagged = frame.assign(champion=False)
    ok = frame[frame["status"] == "ok"]
    assert lv.champion_id(unflagged, {}, "val_bpb", True) == ok.loc[ok["val_bpb"].idxmin(), "id"]
    assert lv.champion_id(unflagged, {}, "val_bpb", False) == ok.loc[ok["val_bpb"].idxmax(), "id"]


def test_ancestry_walks_to_the_baseline_and_survives_cycles(normal):
    frame = normal.frame
    champion = lv.champion_id(frame, normal.meta, "val_bpb", True)
    path = lv.ancestry(frame, champion)
    assert path[0] == 0 and path[-1] == champion
    parents = dict(zip(frame["id"], frame["parent_id"]))
    assert all(parents[child] == parent for parent, child in zip(path, path[1:]))
    looped = pd.DataFrame({"id": [0, 1], "parent_id": pd.array([1, 0], dtype="Int64")})
    assert sorted(lv.ancestry(looped, 0)) == [0, 1]


def test_reruns_hang_from_their_members_first_run(normal):
    frame = normal.frame
    parents = lv.tree_parents(frame)
    first = frame.groupby("member")["id"].min()
    reruns = frame[frame["kind"].eq("rerun") & frame["id"].ne(frame["member"].map(first))]
    assert not reruns.empty
    assert (parents[reruns.index] == reruns["member"].map(first)).all()
    children = frame[frame["kind"] == "child"]
    assert (parents[children.index] == children["parent_id"]).all()
    assert lv.children_of(frame, 0) == frame.loc[parents.eq(0).fillna(False), "id"].tolist()


def test_tree_layout_puts_failures_below_and_draws_one_segment_per_child(normal):
    nodes, edge_x, edge_y = lv.tree_layout(normal.frame, "val_bpb", True, "time")
    with_parent = lv.tree_parents(normal.frame).notna().sum()
    assert len(edge_x) == len(edge_y) == 3 * with_parent
    assert np.isnan(edge_x[2::3]).all() and not np.isnan(edge_x[0::3]).any()
    ids = normal.frame["id"].tolist()
    child = ids.index(int(normal.frame.loc[normal.frame["kind"] == "child", "id"].iloc[0]))
    parent = ids.index(int(normal.frame["parent_id"].iloc[child]))
    segment = list(zip(edge_x[0::3], edge_x[1::3], edge_y[0::3], edge_y[1::3]))
    assert (nodes["x"][parent], nodes["x"][child], nodes["y"][parent], nodes["y"][child]) in segment
    failed = nodes[nodes["failed"]]
    assert not failed.empty and (failed["y"] < nodes.loc[~nodes["failed"], "y"].min()).all()
    assert set(nodes["category"]) >= {"champion", "living", "culled", "crashed"}
    by_generation, _, _ = lv.tree_layout(normal.frame, "val_bpb", True, "generation")
    assert by_generation["x"].tolist() == normal.frame["generation"].astype(float).tolist()


def test_running_best_is_monotone_and_marks_each_new_best(normal):
    best = lv.running_best(normal.frame, "val_bpb", True)
    assert best["best"].is_monotonic_decreasing
    manual, count = math.inf, 0
    for value in best["val_bpb"]:
        if value < manual:
            manual, count = value, count + 1
    assert best["improved"].sum() == count and best["best"].iloc[-1] == manual
    assert lv.running_best(normal.frame, "val_bpb", False)["best"].is_monotonic_increasing


def test_run_totals(normal):
    frame = normal.frame
    totals = lv.run_totals(frame, "val_bpb", True)
    assert totals["experiments"] == len(frame)
    assert totals["gpu_hours"] == pytest.approx(frame["train_seconds"].sum() / 3600)
    assert totals["per_gpu_hour"] == pytest.approx(len(frame) / totals["gpu_hours"])
    assert totals["agent_cost_usd"] == pytest.approx(frame["agent_cost_usd"].sum())
    base = frame[(frame["member"] == "m0000") & (frame["status"] == "ok")]["val_bpb"].mean()
    assert totals["baseline"] == pytest.approx(base)
    assert totals["gain"] == pytest.approx(base - totals["best"]) and totals["gain"] > 0


def test_filter_mask(normal):
    frame = normal.frame
    crashes = lv.filter_mask(frame, statuses=["crash"])
    assert crashes.sum() == (frame["status"] == "crash").sum() > 0
    word = frame.loc[frame["kind"] == "child", "description"].iloc[0].split()[0]
    hits = lv.filter_mask(frame, text=word.upper())
    assert hits.sum() == frame["description"].str.lower().str.contains(word.lower()).sum()
    assert lv.filter_mask(frame, text="7")[frame["id"] == 7].all()
    agent = frame["agent"].iloc[-1]
    both = lv.filter_mask(frame, statuses=["ok"], agents=[agent])
    assert both.sum() == ((frame["status"] == "ok") & (frame["agent"] == agent)).sum()


def test_read_tail_and_head(tmp_path):
    log = tmp_path / "run.log"
    log.write_text("".join(f"line {i}\n" for i in range(1000)))
    text, cut = lv.read_tail(log, max_bytes=100)
    assert cut and text.endswith("line 999\n") and text.startswith("line ")
    assert lv.tail_lines(text, 2) == "line 998\nline 999"
    head, cut = lv.read_head(log, max_bytes=14)
    assert cut and head == "line 0\nline 1\n"
    assert lv.read_tail(tmp_path / "missing") == (None, False)


def test_list_runs_newest_first_and_signature_tracks_changes(tmp_path):
    old = make_run(tmp_path / "old", n=5)
    new = make_empty_run(tmp_path / "new")
    (tmp_path / "not-a-run").mkdir()
    os.utime(old / "run.json", (1, 1))
    for name in ("lineage.parquet", "results.tsv", "events.jsonl"):
        os.utime(old / name, (1, 1))
    assert lv.list_runs(tmp_path) == [new, old]
    before = lv.store_signature(new)
    (new / "run.json").write_text(json.dumps({"state": "finished", "metric": "val_bpb", "pad": "x" * 10}))
    assert lv.store_signature(new) != before
    assert lv.list_runs(tmp_path / "absent") == []


def test_tree_figure_uses_svg_small_webgl_large_and_maps_clicks(normal, monkeypatch):
    nodes, edge_x, edge_y = lv.tree_layout(normal.frame, "val_bpb", True)
    fig, click_map = charts.tree_figure(nodes, edge_x, edge_y, [], [], "val_bpb", True, "hours")
    assert all(isinstance(t, go.Scatter) for t in fig.data)
    assert sorted(i for ids in click_map.values() for i in ids) == nodes["id"].tolist()
    living = next(i for i, t in enumerate(fig.data) if t.name == "living")
    assert charts.clicked_id({"curve_number": living, "point_index": 1}, click_map) == click_map[living][1]
    assert charts.clicked_id({"customdata": 17, "curve_number": 0}, click_map) == 17
    assert charts.clicked_id({"customdata": [18], "curve_number": 0}, click_map) == 18
    assert charts.clicked_id({"curve_number": 0, "point_index": 0}, click_map) is None   # the edges
    assert fig.layout.yaxis.title.text == "val_bpb"
    monkeypatch.setattr(charts, "WEBGL_THRESHOLD", 10)
    fig, _ = charts.tree_figure(nodes, edge_x, edge_y, [], [], "val_bpb", True, "hours", selected_id=3)
    assert isinstance(fig.data[0], go.Scattergl) and fig.data[-1].name == "selected"


def test_hover_text_is_escaped(tmp_path):
    run = lv.load_run(make_run(tmp_path / "x", n=6))
    frame = run.frame.assign(description="<script>alert(1)</script>")
    nodes, ex, ey = lv.tree_layout(frame, "val_bpb", True)
    fig, _ = charts.tree_figure(nodes, ex, ey, [], [], "val_bpb", True, "hours")
    hover = [str(h) for t in fig.data if t.hovertext is not None for h in t.hovertext]
    assert len(hover) == len(frame)
    assert all("&lt;script&gt;" in h for h in hover) and not any("<script>" in h for h in hover)


def test_progress_figure_steps_down_and_puts_failures_at_the_bottom(normal):
    fig = charts.progress_figure(normal.frame, "val_bpb", True)
    line = next(t for t in fig.data if t.name == "running best")
    assert list(line.y) == sorted(line.y, reverse=True) and line.line.shape == "hv"
    failed = next(t for t in fig.data if t.name == "failed")
    assert len(failed.x) == normal.frame["status"].ne("ok").sum()
    assert max(failed.y) < normal.frame["val_bpb"].min()


def test_reads_a_store_written_by_the_real_writer(tmp_path):
    """The contract with population/store.py: what RunStore writes, the app reads unchanged."""
    from population.store import RunStore
    from storegen import simulate_rows

    rows = simulate_rows(50, "val_bpc", seed=4)
    store = RunStore.create(tmp_path / "real", {"tag": "real", "task": "enwik8", "metric": "val_bpc",
                                                "lower_is_better": True, "state": "running",
                                                "champion_id": None})
    store.write_tables(rows, "val_bpc")
    run = lv.load_run(store.dir)
    assert run.notes == [] and run.source == "lineage.parquet" and run.live
    assert run.frame["id"].tolist() == [r["id"] for r in rows]
    written = pd.read_parquet(store.dir / "lineage.parquet")
    assert set(written.columns) <= set(run.frame.columns)
    assert run.frame["val_bpc"].equals(written["val_bpc"].astype("float64"))
    assert run.frame["parent_id"].isna().sum() == sum(r["parent_id"] is None for r in rows)
    champion = next(r["id"] for r in rows if r["champion"] and r["kind"] != "rerun")
    assert lv.champion_id(run.frame, run.meta, "val_bpc", True) == champion


def test_exports_round_trip(normal):
    import io
    back = pd.read_parquet(io.BytesIO(lv.export_bytes(normal.frame, "parquet")))
    assert back["id"].tolist() == normal.frame["id"].tolist()
    assert back["val_bpb"].equals(normal.frame["val_bpb"])
    csv = pd.read_csv(io.BytesIO(lv.export_bytes(normal.frame, "csv")))
    assert list(csv.columns) == list(normal.frame.columns) and len(csv) == len(normal.frame)
    with pytest.raises(ValueError):
        lv.export_bytes(normal.frame, "xlsx")


def test_results_tsv_gives_lost_and_stopped_experiments_their_own_status_not_crash():
    """autoresearch's analysis counts KEEP/DISCARD/CRASH: a lost training is none of them."""
    from population.state import PopulationState
    from population.store import results_tsv

    started = [{"type": "experiment_started", "id": i, "kind": "baseline" if i == 0 else "child",
                "member": f"m000{i}", "parent_id": None if i == 0 else 0, "worker": "w0", "time": 1.0}
               for i in range(4)]
    events = started + [
        {"type": "experiment_finished", "id": 0, "row": {"status": "ok", "val_bpb": 1.0, "commit": "a" * 40}},
        {"type": "experiment_lost", "id": 1, "reason": "node lost", "time": 2.0},
        {"type": "experiment_finished", "id": 2, "row": {"status": "crash", "reason": "oom", "commit": "c" * 40}},
        {"type": "experiment_finished", "id": 3, "row": {"status": "stopped", "commit": "d" * 40,
                                                          "description": "cut short"}},
    ]
    lines = results_tsv(PopulationState.replay(events, "val_bpb").lineage_rows(), "val_bpb").splitlines()
    assert len(lines) == 5 and all(len(line.split("\t")) == 5 for line in lines)   # line i + 1 = experiment i
    assert lines[2].split("\t") == ["", "", "", "lost", ""]
    assert lines[3].split("\t")[3] == "crash"
    assert lines[4].split("\t") == ["ddddddd", "", "", "stopped", "cut short"]
    analysed = pd.read_csv(io.StringIO("\n".join(lines)), sep="\t")
    assert (analysed["status"].str.upper() == "CRASH").sum() == 1


def test_console_status_line_counts_training_and_waiting_for_a_gpu_apart():
    """The one-GPU fallback: four workers submitted, one trains, three wait (issue 25)."""
    from population.console import status_line

    common = dict(finished=12, ok=9, in_flight=4, workers=4, alive=6, champion="m0003", metric="val_bpb",
                  best=0.9903, elapsed_s=3723, max_experiments=100)
    line = status_line(training=1, waiting_for_gpu=3, **common)
    assert "1 training, 3 waiting for a GPU (4 workers)" in line and "4/4" not in line
    assert "3/4 training" in status_line(training=3, **common)     # a driver that does not tell yet
