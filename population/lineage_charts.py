"""Plotly figures of a run's lineage (the tree and the progress chart) for `app.py`.

Pure functions from the frames `lineage_view` derives to `go.Figure`s; no Streamlit here. Above
WEBGL_THRESHOLD points the traces switch to WebGL (Scattergl) so 10,000 experiments stay fluid;
below it they are SVG, whose points the browser can click one by one.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from population import lineage_view as lv

WEBGL_THRESHOLD = 1500
CATEGORY_STYLE = {   # symbol, fixed colour (None: coloured by the metric), size, opacity, label
    "champion": ("star", "#f5b700", 20, 1.0, "champion"),
    "living": ("circle", None, 10, 1.0, "living"),
    "culled": ("circle-open", None, 7, 0.55, "culled"),
    "crashed": ("x", "#d62728", 8, 0.9, "crash / timeout"),
    "violation": ("diamond", "#ff7f0e", 8, 0.9, "violation"),
    "failed": ("square-open", "#8c8c8c", 7, 0.8, "other failure"),
}
EDGE_COLOR = "rgba(120,120,140,0.35)"
PATH_COLOR = "#f5b700"
BEST_COLOR = "#2ca02c"


def _scatter(n_points: int):
    return go.Scattergl if n_points > WEBGL_THRESHOLD else go.Scatter


def _escape(text: pd.Series, limit: int = 100) -> pd.Series:
    """Shortened and HTML-escaped, vectorised (html.escape per row is the slow part at 10k rows)."""
    text = text.astype(str).str.slice(0, limit)
    return text.str.replace("&", "&amp;").str.replace("<", "&lt;").str.replace(">", "&gt;")


def hover_text(nodes: pd.DataFrame, metric: str) -> np.ndarray:
    """One pre-formatted hover string per node (much cheaper for plotly than a 2-D customdata);
    the app caches it as the `hover` column of the nodes."""
    failed = nodes[metric].isna()
    figure = nodes[metric].map("{:.6f}".format).astype(str).radd(f"{metric} ")
    figure = figure.where(~failed, _escape(nodes["reason"]))
    text = ("<b>#" + nodes["id"].astype(str) + "</b> " + nodes["member"] + " · " + nodes["status"]
            + "<br>" + figure + "<br>" + _escape(nodes["description"])
            + "<br><i>" + _escape(nodes["agent"]) + "</i>")
    return text.to_numpy(dtype=object)


def tree_figure(nodes: pd.DataFrame, edge_x: np.ndarray, edge_y: np.ndarray, path_x, path_y,
                metric: str, lower_is_better: bool, x_title: str,
                selected_id: int | None = None) -> tuple[go.Figure, dict[int, list[int]]]:
    """The lineage tree; also returns {trace index: experiment ids} to map a clicked point back."""
    scatter = _scatter(len(nodes))
    fig = go.Figure()
    fig.add_trace(scatter(x=edge_x, y=edge_y, mode="lines", hoverinfo="skip", showlegend=False,
                          line=dict(color=EDGE_COLOR, width=1), name="edges"))
    if len(path_x) > 1:
        fig.add_trace(scatter(x=path_x, y=path_y, mode="lines", hoverinfo="skip",
                              line=dict(color=PATH_COLOR, width=3.5), name="champion's path"))
    click_map: dict[int, list[int]] = {}
    hover = nodes["hover"] if "hover" in nodes else pd.Series(hover_text(nodes, metric), index=nodes.index)
    values = nodes[metric]
    cmin, cmax = (float(values.min()), float(values.max())) if values.notna().any() else (0.0, 1.0)
    for category in lv.CATEGORIES:
        part = nodes[nodes["category"] == category]
        if part.empty:
            continue
        symbol, color, size, opacity, label = CATEGORY_STYLE[category]
        marker = dict(symbol=symbol, size=size, opacity=opacity)
        if color is None:
            marker.update(color=part[metric].to_numpy(), coloraxis="coloraxis",
                          line=dict(width=1.2 if category == "culled" else 0.5, color="white"))
        else:
            marker.update(color=color, line=dict(width=1 if category == "champion" else 1.5,
                                                 color="#333" if category == "champion" else color))
        click_map[len(fig.data)] = part["id"].astype(int).tolist()
        fig.add_trace(scatter(x=part["x"], y=part["y"], mode="markers", marker=marker, name=label,
                              customdata=part["id"].to_numpy(), hovertext=hover[part.index].to_numpy(dtype=object),
                              hoverinfo="text",
                              selected=dict(marker=dict(opacity=1.0, size=size + 8)),
                              unselected=dict(marker=dict(opacity=0.45)),
                              hoverlabel=dict(namelength=0)))
    if selected_id is not None and (nodes["id"] == selected_id).any():
        chosen = nodes[nodes["id"] == selected_id]
        fig.add_trace(go.Scatter(x=chosen["x"], y=chosen["y"], mode="markers", hoverinfo="skip",
                                 name="selected", marker=dict(symbol="circle-open", size=24,
                                                              color="#e0115f", line=dict(width=3))))
    _band_line(fig, nodes, metric, lower_is_better)
    fig.update_layout(
        coloraxis=dict(colorscale="Viridis", reversescale=not lower_is_better, cmin=cmin, cmax=cmax,
                       colorbar=dict(title=dict(text=metric), thickness=12, len=0.8)),
        xaxis_title=x_title, yaxis_title=metric, clickmode="event+select", dragmode="pan",
        height=560, margin=dict(l=10, r=10, t=40, b=10), uirevision="tree",
        legend=dict(orientation="h", yanchor="bottom", y=1.01, x=0, itemsizing="constant"),
        hoverlabel=dict(align="left"), modebar=dict(orientation="v"),
    )
    return fig, click_map


def _band_line(fig: go.Figure, nodes: pd.DataFrame, metric: str, lower_is_better: bool) -> None:
    """A dotted line and label where runs without a metric are drawn."""
    if not nodes["failed"].any():
        return
    fig.add_hline(y=lv.failure_band(nodes[metric], lower_is_better),
                  line=dict(color="#d62728", width=1, dash="dot"), opacity=0.4,
                  annotation_text="no metric (failed)", annotation_position="bottom left",
                  annotation_font=dict(color="#d62728", size=11))


def _progress_text(rows: pd.DataFrame, metric: str, prefix: str = "") -> np.ndarray:
    value = rows[metric].map("{:.6f}".format).astype(str)
    return ("<b>#" + rows["id"].astype(str) + f"</b> {prefix}{metric} " + value
            + "<br>" + _escape(rows["description"])).to_numpy(dtype=object)


def progress_figure(frame: pd.DataFrame, metric: str, lower_is_better: bool) -> go.Figure:
    """autoresearch's progress.png: every experiment a dot, the running best as a step line,
    failures apart on a band at the bottom."""
    scatter = _scatter(len(frame))
    best = lv.running_best(frame, metric, lower_is_better)
    fig = go.Figure()
    plain = best[~best["improved"]]
    fig.add_trace(scatter(
        x=plain["id"], y=plain[metric], mode="markers", name="experiment",
        marker=dict(color="#9aa5b1", size=5, opacity=0.6),
        hovertext=_progress_text(plain, metric), hoverinfo="text"))
    if not best.empty:
        # Extend the step line to the last experiment so the current best reads at the right edge.
        line_x = best["id"].tolist() + [int(frame["id"].max())]
        line_y = best["best"].tolist() + [best["best"].iloc[-1]]
        fig.add_trace(scatter(x=line_x, y=line_y, mode="lines", name="running best",
                              line=dict(color=BEST_COLOR, width=2.5, shape="hv"), hoverinfo="skip"))
    gains = best[best["improved"]]
    fig.add_trace(scatter(
        x=gains["id"], y=gains[metric], mode="markers", name="new best",
        marker=dict(color=BEST_COLOR, size=10, line=dict(color="white", width=1)),
        hovertext=_progress_text(gains, metric, "new best "), hoverinfo="text"))
    failed = frame[frame["status"].ne("ok") | frame[metric].isna()]
    if not failed.empty:
        band = lv.failure_band(frame[metric], lower_is_better)
        fig.add_trace(scatter(
            x=failed["id"], y=np.full(len(failed), band), mode="markers", name="failed",
            marker=dict(color="#d62728", symbol="x", size=7, opacity=0.7 if len(failed) < 500 else 0.3),
            hovertext=("#" + failed["id"].astype(str) + " " + failed["status"] + "<br>"
                       + _escape(failed["reason"])).to_numpy(dtype=object),
            hoverinfo="text"))
    baseline = lv.baseline_value(frame, metric)
    if not np.isnan(baseline):
        fig.add_hline(y=baseline, line=dict(color="#555", width=1, dash="dash"), opacity=0.6,
                      annotation_text=f"baseline {baseline:.6f}", annotation_position="top right")
    fig.update_layout(xaxis_title="experiment #", yaxis_title=metric, height=420,
                      margin=dict(l=10, r=10, t=40, b=10), uirevision="progress", modebar=dict(orientation="v"),
                      legend=dict(orientation="h", yanchor="bottom", y=1.01, x=0))
    return fig


def clicked_id(point: dict, click_map: dict[int, list[int]]) -> int | None:
    """The experiment behind a selected point (Streamlit's selection event): its customdata id,
    else its trace (`curve_number`) and index looked up in the tree's click map."""
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
