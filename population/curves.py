"""A training's loss curve, from the progress lines its train file prints (pure).

engine/train.py rewrites one console line per step with `\\r`:
    `\\rstep 00042 (13.5%) | loss: 3.123456 | lrm: 1.00 | ...`
engine/train_enwik8.py prints one line every few steps:
    `step    42 |  13.5% | loss 3.1234 nats | lr 1.00e-03 | ...`
Both give the fraction of the time budget trained and the (smoothed, debiased) training loss.
The curve is a list of [fraction, loss] points in log order, thinned to at most `MAX_POINTS`
(first and last kept); it is stored as experiments/<id>/curve.json (issue 23: the data an
early-stop rule is validated on, bench/early_stop_replay.py).
"""
from __future__ import annotations

import json
import math
import re

MAX_POINTS = 200
# the loss must be followed by ` |` or ` nats`: a line cut in the middle of its number is skipped
_PROGRESS = re.compile(r"step\s+\d+\s*(?:\|\s*)?\(?\s*(\d+(?:\.\d+)?)%\)?\s*\|\s*loss:?\s+"
                       r"([-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)\s+(?:\||nats)")


def parse_curve(log_text: str, max_points: int = MAX_POINTS) -> list[list[float]]:
    """[[fraction, loss], ...] from every progress line of `log_text`, thinned; [] when none."""
    points = []
    for line in re.split(r"[\r\n]", log_text):
        match = _PROGRESS.search(line)
        if match is None:
            continue
        fraction, loss = float(match.group(1)) / 100, float(match.group(2))
        if math.isfinite(loss):
            points.append([round(min(max(fraction, 0.0), 1.0), 4), loss])
    return thin(points, max_points)


def thin(points: list, max_points: int = MAX_POINTS) -> list:
    """At most `max_points` of `points`, evenly spaced by index, the first and the last kept."""
    if len(points) <= max_points:
        return list(points)
    if max_points < 2:
        return points[-1:] if max_points == 1 else []
    last = len(points) - 1
    picks = sorted({round(i * last / (max_points - 1)) for i in range(max_points)})
    return [points[i] for i in picks]


def curve_json(log_text: str) -> str | None:
    """experiments/<id>/curve.json's text, None when the log holds no progress line."""
    points = parse_curve(log_text)
    return json.dumps({"points": points}) if points else None


def loss_at(points: list, fraction: float) -> float | None:
    """The curve's loss at `fraction`, linear between the points around it; None outside the curve."""
    if not points or fraction < points[0][0] or fraction > points[-1][0]:
        return None
    for (f0, l0), (f1, l1) in zip(points, points[1:]):
        if f0 <= fraction <= f1:
            return l0 if f1 == f0 else l0 + (l1 - l0) * (fraction - f0) / (f1 - f0)
    return points[-1][1]
