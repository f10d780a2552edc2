"""The Streamlit app end to end in-process (streamlit.testing AppTest) on generated stores."""
from __future__ import annotations

import json
import sys
import time
import tomllib
from pathlib import Path

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from storegen import make_corrupt_run, make_empty_run, make_run

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "app.py")
PROGRESS_TAB, TABLE_TAB = ":material/show_chart: Progress", ":material/table: Experiments"


def open_app(monkeypatch, runs_dir: Path, timeout: float = 60) -> AppTest:
    monkeypatch.setenv("AUTORESEARCH_RUNS", str(runs_dir))
    monkeypatch.setattr(sys, "argv", ["app.py"])
    at = AppTest.from_file(APP, default_timeout=timeout)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def chart_specs(at: AppTest) -> list[dict]:
    return [json.loads(el.proto.spec) for el in at.get("plotly_chart")]


def texts(elements) -> list[str]:
    return [str(e.value) for e in elements]


def failures(at: AppTest) -> list[str]:
    """The app's own error lines (a failed experiment's reason is an st.error too, and fine)."""
    return [e for e in texts(at.error) if e.startswith("Could not show")]


def snapshot(run_dir: Path) -> dict:
    return {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in run_dir.rglob("*")}


@pytest.fixture(scope="module")
def normal_runs(tmp_path_factory) -> Path:
    runs = tmp_path_factory.mktemp("runs")
    make_run(runs / "mar5", n=40)
    return runs


def test_empty_run_says_so(tmp_path, monkeypatch):
    make_empty_run(tmp_path / "fresh", state="running")
    at = open_app(monkeypatch, tmp_path)
    assert "No experiments recorded yet." in texts(at.info)
    assert not at.get("plotly_chart")
    assert any("Live" in c for c in texts(at.caption))   # a running run refreshes itself


def test_no_runs_dir_is_a_note_not_an_error(tmp_path, monkeypatch):
    at = open_app(monkeypatch, tmp_path / "missing")
    assert any("No runs under" in t for t in texts(at.sidebar.info))


def test_normal_run_shows_tree_metric_and_totals(normal_runs, monkeypatch):
    at = open_app(monkeypatch, normal_runs)
    (tree,) = chart_specs(at)   # only the open tab is drawn
    names = {trace.get("name") for trace in tree["data"]}
    assert {"edges", "champion's path", "champion", "living", "culled"} <= names
    assert tree["layout"]["yaxis"]["title"]["text"] == "val_bpb"
    frame = pd.read_parquet(normal_runs / "mar5" / "lineage.parquet")
    labels = {m.label: m.value for m in at.metric}
    assert labels["Experiments"] == str(len(frame))
    assert labels["Best val_bpb"] == f"{frame.loc[frame['status'] == 'ok', 'val_bpb'].min():.6f}"
    assert not at.warning
    champion = json.loads((normal_runs / "mar5" / "run.json").read_text())["champion_id"]
    assert at.number_input(key="selected_id").value == champion   # opens on the champion
    at.session_state["view"] = PROGRESS_TAB
    at.run()
    (progress,) = chart_specs(at)
    assert progress["layout"]["yaxis"]["title"]["text"] == "val_bpb"
    assert {"running best", "new best", "failed"} <= {t.get("name") for t in progress["data"]}


def test_selecting_an_experiment_shows_its_diff_and_log(normal_runs, monkeypatch):
    at = open_app(monkeypatch, normal_runs)
    frame = pd.read_parquet(normal_runs / "mar5" / "lineage.parquet")
    child = int(frame.loc[(frame["kind"] == "child") & (frame["status"] == "ok"), "id"].iloc[2])
    at.number_input(key="selected_id").set_value(child).run()
    assert not at.exception
    assert any(h.startswith(f"#{child} ") for h in texts(at.subheader))
    exp_dir = normal_runs / "mar5" / "experiments" / str(child)
    diffs = [c.value for c in at.code if c.language == "diff"]
    assert [d.rstrip() for d in diffs] == [(exp_dir / "diff.patch").read_text().rstrip()]
    logs = [c.value for c in at.code if c.language == "text"]
    assert logs and logs[0].rstrip().endswith((exp_dir / "run.log").read_text().rstrip().splitlines()[-1])
    # The parent button walks up the tree.
    parent = int(frame.loc[frame["id"] == child, "parent_id"].iloc[0])
    at.button(key="nav_parent").click().run()
    assert at.number_input(key="selected_id").value == parent
    assert any(h.startswith(f"#{parent} ") for h in texts(at.subheader))


def test_table_filters(normal_runs, monkeypatch):
    at = open_app(monkeypatch, normal_runs)
    frame = pd.read_parquet(normal_runs / "mar5" / "lineage.parquet")
    at.session_state["view"] = TABLE_TAB
    at.run()
    assert len(at.dataframe[0].value) == len(frame)
    assert [b.label for b in at.get("download_button")] == ["CSV", "Parquet"]
    at.multiselect(key="f_status").set_value(["crash"]).run()
    crashes = (frame["status"] == "crash").sum()
    assert any(c.startswith(f"{crashes} of {len(frame)} experiments") for c in texts(at.caption))
    assert len(at.dataframe[0].value) == crashes


def test_other_metric_name_everywhere(tmp_path, monkeypatch):
    make_run(tmp_path / "e8", n=25, metric="val_bpc")
    at = open_app(monkeypatch, tmp_path)
    labels = [m.label for m in at.metric]
    assert "Best val_bpc" in labels and not any("val_bpb" in label for label in labels)
    tree = chart_specs(at)[0]
    assert tree["layout"]["yaxis"]["title"]["text"] == "val_bpc"
    assert "val_bpb" not in json.dumps(tree)


@pytest.mark.parametrize("what, level, needle", [
    ("parquet", "warning", "lineage.parquet is unreadable"),
    ("missing_parquet", "info", "lineage.parquet is missing"),
    ("events", "info", "torn"),
    ("run_json", "warning", "run.json is unreadable"),
])
def test_broken_stores_show_a_note_not_a_traceback(tmp_path, monkeypatch, what, level, needle):
    make_corrupt_run(tmp_path / "broken", what, n=12)
    at = open_app(monkeypatch, tmp_path)
    notes = texts(at.warning if level == "warning" else at.info)
    assert any(needle in note for note in notes), notes
    assert {m.label: m.value for m in at.metric}["Experiments"] == "12"   # rows still shown


def test_runs_dir_argument_and_typed_path(tmp_path, monkeypatch):
    make_run(tmp_path / "a" / "run1", n=6)
    make_run(tmp_path / "b" / "run2", n=7)
    monkeypatch.setenv("AUTORESEARCH_RUNS", str(tmp_path / "nowhere"))
    monkeypatch.setattr(sys, "argv", ["app.py", "--runs-dir", str(tmp_path / "a")])
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    assert not at.exception and texts(at.markdown)[0].startswith("# run1")
    at.text_input(key="typed_path").set_value(str(tmp_path / "b" / "run2")).run()
    assert texts(at.markdown)[0].startswith("# run2")
    at.text_input(key="typed_path").set_value(str(tmp_path / "nothing-here")).run()
    assert any("neither a run" in e for e in texts(at.sidebar.error))


def test_app_never_writes_to_the_run(normal_runs, monkeypatch):
    before = snapshot(normal_runs)
    at = open_app(monkeypatch, normal_runs)
    at.number_input(key="selected_id").set_value(3).run()
    assert snapshot(normal_runs) == before


def test_ten_thousand_rows_render_in_time(tmp_path, monkeypatch):
    make_run(tmp_path / "big", n=10_000, files_for=20)
    start = time.perf_counter()
    at = open_app(monkeypatch, tmp_path, timeout=180)
    elapsed = time.perf_counter() - start
    assert elapsed < 90, f"first render took {elapsed:.1f} s"
    tree = chart_specs(at)[0]
    assert {t["type"] for t in tree["data"] if t.get("name") != "selected"} == {"scattergl"}
    assert sum(len(t["hovertext"]) for t in tree["data"] if t.get("hovertext")) == 10_000
    start = time.perf_counter()
    at.number_input(key="selected_id").set_value(5).run()
    assert not at.exception and time.perf_counter() - start < 60
    assert [c.language for c in at.code][:1] == ["diff"]


def test_config_listens_on_loopback_headless_without_stats():
    config = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert config["server"]["address"] == "127.0.0.1"
    assert config["server"]["headless"] is True
    assert config["browser"]["gatherUsageStats"] is False


def _rewrite(run_dir: Path, change) -> None:
    """Apply `change(frame, meta)` to a generated store's lineage.parquet and run.json."""
    frame = pd.read_parquet(run_dir / "lineage.parquet")
    meta = json.loads((run_dir / "run.json").read_text())
    frame = change(frame, meta)
    frame.to_parquet(run_dir / "lineage.parquet", index=False)
    (run_dir / "run.json").write_text(json.dumps(meta))


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
    shown = at.number_input(key="selected_id").value
    assert (pd.read_parquet(run_dir / "lineage.parquet")["id"] == shown).any() or at.info
    for tab in (PROGRESS_TAB, TABLE_TAB):
        at.session_state["view"] = tab
        at.run()
        assert not at.exception and not failures(at)


def test_a_rerun_shows_its_members_diff(normal_runs, monkeypatch):
    at = open_app(monkeypatch, normal_runs)
    frame = pd.read_parquet(normal_runs / "mar5" / "lineage.parquet")
    reruns = frame[(frame["kind"] == "rerun") & (frame["member"] != "m0000")]
    rerun = reruns.iloc[0]
    first = int(frame.loc[frame["member"] == rerun["member"], "id"].min())
    at.number_input(key="selected_id").set_value(int(rerun["id"])).run()
    diffs = [c.value.rstrip() for c in at.code if c.language == "diff"]
    expected = (normal_runs / "mar5" / "experiments" / str(first) / "diff.patch").read_text().rstrip()
    assert diffs == [expected]
    assert any("re-run" in c for c in texts(at.caption))
