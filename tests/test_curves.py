"""population/curves.py: a training's loss curve from its run.log; population/flight.py keeps it."""
from __future__ import annotations

import json

from population.curves import MAX_POINTS, curve_json, loss_at, parse_curve, thin
from population.flight import Flight
from population.policy import Work

TRAIN_LOG = (
    "time budget: 300s (+10 untimed warm-up steps)\n"
    "\rstep 00000 (0.0%) | loss: 10.987654 | lrm: 0.00 | dt: 7012ms | tok/sec: 74,751 | mfu: 0.9% | "
    "epoch: 1 | remaining: 300s    "
    "\rstep 00001 (0.0%) | loss: 10.512345 | lrm: 0.00 | dt: 310ms | tok/sec: 1,690,000 | mfu: 39.8% | "
    "epoch: 1 | remaining: 300s    "
    "\rstep 00042 (13.5%) | loss: 6.123456 | lrm: 1.00 | dt: 310ms | tok/sec: 1,690,000 | mfu: 39.8% | "
    "epoch: 1 | remaining: 260s    "
    "\rstep 00043 (13.6%) | lo"                      # a line cut by the next one's \r
    "\rstep 00300 (99.9%) | loss: 3.456789 | lrm: 0.01 | dt: 310ms | tok/sec: 1,690,000 | mfu: 39.8% | "
    "epoch: 1 | remaining: 0s    \n"
    "checkpoint: /tmp/x.pt\n---\nval_bpb:          1.234567\ntraining_seconds: 300.1\n"
)
ENWIK8_LOG = (
    "step     0 |   0.0% | loss 5.5452 nats | lr 0.00e+00 |   7012 ms |     9,345 chars/s | mfu   0.1% | left 60 s\n"
    "step    50 |  40.2% | loss 1.9876 nats | lr 1.00e-03 |     70 ms |   936,000 chars/s | mfu  21.0% | left 36 s\n"
    "step   100 | 100.0% | loss 1.5 nats | lr 1.00e-04 |     70 ms |   936,000 chars/s | mfu  21.0% | left 0 s\n"
)


def test_the_progress_lines_of_both_train_files_become_fraction_loss_points():
    assert parse_curve(TRAIN_LOG) == [[0.0, 10.987654], [0.0, 10.512345], [0.135, 6.123456], [0.999, 3.456789]]
    assert parse_curve(ENWIK8_LOG) == [[0.0, 5.5452], [0.402, 1.9876], [1.0, 1.5]]


def test_a_log_without_progress_lines_has_no_curve():
    for log in ("", "step 1/1\n---\nval_bpb: 1.0\n", "Traceback (most recent call last):\nRuntimeError: x\n",
                "\rstep 00007 (2.0%) | loss: 3.12"):     # cut mid-number at the end of the log
        assert parse_curve(log) == [] and curve_json(log) is None


def test_a_long_curve_is_thinned_keeping_the_first_and_last_point():
    log = "".join(f"\rstep {i:05d} ({100 * i / 4999:.1f}%) | loss: {5 - i / 2000:.6f} | lrm: 1.00 "
                  for i in range(5000))
    points = parse_curve(log)
    assert len(points) == MAX_POINTS
    assert points[0] == [0.0, 5.0] and points[-1] == [1.0, round(5 - 4999 / 2000, 6)]
    assert [p[0] for p in points] == sorted(p[0] for p in points)
    assert thin([[0, 1], [1, 2], [2, 3]], 2) == [[0, 1], [2, 3]] and thin([[0, 1]], 5) == [[0, 1]]


def test_loss_at_interpolates_inside_the_curve_only():
    points = [[0.0, 4.0], [0.5, 3.0], [1.0, 2.0]]
    assert loss_at(points, 0.25) == 3.5 and loss_at(points, 1.0) == 2.0 and loss_at(points, 0.0) == 4.0
    assert loss_at(points[:2], 0.75) is None and loss_at([], 0.5) is None


def test_the_experiment_files_hold_curve_json_beside_run_log():
    flight = Flight(7, Work(kind="baseline", seed=0), "w0", "m0000", None, "", "abc", "")
    files = flight.files(TRAIN_LOG, lambda: "")
    assert json.loads(files["curve.json"])["points"][-1] == [0.999, 3.456789]
    assert "curve.json" not in flight.files("step 1/1\n---\nval_bpb: 1.0\n", lambda: "")
    assert "curve.json" not in flight.files(None, lambda: "")
