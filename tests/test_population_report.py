"""bench/population_report.py: GPU occupancy and overlap from a journal."""
import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("population_report", ROOT / "bench" / "population_report.py")
report_mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(report_mod)


def test_union_and_overlap():
    assert report_mod.union_seconds([(0, 10), (5, 15), (20, 25)]) == 20
    assert report_mod.max_overlap([(0, 10), (10, 20)]) == 1      # back to back is not an overlap
    assert report_mod.max_overlap([(0, 10), (9, 20), (9.5, 11)]) == 3


def _finished(i, gpu, start, seconds):
    row = {"status": "ok", "node": "n", "cuda_visible_devices": gpu, "train_started_at": start,
           "train_seconds": seconds, "total_seconds": seconds - 1, "training_seconds": seconds - 11, "budget_s": 10}
    return json.dumps({"type": "experiment_finished", "id": i, "row": row})


def test_report_from_a_journal(tmp_path):
    lines = [_finished(0, "0", 0, 20), _finished(1, "1", 0, 20), _finished(2, "0", 20, 20),
             _finished(3, "1", 30, 10), '{"type": "experiment_fini']            # torn last line
    (tmp_path / "events.jsonl").write_text("\n".join(lines))
    out = report_mod.report(tmp_path)
    assert out["experiments"] == 4
    assert out["gpus"]["n:0"]["busy_fraction"] == 1.0
    assert out["gpus"]["n:1"]["busy_fraction"] == 0.75
    assert all(g["max_overlap"] == 1 for g in out["gpus"].values())
    assert out["mean_outside_budget_seconds"] == 10
    assert abs(out["experiments_per_gpu_hour"] - 4 / (40 * 2 / 3600)) < 1e-9
