"""Plotly figures of a run's lineage (the tree and the progress chart) for `app.py`.

Pure functions from the frames `lineage_view` derives to `go.Figure`s; no Streamlit here. Above
WEBGL_THRESHOLD points the traces switch to WebGL (Scattergl) so 10,000 experiments stay fluid;
below it they are SVG, whose points the browser can click one by one.
"""
from __future__ import annotations

import html

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
FAILED_CATEGORIES = ("crashed", "violation", "failed")
EDGE_COLOR = "rgba(120,120,140,0.35)"
PATH_COLOR = "#f5b700"
BEST_COLOR = "#2ca02c"


def _scatter(n_points: int):
    return go.Scattergl if n_points > WEBGL_THRESHOLD else go.Scatter


def _hover_data(nodes: pd.DataFrame) -> np.ndarray:
    """customdata columns: id, member, status, agent, description (HTML-escaped, shortened)."""
    describe = nodes["description"].str.slice(0, 120).map(html.escape)
    reason = nodes.get("reason", pd.Series("", index=nodes.index)).str.slice(0, 120).map(html.escape)
    return np.column_stack([nodes["id"].to_numpy(), nodes["member"].to_numpy(),
                            nodes["status"].to_numpy(), nodes["agent"].map(html.escape).to_numpy(),
                            describe.to_numpy(), reason.to_numpy()])


def _hovertemplate(metric: str, failed: bool) -> str:
    figure = "%{customdata[5]}" if failed else f"{metric} %{{y:.6f}}"
    return ("<b>#%{customdata[0]}</b> %{customdata[1]} · %{customdata[2]}<br>" + figure +
            "<br>%{customdata[4]}<br><i>%{customdata[3]}</i><extra></extra>")


def tree_figure(nodes: pd.DataFrame, edge_x: list, edge_y: list, path_x: list, path_y: list,
                metric: str, lower_is_better: bool, x_title: str,
                selected_id: int | None = None) -> tuple[go.Figure, dict[int, list[int]]]:
    """The lineage tree; also returns {trace index: experiment ids} to map a clicked point back."""
    scatter = _scatter(len(nodes))
    fig = go.Figure()
    fig.add_trace(scatter(x=edge_x, y=edge_y, mode="lines", hoverinfo="skip", showlegend=False,
                          line=dict(color=EDGE_COLOR, width=1), name="edges"))
    if path_x:
        fig.add_trace(scatter(x=path_x, y=path_y, mode="lines", hoverinfo="skip",
                              line=dict(color=PATH_COLOR, width=3.5), name="champion's path"))
    click_map: dict[int, list[int]] = {}
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
                              customdata=_hover_data(part), 
                              selected=dict(marker=dict(opacity=1.0, size=size + 8)),
                              unselected=dict(marker=dict(opacity=0.45)),
                              hovertemplate=_hovertemplate(metric, category in FAILED_CATEGORIES)))
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
        hoverlabel=dict(align="left"),
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
        customdata=np.column_stack([plain["description"].str.slice(0, 120).map(html.escape)]),
        hovertemplate=f"#%{{x}} {metric} %{{y:.6f}}<br>%{{customdata[0]}}<extra></extra>"))
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
        customdata=np.column_stack([gains["description"].str.slice(0, 120).map(html.escape)]),
        hovertemplate=f"<b>#%{{x}} new best</b> {metric} %{{y:.6f}}<br>%{{customdata[0]}}<extra></extra>"))
    failed = frame[frame["status"].ne("ok") | frame[metric].isna()]
    if not failed.empty:
        band = lv.failure_band(frame[metric], lower_is_better)
        fig.add_trace(scatter(
            x=failed["id"], y=np.full(len(failed), band), mode="markers", name="failed",
            marker=dict(color="#d62728", symbol="x", size=7, opacity=0.7),
            customdata=np.column_stack([failed["status"], failed["reason"].str.slice(0, 120).map(html.escape)]),
            hovertemplate="#%{x} %{customdata[0]}<br>%{customdata[1]}<extra></extra>"))
    baseline = lv.baseline_value(frame, metric)
    if not np.isnan(baseline):
        fig.add_hline(y=baseline, line=dict(color="#555", width=1, dash="dash"), opacity=0.6,
                      annotation_text=f"baseline {baseline:.6f}", annotation_position="top right")
    fig.update_layout(xaxis_title="experiment #", yaxis_title=metric, height=420,
                      margin=dict(l=10, r=10, t=40, b=10), uirevision="progress",
                      legend=dict(orientation="h", yanchor="bottom", y=1.01, x=0))
    return fig


def clicked_id(point: dict, click_map: dict[int, list[int]]) -> int | None:
    """The experiment behind a selected point (Streamlit's selection event): its customdata id,
    else its trace (`curve_number`) and index looked up in the tree's click map."""
    custom = point.get("customdata")
    if isinstance(custom, (list, tuple)) and custom:
        try:
            return int(custom[0])
        except (TypeError, ValueError):
            pass
    ids = click_map.get(point.get("curve_number"))
    index = point.get("point_index", point.get("point_number"))
    if ids is not None and isinstance(index, int) and 0 <= index < len(ids):
        return ids[index]
    return None
