"""Lineage browser of a population run: `streamlit run app.py [-- --runs-dir runs]`.

Read-only over a run directory (docs/ARCHITECTURE.md, "The lineage store"). It tells what the
selection tells: the headline is the champion (the journal's last `champion` event) with its
posterior estimate and its runs, the best single run only beside it; Progress is the promotion
staircase; the tree draws one node per member. Beside the tree, the selected experiment: its
member's runs, the diff side by side, the whole file, run.log, transcript and prompt. A live run
(run.json state `running`) refreshes itself; a page opened before any run exists waits for one.
The data logic lives in population/lineage_view.py, the figures in population/lineage_charts.py.

.streamlit/config.toml (read from the working directory, so start it from the repository root)
keeps the server on 127.0.0.1 and the file watcher off; elsewhere pass `--server.address 127.0.0.1`.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import zlib
from pathlib import Path

import pandas as pd
import streamlit as st

from population import lineage_charts as charts
from population import lineage_view as lv
from population.console import duration

# How often a live page looks for new rows (and a page without a run for a new run); tests shorten it.
REFRESH_SECONDS = float(os.environ.get("AUTORESEARCH_APP_REFRESH_S") or 10)
LOG_TAIL_LINES = 200
DETAILS_HEIGHT = 860
STATUS_COLOR = {"ok": "green", "crash": "red", "timeout": "red", "violation": "orange",
                "duplicate": "gray", "agent_error": "violet", "lost": "gray", "stopped": "gray"}
STATE_BADGE = {"running": ("live", "green", ":material/radio_button_checked:"),
               "stopped": ("stopped", "orange", ":material/pause_circle:"),
               "finished": ("finished", "blue", ":material/check_circle:")}
TREE_TAB, PROGRESS_TAB, TABLE_TAB, THROUGHPUT_TAB = (
    ":material/account_tree: Lineage tree", ":material/show_chart: Progress", ":material/table: Experiments",
    ":material/timeline: Throughput")
SCOPES = {"living lineage": "living", "every member": "all"}
# Streamlit gives a chart whose figure changed a new element id, so the browser draws a new plot and
# plotly's uirevision never sees the old one: every refresh with new rows, and every click that
# moves the ring, would reset the user's zoom. This keeps each chart's last zoom (per chart key,
# which names the run and the view) in the page and lays it over the new plot; a double-click
# (autorange) forgets it. A fixed script, no input in it.
KEEP_ZOOM_JS = """
(() => {
  if (window.__keepZoom) return;
  window.__keepZoom = {};
  const views = window.__keepZoom;
  const keyOf = (gd) => ((gd.closest('[class*="st-key-"]') || {}).className || '').match(/st-key-(zoom_\\S+)/);
  const attach = (gd) => {
    const match = keyOf(gd);
    if (!match || gd.__keepZoomOn || typeof gd.on !== 'function') return;
    gd.__keepZoomOn = true;
    const key = match[1];
    if (views[key]) window.Plotly.relayout(gd, views[key]);
    gd.on('plotly_relayout', (event) => {
      if (Object.keys(event).some((k) => k.endsWith('autorange'))) { delete views[key]; return; }
      if (!Object.keys(event).some((k) => /^[xy]axis[0-9]*\\.range/.test(k))) return;
      const layout = gd._fullLayout, view = {};
      for (const name of Object.keys(layout)) {
        if (/^[xy]axis[0-9]*$/.test(name) && layout[name].range) view[name + '.range'] = layout[name].range.slice();
      }
      views[key] = view;
    });
  };
  const scan = () => document.querySelectorAll('.js-plotly-plot').forEach(attach);
  new MutationObserver(scan).observe(document.body, {childList: true, subtree: true});
  scan();
})();
"""
TABLE_COLUMNS = ["id", "status", "reason", "member", "kind", "{metric}", "delta_parent", "estimate", "member_runs",
                 "alive", "champion", "parent_id", "generation", "description", "agent", "worker", "gpu",
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


# cache_resource, not cache_data: a 10,000-row run is not copied on every access (nothing mutates it).
@st.cache_resource(max_entries=8, show_spinner=False)
def load_cached(path: str, signature: tuple) -> lv.RunData:
    """A run, re-read and replayed only when one of its store files changes (signature = mtimes, sizes)."""
    return lv.load_run(Path(path))


@st.cache_resource(max_entries=16, show_spinner=False)
def layout_cached(path: str, signature: tuple, scope: str, x_mode: str) -> lv.TreeLayout:
    run = load_cached(path, signature)
    return lv.tree_layout(run.selection.members, run.frame, run.selection.champion, scope, x_mode)


@st.cache_resource(max_entries=16, show_spinner=False)
def tree_figure_cached(path: str, signature: tuple, scope: str, x_mode: str, selected: str | None, highlight: bool):
    """The tree figure and its click map, built once per store change and selection (never mutated)."""
    run = load_cached(path, signature)
    layout = layout_cached(path, signature, scope, x_mode)
    return charts.tree_figure(layout, run.metric, run.lower_is_better,
                              "hours since start" if x_mode == "time" else "generation",
                              selected=selected, highlight_living=highlight)


@st.cache_resource(max_entries=4, show_spinner=False)
def progress_figure_cached(path: str, signature: tuple):
    run = load_cached(path, signature)
    return charts.progress_figure(run.frame, lv.promotion_table(run), run.metric, run.lower_is_better, run.holdout)


@st.cache_resource(max_entries=4, show_spinner=False)
def throughput_cached(path: str, signature: tuple):
    run = load_cached(path, signature)
    spans = lv.training_spans(run.frame)
    return charts.throughput_figure(spans, lv.agent_cost_over_time(run.frame)), lv.lane_busy(spans)


@st.cache_data(max_entries=4, show_spinner=False)
def export_cached(path: str, signature: tuple, fmt: str) -> bytes:
    return lv.export_bytes(load_cached(path, signature).frame, fmt)


@st.cache_data(max_entries=64, show_spinner=False)
def git_text_cached(meta_json: str, commit: str, path: str) -> str | None:
    return lv.git_text(json.loads(meta_json), commit, path)


@st.cache_data(max_entries=64, show_spinner=False)
def git_diff_cached(meta_json: str, old: str, new: str) -> str | None:
    return lv.git_diff(json.loads(meta_json), old, new)


def run_state(path: Path) -> str:
    try:
        return str(json.loads((path / "run.json").read_text()).get("state", ""))
    except (OSError, ValueError, AttributeError):
        return ""


def pick_run() -> tuple[Path | None, Path]:
    """Sidebar: the runs under the runs dir, or a path typed in. Returns (run, runs dir)."""
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
            return candidate, candidate.parent
        if lv.list_runs(candidate) or candidate.is_dir():    # an empty directory: wait for a run there
            runs_dir = candidate
        else:
            st.sidebar.error(f"{candidate} is neither a run (run.json, lineage.parquet, ...) nor a directory of runs.")
    runs = lv.list_runs(runs_dir)
    if not runs:
        st.sidebar.info(f"No runs under `{runs_dir}` yet.")
        return None, runs_dir
    labels = {str(p): f"{p.name} · {run_state(p) or '?'}" for p in runs}
    chosen = st.sidebar.selectbox(f"Run ({len(runs)} in `{runs_dir}`)", list(labels),
                                  format_func=labels.get, key="run_path")
    return Path(chosen), runs_dir


# --------------------------------------------------------------------------- selection

def select(exp_id: int) -> None:
    st.session_state["selected_id"] = int(exp_id)


def chart_key(*view: str) -> str:
    """A chart's key: one per run and view, so the page's zoom keeper (KEEP_ZOOM_JS) keeps each
    view's zoom apart (`zoom_` marks the charts it keeps)."""
    return f"zoom_{view[0]}_{zlib.crc32('|'.join(view).encode()):08x}"


def on_chart_select(key: str) -> None:
    click_map = st.session_state.get(f"{key}_click_map", {})
    for point in _selected_points(key):
        exp_id = charts.clicked_id(point, click_map)
        if exp_id is not None:
            select(exp_id)
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


def selected_member(run: lv.RunData, exp_id: int | None) -> str | None:
    """The tree node of an experiment: its member, or (a failed or lost child) its parent member."""
    row = lv.row_of(run.frame, exp_id) if exp_id is not None else None
    if row is None:
        return None
    if row["member"] in run.selection.members.index:
        return row["member"]
    return row["parent_member"] or None


# --------------------------------------------------------------------------- page parts

def _fmt(value, pattern: str, missing: str = "—") -> str:
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return missing
    return pattern.format(value)


def show_header(run: lv.RunData) -> None:
    state = run.meta.get("state", "")
    label, color, icon = STATE_BADGE.get(state, (state or "unknown state", "gray", ""))
    st.markdown(f"# {run.tag} &nbsp;:{color}-badge[{icon} {label}]")
    facts = [f"task **{run.meta.get('task', '?')}**", f"metric **{run.metric}** "
             f"({'lower' if run.lower_is_better else 'higher'} is better)"]
    if run.meta.get("budget_s"):
        facts.append(f"budget **{run.meta['budget_s']} s**")
    if run.meta.get("workers"):
        facts.append(f"**{run.meta['workers']}** workers")
    if run.selection.noise_std:
        facts.append(f"noise σ **{run.selection.noise_std:.4g}**")
    if run.journal:
        facts.append(f"journal {'verified' if run.journal == 'signed' else 'unsigned (before signing)'}")
    if run.live:
        paused = "" if st.session_state.get("auto_refresh", True) else " (paused)"
        facts.append(f"live: refreshes every {REFRESH_SECONDS:g} s{paused}, read {time.strftime('%H:%M:%S')}")
    st.caption(" · ".join(facts) + f" · `{run.path}`")
    for level, text in run.notes:
        (st.warning if level == "warning" else st.info)(text)
    if state == "running":
        for quiet in run.meta.get("stalled") or []:      # the driver's watchdog (--stall-minutes)
            what = "its agent" if quiet.get("stage") == "agent" else "its training"
            st.warning(f"e{int(quiet['id']):04d} is stalled: {what} has printed nothing for "
                       f"{duration(quiet.get('silent_s', 0))}", icon=":material/hourglass_empty:")


def show_headline(run: lv.RunData) -> dict:
    """The champion first (estimate, runs, gain over the seed), then holdout, the best single run
    (secondary) and the counts. Returns the headline figures."""
    h = lv.headline(run)
    metric, lower = run.metric, run.lower_is_better
    color = "normal"               # the gain is already oriented: positive = better
    cards = st.container(key="headline").columns([1.25, 1.05, 1.05, 1.25, 1.0])
    if h["champion"]:
        sd = _fmt(h["estimate_sd"], " ± {:.6f}", "")
        gain = None if math.isnan(h["gain"]) else f"{h['gain_pct']:+.2f} % vs seed"
        where = "posterior estimate" if h["source"] == "journal" and not math.isnan(h["estimate_sd"]) else "mean of its runs"
        cards[0].metric(f"Champion {h['champion']} · {h['runs']} run{'s' if h['runs'] != 1 else ''}",
                        _fmt(h["estimate"], "{:.6f}"), gain, delta_color=color, border=True,
                        help=f"{metric} {where}{sd}; mean of its runs {_fmt(h['mean'], '{:.6f}')}, spread "
                             f"{_fmt(h['spread'], '{:.6f}')}; experiment #{h['champion_id']}. Gain over the seed "
                             f"{_fmt(h['gain'], '{:+.6f}')} (positive is better); the seed "
                             f"{h['seed']}: {_fmt(h['seed_estimate'], '{:.6f}')}. {h['promotions']} promotions.")
    else:
        cards[0].metric("Champion", "none yet", border=True,
                        help="No champion until the seed's noise runs are in (the journal's first `champion` event).")
    if run.holdout:
        gain = None
        if not (math.isnan(h["holdout"]) or math.isnan(h["seed_holdout"])):
            gain = (h["seed_holdout"] - h["holdout"]) * (1 if lower else -1)
            gain = f"{gain:+.6f} vs seed"
        cards[1].metric(run.holdout, _fmt(h["holdout"], "{:.6f}"), gain, delta_color=color, border=True,
                        help=f"the champion's score on the hidden holdout that selection never sees (mean over its "
                             f"runs); the seed's: {_fmt(h['seed_holdout'], '{:.6f}')}")
    else:
        cards[1].metric("Seed " + (h["seed"] or ""), _fmt(h["seed_estimate"], "{:.6f}"), border=True,
                        help=f"the unmodified seed's {metric} (its estimate; the mean of its runs once culled)")
    cards[2].metric("Best single run", _fmt(h["best"], "{:.6f}"),
                    None if h["best_id"] is None else f"#{h['best_id']}, one run", delta_color="off",
                    delta_arrow="off", border=True,
                    help="the best one training ever scored: lucky runs are why selection trusts the posterior instead")
    cards[3].metric("Experiments", f"{h['experiments']:,}", f"{h['failed']:,} failed, {h['lost']:,} lost",
                    delta_color="off", delta_arrow="off", border=True,
                    help=f"{h['ok']:,} ok · {h['failed']:,} failed (crash, timeout, violation, duplicate, agent "
                         f"error) · {h['lost']:,} lost or stopped (never a failure: the work was queued again) · "
                         f"{h['living']:,} living members")
    cards[4].metric("GPU-hours", _fmt(h["gpu_hours"], "{:,.1f}"),
                    _fmt(h["agent_cost_usd"], "agents ${:,.2f}", None) if not math.isnan(h["agent_cost_usd"]) else None,
                    delta_color="off", delta_arrow="off", border=True,
                    help=f"training wall time summed; {_fmt(h['per_gpu_hour'], '{:.1f}')} experiments per GPU-hour; "
                         "the agents' reported dollars")
    check = h["overfitting"]
    if check and check["flagged"]:
        st.warning(f":material/warning: **Possible overfitting to the validation set**: the champion gains "
                   f"{check['val_gain']:+.6f} on {metric} over the seed ({check['val_gain'] / check['noise_std']:.1f} "
                   f"noise σ) but only {check['holdout_gain']:+.6f} on the hidden holdout {run.holdout} "
                   "(less than half of it).")
    return h


def show_tree(run: lv.RunData, path: str, signature: tuple) -> None:
    left, right = st.columns([3, 2], vertical_alignment="center")
    scope = left.segmented_control("Draw", list(SCOPES), default="living lineage", key="tree_scope", required=True,
                                   label_visibility="collapsed", persist_state="page") or "living lineage"
    x_mode = right.segmented_control("x axis", ["generation", "time"], default="generation", key="x_mode",
                                     required=True, label_visibility="collapsed", persist_state="page") or "generation"
    member = selected_member(run, st.session_state.get("selected_id"))
    fig, click_map = tree_figure_cached(path, signature, SCOPES[scope], x_mode, member,
                                        bool(st.session_state.get("living_only")))
    key = chart_key("tree", path, scope, x_mode)
    st.session_state[f"{key}_click_map"] = click_map
    st.plotly_chart(fig, key=key, on_select=lambda: on_chart_select(key), selection_mode="points",
                    config={"scrollZoom": True, "displaylogo": False})
    layout = layout_cached(path, signature, SCOPES[scope], x_mode)
    hidden = int(layout.nodes["hidden_members"].sum())
    st.caption(f"One node per member (size: its runs; colour: its estimated {run.metric}). "
               f"{len(layout.nodes):,} members drawn" + (f", {hidden:,} culled ones folded into their nearest drawn "
                                                         "ancestor (+n)" if hidden else "")
               + ". Ticks under a member: its failed (red) and lost (grey) children. Gold: the champion's line. "
                 "Click a node for its details; scroll to zoom, drag to pan, double-click to reset.")


def show_progress(run: lv.RunData, path: str, signature: tuple) -> None:
    fig = progress_figure_cached(path, signature)
    key = chart_key("progress", path)
    st.session_state[f"{key}_click_map"] = {}
    st.plotly_chart(fig, key=key, on_select=lambda: on_chart_select(key), selection_mode="points",
                    config={"displaylogo": False})
    promotions = lv.promotion_table(run)
    st.caption(f"Each step is a promotion: the champion's {run.metric} as the posterior estimated it then, labelled "
               "with its description; faint points: every trained experiment (one run each). "
               + (f"Dotted: the champion's hidden holdout {run.holdout} (right axis). " if run.holdout else "")
               + ("" if not promotions.empty else "No promotion history: the journal is missing or unreadable."))
    if not promotions.empty:
        shown = promotions[["step", "member", "first_id", "at_id", "runs", "estimate", "estimate_sd", "estimate_now",
                            "holdout", "prob_better", "description"]].iloc[::-1]
        shown = shown.drop(columns=["holdout"]) if run.holdout is None else shown.rename(columns={"holdout": run.holdout})
        st.dataframe(shown, hide_index=True, height=260, column_config={
            "first_id": st.column_config.NumberColumn("#"), "at_id": st.column_config.NumberColumn("after #"),
            "estimate": st.column_config.NumberColumn(f"{run.metric} then", format="%.6f"),
            "estimate_sd": st.column_config.NumberColumn("± sd", format="%.6f"),
            "estimate_now": st.column_config.NumberColumn(f"{run.metric} now", format="%.6f"),
            run.holdout or "holdout": st.column_config.NumberColumn(format="%.6f", help="hidden holdout, mean of its runs"),
            "prob_better": st.column_config.NumberColumn("P(better)", format="percent"),
            "description": st.column_config.TextColumn(width="large")})


def show_table(run: lv.RunData, path: str, signature: tuple) -> None:
    frame = run.frame
    f1, f2, f3, f4 = st.columns([2, 2, 3, 3])
    statuses = f1.multiselect("Status", sorted(frame["status"].unique()), key="f_status", persist_state="page")
    agents = f2.multiselect("Agent", sorted(a for a in frame["agent"].unique() if a), key="f_agent",
                            persist_state="page")
    text = f3.text_input("Search", key="f_text", placeholder="description, member, commit, reason, id",
                         persist_state="page")
    sorts = [s.format(metric=run.metric) for s in lv.SORTS]
    how = f4.selectbox("Sort (failures last)", sorts, key="f_sort", persist_state="page")
    shown = frame[lv.filter_mask(frame, statuses, agents, (), text, bool(st.session_state.get("living_only")))]
    shown = lv.sort_rows(shown, how, run.metric, run.lower_is_better)
    table = shown.assign(started=pd.to_datetime(shown["started_at"], unit="s", errors="coerce"))
    columns = [c.format(metric=run.metric) for c in TABLE_COLUMNS]
    ids = table["id"].astype(int).tolist()
    st.dataframe(
        table[columns], hide_index=True, height=460, key="table", on_select=lambda: on_table_select(ids),
        selection_mode="single-row",
        column_config={
            "id": st.column_config.NumberColumn("#", pinned=True),
            "status": st.column_config.TextColumn(pinned=True),
            "reason": st.column_config.TextColumn(width="medium"),
            run.metric: st.column_config.NumberColumn(format="%.6f", help="this run"),
            "delta_parent": st.column_config.NumberColumn("gain vs parent", format="%+.6f",
                                                          help="the parent member's estimate minus this run "
                                                               "(oriented: positive is better)"),
            "estimate": st.column_config.NumberColumn("member estimate", format="%.6f",
                                                      help="the member's posterior estimate (all runs, pooled)"),
            "member_runs": st.column_config.NumberColumn("runs"),
            "train_seconds": st.column_config.NumberColumn("train s", format="%.0f"),
            "agent_cost_usd": st.column_config.NumberColumn("agent $", format="%.3f"),
            "started": st.column_config.DatetimeColumn(format="YYYY-MM-DD HH:mm"),
            "description": st.column_config.TextColumn(width="large"),
        })
    left, mid, right = st.columns([4, 1, 1], vertical_alignment="center")
    left.caption(f"{len(shown):,} of {len(frame):,} experiments · sort with the box above (the grid's own "
                 "header sort puts empty values first) · click a row to open it")
    mid.download_button("CSV", lambda: export_cached(path, signature, "csv"), f"{run.tag}-lineage.csv",
                        "text/csv", icon=":material/download:", on_click="ignore", key="dl_csv")
    right.download_button("Parquet", lambda: export_cached(path, signature, "parquet"),
                          f"{run.tag}-lineage.parquet", "application/octet-stream",
                          icon=":material/download:", on_click="ignore", key="dl_parquet")


def show_throughput(run: lv.RunData, path: str, signature: tuple) -> None:
    fig, busy = throughput_cached(path, signature)
    st.plotly_chart(fig, key=chart_key("throughput", path), config={"displaylogo": False})
    if not busy.empty:
        st.dataframe(busy, hide_index=True, column_config={
            "busy_h": st.column_config.NumberColumn("held hours", format="%.2f"),
            "share": st.column_config.NumberColumn("held share", format="percent"),
            "timed_share": st.column_config.NumberColumn("timed-training share", format="percent"),
            "device_share": st.column_config.NumberColumn("device-busy share", format="percent")})
    st.caption("Per GPU (node and CUDA device from the journal, else the worker) each training as a bar, coloured "
               "by status; below, the agents' cumulative cost. Held: a training had the GPU (importing, compiling, "
               "evaluating included); timed-training: in its timed steps, as the file reports; device-busy: a "
               "kernel running, sampled from outside (NVML; on a CPU run, its CPU time).")
    st.subheader("Spend per agent backend")
    st.dataframe(lv.spend_table(run.frame, run.metric, run.lower_is_better), hide_index=True, column_config={
        "keep_rate": st.column_config.NumberColumn("keep rate", format="percent"),
        "crash_rate": st.column_config.NumberColumn("crash rate", format="percent"),
        "dollars": st.column_config.NumberColumn("agent $", format="%.2f"),
        "agent_hours": st.column_config.NumberColumn("agent hours", format="%.2f"),
        "gpu_hours": st.column_config.NumberColumn("GPU-hours", format="%.2f"),
        "best_gain": st.column_config.NumberColumn(f"best gain ({run.metric})", format="%.4f"),
        "gain_per_dollar": st.column_config.NumberColumn("gain per $", format="%.5f"),
        "gain_per_gpu_hour": st.column_config.NumberColumn("gain per GPU-hour", format="%.5f")})
    st.caption("Keep rate: children scored ok; best gain: over the seed's mean, of the backend's best child. "
               "Dollars as each agent reported them (Codex reports tokens only); GPU-hours: training and evaluation.")


# --------------------------------------------------------------------------- details

def ensure_selection(run: lv.RunData) -> None:
    """An experiment is always open: the champion's first run at first, else the newest."""
    first, last = int(run.frame["id"].min()), int(run.frame["id"].max())
    current = st.session_state.get("selected_id")
    if not isinstance(current, int) or not first <= current <= last:
        champion = run.selection.champion_id
        st.session_state["selected_id"] = champion if champion is not None else last


def show_details(run: lv.RunData) -> None:
    frame = run.frame
    first, last = int(frame["id"].min()), int(frame["id"].max())
    head, pick = st.columns([3, 1.1], vertical_alignment="bottom")
    pick.number_input("Open #", first, last, step=1, key="selected_id")
    exp_id = int(st.session_state["selected_id"])
    row = lv.row_of(frame, exp_id)
    if row is None:
        head.subheader(f"#{exp_id}")
        st.info(f"No experiment #{exp_id} in this run.")
        return
    champion = run.selection.champion
    head.subheader(f"#{exp_id} · {row['member'] or '?'} · {row['kind'] or '?'}"
                   + (" :material/trophy:" if row["member"] == champion and champion else ""))
    with st.container(horizontal=True, gap="small"):
        st.badge(row["status"], color=STATUS_COLOR.get(row["status"], "gray"))
        member = run.selection.members.loc[row["member"]] if row["member"] in run.selection.members.index else None
        if member is not None:
            st.badge("living" if member["alive"] else "culled", color="blue" if member["alive"] else "gray")
            if member["promoted"]:
                st.badge("champion now" if member["champion"] else "was champion", color="orange",
                         icon=":material/trophy:")
    if row["description"]:
        st.markdown(f"**{row['description']}**")
    if row["status"] in ("lost", "stopped"):
        again = "its work was queued again under a new id" if row["status"] == "lost" else "`--resume` queues it again"
        st.info(f"{row['status']}: {row['reason'] or 'no reason recorded'} — not a failure: {again}.")
    elif row["reason"]:
        (st.info if row["status"] == "ok" else st.error)(row["reason"])
    if member is not None:
        show_member(run, member)
    show_navigation(run, row)
    show_figures(run, row)
    show_files(run, row)


def show_member(run: lv.RunData, member: pd.Series) -> None:
    """The member this run belongs to: its runs (n, mean, spread) and the posterior's estimate."""
    metric = run.metric
    parent = run.selection.members.loc[member["parent"]] if member["parent"] in run.selection.members.index else None
    sign = 1 if run.lower_is_better else -1
    gain = "" if parent is None else (f" · gain over {parent['member']} "
                                      f"{sign * (parent['estimate'] - member['estimate']):+.6f}")
    sd = _fmt(member["estimate_sd"], " ± {:.6f}", "")
    st.markdown(f"Member **{member['member']}**: estimate **{_fmt(member['estimate'], '{:.6f}')}**{sd}"
                f"{' (posterior)' if member['estimated'] else ' (mean)'} · {member['runs']} run(s), mean "
                f"{_fmt(member['mean'], '{:.6f}')}, spread {_fmt(member['spread'], '{:.6f}')}{gain}")
    runs = lv.member_runs(run.frame, member["member"])
    if len(runs) > 1:
        cols = ["id", "kind", "seed", "status", metric] + ([run.holdout] if run.holdout else [])
        st.dataframe(runs[cols], hide_index=True, height=min(36 * (len(runs) + 1) + 2, 180),
                     column_config={metric: st.column_config.NumberColumn(format="%.6f")})


def show_navigation(run: lv.RunData, row: pd.Series) -> None:
    members = run.selection.members
    exp_id = int(row["id"])
    name = row["member"] if row["member"] in members.index else None
    children = members[members["parent"].eq(name)]["first_id"].astype(int).tolist() if name else []
    parent = members.loc[row["parent_member"]] if row["parent_member"] in members.index else None
    with st.container(horizontal=True):
        if parent is not None:
            st.button(f"Parent {parent['member']}", icon=":material/arrow_upward:", key="nav_parent",
                      on_click=select, args=(int(parent["first_id"]),))
        champion = run.selection.champion_id
        if champion is not None and champion != exp_id:
            st.button(f"Champion {run.selection.champion}", icon=":material/trophy:", key="nav_champion",
                      on_click=select, args=(champion,))
        for child in children[:8]:
            st.button(f"#{child}", icon=":material/arrow_downward:", key=f"nav_child_{child}",
                      on_click=select, args=(child,))
        if len(children) > 8:
            st.caption(f"… and {len(children) - 8} more child members (see the table)")
        if name and not children:
            st.caption("no child members yet")


def show_figures(run: lv.RunData, row: pd.Series) -> None:
    metric = run.metric
    delta = None if math.isnan(row["delta_parent"]) else f"{row['delta_parent']:+.6f} vs parent"
    figures = [(f"{metric} (this run)", _fmt(row[metric], "{:.6f}"), delta)]
    if run.holdout:
        figures.append((run.holdout, _fmt(row[run.holdout], "{:.6f}"), None))
    reported = lv.reported_column(metric)
    if reported in run.frame and not math.isnan(row[reported]):
        figures.append(("reported by train file", _fmt(row[reported], "{:.6f}"), None))
    figures += [("training s", _fmt(row["training_seconds"], "{:.1f}"), None),
                ("peak VRAM", _fmt(row["peak_vram_mb"] / 1024, "{:.1f} GB"), None),
                ("MFU", _fmt(row["mfu_percent"], "{:.1f} %"), None),
                ("tokens", _fmt(row["total_tokens_M"], "{:.0f} M"), None),
                ("steps", _fmt(row["num_steps"], "{:.0f}"), None)]
    with st.container(horizontal=True, gap="small", key="figures"):
        for label, text, change in figures:
            st.metric(label, text, change, delta_color="normal", width="content")
    agent = [f"agent `{row['agent'] or '?'}`", f"{_fmt(row['agent_seconds'], '{:.0f}')} s",
             _fmt(row["agent_cost_usd"], "${:.3f}"),
             "—" if row["agent_tokens"] is pd.NA else f"{int(row['agent_tokens']):,} tokens",
             f"training wall time {_fmt(row['train_seconds'], '{:.0f}')} s"]
    where = [f"worker `{row['worker'] or '?'}`", f"gpu `{row['gpu'] or '?'}` on `{row['node'] or '?'}`",
             f"seed `{row['seed']}`", f"generation `{row['generation']}`"]
    if row["commit"]:
        where.append(f"commit `{row['commit'][:12]}`")
    if not math.isnan(row["started_at"]):
        where.append("started " + time.strftime("%Y-%m-%d %H:%M", time.localtime(row["started_at"])))
    st.caption(" · ".join(agent) + "  \n" + " · ".join(where))


def experiment_diff(run: lv.RunData, row: pd.Series) -> tuple[str | None, str]:
    """The diff against the parent and where it came from: the experiment's diff.patch, the
    member's first run's (for its re-runs), else git (when experiments/ is missing)."""
    experiments = run.path / "experiments"
    diff, _ = lv.read_head(experiments / str(int(row["id"])) / "diff.patch")
    if diff:
        return diff, "diff.patch"
    member = run.selection.members.loc[row["member"]] if row["member"] in run.selection.members.index else None
    if member is not None and int(member["first_id"]) != int(row["id"]):
        diff, _ = lv.read_head(experiments / str(int(member["first_id"])) / "diff.patch")
        if diff:
            return diff, f"diff.patch of {row['member']}'s first run #{int(member['first_id'])}"
    if row["commit"] and row["parent_commit"] and row["commit"] != row["parent_commit"]:
        diff = git_diff_cached(json.dumps(run.meta, sort_keys=True, default=str), row["parent_commit"], row["commit"])
        if diff and diff.strip():
            return diff, f"git diff {row['parent_commit'][:9]} {row['commit'][:9]} (experiments/ has none)"
    return None, ""


def show_files(run: lv.RunData, row: pd.Series) -> None:
    exp_dir = run.path / "experiments" / str(int(row["id"]))
    diff_tab, file_tab, log_tab, transcript_tab, prompt_tab = st.tabs(
        ["Diff vs parent", "Whole file", "run.log", "Agent transcript", "Prompt"], key="file_tabs")
    with diff_tab:
        diff, source = experiment_diff(run, row)
        if diff:
            view = st.segmented_control("Diff view", ["side by side", "unified"], default="side by side",
                                        key="diff_view", label_visibility="collapsed", persist_state="page")
            if view == "unified":
                st.code(diff, language="diff", height=480 if diff.count("\n") > 25 else "content")
            else:
                st.html(lv.side_by_side_html(lv.side_by_side(diff)))
            st.caption(f"from {source}")
        elif row["kind"] == "baseline" or (row["parent_id"] is pd.NA and row["kind"] != "child"):
            st.info("The seed has no parent, so no diff.")
        else:
            st.info("No diff recorded for this experiment, and the run's repository cannot give one.")
    with file_tab:
        commit = row["commit"] or run.meta.get("seed_commit", "") if row["kind"] == "baseline" else row["commit"]
        name = lv.train_file(run.meta, experiment_diff(run, row)[0])
        text = git_text_cached(json.dumps(run.meta, sort_keys=True, default=str), commit or "", name) if commit else None
        if text:
            st.code(text, language="python", line_numbers=True, height=520)
            st.caption(f"`{name}` at {commit[:12]} (from the run's repository)")
        else:
            st.info(f"`{name}` needs the run's repository (`{run.meta.get('repo') or 'not recorded'}`) "
                    "and this experiment's commit; neither is here." if not commit or not run.meta.get("repo") else
                    f"`{name}` at {commit[:12]} is not in `{run.meta.get('repo')}` (moved, or a store copied "
                    "without its repository).")
    with log_tab:
        log, _ = lv.read_tail(exp_dir / "run.log")
        if log:
            st.code(lv.tail_lines(log, LOG_TAIL_LINES), language="text", height=480)
            st.caption(f"last {LOG_TAIL_LINES} lines of {exp_dir / 'run.log'}")
        else:
            st.info("No run.log recorded for this experiment.")
    for tab, name in ((transcript_tab, "transcript.txt"), (prompt_tab, "prompt.md")):
        with tab:
            text, cut = lv.read_head(exp_dir / name)
            if text:
                st.code(text, language="markdown", height=480, wrap_lines=True)
                if cut:
                    st.caption(f"shortened; the full file is {exp_dir / name}")
            else:
                st.info(f"No {name} recorded for this experiment.")


# --------------------------------------------------------------------------- the page

def show_run(path: Path, was_live: bool, runs_dir: Path, known_runs: int) -> None:
    """Everything about one run; a fragment that reruns on a timer while the run is live."""
    signature = lv.store_signature(path)
    run = load_cached(str(path), signature)
    if run.live != was_live or len(lv.list_runs(runs_dir)) != known_runs:
        st.rerun()                 # started or stopped, or a new run appeared: redraw the whole page
    show_header(run)
    if run.frame.empty:
        return
    show_headline(run)
    ensure_selection(run)
    main, side = st.columns([1.7, 1], gap="medium")
    with main:
        st.toggle("Living members only", key="living_only", persist_state="page",
                  help="the table shows only living members' rows; the tree highlights them")
        # Stateful tabs: only the open one is drawn, so a 10,000-row run stays quick.
        tabs = st.tabs([TREE_TAB, PROGRESS_TAB, TABLE_TAB, THROUGHPUT_TAB], key="view", on_change="rerun")
        for tab, draw in zip(tabs, (show_tree, show_progress, show_table, show_throughput)):
            if tab.open:
                with tab:
                    draw(run, str(path), signature)
    with side:
        with st.container(border=True, key="details", height=DETAILS_HEIGHT):
            show_details(run)


def wait_for_runs(runs_dir: Path) -> None:
    """No run yet: look again every few seconds, and redraw the page when one appears."""
    @st.fragment(run_every=REFRESH_SECONDS / 2)
    def poll() -> None:
        if lv.list_runs(runs_dir):
            st.rerun()
        st.caption(f"Waiting for a run under `{runs_dir}` (looked at {time.strftime('%H:%M:%S')}).")
    poll()


def main() -> None:
    st.set_page_config(page_title="autoresearch population", page_icon=":material/account_tree:",
                       layout="wide")
    # Compact figures in the details panel; metric values never cut (the cards size to their text).
    st.html("<style>.st-key-details [data-testid='stMetricValue'] {font-size: 1.3rem;}"
            "[data-testid='stMainBlockContainer'] {padding-top: 2rem; padding-bottom: 1rem;}"
            ".st-key-headline [data-testid='stMetricValue'] {font-size: 1.9rem;}</style>")
    st.html(f"<script>{KEEP_ZOOM_JS}</script>", unsafe_allow_javascript=True)
    path, runs_dir = pick_run()
    if path is None:
        st.title("autoresearch population")
        st.info("Pick a run in the sidebar, or start one: `python -m population --workers 8`.")
        wait_for_runs(runs_dir)
        return
    if st.session_state.get("shown_run") != str(path):   # a new run: forget the old selection
        st.session_state["shown_run"] = str(path)
        st.session_state.pop("selected_id", None)
    live = run_state(path) == "running"
    refresh = live and st.sidebar.toggle(
        f"Refresh every {REFRESH_SECONDS:g} s", value=True, key="auto_refresh",
        help="New experiments appear without a reload; the charts keep your zoom.")
    st.sidebar.caption("Read-only: this page never writes to a run.")
    known_runs = len(lv.list_runs(runs_dir))

    # A live run refreshes every REFRESH_SECONDS (unless paused); a finished or stopped one is looked at
    # now and then, so that a --resume shows without a reload.
    @st.fragment(run_every=REFRESH_SECONDS if refresh else None if live else 6 * REFRESH_SECONDS)
    def live_view() -> None:
        try:
            show_run(path, live, runs_dir, known_runs)
        except Exception as err:  # a store in an unexpected shape: one line, not a traceback
            st.error(f"Could not show {path}: {type(err).__name__}: {lv.short_error(err)}")

    live_view()


main()
