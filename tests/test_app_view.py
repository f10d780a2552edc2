"""The app's data logic (population/lineage_view.py) and figures (population/lineage_charts.py), on
stores written the driver's way (tests/storegen.py: the driver's state, selection code and store)."""
from __future__ import annotations

import io
import json
import math
import os
import statistics

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest

from population import lineage_charts as charts
from population import lineage_view as lv
from population.state import PopulationState
from population.store import RunStore
from storegen import make_corrupt_run, make_empty_run, make_run


@pytest.fixture(scope="module")
def normal(tmp_path_factory) -> lv.RunData:
    return lv.load_run(make_run(tmp_path_factory.mktemp("runs") / "mar5", n=160, lost_rate=0.03, workers=4,
                                population=6))


@pytest.fixture(scope="module")
def replayed(normal) -> PopulationState:
    """The driver's own state after the run's journal: what the page must agree with."""
    return PopulationState.replay(RunStore(normal.path).events(), normal.metric, normal.lower_is_better)


# --------------------------------------------------------------------------- loading

def test_load_reads_every_row_with_documented_dtypes_and_a_verified_journal(normal):
    raw = pd.read_parquet(normal.path / "lineage.parquet")
    assert normal.metric == "val_bpb" and normal.lower_is_better
    assert normal.source == "lineage.parquet" and normal.notes == []
    assert normal.journal == "signed" and normal.selection.source == "journal"
    assert normal.frame["id"].tolist() == sorted(raw["id"].tolist())
    assert normal.frame["parent_id"].dtype == "Int64" and normal.frame["alive"].dtype == bool
    assert normal.frame["val_bpb"].isna().sum() == raw["status"].ne("ok").sum()


def test_metric_name_comes_from_run_json(tmp_path):
    run = lv.load_run(make_run(tmp_path / "e8", n=20, metric="val_bpc"))
    assert run.metric == "val_bpc" and run.frame["val_bpc"].notna().any() and "val_bpb" not in run.frame


def test_unreadable_run_json_guesses_metric_from_parquet_columns(tmp_path):
    run_dir = make_run(tmp_path / "e8", n=10, metric="val_bpc")
    (run_dir / "run.json").write_text('{"metric": ')
    run = lv.load_run(run_dir)
    assert run.metric == "val_bpc"
    assert any(level == "warning" and "run.json" in text for level, text in run.notes)


def test_corrupt_parquet_falls_back_to_results_tsv(tmp_path):
    run = lv.load_run(make_corrupt_run(tmp_path / "bad", "parquet", n=15))
    assert run.source == "results.tsv" and len(run.frame) == 15
    assert any(level == "warning" and "lineage.parquet" in text for level, text in run.notes)
    tsv = pd.read_csv(run.path / "results.tsv", sep="\t")
    assert (run.frame["status"] == "crash").sum() == (tsv["status"] == "crash").sum()
    assert run.frame.loc[run.frame["status"] == "crash", "val_bpb"].isna().all()   # not 0.0
    assert run.selection.champion == lv.replay_selection(RunStore(run.path).events(), "val_bpb", True)[0].champion


def test_missing_parquet_is_an_info_note(tmp_path):
    run = lv.load_run(make_corrupt_run(tmp_path / "half", "missing_parquet", n=8))
    assert run.source == "results.tsv" and len(run.frame) == 8
    assert [level for level, _ in run.notes] == ["info"]
    assert math.isnan(lv.counts(run.frame)["gpu_hours"])   # no timings in results.tsv: unknown, not zero


def test_torn_events_line_is_reported_and_dropped(tmp_path):
    run_dir = make_corrupt_run(tmp_path / "torn", "events", n=8)
    run = lv.load_run(run_dir)
    assert len(run.frame) == 8 and run.selection.source == "journal"
    assert any("torn" in text for _, text in run.notes)
    meta = json.loads((run_dir / "run.json").read_text())
    (run_dir / "run.json").write_text(json.dumps(meta | {"state": "running"}))
    assert lv.load_run(run_dir).notes == []   # live: an append in progress, not worth a note


def test_a_forged_journal_is_not_trusted(tmp_path):
    """A journal line another process edited fails the store's signature check: the page says so
    and falls back to run.json's champion, never obeying the forged `champion` event."""
    run_dir = make_corrupt_run(tmp_path / "forged", "forged", n=12)
    run = lv.load_run(run_dir)
    assert any(level == "warning" and "cannot be trusted" in text for level, text in run.notes)
    assert run.selection.source == "run.json" and run.journal == ""
    champion_id = json.loads((run_dir / "run.json").read_text())["champion_id"]
    assert run.selection.champion_id == champion_id


def test_without_a_journal_the_champion_comes_from_run_json(tmp_path):
    run_dir = make_run(tmp_path / "old", n=30)
    (run_dir / "events.jsonl").unlink()
    run = lv.load_run(run_dir)
    assert run.selection.source == "run.json" and run.selection.promotions.empty
    assert run.selection.champion_id == json.loads((run_dir / "run.json").read_text())["champion_id"]
    assert not run.selection.members["estimated"].any()          # plain means, and the page says so
    assert any("events.jsonl is missing" in text for _, text in run.notes)


def test_empty_and_missing_runs_never_raise(tmp_path):
    empty = lv.load_run(make_empty_run(tmp_path / "new"))
    assert empty.frame.empty and empty.live and ("info", "No experiments recorded yet.") in empty.notes
    assert empty.selection.champion is None and lv.headline(empty)["champion"] is None
    missing = lv.load_run(tmp_path / "nope")
    assert missing.frame.empty and missing.notes[0][0] == "warning"


def test_partial_columns_are_filled(tmp_path):
    run_dir = tmp_path / "thin"
    run_dir.mkdir()
    pd.DataFrame({"id": [0, 1, 2], "parent_id": [None, 0, 1], "status": ["ok", "ok", "crash"],
                  "member": ["m0000", "m0001", "m0002"], "val_bpb": [1.0, 0.99, None]}
                 ).to_parquet(run_dir / "lineage.parquet")
    run = lv.load_run(run_dir)
    assert set(lv.FLOAT_COLUMNS) <= set(run.frame.columns)
    assert run.frame["agent"].eq("").all() and not run.frame["alive"].any()
    assert run.selection.members["parent"].to_dict() == {"m0000": "", "m0001": "m0000"}
    assert lv.counts(run.frame)["failed"] == 1


# --------------------------------------------------------------------------- the selection, replayed

def test_the_champion_is_the_journals_last_champion_event_with_the_posteriors_estimate(normal, replayed):
    events = RunStore(normal.path).events()
    champions = [e["member"] for e in events if e["type"] == "champion"]
    selection = normal.selection
    assert selection.champion == champions[-1] == replayed.champion
    assert selection.promotions["member"].tolist() == champions
    row = selection.champion_row
    assert row["estimate"] == pytest.approx(replayed.estimate(replayed.champion))
    assert row["runs"] == len(replayed.members[replayed.champion].runs)
    assert row["estimate_sd"] == pytest.approx(math.sqrt(replayed.posterior.variance(replayed.champion)))
    # the run.json the driver writes names the same experiment
    assert selection.champion_id == json.loads((normal.path / "run.json").read_text())["champion_id"]


def test_each_promotion_records_what_selection_saw_then(normal):
    promotions = normal.selection.promotions
    assert promotions["step"].tolist() == list(range(len(promotions))) and len(promotions) >= 3
    assert promotions["at_id"].is_monotonic_increasing
    first = promotions.iloc[0]
    assert first["member"] == "m0000" and first["previous"] == "" and first["runs"] == 3
    later = promotions.iloc[1:]
    assert (later["prob_better"] >= 0.95).all()             # the driver's promotion confidence
    assert (later["previous"].to_numpy() == promotions["member"].iloc[:-1].to_numpy()).all()
    finished = {e["id"] for e in RunStore(normal.path).events() if e["type"] == "experiment_finished"}
    assert set(promotions["at_id"]) <= finished             # the result that triggered it


def test_a_member_is_one_row_with_all_its_runs(normal, replayed):
    members = normal.selection.members
    assert set(members.index) == set(replayed.members)
    seed = members.loc["m0000"]
    baselines = normal.frame[normal.frame["kind"].eq("baseline")]
    assert len(baselines) == 3 and baselines["member"].eq("m0000").all()     # the driver's noise runs
    assert sorted(seed["run_ids"]) == baselines["id"].tolist() and seed["runs"] == 3
    assert seed["spread"] == pytest.approx(statistics.stdev(baselines["val_bpb"]))
    assert (members["runs"] == members["run_ids"].map(len)).all()


def test_rows_carry_their_members_state_and_gain_over_the_parents_estimate(normal):
    frame, members = normal.frame, normal.selection.members
    child = frame[frame["kind"].eq("child") & frame["status"].eq("ok")].iloc[-1]
    parent = members.loc[members.loc[child["member"], "parent"]]
    assert child["parent_member"] == parent["member"]
    assert child["delta_parent"] == pytest.approx(parent["estimate"] - child["val_bpb"])
    assert child["estimate"] == pytest.approx(members.loc[child["member"], "estimate"])
    assert frame.loc[frame["member"].eq(normal.selection.champion), "champion"].all()
    assert frame["champion"].sum() == members.loc[normal.selection.champion, "runs"]
    living = set(members.index[members["alive"]])
    assert set(frame.loc[frame["alive"], "member"]) == living


def test_headline_puts_the_champion_first_and_lost_apart_from_failures(normal):
    h = lv.headline(normal)
    frame = normal.frame
    assert h["champion"] == normal.selection.champion and h["estimate"] == normal.selection.champion_row["estimate"]
    seed = normal.selection.members.loc["m0000", "estimate"]
    assert h["gain"] == pytest.approx(seed - h["estimate"]) and h["gain"] > 0
    assert h["best"] == frame.loc[frame["status"].eq("ok"), "val_bpb"].min()      # secondary, one run
    assert h["lost"] == frame["status"].eq("lost").sum() > 0
    assert h["failed"] == frame["status"].isin(["crash", "timeout", "violation", "duplicate", "agent_error"]).sum()
    assert h["failed"] + h["lost"] + h["ok"] == len(frame)


def test_holdout_columns_are_read_and_overfitting_is_flagged(tmp_path):
    honest = lv.load_run(make_run(tmp_path / "honest", n=80, holdout=True, overfit=0.0))
    overfit = lv.load_run(make_run(tmp_path / "overfit", n=80, holdout=True, overfit=0.85))
    assert honest.holdout == "holdout_bpb" and "reported_val_bpb" in honest.frame
    check = lv.headline(honest)["overfitting"]
    assert check["val_gain"] > 2 * check["noise_std"] and not check["flagged"]
    check = lv.headline(overfit)["overfitting"]
    assert check["flagged"] and check["holdout_gain"] < 0.5 * check["val_gain"]
    promotions = lv.promotion_table(overfit)
    assert promotions["holdout"].notna().all()
    assert lv.load_run(make_run(tmp_path / "none", n=20)).holdout is None


def test_overfitting_rule():
    members = pd.DataFrame({"member": ["m0000", "m0009"], "mean": [1.0, 0.99], "parent": ["", "m0000"],
                            "first_id": [0, 9]}).set_index("member", drop=False)
    selection = lv.Selection("journal", "m0009", members, pd.DataFrame(), noise_std=0.001)
    flag = lambda holdout: lv.overfitting(selection, pd.Series({"m0000": 1.1, "m0009": holdout}), 1.0)["flagged"]  # noqa: E731
    assert flag(1.096) and not flag(1.094)                        # holdout gain 0.004 vs 0.006 (of 0.010)
    selection.noise_std = 0.006                                    # a val gain under two noise std: no flag
    assert not flag(1.1)
    assert lv.overfitting(selection, pd.Series({"m0000": 1.1}), 1.0) is None


# --------------------------------------------------------------------------- the tree

def test_living_tree_draws_living_members_and_ancestry_and_folds_the_rest(normal):
    selection, frame = normal.selection, normal.frame
    members = selection.members
    layout = lv.tree_layout(members, frame, selection.champion, "living")
    drawn = set(layout.nodes["member"])
    living = set(members.index[members["alive"]])
    assert living | {selection.champion} <= drawn
    for name in drawn:                                           # connected: every parent is drawn
        assert members.loc[name, "parent"] in drawn | {""}
    assert layout.nodes["hidden_members"].sum() == len(members) - len(drawn)
    unborn = lv.member_failures(frame, members)
    counted = layout.nodes[["failed", "lost", "hidden_failed"]].to_numpy().sum()
    assert counted == len(unborn) and layout.ticks["count"].sum() == layout.nodes[["failed", "lost"]].to_numpy().sum()
    assert set(layout.ticks["kind"]) == {"failed", "lost"}
    everything = lv.tree_layout(members, frame, selection.champion, "all")
    assert len(everything.nodes) == len(members) and everything.nodes["hidden_members"].sum() == 0


def test_layered_layout_rows_and_elbow_edges(normal):
    layout = lv.tree_layout(normal.selection.members, normal.frame, normal.selection.champion, "all")
    nodes = layout.nodes.set_index("member")
    assert (nodes["x"] == nodes["generation"]).all()
    parents = set(nodes["tree_parent"])
    leaves = nodes[~nodes.index.isin(parents)]
    assert sorted(leaves["y"]) == list(range(len(leaves)))             # one row per leaf
    for name, parent in nodes["tree_parent"].items():
        if parent:
            kids = nodes[nodes["tree_parent"].eq(parent)]["y"]
            assert nodes.loc[parent, "y"] == pytest.approx((kids.min() + kids.max()) / 2)
    with_parent = nodes["tree_parent"].ne("").sum()
    assert len(layout.edge_x) == 5 * with_parent and np.isnan(layout.edge_x[4::5]).all()
    path = lv.ancestry_members(normal.selection.members, normal.selection.champion)
    assert path[0] == "m0000" and path[-1] == normal.selection.champion
    assert len(layout.path_x) == 5 * (len(path) - 1)
    by_time = lv.tree_layout(normal.selection.members, normal.frame, normal.selection.champion, "all", "time")
    assert (by_time.nodes["y"] == layout.nodes["y"]).all() and by_time.nodes["x"].min() >= 0


def test_layout_survives_a_deep_lineage_without_recursion():
    n = 5000                                 # a chain 5,000 generations deep
    members = pd.DataFrame({"member": [f"m{i:04d}" for i in range(n)], "first_id": range(n),
                            "parent": [""] + [f"m{i:04d}" for i in range(n - 1)], "generation": range(n),
                            "alive": [False] * (n - 1) + [True], "runs": 1, "estimate": 1.0})
    members = members.set_index("member", drop=False)
    frame = pd.DataFrame({"id": range(n), "status": "ok", "member": members["member"].to_numpy(), "parent_member": ""})
    layout = lv.tree_layout(members, frame, f"m{n - 1:04d}", "living")
    assert len(layout.nodes) == n and (layout.nodes["y"] == 0).all()


# --------------------------------------------------------------------------- the table

def test_sorting_puts_rows_without_the_value_last(normal):
    frame = normal.frame
    for how in lv.SORTS:
        how = how.format(metric="val_bpb")
        ordered = lv.sort_rows(frame, how, "val_bpb", True)
        column = {"newest first": "id", "val_bpb, best first": "val_bpb", "member estimate, best first": "estimate",
                  "gain over parent, best first": "delta_parent"}[how]
        missing = ordered[column].isna().to_numpy()
        assert not missing[: (~missing).sum()].any(), how       # every failure after every value
    best = lv.sort_rows(frame, "val_bpb, best first", "val_bpb", True)
    assert best["val_bpb"].iloc[0] == frame["val_bpb"].min()
    assert lv.sort_rows(frame, "val_bpb, best first", "val_bpb", False)["val_bpb"].iloc[0] == frame["val_bpb"].max()


def test_filter_mask(normal):
    frame = normal.frame
    crashes = lv.filter_mask(frame, statuses=["crash"])
    assert crashes.sum() == (frame["status"] == "crash").sum() > 0
    word = frame.loc[frame["kind"] == "child", "description"].iloc[0].split()[0]
    hits = lv.filter_mask(frame, text=word.upper())
    assert hits.sum() == frame["description"].str.lower().str.contains(word.lower()).sum()
    assert lv.filter_mask(frame, text="7")[frame["id"] == 7].all()
    living = lv.filter_mask(frame, living_only=True)
    assert set(frame.loc[living, "member"]) == set(normal.selection.members.index[normal.selection.members["alive"]])


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
    for name in ("run.json", "lineage.parquet", "results.tsv", "events.jsonl"):
        os.utime(old / name, (1, 1))
    assert lv.list_runs(tmp_path) == [new, old]
    before = lv.store_signature(new)
    (new / "run.json").write_text(json.dumps({"state": "finished", "metric": "val_bpb", "pad": "x" * 10}))
    assert lv.store_signature(new) != before
    assert lv.list_runs(tmp_path / "absent") == []


def test_exports_round_trip(normal):
    frame = normal.frame.drop(columns=["run_ids"], errors="ignore")
    back = pd.read_parquet(io.BytesIO(lv.export_bytes(frame, "parquet")))
    assert back["id"].tolist() == frame["id"].tolist() and back["val_bpb"].equals(frame["val_bpb"])
    csv = pd.read_csv(io.BytesIO(lv.export_bytes(frame, "csv")))
    assert list(csv.columns) == list(frame.columns) and len(csv) == len(frame)
    with pytest.raises(ValueError):
        lv.export_bytes(frame, "xlsx")


# --------------------------------------------------------------------------- throughput

def test_training_spans_use_the_journals_gpu_and_start(normal):
    spans = lv.training_spans(normal.frame)
    trained = normal.frame[normal.frame["train_seconds"] > 0]
    assert len(spans) == len(trained)
    assert set(spans["lane"]) == {f"node-0 · GPU {i}" for i in range(4)}      # 4 workers, CUDA device from the journal
    row = trained.iloc[5]
    span = spans[spans["id"].eq(row["id"])].iloc[0]
    assert span["start"] == row["train_started_at"] and span["end"] - span["start"] == pytest.approx(row["train_seconds"])
    busy = lv.lane_busy(spans)
    assert ((busy["share"] > 0) & (busy["share"] <= 1)).all() and busy["trainings"].sum() == len(spans)
    costs = lv.agent_cost_over_time(normal.frame)
    assert costs["cost"].is_monotonic_increasing
    assert costs["cost"].iloc[-1] == pytest.approx(normal.frame["agent_cost_usd"].sum())


def test_lane_busy_counts_overlaps_once():
    spans = pd.DataFrame({"lane": ["a", "a", "a"], "start": [0.0, 50.0, 300.0], "end": [100.0, 150.0, 400.0]})
    busy = lv.lane_busy(spans).iloc[0]
    assert busy["busy_h"] == pytest.approx(250 / 3600) and busy["share"] == pytest.approx(250 / 400)


def test_a_held_gpu_is_told_apart_from_timed_training_and_measured_busy_time():
    """Two 100 s trainings back to back: the GPU is held all along, in timed steps for 60 s of
    each, and busy (NVML) for 70 s of each."""
    spans = pd.DataFrame({"lane": ["g", "g"], "start": [0.0, 100.0], "end": [100.0, 200.0],
                          "timed": [60.0, 60.0], "busy": [70.0, 70.0]})
    lane = lv.lane_busy(spans).iloc[0]
    assert lane["share"] == pytest.approx(1.0)
    assert lane["timed_share"] == pytest.approx(0.6) and lane["device_share"] == pytest.approx(0.7)


# --------------------------------------------------------------------------- diffs and git

DIFF = """diff --git a/engine/train.py b/engine/train.py
index 1111111..2222222 100644
--- a/engine/train.py
+++ b/engine/train.py
@@ -10,4 +10,5 @@ import os
 A = 1
-B = 2
-C = <3>
+B = 20
+D = 4
+E = 5
 F = 6
"""


def test_side_by_side_pairs_removed_and_added_lines():
    rows = lv.side_by_side(DIFF)
    assert [r[0] for r in rows] == ["file", "hunk", "same", "change", "change", "insert", "same"]
    assert rows[2] == ("same", 10, "A = 1", 10, "A = 1")
    assert rows[3] == ("change", 11, "B = 2", 11, "B = 20")
    assert rows[5] == ("insert", None, "", 13, "E = 5")
    assert rows[6] == ("same", 13, "F = 6", 14, "F = 6")
    page = lv.side_by_side_html(rows)
    assert "C = &lt;3&gt;" in page and "<3>" not in page


def test_git_readers_give_the_file_and_the_diff_and_none_without_the_repository(tmp_path):
    from test_driver_support import git, make_seed_repo

    repo = make_seed_repo(tmp_path / "seed")
    seed = git(repo, "rev-parse", "HEAD").strip()
    (repo / "engine" / "train.py").write_text((repo / "engine" / "train.py").read_text().replace("DEPTH = 8", "DEPTH = 9"))
    git(repo, "commit", "-qam", "deeper")
    child = git(repo, "rev-parse", "HEAD").strip()
    meta = {"repo": str(repo), "task": "climbmix"}
    assert "DEPTH = 9" in lv.git_text(meta, child, lv.train_file(meta))
    diff = lv.git_diff(meta, seed, child)
    assert "-DEPTH = 8" in diff and "+DEPTH = 9" in diff
    assert lv.git_text({"repo": str(tmp_path / "gone")}, child, "engine/train.py") is None
    assert lv.git_text(meta, "0" * 40, "engine/train.py") is None
    assert lv.train_file({"task": "enwik8"}) == "engine/train_enwik8.py"
    assert lv.train_file({}, DIFF) == "engine/train.py"


# --------------------------------------------------------------------------- figures

def test_tree_figure_layers_maps_clicks_and_always_rings_the_selection(normal, monkeypatch):
    selection = normal.selection
    layout = lv.tree_layout(selection.members, normal.frame, selection.champion, "living")
    living = layout.nodes[layout.nodes["category"].eq("living")].iloc[0]
    fig, click_map = charts.tree_figure(layout, "val_bpb", True, "generation", selected=living["member"])
    names = [t.name for t in fig.data]
    assert names[0] == "edges" and names[-1] == "selected"
    assert names.index("champion's line") > names.index("culled (ancestor)")      # the line over the culled
    assert names.index("champion") > names.index("living member")                 # the champion on top
    assert {"failed children", "lost (re-queued)"} <= set(names)
    assert all(isinstance(t, go.Scatter) for t in fig.data)
    node_ids = sorted(i for trace, ids in click_map.items() if fig.data[trace].name in
                      ("culled (ancestor)", "living member", "champion") for i in ids)
    assert node_ids == sorted(layout.nodes["first_id"])
    ring = fig.data[-1]
    assert (ring.x[0], ring.y[0]) == (living["x"], living["y"])
    ticks = next(i for i, t in enumerate(fig.data) if t.name == "failed children")
    assert charts.clicked_id({"curve_number": ticks, "point_index": 0}, click_map) == click_map[ticks][0]
    assert charts.clicked_id({"customdata": [18], "curve_number": 0}, click_map) == 18
    assert charts.clicked_id({"curve_number": 0, "point_index": 0}, click_map) is None   # the edges
    monkeypatch.setattr(charts, "WEBGL_THRESHOLD", 10)
    fig, _ = charts.tree_figure(layout, "val_bpb", True, "generation", selected=living["member"])
    assert isinstance(fig.data[0], go.Scattergl) and isinstance(fig.data[-1], go.Scatter)   # the ring stays SVG


def test_hover_text_is_escaped(normal):
    members = normal.selection.members.assign(description="<script>alert(1)</script>")
    layout = lv.tree_layout(members, normal.frame, normal.selection.champion, "living")
    hover = charts.node_hover(layout.nodes, "val_bpb")
    assert all("&lt;script&gt;" in h for h in hover) and not any("<script>" in h for h in hover)


def test_progress_figure_is_the_promotion_staircase(normal):
    promotions = lv.promotion_table(normal)
    fig = charts.progress_figure(normal.frame, promotions, "val_bpb", True)
    steps = next(t for t in fig.data if t.name == "promotion")
    assert list(steps.x) == promotions["at_id"].tolist()
    assert list(steps.y) == pytest.approx(promotions["estimate"].tolist())
    line = next(t for t in fig.data if t.name.startswith("champion (estimate"))
    assert line.line.shape == "hv" and line.x[-1] == normal.frame["id"].max()
    points = next(t for t in fig.data if t.name.startswith("trained experiment"))
    assert len(points.x) == normal.frame["status"].eq("ok").sum()
    labels = [a.text for a in fig.layout.annotations]
    assert 0 < len(labels) <= charts.MAX_STEP_LABELS
    assert any(promotions["description"].iloc[-1][:20] in label for label in labels) or len(promotions) > charts.MAX_STEP_LABELS


def test_progress_figure_draws_the_holdout_beside_on_its_own_axis(tmp_path):
    run = lv.load_run(make_run(tmp_path / "h", n=60, holdout=True))
    fig = charts.progress_figure(run.frame, lv.promotion_table(run), run.metric, True, run.holdout)
    holdout = next(t for t in fig.data if "holdout" in (t.name or ""))
    assert holdout.yaxis == "y2" and fig.layout.yaxis2.overlaying == "y"


# --------------------------------------------------------------------------- results.tsv and the console line


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
