"""Pure pieces of the driver: training outcome, node slots, the training environment, the
cluster address check, and the console lines."""
from __future__ import annotations

import socket
import time

import pytest

from population.config import RunConfig
from population.console import experiment_line, status_line
from population.fleet import DriverError
from population.ray_fleet import check_address, node_slots, ray_address
from population.outcome import train_env, training_outcome
from population.training import TrainResult
from prepare.tasks import get_task

TASK = get_task("climbmix")


def _result(log: str, returncode: int | None = 0, timed_out: bool = False, evaluation: dict | None = None,
            busy: float | None = 3.0) -> TrainResult:
    return TrainResult(exp_id=1, returncode=returncode, timed_out=timed_out, seconds=1.0, log=log, gpu="H100",
                       node="n", cuda_visible_devices="0", evaluation=evaluation, busy_seconds=busy)


def test_the_metric_is_the_evaluators_and_the_files_own_is_information():
    status, reason, figures = training_outcome(
        _result("step\n---\nval_bpb: 1.5\npeak_vram_mb: 10\n",
                evaluation={"metric": 0.99, "holdout": 1.01, "wall_seconds": 2.5}), TASK, 900)
    assert (status, reason) == ("ok", "")
    assert figures["val_bpb"] == 0.99 and figures["holdout_bpb"] == 1.01 and figures["eval_seconds"] == 2.5
    assert figures["reported_val_bpb"] == 1.5 and figures["peak_vram_mb"] == 10.0
    assert figures["busy_seconds"] == 3.0


@pytest.mark.parametrize("log, returncode, timed_out, evaluation, status, needle", [
    ("Traceback\nOOM\n", 1, False, None, "crash", "exit code 1"),
    ("ran fine, saved nothing\n", 0, False, {"error": "checkpoint rule: no model", "rule": "crash"}, "crash",
     "checkpoint rule"),
    ("---\nval_bpb: 0.000001\n", 0, False, {"error": "causality rule: moved", "rule": "violation"}, "violation",
     "causality rule"),
    ("---\nval_bpb: 0.9\n", 0, False, {"metric": float("nan")}, "crash", "no finite val_bpb"),
    ("---\nval_bpb: 0.5\n", 0, False, {"metric": 0.9}, "violation", "report rule"),
    ("---\nval_bpb: 0.9\n", 0, False, None, "crash", "not scored"),
    ("step 10\n", None, True, None, "timeout", "900 s wall-clock limit"),
])
def test_training_outcome_failures_carry_the_rule_and_the_log_tail(log, returncode, timed_out, evaluation, status,
                                                                   needle):
    got_status, reason, figures = training_outcome(_result(log, returncode, timed_out, evaluation), TASK, 900)
    assert got_status == status and needle in reason
    assert "val_bpb" not in figures or figures["val_bpb"] is None or status == "crash"
    if evaluation is None or "error" in evaluation:
        assert log.strip().splitlines()[-1] in reason


def _node(node_id, gpus, cpus=8, accel=None, alive=True):
    resources = {"CPU": cpus, "GPU": gpus}
    if accel:
        resources[f"accelerator_type:{accel}"] = 1.0
    return {"NodeID": node_id, "Alive": alive, "Resources": resources}


def test_node_slots_one_per_gpu_filtered_by_accelerator_and_liveness():
    nodes = [_node("a", 2, accel="H100"), _node("b", 1, accel="H200"), _node("c", 4, alive=False),
             _node("d", 0)]
    assert node_slots(nodes, "cuda", None) == [("a", "H100"), ("a", "H100"), ("b", "H200")]
    assert node_slots(nodes, "cuda", "H200") == [("b", "H200")]
    assert node_slots(nodes, "cuda", "A100") == []
    assert len(node_slots(nodes, "cpu", None)) == 8 * 3


def test_train_env_sets_budget_seed_and_cpu_mode_and_keeps_the_users_autoresearch_settings():
    source = {"AUTORESEARCH_CACHE": "/data", "AUTORESEARCH_WORKDIR": "/tmp/w", "OPENAI_API_KEY": "k", "HOME": "/h"}
    env = train_env(RunConfig(budget_s=120, device="cpu"), 43, source)
    assert env == {"AUTORESEARCH_CACHE": "/data", "AUTORESEARCH_TIME_BUDGET": "120", "AUTORESEARCH_SEED": "43",
                   "AUTORESEARCH_SMOKE": "1", "AUTORESEARCH_DEVICE": "cpu"}
    gpu_env = train_env(RunConfig(budget_s=300, device="cuda"), 42, {})
    assert "AUTORESEARCH_SMOKE" not in gpu_env and gpu_env["AUTORESEARCH_TIME_BUDGET"] == "300"


def test_check_address_fails_fast_on_a_closed_port():
    with socket.socket() as s:                      # a port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.monotonic()
    with pytest.raises(DriverError, match=f"cannot reach the Ray cluster at 127.0.0.1:{port}"):
        check_address(f"127.0.0.1:{port}", timeout_s=2)
    assert time.monotonic() - start < 5
    with pytest.raises(DriverError, match="not HOST:PORT"):
        check_address("just-a-name")
    check_address("auto")                            # left to Ray


def test_check_address_accepts_a_listening_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        check_address(f"ray://127.0.0.1:{s.getsockname()[1]}")


def test_experiment_line_matches_the_documented_shape():
    line = experiment_line(exp_id=12, kind="child", member="m0007", parent="m0003", worker="w2", status="ok",
                           metric="val_bpb", value=0.99213, best=0.99031, description="raise MATRIX_LR to 0.05")
    assert line == "e0012 m0007<-m0003 w2 ok val_bpb 0.9921 (champion 0.9903) 'raise MATRIX_LR to 0.05'"
    crash = experiment_line(exp_id=3, kind="child", member="m0002", parent="m0000", worker="w0", status="crash",
                            metric="val_bpb", value=float("nan"), best=None, reason="exit code 1\nCUDA OOM\n")
    assert crash == "e0003 m0002<-m0000 w0 crash [CUDA OOM]"
    rerun = experiment_line(exp_id=9, kind="rerun", member="m0004", parent="m0001", worker="w1", status="ok",
                            metric="val_bpb", value=0.9, best=0.95, mean=0.91)
    assert rerun == "e0009 m0004 rerun w1 ok val_bpb 0.9000 (mean 0.9100, champion 0.9500)"
    refused = experiment_line(exp_id=4, kind="child", member="m0003", parent="m0000", worker="w1",
                              status="agent_error", metric="val_bpb", value=None, best=None,
                              reason="request to http://127.0.0.1:9/v1/chat/completions failed: ConnectionError: "
                                     "HTTPConnectionPool(host='127.0.0.1', port=9): Max retries exceeded with url: "
                                     "/v1/chat/completions (Caused by NewConnectionError(\"HTTPConnection(host="
                                     "'127.0.0.1', port=9): Failed to establish a new connection: [Errno 111] "
                                     "Connection refused\"))")
    assert refused.startswith("e0004 m0003<-m0000 w1 agent_error [request to http://127.0.0.1:9/v1/chat/completions")
    assert refused.endswith("[Errno 111] Connection refused\"))]") and " ... " in refused   # the middle cut


def test_status_line_counts():
    line = status_line(finished=12, ok=9, in_flight=4, training=3, workers=4, alive=6, champion="m0003",
                       metric="val_bpb", best=0.9903, elapsed_s=3723, max_experiments=100)
    assert line == ("status: 12/100 finished (9 ok), 4 in flight, 3/4 training, 6 alive, "
                    "champion m0003 val_bpb 0.9903, elapsed 1:02:03")
    past = status_line(finished=16, ok=16, in_flight=0, training=0, workers=1, alive=6, champion=None,
                       metric="val_bpb", best=None, elapsed_s=3, max_experiments=5, waiting_for_gpu=0)
    assert past.startswith("status: 16 finished (past --max-experiments 5) (16 ok)") and "16/5" not in past
    assert "(1 worker)" in past and "champion none yet" in past


def test_without_an_address_the_driver_starts_a_ray_of_its_own():
    assert ray_address(None, {}) == "local"                                   # not a `ray start` left running
    assert ray_address(None, {"RAY_ADDRESS": "10.0.0.1:6379"}) is None        # Ray reads it itself
    assert ray_address("auto", {"RAY_ADDRESS": "10.0.0.1:6379"}) == "auto"     # the flag wins


def test_trainings_beyond_their_nodes_gpus_count_as_waiting_for_a_gpu():
    from population.fleet import Fleet, Slot

    fleet = Fleet()
    fleet.slots = [Slot(f"w{i}", None, node, "H100", "mutate", train=(object(), i) if busy else None)
                   for i, (node, busy) in enumerate([("a", True), ("a", True), ("a", True), ("b", True), ("b", False)])]
    fleet.note_capacity([("a", "H100"), ("b", "H100"), ("b", "H100")])       # node a: 1 GPU, node b: 2
    assert fleet.training() == 4 and fleet.waiting_for_gpu() == 2
    line = status_line(finished=3, ok=3, in_flight=5, training=fleet.training() - fleet.waiting_for_gpu(),
                       waiting_for_gpu=fleet.waiting_for_gpu(), workers=5, alive=2, champion=None,
                       metric="val_bpb", best=None, elapsed_s=60, max_experiments=None)
    assert "2 training, 2 waiting for a GPU (5 workers)" in line


LEAK_REPORT = """nanobind: leaked 4 instances!
 - leaked instance 0x7fb695808328 of type "triton._C.libtriton.ir.attribute"
nanobind: leaked 64 types!
 - leaked type "triton._C.libtriton.ir.location"
 - ... skipped remainder
nanobind: leaked 514 functions!
 - leaked function "create_map_elementwise"
 - ... skipped remainder
nanobind: this is likely caused by a reference counting issue in the binding code.
See https://nanobind.readthedocs.io/en/latest/refleaks.html"""


def test_nanobinds_leak_report_at_exit_is_left_out_of_logs_and_reasons_and_nothing_else():
    """Every training that imports torch's compiler ends its run.log with ~30 lines of nanobind's leak
    report (triton's bindings, at interpreter exit): they would fill a crash's log tail and be its
    headline (issue 29). They are left out, said so in one line; the training's own lines stay."""
    from population.console import drop_leak_report, reason_headline

    crash = "exit code 1\nTraceback (most recent call last):\nRuntimeError: CUDA error: out of memory\n" + LEAK_REPORT
    assert reason_headline(crash) == "RuntimeError: CUDA error: out of memory"
    kept = drop_leak_report(crash)
    assert "nanobind: leaked" not in kept and "RuntimeError: CUDA error: out of memory" in kept
    assert kept.rstrip().endswith("[10 lines of nanobind's leak report at exit left out]")
    assert reason_headline(kept) == "RuntimeError: CUDA error: out of memory"
    plain = "step 1\n---\nval_bpb: 1.0\n - leaked by the user: not nanobind's shape\n"
    assert drop_leak_report(plain) is plain                      # nothing of the report: the text unchanged


def test_rays_token_notice_is_filtered_and_nothing_else_of_its_logger():
    import logging

    from population.startup import quiet_ray_notices

    quiet_ray_notices()
    quiet_ray_notices()                                   # once is enough: no second filter
    logger = logging.getLogger("ray._private.authentication.authentication_token_setup")
    assert len(logger.filters) == 1

    def passes(message: str) -> bool:
        return logger.filter(logging.LogRecord(logger.name, logging.WARNING, __file__, 1, message, None, None))

    assert not passes("Token authentication is enabled for this Ray cluster. Set RAY_AUTH_MODE=disabled to opt out.")
    assert passes("Token authentication is disabled for this Ray cluster. Anyone with network access ...")
    assert passes("Token authentication is enabled but no token was found.")
