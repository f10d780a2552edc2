"""Plotly figures of a run's lineage for `app.py`: the layered tree, the promotion staircase and
the throughput timeline.

Pure functions from what `lineage_view` derives to `go.Figure`s; no Streamlit here. Above
WEBGL_THRESHOLD points a trace switches to WebGL (Scattergl); the selection ring is always an SVG
trace on top, so a click shows in WebGL too. Every figure keeps a fixed `uirevision`, so a refresh
with new rows keeps the user's zoom.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from population import lineage_view as lv

WEBGL_THRESHOLD = 1500
CATEGORY_STYLE = {   # symbol, fixed colour (None: coloured by the estimate), size, opacity, label
    "champion": ("star", "#f5b700", 22, 1.0, "champion"),
    "living": ("circle", None, 11, 1.0, "living member"),
    "culled": ("circle", "#b8bec6", 7, 0.8, "culled (ancestor)"),
}
TICK_STYLE = {"failed": ("line-ns-open", "#d62728", "failed children"),
              "lost": ("line-ns-open", "#8c8c8c", "lost (re-queued)")}
EDGE_COLOR = "rgba(120,120,140,0.45)"
PATH_COLOR = "#f5b700"
SELECTED_COLOR = "#e0115f"
STEP_COLOR = "#2ca02c"
HOLDOUT_COLOR = "#9467bd"
STATUS_COLOR = {"ok": "#2ca02c", "crash": "#d62728", "timeout": "#d62728", "violation": "#ff7f0e",
                "duplicate": "#8c8c8c", "agent_error": "#9467bd", "lost": "#bbbbbb", "stopped": "#bbbbbb"}
MAX_STEP_LABELS = 15
MAX_FOLD_LABELS = 80
FRONTIER_GENERATIONS = 30


def _scatter(n_points: int):
    return go.Scattergl if n_points > WEBGL_THRESHOLD else go.Scatter


def _escape(text: pd.Series, limit: int = 100) -> pd.Series:
    """Shortened and HTML-escaped, vectorised (html.escape per row is the slow part at 10k rows)."""
    text = text.astype(str).str.slice(0, limit)
    return text.str.replace("&", "&amp;").str.replace("<", "&lt;").str.replace(">", "&gt;")


def _number(values: pd.Series, pattern: str = "{:.6f}") -> pd.Series:
    text = values.map(lambda v: "—" if v is None or (isinstance(v, float) and math.isnan(v)) else pattern.format(v))
    return text.astype(str)           # str even when empty (an empty map stays float)


# --------------------------------------------------------------------------- the tree

def node_hover(nodes: pd.DataFrame, metric: str) -> np.ndarray:
    """One pre-formatted hover string per member node: its runs (n, mean, spread), estimate and
    what is folded into it."""
    hidden = np.where(nodes["hidden_members"] > 0, "<br>" + nodes["hidden_members"].astype(str)
                      + " culled descendant(s) folded in", "")
    failed = np.where(nodes["failed"] + nodes["hidden_failed"] > 0,
                      "<br>" + (nodes["failed"] + nodes["hidden_failed"]).astype(str) + " failed child(ren)", "")
    text = ("<b>" + nodes["member"] + "</b> #" + nodes["first_id"].astype(str) + " · gen "
            + nodes["generation"].astype(str) + " · " + nodes["category"]
            + f"<br>estimate {metric} " + _number(nodes["estimate"]) + " ± " + _number(nodes["estimate_sd"], "{:.6f}")
            + "<br>" + nodes["runs"].astype(str) + " run(s), mean " + _number(nodes["mean"])
            + ", spread " + _number(nodes["spread"]) + "<br>" + _escape(nodes["description"]) + hidden + failed)
    return text.to_numpy(dtype=object)


def tree_figure(layout: lv.TreeLayout, metric: str, lower_is_better: bool, x_title: str,
                selected: str | None = None, highlight_living: bool = False) -> tuple[go.Figure, dict[int, list[int]]]:
    """The layered lineage tree; also returns {trace index: experiment ids} to map a click back."""
    nodes, ticks = layout.nodes, layout.ticks
    scatter = _scatter(len(nodes))
    fig = go.Figure()
    click_map: dict[int, list[int]] = {}
    if nodes.empty:               # nothing trained ok yet: no member to draw
        fig.add_annotation(text="No members yet: nothing has trained ok.", showarrow=False, x=0.5, y=0.5,
                           xref="paper", yref="paper", font=dict(size=14, color="#57606a"))
        fig.update_layout(height=300, xaxis=dict(visible=False), yaxis=dict(visible=False), plot_bgcolor="white")
        return fig, click_map
    fig.add_trace(scatter(x=layout.edge_x, y=layout.edge_y, mode="lines", hoverinfo="skip", showlegend=False,
                          line=dict(color=EDGE_COLOR, width=1), name="edges"))
    for kind, (symbol, color, label) in TICK_STYLE.items():
        part = ticks[ticks["kind"].eq(kind)] if not ticks.empty else ticks
        if part.empty:
            continue
        click_map[len(fig.data)] = part["newest_id"].astype(int).tolist()
        hover = ("<b>" + part["count"].astype(str) + f" {label}</b> of " + part["parent_member"]
                 + "<br>" + part["statuses"] + "<br>click: the newest, #" + part["newest_id"].astype(str))
        fig.add_trace(scatter(x=part["x"], y=part["y"], mode="markers", name=label,
                              marker=dict(symbol=symbol, color=color, size=np.clip(6 + 3 * np.log2(part["count"]), 6, 16),
                                          line=dict(width=2, color=color)),
                              customdata=part["newest_id"].to_numpy(), hovertext=hover.to_numpy(dtype=object),
                              hoverinfo="text"))
    folded = nodes[nodes["hidden_members"] > 0]
    if 0 < len(folded) <= MAX_FOLD_LABELS:        # past that the labels overlap; the hover still says it
        fig.add_trace(go.Scatter(x=folded["x"] + 0.3, y=folded["y"], mode="text", hoverinfo="skip",
                                 text="+" + folded["hidden_members"].astype(str), textposition="middle right",
                                 textfont=dict(size=9, color="#8c8c8c"), showlegend=False, name="folded"))
    hover = node_hover(nodes, metric)
    values = nodes["estimate"]
    cmin, cmax = (float(values.min()), float(values.max())) if values.notna().any() else (0.0, 1.0)
    for category in ("culled", "path", "living", "champion"):     # the line over the culled, the champion on top
        if category == "path":
            if len(layout.path_x):
                fig.add_trace(scatter(x=layout.path_x, y=layout.path_y, mode="lines", hoverinfo="skip",
                                      line=dict(color=PATH_COLOR, width=4), name="champion's line"))
            continue
        part = nodes[nodes["category"].eq(category)]
        if part.empty:
            continue
        symbol, color, size, opacity, label = CATEGORY_STYLE[category]
        sizes = size + 2.5 * np.log2(part["runs"].clip(lower=1)) if category != "champion" else size
        marker = dict(symbol=symbol, size=sizes, opacity=opacity)
        if color is None:
            marker.update(color=part["estimate"].to_numpy(), coloraxis="coloraxis",
                          line=dict(width=2.5 if highlight_living else 0.8, color="#1f6feb" if highlight_living else "white"))
        else:
            marker.update(color=color, line=dict(width=1, color="#333" if category == "champion" else color))
        if highlight_living and category == "culled":
            marker.update(opacity=0.25)
        click_map[len(fig.data)] = part["first_id"].astype(int).tolist()
        fig.add_trace(scatter(x=part["x"], y=part["y"], mode="markers", marker=marker, name=label,
                              customdata=part["first_id"].to_numpy(), hovertext=hover[part.index.to_numpy()],
                              hoverinfo="text", hoverlabel=dict(namelength=0)))
    frontier = _frontier(nodes, x_title)
    if selected is not None and nodes["member"].eq(selected).any():
        chosen = nodes[nodes["member"].eq(selected)]
        fig.add_trace(go.Scatter(x=chosen["x"], y=chosen["y"], mode="markers+text", hoverinfo="skip",
                                 name="selected", text=chosen["member"], textposition="top center",
                                 textfont=dict(color=SELECTED_COLOR, size=12),
                                 marker=dict(symbol="circle-open", size=28, color=SELECTED_COLOR, line=dict(width=3.5))))
    fig.update_layout(
        coloraxis=dict(colorscale="Viridis", reversescale=not lower_is_better, cmin=cmin, cmax=cmax,
                       colorbar=dict(title=dict(text=f"estimate<br>{metric}", side="top"), thickness=10, len=0.7)),
        xaxis=dict(title=x_title, zeroline=False, range=frontier[0]), yaxis=dict(visible=False, range=frontier[1]),
        clickmode="event+select", dragmode="pan", height=620, margin=dict(l=10, r=10, t=40, b=10),
        uirevision="tree", legend=dict(orientation="h", yanchor="bottom", y=1.01, x=0, itemsizing="constant"),
        hoverlabel=dict(align="left"), modebar=dict(orientation="v"), plot_bgcolor="white",
    )
    return fig, click_map


def _frontier(nodes: pd.DataFrame, x_title: str) -> tuple[list[float] | None, list[float] | None]:
    """(x range, y range) to open on: a deep lineage opens on its last FRONTIER_GENERATIONS
    generations, where the living members are, and the rows drawn there (the root stays one drag
    or double-click away); a shallow one shows everything (None, None)."""
    if x_title != "generation" or nodes.empty or nodes["x"].max() - nodes["x"].min() <= FRONTIER_GENERATIONS:
        return None, None
    end = float(nodes["x"].max())
    rows = nodes.loc[nodes["x"] >= end - FRONTIER_GENERATIONS, "y"]
    return [end - FRONTIER_GENERATIONS, end + 1.5], [float(rows.min()) - 1.0, float(rows.max()) + 1.0]


# --------------------------------------------------------------------------- progress: the promotion staircase

def progress_figure(frame: pd.DataFrame, promotions: pd.DataFrame, metric: str, lower_is_better: bool,
                    holdout: str | None = None) -> go.Figure:
    """autoresearch's progress.png, told by selection: every trained experiment a faint point,
    the champion's estimate as a step at each promotion (labelled with its description), the
    holdout beside it when the rows carry one."""
    ok = frame[frame["status"].eq("ok") & frame[metric].notna()]
    scatter = _scatter(len(ok))
    fig = go.Figure()
    fig.add_trace(scatter(
        x=ok["id"], y=ok[metric], mode="markers", name="trained experiment (one run)",
        marker=dict(color="#9aa5b1", size=4, opacity=0.35),
        hovertext=("#" + ok["id"].astype(str) + " " + ok["member"] + f" {metric} " + _number(ok[metric])
                   + "<br>" + _escape(ok["description"])).to_numpy(dtype=object), hoverinfo="text"))
    last = int(frame["id"].max()) if not frame.empty else 0
    if not promotions.empty:
        steps_x = promotions["at_id"].tolist() + [max(last, int(promotions["at_id"].iloc[-1]))]
        steps_y = promotions["estimate"].tolist() + [promotions["estimate"].iloc[-1]]
        fig.add_trace(go.Scatter(x=steps_x, y=steps_y, mode="lines", name="champion (estimate at promotion)",
                                 line=dict(color=STEP_COLOR, width=2.5, shape="hv"), hoverinfo="skip"))
        hover = ("<b>" + promotions["member"] + "</b> promoted after #" + promotions["at_id"].astype(str)
                 + f"<br>estimate {metric} " + _number(promotions["estimate"]) + " ± " + _number(promotions["estimate_sd"])
                 + " on " + promotions["runs"].astype(str) + " run(s); now " + _number(promotions["estimate_now"])
                 + "<br>P(better than " + promotions["previous"].replace("", "—") + ") "
                 + _number(promotions["prob_better"], "{:.0%}") + "<br>" + _escape(promotions["description"]))
        fig.add_trace(go.Scatter(x=promotions["at_id"], y=promotions["estimate"], mode="markers", name="promotion",
                                 marker=dict(color=STEP_COLOR, size=10, line=dict(color="black", width=0.6)),
                                 customdata=promotions["first_id"].to_numpy(), hovertext=hover.to_numpy(dtype=object),
                                 hoverinfo="text"))
        if holdout is not None and promotions["holdout"].notna().any():
            # its own axis (right): another data split, so another level; the steps line up in x
            has = promotions[promotions["holdout"].notna()]
            fig.add_trace(go.Scatter(x=has["at_id"].tolist() + [last], y=has["holdout"].tolist() + [has["holdout"].iloc[-1]],
                                     mode="lines+markers", name=f"champion {holdout} (hidden holdout, right axis)",
                                     line=dict(color=HOLDOUT_COLOR, width=2, dash="dot", shape="hv"),
                                     marker=dict(size=6), yaxis="y2", hoverinfo="skip"))
            fig.update_layout(yaxis2=dict(title=holdout, overlaying="y", side="right", showgrid=False,
                                          color=HOLDOUT_COLOR, range=_span(has["holdout"], 0.3)))
        _label_steps(fig, promotions)
        _focus(fig, ok[metric], promotions, lower_is_better)
    fig.update_layout(xaxis=dict(title="experiment #", range=[-0.02 * max(last, 1), 1.1 * max(last, 1)]),
                      yaxis_title=metric, height=520,
                      margin=dict(l=10, r=10, t=40, b=10), uirevision="progress", modebar=dict(orientation="v"),
                      legend=dict(orientation="h", yanchor="bottom", y=1.01, x=0), plot_bgcolor="white")
    return fig


def _label_steps(fig: go.Figure, promotions: pd.DataFrame) -> None:
    """Each step's description, like progress.png's labels; past MAX_STEP_LABELS only the largest steps."""
    steps = promotions.assign(gain=promotions["estimate"].diff().abs().fillna(np.inf))
    if len(steps) > MAX_STEP_LABELS:     # the largest step in each of MAX_STEP_LABELS stretches of x
        bins = pd.cut(steps["at_id"], MAX_STEP_LABELS, labels=False)
        steps = steps.loc[steps.groupby(bins)["gain"].idxmax()]
    for _, step in steps.iterrows():
        text = str(step["description"]).strip()
        text = text if len(text) <= 45 else text[:42] + "..."
        fig.add_annotation(x=step["at_id"], y=step["estimate"], text=_escape(pd.Series([text])).iloc[0],
                           showarrow=False, xanchor="left", yanchor="bottom", xshift=4, yshift=4,
                           textangle=-30, font=dict(size=10, color="#1a7a3a"))


def _span(values: pd.Series, pad: float) -> list[float]:
    lo, hi = float(values.min()), float(values.max())
    margin = max(hi - lo, abs(hi) * 1e-4) * pad
    return [lo - margin, hi + margin]


def _focus(fig: go.Figure, values: pd.Series, promotions: pd.DataFrame, lower_is_better: bool) -> None:
    """Like progress.png: the y range from just past the best step to a little past the seed, so
    the far worse children do not flatten the staircase (double-click shows everything)."""
    seed = float(promotions["estimate"].iloc[0])
    best = float(promotions["estimate"].min() if lower_is_better else promotions["estimate"].max())
    near = values[(values <= seed) if lower_is_better else (values >= seed)]
    edge = float(near.min() if lower_is_better else near.max()) if not near.empty else best
    lo, hi = (min(best, edge), seed) if lower_is_better else (seed, max(best, edge))
    margin = max(hi - lo, abs(seed) * 1e-4) * 0.15
    fig.update_layout(yaxis=dict(range=[lo - margin, hi + 2 * margin]))


# --------------------------------------------------------------------------- throughput

def throughput_figure(spans: pd.DataFrame, costs: pd.DataFrame) -> go.Figure:
    """Per GPU a timeline of its trainings (coloured by status), and the agents' cumulative cost."""
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=2, cols=1, row_heights=[0.72, 0.28], shared_xaxes=True, vertical_spacing=0.06)
    lanes = sorted(spans["lane"].unique()) if not spans.empty else []
    row_of = {lane: i for i, lane in enumerate(lanes)}
    for status, part in spans.groupby("status") if not spans.empty else []:
        xs = np.column_stack([pd.to_datetime(part["start"], unit="s"), pd.to_datetime(part["end"], unit="s"),
                              np.full(len(part), None)]).ravel()
        ys = np.repeat(part["lane"].map(row_of).to_numpy(float), 3).astype(object)
        ys[2::3] = None
        fig.add_trace(_scatter(len(part) * 3)(x=xs, y=ys, mode="lines", name=status, hoverinfo="skip",
                                              line=dict(color=STATUS_COLOR.get(status, "#555"), width=9)), row=1, col=1)
    if not costs.empty:
        fig.add_trace(go.Scatter(x=pd.to_datetime(costs["time"], unit="s"), y=costs["cost"], mode="lines",
                                 name="agent $ (cumulative)", line=dict(color="#1f6feb", width=2)), row=2, col=1)
    fig.update_yaxes(tickvals=list(range(len(lanes))), ticktext=lanes, autorange="reversed", row=1, col=1)
    fig.update_yaxes(title_text="agent $", row=2, col=1)
    fig.update_layout(height=max(360, 120 + 26 * len(lanes)), margin=dict(l=10, r=10, t=30, b=10),
                      uirevision="throughput", legend=dict(orientation="h", yanchor="bottom", y=1.01, x=0),
                      plot_bgcolor="white")
    return fig


def clicked_id(point: dict, click_map: dict[int, list[int]]) -> int | None:
    """The experiment behind a selected point (Streamlit's selection event): its customdata id,
    else its trace (`curve_number`) and index looked up in the figure's click map."""
    custom = point.get("customdata")
    if isinstance(custom, (list, tuple)):
        custom = custom[0] if custom else None
    if isinstance(custom, (int, float)) and not isinstance(custom, bool) and not math.isnan(custom):
        return int(custom)
    ids = click_map.get(point.get("curve_number"))
    index = point.get("point_index", point.get("point_number"))
    if ids is not None and isinstance(index, int) and 0 <= index < len(ids):
        return ids[index]
    return None
