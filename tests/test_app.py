"""The Streamlit app end to end in-process (streamlit.testing AppTest) on stores written the
driver's way (tests/storegen.py)."""
from __future__ import annotations

import json
import shutil
import sys
import time
import tomllib
from pathlib import Path

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from population import lineage_view as lv
from storegen import make_corrupt_run, make_empty_run, make_run

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "app.py")
TREE_TAB, PROGRESS_TAB, TABLE_TAB, THROUGHPUT_TAB = (
    ":material/account_tree: Lineage tree", ":material/show_chart: Progress", ":material/table: Experiments",
    ":material/timeline: Throughput")


def open_app(monkeypatch, runs_dir: Path, timeout: float = 60) -> AppTest:
    monkeypatch.setenv("AUTORESEARCH_RUNS", str(runs_dir))
    monkeypatch.setattr(sys, "argv", ["app.py"])
    at = AppTest.from_file(APP, default_timeout=timeout)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def chart_specs(at: AppTest) -> list[dict]:
    return [json.loads(el.proto.spec) for el in at.get("plotly_chart")]


def values(data) -> list:
    """A figure array from its JSON: plotly writes numpy arrays as base64 (`bdata`, `dtype`)."""
    if isinstance(data, dict) and "bdata" in data:
        import base64

        import numpy as np
        return np.frombuffer(base64.b64decode(data["bdata"]), dtype=data["dtype"]).tolist()
    return list(data)


def texts(elements) -> list[str]:
    return [str(e.value) for e in elements]


def metrics(at: AppTest) -> dict[str, tuple[str, str]]:
    return {m.label: (m.value, m.delta) for m in at.metric}


def failures(at: AppTest) -> list[str]:
    """The app's own error lines (a failed experiment's reason is an st.error too, and fine)."""
    return [e for e in texts(at.error) if e.startswith("Could not show")]


def show_tab(at: AppTest, tab: str) -> AppTest:
    at.session_state["view"] = tab
    at.run()
    assert not at.exception and not failures(at)
    return at


def snapshot(run_dir: Path) -> dict:
    return {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in run_dir.rglob("*")}


@pytest.fixture(scope="module")
def normal_runs(tmp_path_factory) -> Path:
    runs = tmp_path_factory.mktemp("runs")
    make_run(runs / "mar5", n=60, lost_rate=0.05, workers=4, population=6)
    return runs


@pytest.fixture(scope="module")
def normal(normal_runs) -> lv.RunData:
    return lv.load_run(normal_runs / "mar5")


def test_a_page_without_runs_says_so_and_waits(tmp_path, monkeypatch):
    at = open_app(monkeypatch, tmp_path / "missing")
    assert any("No runs under" in t for t in texts(at.sidebar.info))
    assert any(c.startswith("Waiting for a run under") for c in texts(at.caption))


def test_empty_run_says_so(tmp_path, monkeypatch):
    make_empty_run(tmp_path / "fresh", state="running")
    at = open_app(monkeypatch, tmp_path)
    assert "No experiments recorded yet." in texts(at.info)
    assert not at.get("plotly_chart")
    assert any("live: refreshes every" in c for c in texts(at.caption))   # a running run refreshes itself


def test_the_headline_is_the_champion_and_its_estimate_not_the_best_run(normal_runs, normal, monkeypatch):
    at = open_app(monkeypatch, normal_runs)
    champion = normal.selection.champion_row
    shown = metrics(at)
    label = next(k for k in shown if k.startswith("Champion "))
    assert label == f"Champion {champion['member']} · {champion['runs']} run" + ("s" if champion["runs"] > 1 else "")
    assert shown[label][0] == f"{champion['estimate']:.6f}"
    seed = normal.selection.members.loc["m0000", "estimate"]
    assert shown[label][1] == f"{100 * (seed - champion['estimate']) / seed:+.2f} % vs seed"
    frame = normal.frame
    best = frame.loc[frame["status"] == "ok", "val_bpb"].idxmin()
    assert shown["Best single run"] == (f"{frame.at[best, 'val_bpb']:.6f}", f"#{frame.at[best, 'id']}, one run")
    failed = frame["status"].isin(lv.FAILED_STATUSES).sum()
    lost = frame["status"].eq("lost").sum()
    assert lost > 0 and shown["Experiments"] == (str(len(frame)), f"{failed} failed, {lost} lost")
    # opens on the champion's first run, ringed in the tree
    assert at.number_input(key="selected_id").value == champion["first_id"]
    (tree,) = chart_specs(at)   # only the open tab is drawn
    traces = {t.get("name"): t for t in tree["data"]}
    assert {"edges", "champion's line", "champion", "living member", "selected", "failed children"} <= set(traces)
    assert values(traces["selected"]["text"]) == [champion["member"]]
    assert len(values(traces["champion"]["x"])) == 1                                # one star: one champion member


def test_progress_is_the_promotion_staircase(normal_runs, normal, monkeypatch):
    at = show_tab(open_app(monkeypatch, normal_runs), PROGRESS_TAB)
    (progress,) = chart_specs(at)
    steps = next(t for t in progress["data"] if t.get("name") == "promotion")
    assert values(steps["x"]) == normal.selection.promotions["at_id"].tolist()
    table = at.dataframe[0].value
    assert table["member"].tolist() == normal.selection.promotions["member"].tolist()[::-1]   # newest first


def test_selecting_an_experiment_shows_its_member_diff_side_by_side_and_log(normal_runs, normal, monkeypatch):
    at = open_app(monkeypatch, normal_runs)
    frame = normal.frame
    child = int(frame.loc[(frame["kind"] == "child") & (frame["status"] == "ok"), "id"].iloc[4])
    at.number_input(key="selected_id").set_value(child).run()
    assert not at.exception
    member = frame.loc[frame["id"] == child, "member"].iloc[0]
    assert any(h.startswith(f"#{child} · {member}") for h in texts(at.subheader))
    exp_dir = normal_runs / "mar5" / "experiments" / str(child)
    added = next(line[1:] for line in (exp_dir / "diff.patch").read_text().splitlines()
                 if line.startswith("+") and not line.startswith("+++"))
    side = [h.proto.body for h in at.get("html") if "class='sbs'" in h.proto.body]
    assert len(side) == 1 and f"class='new'>{added}</td>" in side[0]
    logs = [c.value for c in at.code if c.language == "text"]
    assert logs and logs[0].rstrip().endswith((exp_dir / "run.log").read_text().rstrip().splitlines()[-1])
    estimate = normal.selection.members.loc[member, "estimate"]
    assert any(f"Member **{member}**: estimate **{estimate:.6f}**" in m for m in texts(at.markdown))
    at.segmented_control(key="diff_view").set_value("unified").run()
    diffs = [c.value.rstrip() for c in at.code if c.language == "diff"]
    assert diffs == [(exp_dir / "diff.patch").read_text().rstrip()]
    # The parent button walks up to the parent member's first run.
    parent = normal.selection.members.loc[normal.selection.members.loc[member, "parent"]]
    at.button(key="nav_parent").click().run()
    assert at.number_input(key="selected_id").value == parent["first_id"]


def test_a_noise_run_belongs_to_the_seed_member_with_all_its_runs(normal_runs, monkeypatch):
    at = open_app(monkeypatch, normal_runs)
    at.number_input(key="selected_id").set_value(2).run()        # the third baseline run
    assert any(h.startswith("#2 · m0000 · baseline") for h in texts(at.subheader))
    runs = [d.value for d in at.dataframe if "seed" in d.value.columns]
    assert len(runs) == 1 and runs[0]["id"].tolist() == [0, 1, 2] and set(runs[0]["kind"]) == {"baseline"}
    assert "The seed has no parent, so no diff." in texts(at.info)


def test_a_lost_experiment_is_not_a_failure(normal_runs, normal, monkeypatch):
    lost = int(normal.frame.loc[normal.frame["status"] == "lost", "id"].iloc[0])
    at = open_app(monkeypatch, normal_runs)
    at.number_input(key="selected_id").set_value(lost).run()
    assert any(t.startswith("lost: ") and "not a failure" in t for t in texts(at.info))
    assert not [e for e in texts(at.error) if "lost" in e]


def test_table_filters_living_only_and_sorts_failures_last(normal_runs, normal, monkeypatch):
    at = show_tab(open_app(monkeypatch, normal_runs), TABLE_TAB)
    frame = normal.frame
    table = at.dataframe[0].value
    assert len(table) == len(frame) and list(table.columns[:3]) == ["id", "status", "reason"]   # reason beside status
    assert {"estimate", "alive", "champion", "delta_parent", "member_runs"} <= set(table.columns)
    assert [b.label for b in at.get("download_button")] == ["CSV", "Parquet"]
    at.selectbox(key="f_sort").set_value("val_bpb, best first").run()
    table = at.dataframe[0].value
    values = table["val_bpb"]
    assert values.iloc[0] == frame["val_bpb"].min() and values.iloc[-1:].isna().all()
    assert not values.iloc[: values.notna().sum()].isna().any()            # failures after every value
    at.multiselect(key="f_status").set_value(["crash"]).run()
    crashes = (frame["status"] == "crash").sum()
    assert any(c.startswith(f"{crashes} of {len(frame)} experiments") for c in texts(at.caption))
    at.multiselect(key="f_status").set_value([]).run()
    at.toggle(key="living_only").set_value(True).run()
    assert set(at.dataframe[0].value["member"]) == set(normal.selection.members.index[normal.selection.members["alive"]])
    show_tab(at, TREE_TAB)                                                   # the tree highlights the living
    tree = chart_specs(at)[0]
    living = next(t for t in tree["data"] if t.get("name") == "living member")
    assert living["marker"]["line"]["width"] == 2.5


def test_throughput_lanes_per_gpu(normal_runs, monkeypatch):
    at = show_tab(open_app(monkeypatch, normal_runs), THROUGHPUT_TAB)
    (figure,) = chart_specs(at)
    assert figure["layout"]["yaxis"]["ticktext"] == [f"node-0 · GPU {i}" for i in range(4)]
    assert {t["name"] for t in figure["data"]} >= {"ok", "agent $ (cumulative)"}
    spend = at.dataframe[-1].value.set_index("backend")               # the ledger per agent backend
    assert "whole run" in spend.index and len(spend) >= 2
    backends = spend.drop(index="whole run")
    assert backends["experiments"].sum() <= spend.loc["whole run", "experiments"]
    assert spend.loc["whole run", "dollars"] == pytest.approx(backends["dollars"].sum())
    assert ((backends["keep_rate"] >= 0) & (backends["keep_rate"] <= 1)).all()


def test_other_metric_name_everywhere(tmp_path, monkeypatch):
    make_run(tmp_path / "e8", n=25, metric="val_bpc")
    at = open_app(monkeypatch, tmp_path)
    tree = chart_specs(at)[0]
    assert tree["layout"]["coloraxis"]["colorbar"]["title"]["text"] == "estimate<br>val_bpc"
    assert "val_bpb" not in json.dumps(tree) and not any("val_bpb" in k for k in metrics(at))
    show_tab(at, PROGRESS_TAB)
    assert chart_specs(at)[0]["layout"]["yaxis"]["title"]["text"] == "val_bpc"


def test_holdout_beside_val_and_the_overfitting_warning(tmp_path, monkeypatch):
    make_run(tmp_path / "over", n=80, holdout=True, overfit=0.85)
    at = open_app(monkeypatch, tmp_path)
    assert "holdout_bpb" in metrics(at)
    assert any("Possible overfitting to the validation set" in w for w in texts(at.warning))
    show_tab(at, PROGRESS_TAB)
    names = [t.get("name", "") for t in chart_specs(at)[0]["data"]]
    assert any("holdout_bpb" in name for name in names)
    assert "holdout_bpb" in at.dataframe[0].value.columns


@pytest.mark.parametrize("what, level, needle", [
    ("parquet", "warning", "lineage.parquet is unreadable"),
    ("missing_parquet", "info", "lineage.parquet is missing"),
    ("events", "info", "torn"),
    ("run_json", "warning", "run.json is unreadable"),
    ("forged", "warning", "The journal cannot be trusted"),
])
def test_broken_stores_show_a_note_not_a_traceback(tmp_path, monkeypatch, what, level, needle):
    make_corrupt_run(tmp_path / "broken", what, n=12)
    at = open_app(monkeypatch, tmp_path)
    notes = texts(at.warning if level == "warning" else at.info)
    assert any(needle in note for note in notes), notes
    assert metrics(at)["Experiments"][0] == "12"   # rows still shown
    assert not failures(at)


def test_runs_dir_argument_and_typed_path(tmp_path, monkeypatch):
    make_run(tmp_path / "a" / "run1", n=6)
    make_run(tmp_path / "b" / "run2", n=7)
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("AUTORESEARCH_RUNS", str(tmp_path / "nowhere"))
    monkeypatch.setattr(sys, "argv", ["app.py", "--runs-dir", str(tmp_path / "a")])
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    assert not at.exception and texts(at.markdown)[0].startswith("# run1")
    at.text_input(key="typed_path").set_value(str(tmp_path / "b" / "run2")).run()
    assert texts(at.markdown)[0].startswith("# run2")
    at.text_input(key="typed_path").set_value(str(tmp_path / "nothing-here")).run()
    assert any("neither a run" in e for e in texts(at.sidebar.error))
    at.text_input(key="typed_path").set_value(str(tmp_path / "empty")).run()     # wait there for a run
    assert any(c.startswith(f"Waiting for a run under `{tmp_path / 'empty'}`") for c in texts(at.caption))


def test_app_never_writes_to_the_run(normal_runs, monkeypatch):
    before = snapshot(normal_runs)
    at = open_app(monkeypatch, normal_runs)
    at.number_input(key="selected_id").set_value(3).run()
    for tab in (PROGRESS_TAB, TABLE_TAB, THROUGHPUT_TAB):
        show_tab(at, tab)
    assert snapshot(normal_runs) == before


def test_ten_thousand_rows_render_in_time(tmp_path, monkeypatch):
    make_run(tmp_path / "big", n=10_000, files_for=20)
    start = time.perf_counter()
    at = open_app(monkeypatch, tmp_path, timeout=180)
    elapsed = time.perf_counter() - start
    assert elapsed < 60, f"first render took {elapsed:.1f} s"
    tree = chart_specs(at)[0]
    drawn = sum(len(values(t["x"])) for t in tree["data"] if t.get("name") in ("culled (ancestor)", "living member", "champion"))
    assert drawn < 2_000                                     # the living lineage, not 8,000 members
    at.segmented_control(key="tree_scope").set_value("every member").run()
    tree = chart_specs(at)[0]
    assert {t["type"] for t in tree["data"] if t.get("name") == "culled (ancestor)"} == {"scattergl"}
    assert next(t for t in tree["data"] if t.get("name") == "selected")["type"] == "scatter"   # visible over WebGL
    start = time.perf_counter()
    at.number_input(key="selected_id").set_value(5).run()
    assert not at.exception and time.perf_counter() - start < 30
    assert any("class='sbs'" in h.proto.body for h in at.get("html"))


def test_config_listens_on_loopback_headless_without_stats_or_file_watcher():
    config = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert config["server"]["address"] == "127.0.0.1"
    assert config["server"]["headless"] is True
    assert config["server"]["fileWatcherType"] == "none"
    assert config["browser"]["gatherUsageStats"] is False


def _rewrite(run_dir: Path, change) -> None:
    """Apply `change(frame, meta)` to a generated store's lineage.parquet and run.json, and drop the
    journal (these shapes come from other writers)."""
    frame = pd.read_parquet(run_dir / "lineage.parquet")
    meta = json.loads((run_dir / "run.json").read_text())
    frame = change(frame, meta)
    frame.to_parquet(run_dir / "lineage.parquet", index=False)
    (run_dir / "run.json").write_text(json.dumps(meta))
    (run_dir / "events.jsonl").unlink()


def _all_failed(frame, meta):
    meta["champion_id"] = None
    return frame.assign(status="crash", val_bpb=float("nan"), metric_mean=float("nan"), champion=False)


def _higher_is_better(frame, meta):
    meta["lower_is_better"] = False
    return frame


def _gaps_and_orphans(frame, meta):
    frame = frame[frame["id"] % 3 != 1].copy()          # ids with gaps, parents gone
    meta["champion_id"] = 10_000                         # a champion that is not there
    return frame


@pytest.mark.parametrize("change", [_all_failed, _higher_is_better, _gaps_and_orphans])
def test_odd_stores_render_without_errors(tmp_path, monkeypatch, change):
    run_dir = make_run(tmp_path / "odd", n=30)
    _rewrite(run_dir, change)
    at = open_app(monkeypatch, tmp_path)
    assert not failures(at) and len(at.get("plotly_chart")) == 1
    for tab in (PROGRESS_TAB, TABLE_TAB, THROUGHPUT_TAB):
        show_tab(at, tab)


def test_without_experiment_files_the_diff_and_the_file_come_from_git(tmp_path, monkeypatch):
    """A store copied without experiments/ still shows a child's diff and whole file, read from the
    run's repository (run.json `repo`) with the commits its rows name."""
    from test_driver_support import git, make_seed_repo

    repo = make_seed_repo(tmp_path / "seed")
    seed = git(repo, "rev-parse", "HEAD").strip()
    train = repo / "engine" / "train.py"
    train.write_text(train.read_text().replace("DEPTH = 8", "DEPTH = 11"))
    git(repo, "commit", "-qam", "deeper")
    child_commit = git(repo, "rev-parse", "HEAD").strip()
    run_dir = make_run(tmp_path / "runs" / "copied", n=12, lost_rate=0.0)
    frame = pd.read_parquet(run_dir / "lineage.parquet")
    child = int(frame.loc[(frame["kind"] == "child") & (frame["status"] == "ok"), "id"].iloc[0])
    frame.loc[frame["id"] == child, ["commit", "parent_commit"]] = [child_commit, seed]
    frame.to_parquet(run_dir / "lineage.parquet", index=False)
    meta = json.loads((run_dir / "run.json").read_text())
    (run_dir / "run.json").write_text(json.dumps(meta | {"repo": str(repo), "seed_commit": seed}))
    shutil.rmtree(run_dir / "experiments")
    at = open_app(monkeypatch, tmp_path / "runs")
    at.number_input(key="selected_id").set_value(child).run()
    side = [h.proto.body for h in at.get("html") if "class='sbs'" in h.proto.body]
    assert len(side) == 1 and "class='new'>DEPTH = 11</td>" in side[0] and "class='old'>DEPTH = 8</td>" in side[0]
    assert any(c.startswith(f"from git diff {seed[:9]} {child_commit[:9]}") for c in texts(at.caption))
    files = [c.value for c in at.code if c.language == "python"]
    assert [text.rstrip("\n") for text in files] == [train.read_text().rstrip("\n")]


def test_a_stalled_agent_or_training_of_a_running_run_is_shown(tmp_path, monkeypatch):
    from population.store import RunStore

    make_run(tmp_path / "live", n=20, state="running")
    RunStore.open(tmp_path / "live").update_meta(stalled=[{"id": 19, "stage": "agent", "silent_s": 720}])
    at = open_app(monkeypatch, tmp_path)
    assert any("e0019 is stalled: its agent has printed nothing for 12 min" in w for w in texts(at.warning))
