"""Lineage browser of a population run: `streamlit run app.py [-- --runs-dir runs]`.

Read-only over a run directory (docs/ARCHITECTURE.md, "The lineage store"): the lineage tree, the
progress chart, a filterable table of every experiment, run totals, and per experiment its diff,
run.log, transcript and prompt. A live run (run.json state `running`) refreshes itself. The data
logic lives in population/lineage_view.py, the figures in population/lineage_charts.py.

.streamlit/config.toml (read from the working directory, so start it from the repository root)
keeps the server on 127.0.0.1; elsewhere pass `--server.address 127.0.0.1`.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import pandas as pd
import streamlit as st

from population import lineage_charts as charts
from population import lineage_view as lv

REFRESH_SECONDS = 10
LOG_TAIL_LINES = 200
STATUS_COLOR = {"ok": "green", "crash": "red", "timeout": "red", "violation": "orange",
                "duplicate": "gray", "agent_error": "violet", "lost": "gray"}
STATE_BADGE = {"running": ("live", "green", ":material/radio_button_checked:"),
               "stopped": ("stopped", "orange", ":material/pause_circle:"),
               "finished": ("finished", "blue", ":material/check_circle:")}
TREE_TAB, PROGRESS_TAB, TABLE_TAB = (":material/account_tree: Lineage tree", ":material/show_chart: Progress",
                                     ":material/table: Experiments")
TABLE_COLUMNS = ["id", "kind", "member", "parent_id", "status", "{metric}", "metric_mean",
                 "generation", "agent", "worker", "gpu", "description", "reason",
                 "train_seconds", "agent_cost_usd", "started"]


# --------------------------------------------------------------------------- inputs

def runs_dir_from_args(argv: list[str]) -> tuple[Path, str | None]:
    """`--runs-dir` after `--`, else $AUTORESEARCH_RUNS, else ./runs; plus an error line if bad."""
    parser = argparse.ArgumentParser(add_help=False, exit_on_error=False)
    parser.add_argument("--runs-dir")
    default = Path(os.environ.get("AUTORESEARCH_RUNS") or "runs")
    try:
        known, _ = parser.parse_known_args(argv)
    except (argparse.ArgumentError, SystemExit):
        return default, "--runs-dir needs a directory, e.g. `streamlit run app.py -- --runs-dir runs`."
    return (Path(known.runs_dir) if known.runs_dir else default), None


@st.cache_data(max_entries=16, show_spinner=False)
def load_cached(path: str, signature: tuple) -> lv.RunData:
    """A run, re-read only when one of its store files changes (signature = mtimes and sizes)."""
    return lv.load_run(Path(path))


@st.cache_data(max_entries=16, show_spinner=False)
def layout_cached(path: str, signature: tuple, x_mode: str):
    run = load_cached(path, signature)
    nodes, edge_x, edge_y = lv.tree_layout(run.frame, run.metric, run.lower_is_better, x_mode)
    nodes["hover"] = charts.hover_text(nodes, run.metric)
    champion = lv.champion_id(run.frame, run.meta, run.metric, run.lower_is_better)
    path_x, path_y = lv.path_line(nodes, lv.ancestry(run.frame, champion)) if champion is not None else ([], [])
    return nodes, edge_x, edge_y, path_x, path_y, champion


@st.cache_data(max_entries=4, show_spinner=False)
def export_cached(path: str, signature: tuple, fmt: str) -> bytes:
    return lv.export_bytes(load_cached(path, signature).frame, fmt)


def run_state(path: Path) -> str:
    try:
        return str(json.loads((path / "run.json").read_text()).get("state", ""))
    except (OSError, ValueError, AttributeError):
        return ""


def pick_run() -> Path | None:
    """Sidebar: the runs under the runs dir, or a path typed in."""
    runs_dir, arg_error = runs_dir_from_args(sys.argv[1:])
    st.sidebar.title(":material/account_tree: Population")
    if arg_error:
        st.sidebar.error(arg_error)
    typed = st.sidebar.text_input("Open a run or runs directory by path", key="typed_path",
                                  placeholder="runs/mar5 or /data/runs").strip()
    if typed:
        candidate = Path(typed).expanduser()
        if lv.looks_like_run(candidate):
            st.sidebar.caption(f"Showing `{candidate}`")
            return candidate
        if lv.list_runs(candidate):
            runs_dir = candidate
        else:
            st.sidebar.error(f"{candidate} is neither a run (run.json, lineage.parquet, ...) nor a directory of runs.")
    runs = lv.list_runs(runs_dir)
    if not runs:
        st.sidebar.info(f"No runs under `{runs_dir}`.")
        return None
    labels = {str(p): f"{p.name} · {run_state(p) or '?'}" for p in runs}
    chosen = st.sidebar.selectbox(f"Run ({len(runs)} in `{runs_dir}`)", list(labels),
                                  format_func=labels.get, key="run_path")
    return Path(chosen)


# --------------------------------------------------------------------------- selection

def select(exp_id: int, ring: bool = True) -> None:
    """Open an experiment; `ring` marks it in the tree (not needed for a click on the tree itself,
    where plotly highlights the point, and an unchanged figure keeps the user's zoom)."""
    st.session_state["selected_id"] = int(exp_id)
    st.session_state["ring"] = ring


def on_tree_select() -> None:
    points = _selected_points("tree_chart")
    click_map = st.session_state.get("tree_click_map", {})
    for point in points:
        exp_id = charts.clicked_id(point, click_map)
        if exp_id is not None:
            select(exp_id, ring=False)
            return


def on_progress_select() -> None:
    for point in _selected_points("progress_chart"):
        if isinstance(point.get("x"), (int, float)):
            select(int(point["x"]))
            return


def on_table_select(ids: list[int]) -> None:
    state = st.session_state.get("table")
    rows = state.selection.rows if state else []
    if rows and rows[0] < len(ids):
        select(ids[rows[0]])


def _selected_points(key: str) -> list[dict]:
    state = st.session_state.get(key)
    try:
        return list(state.selection.points) if state else []
    except AttributeError:
        return []


# --------------------------------------------------------------------------- page parts

def show_header(run: lv.RunData) -> None:
    state = run.meta.get("state", "")
    label, color, icon = STATE_BADGE.get(state, (state or "unknown state", "gray", ""))
    st.markdown(f"# {run.tag} &nbsp;:{color}-badge[{icon} {label}]")
    if run.live:
        paused = "" if st.session_state.get("auto_refresh", True) else " (paused in the sidebar)"
        st.caption(f"Live: refreshes every {REFRESH_SECONDS} s{paused} · last read {time.strftime('%H:%M:%S')}")
    facts = [f"task **{run.meta.get('task', '?')}**", f"metric **{run.metric}** "
             f"({'lower' if run.lower_is_better else 'higher'} is better)"]
    if run.meta.get("budget_s"):
        facts.append(f"budget **{run.meta['budget_s']} s**")
    if run.meta.get("workers"):
        facts.append(f"**{run.meta['workers']}** workers")
    if isinstance(run.meta.get("noise_std"), (int, float)):
        facts.append(f"noise σ **{run.meta['noise_std']:.4g}**")
    facts.append(f"`{run.path}`")
    st.markdown(" · ".join(facts))
    for level, text in run.notes:
        (st.warning if level == "warning" else st.info)(text)


def _fmt(value: float, pattern: str, missing: str = "—") -> str:
    return missing if value is None or (isinstance(value, float) and math.isnan(value)) else pattern.format(value)


def show_totals(run: lv.RunData) -> None:
    t = lv.run_totals(run.frame, run.metric, run.lower_is_better)
    cols = st.columns([1, 1, 1, 1, 1.4])
    failed_share = 100 * t["failed"] / max(t["experiments"], 1)
    cols[0].metric("Experiments", f"{t['experiments']:,}", f"{t['failed']:,} failed ({failed_share:.0f} %)",
                   delta_color="off", delta_arrow="off", border=True,
                   help=f"{t['ok']:,} ok · {t['living']:,} living members")
    cols[1].metric("GPU-hours", _fmt(t["gpu_hours"], "{:,.1f}"), border=True,
                   help="sum of the training subprocesses' wall time (train_seconds)")
    cols[2].metric("Per GPU-hour", _fmt(t["per_gpu_hour"], "{:.1f}"), border=True,
                   help="experiments per GPU-hour")
    cols[3].metric("Agent cost", _fmt(t["agent_cost_usd"], "${:,.2f}"), border=True,
                   help="sum of the agents' reported dollars")
    delta = None
    if not math.isnan(t["gain"]):
        signed = -t["gain"] if run.lower_is_better else t["gain"]
        delta = f"{signed:+.6f} ({-t['gain_pct'] if run.lower_is_better else t['gain_pct']:+.2f} %) vs baseline"
    cols[4].metric(f"Best {run.metric}", _fmt(t["best"], "{:.6f}"), delta,
                   delta_color="inverse" if run.lower_is_better else "normal", border=True,
                   help=f"experiment #{t['best_id']}; baseline {_fmt(t['baseline'], '{:.6f}')} "
                        "(mean of its runs)")


@st.cache_resource(max_entries=8, show_spinner=False)
def tree_figure_cached(path: str, signature: tuple, x_mode: str, ring: int | None):
    """The tree figure and its click map, built once per store change (never mutated after)."""
    run = load_cached(path, signature)
    nodes, edge_x, edge_y, path_x, path_y, _ = layout_cached(path, signature, x_mode)
    return charts.tree_figure(nodes, edge_x, edge_y, path_x, path_y, run.metric, run.lower_is_better,
                              lv.x_title(run.frame, x_mode), selected_id=ring)


@st.cache_resource(max_entries=4, show_spinner=False)
def progress_figure_cached(path: str, signature: tuple):
    run = load_cached(path, signature)
    return charts.progress_figure(run.frame, run.metric, run.lower_is_better)


def show_tree(run: lv.RunData, path: str, signature: tuple) -> None:
    x_mode = st.segmented_control("x axis", ["time", "generation"], default="time", key="x_mode",
                                  required=True, label_visibility="collapsed") or "time"
    ring = st.session_state.get("selected_id") if st.session_state.get("ring") else None
    fig, click_map = tree_figure_cached(path, signature, x_mode, ring)
    st.session_state["tree_click_map"] = click_map
    st.plotly_chart(fig, key="tree_chart", on_select=on_tree_select, selection_mode="points",
                    config={"scrollZoom": True, "displaylogo": False})
    st.caption("Click a node for its details · scroll to zoom, drag to pan, double-click to reset · "
               "gold line: the champion's path from the baseline · colour: "
               f"{run.metric} · points below the dotted line have no {run.metric}.")


def show_progress(run: lv.RunData, path: str, signature: tuple) -> None:
    st.plotly_chart(progress_figure_cached(path, signature), key="progress_chart",
                    on_select=on_progress_select, selection_mode="points", config={"displaylogo": False})
    st.caption(f"Every experiment a dot; green: a new best {run.metric}; the step line is the best so far; "
               "red crosses at the bottom failed (crash, timeout, violation, ...).")


def show_table(run: lv.RunData, path: str, signature: tuple) -> None:
    frame = run.frame
    f1, f2, f3, f4 = st.columns([2, 2, 2, 3])
    statuses = f1.multiselect("Status", sorted(frame["status"].unique()), key="f_status")
    agents = f2.multiselect("Agent", sorted(a for a in frame["agent"].unique() if a), key="f_agent")
    workers = f3.multiselect("Worker", sorted(w for w in frame["worker"].unique() if w), key="f_worker")
    text = f4.text_input("Search", key="f_text", placeholder="description, member, commit, reason, id")
    shown = frame[lv.filter_mask(frame, statuses, agents, workers, text)].iloc[::-1]   # newest first
    table = shown.assign(started=pd.to_datetime(shown["started_at"], unit="s", errors="coerce"))
    columns = [c.format(metric=run.metric) for c in TABLE_COLUMNS]
    ids = table["id"].astype(int).tolist()
    st.dataframe(
        table[columns], hide_index=True, height=420, key="table", on_select=lambda: on_table_select(ids),
        selection_mode="single-row",
        column_config={
            run.metric: st.column_config.NumberColumn(format="%.6f"),
            "metric_mean": st.column_config.NumberColumn(f"{run.metric} (mean)", format="%.6f"),
            "train_seconds": st.column_config.NumberColumn("train s", format="%.0f"),
            "agent_cost_usd": st.column_config.NumberColumn("agent $", format="%.3f"),
            "started": st.column_config.DatetimeColumn(format="YYYY-MM-DD HH:mm"),
            "description": st.column_config.TextColumn(width="large"),
        })
    left, mid, right = st.columns([4, 1, 1], vertical_alignment="center")
    left.caption(f"{len(shown):,} of {len(frame):,} experiments, newest first · "
                 "click a column header to sort, a row to open it")
    mid.download_button("CSV", lambda: export_cached(path, signature, "csv"), f"{run.tag}-lineage.csv",
                        "text/csv", icon=":material/download:", on_click="ignore", key="dl_csv")
    right.download_button("Parquet", lambda: export_cached(path, signature, "parquet"),
                          f"{run.tag}-lineage.parquet", "application/octet-stream",
                          icon=":material/download:", on_click="ignore", key="dl_parquet")


def show_details(run: lv.RunData, nodes: pd.DataFrame, champion: int | None) -> None:
    frame = run.frame
    first, last = int(frame["id"].min()), int(frame["id"].max())
    current = st.session_state.get("selected_id")
    if not isinstance(current, int) or not first <= current <= last:
        st.session_state["selected_id"] = champion if champion is not None else last
    head, pick = st.columns([4, 1], vertical_alignment="bottom")
    pick.number_input("Experiment #", first, last, step=1, key="selected_id",
                      on_change=lambda: st.session_state.update(ring=True))
    exp_id = int(st.session_state["selected_id"])
    row = lv.row_of(frame, exp_id)
    if row is None:
        head.subheader(f"Experiment #{exp_id}")
        st.info(f"No experiment #{exp_id} in this run.")
        return
    head.subheader(f"#{exp_id} · {row['member'] or '?'} · {row['kind'] or '?'}"
                   + (" :material/trophy:" if exp_id == champion else ""))
    st.badge(row["status"], color=STATUS_COLOR.get(row["status"], "gray"))
    if row["description"]:
        st.markdown(f"**{row['description']}**")
    if row["reason"]:
        (st.info if row["status"] == "ok" else st.error)(row["reason"])
    children = nodes.loc[nodes["tree_parent"].eq(exp_id).fillna(False), "id"].astype(int).tolist()
    show_navigation(frame, row, children, champion)
    show_figures(run, row)
    show_files(run, row)


def show_navigation(frame: pd.DataFrame, row: pd.Series, children: list[int], champion: int | None) -> None:
    exp_id = int(row["id"])
    parent = row["parent_id"]
    with st.container(horizontal=True):
        if parent is not pd.NA and lv.row_of(frame, int(parent)) is not None:
            st.button(f"Parent #{int(parent)}", icon=":material/arrow_upward:", key="nav_parent",
                      on_click=select, args=(int(parent),))
        if champion is not None and champion != exp_id:
            st.button(f"Champion #{champion}", icon=":material/trophy:", key="nav_champion",
                      on_click=select, args=(champion,))
        for child in children[:12]:
            st.button(f"Child #{child}", icon=":material/arrow_downward:", key=f"nav_child_{child}",
                      on_click=select, args=(child,))
        if len(children) > 12:
            st.caption(f"… and {len(children) - 12} more children (see the table)")
        if not children:
            st.caption("no children yet")


def show_figures(run: lv.RunData, row: pd.Series) -> None:
    parent = lv.row_of(run.frame, int(row["parent_id"])) if row["parent_id"] is not pd.NA else None
    value = row[run.metric]
    delta = None
    if parent is not None and not math.isnan(value) and not math.isnan(parent[run.metric]):
        delta = f"{value - parent[run.metric]:+.6f}"
    figures = [
        (f"{run.metric} (Δ parent)" if delta else run.metric, _fmt(value, "{:.6f}"), delta),
        (f"{run.metric} mean", _fmt(row["metric_mean"], "{:.6f}"), None),
        ("training s", _fmt(row["training_seconds"], "{:.1f}"), None),
        ("total s", _fmt(row["total_seconds"], "{:.1f}"), None),
        ("peak VRAM", _fmt(row["peak_vram_mb"] / 1024, "{:.1f} GB"), None),
        ("MFU", _fmt(row["mfu_percent"], "{:.1f} %"), None),
        ("tokens", _fmt(row["total_tokens_M"], "{:.1f} M"), None),
        ("steps", _fmt(row["num_steps"], "{:.0f}"), None),
        ("params", _fmt(row["num_params_M"], "{:.1f} M"), None),
        ("depth", _fmt(row["depth"], "{:.0f}"), None),
    ]
    with st.container(horizontal=True, gap="medium"):
        for label, text, delta in figures:
            st.metric(label, text, delta, delta_color="inverse" if run.lower_is_better else "normal",
                      width="content")
    agent = [f"agent `{row['agent'] or '?'}`", f"{_fmt(row['agent_seconds'], '{:.0f}')} s",
             _fmt(row["agent_cost_usd"], "${:.3f}"),
             "—" if row["agent_tokens"] is pd.NA else f"{int(row['agent_tokens']):,} tokens",
             f"training wall time {_fmt(row['train_seconds'], '{:.0f}')} s"]
    st.caption(" · ".join(agent))
    where = [f"worker `{row['worker'] or '?'}`",
             f"gpu `{row['gpu'] or '?'}` on `{row['node'] or '?'}`", f"seed `{row['seed']}`",
             f"generation `{row['generation']}`"]
    if row["commit"]:
        where.append(f"commit `{row['commit'][:12]}`")
    if row["branch"]:
        where.append(f"branch `{row['branch']}`")
    if not math.isnan(row["started_at"]):
        where.append("started " + time.strftime("%Y-%m-%d %H:%M", time.localtime(row["started_at"])))
    st.caption(" · ".join(where))


def show_files(run: lv.RunData, row: pd.Series) -> None:
    experiments = run.path / "experiments"
    exp_dir = experiments / str(int(row["id"]))
    diff_tab, log_tab, transcript_tab, prompt_tab = st.tabs(
        ["Diff vs parent", "run.log", "Agent transcript", "Prompt"])
    with diff_tab:
        diff, cut = lv.read_head(exp_dir / "diff.patch")
        if not diff and row["kind"] == "rerun":   # same commit as the member's first run
            first = run.frame.loc[run.frame["member"].eq(row["member"]), "id"].min()
            diff, cut = lv.read_head(experiments / str(int(first)) / "diff.patch")
            if diff:
                st.caption(f"A re-run of {row['member']}'s commit (seed {row['seed']}): its diff.")
        if diff:
            st.code(diff, language="diff", height=420 if diff.count("\n") > 25 else "content")
            if cut:
                st.caption("diff shortened; the full patch is in " + str(exp_dir / "diff.patch"))
        elif row["kind"] == "baseline" or row["parent_id"] is pd.NA:
            st.info("The baseline has no parent, so no diff.")
        else:
            st.info("No diff.patch recorded for this experiment.")
    with log_tab:
        log, _ = lv.read_tail(exp_dir / "run.log")
        if log:
            st.code(lv.tail_lines(log, LOG_TAIL_LINES), language="text", height=420)
            st.caption(f"last {LOG_TAIL_LINES} lines of {exp_dir / 'run.log'}")
        else:
            st.info("No run.log recorded for this experiment.")
    for tab, name in ((transcript_tab, "transcript.txt"), (prompt_tab, "prompt.md")):
        with tab:
            text, cut = lv.read_head(exp_dir / name)
            if text:
                st.code(text, language="markdown", height=420, wrap_lines=True)
                if cut:
                    st.caption(f"shortened; the full file is {exp_dir / name}")
            else:
                st.info(f"No {name} recorded for this experiment.")


# --------------------------------------------------------------------------- the page

def show_run(path: Path, was_live: bool) -> None:
    """Everything about one run; a fragment that reruns on a timer while the run is live."""
    signature = lv.store_signature(path)
    run = load_cached(str(path), signature)
    if run.live != was_live:   # started or stopped since the page was drawn: redo the timer
        st.rerun()
    show_header(run)
    if run.frame.empty:
        return
    show_totals(run)
    nodes, _, _, _, _, champion = layout_cached(str(path), signature, "time")
    # Stateful tabs: only the open one is drawn, so a 10,000-row run stays quick.
    tree_tab, progress_tab, table_tab = st.tabs([TREE_TAB, PROGRESS_TAB, TABLE_TAB], key="view",
                                                 on_change="rerun")
    if tree_tab.open:
        with tree_tab:
            show_tree(run, str(path), signature)
    if progress_tab.open:
        with progress_tab:
            show_progress(run, str(path), signature)
    if table_tab.open:
        with table_tab:
            show_table(run, str(path), signature)
    with st.container(border=True, key="details"):
        show_details(run, nodes, champion)


def main() -> None:
    st.set_page_config(page_title="autoresearch population", page_icon=":material/account_tree:",
                       layout="wide")
    # Smaller figures in the details panel, so the ten summary numbers fit on one line.
    st.html("<style>.st-key-details [data-testid='stMetricValue'] {font-size: 1.45rem;}</style>")
    path = pick_run()
    if path is None:
        st.title("autoresearch population")
        st.info("Pick a run in the sidebar, or start one: `python -m population --workers 8`.")
        return
    if st.session_state.get("shown_run") != str(path):   # a new run: forget the old selection
        st.session_state["shown_run"] = str(path)
        st.session_state.pop("selected_id", None)
        st.session_state["ring"] = False   # the page opens on the champion, already a star
    live = run_state(path) == "running"
    refresh = live and st.sidebar.toggle(
        f"Refresh every {REFRESH_SECONDS} s", value=True, key="auto_refresh",
        help="New experiments redraw the charts, which resets a zoom: pause to explore.")
    st.sidebar.caption("Read-only: this page never writes to a run.")

    @st.fragment(run_every=REFRESH_SECONDS if refresh else None)
    def live_view() -> None:
        try:
            show_run(path, live)
        except Exception as err:  # a store in an unexpected shape: one line, not a traceback
            st.error(f"Could not show {path}: {type(err).__name__}: {lv.short_error(err)}")

    live_view()


main()
