import math
import multiprocessing
import os

import pandas as pd
import pyarrow.parquet as pq
import pytest

from population.state import PopulationState, lineage_columns
from population.store import (CorruptJournalError, RunStore, StoreError, StoreLockedError,
                              results_tsv)

META = {"tag": "t1", "task": "climbmix", "metric": "val_bpb", "lower_is_better": True, "budget_s": 300.0}


def new_store(tmp_path):
    return RunStore.create(tmp_path / "runs" / "t1", META)


def test_create_open_and_update_meta(tmp_path):
    store = new_store(tmp_path)
    assert store.meta["tag"] == "t1"
    store.update_meta(state="running", champion_id=3)
    again = RunStore.open(tmp_path / "runs" / "t1")
    assert again.meta["state"] == "running" and again.meta["champion_id"] == 3
    assert again.meta["metric"] == "val_bpb"
    assert not [p for p in again.dir.iterdir() if p.name.endswith(".tmp")]  # no temp leftovers


def test_create_refuses_an_existing_run_and_open_a_missing_one(tmp_path):
    new_store(tmp_path)
    with pytest.raises(StoreError, match="already holds a run"):
        new_store(tmp_path)
    with pytest.raises(StoreError, match="no run at"):
        RunStore.open(tmp_path / "runs" / "absent")


def test_journal_round_trip(tmp_path):
    store = new_store(tmp_path)
    events = [{"type": "noise", "std": 0.0004, "time": 1.0}, {"type": "run_state", "state": "running", "time": 2.0}]
    for event in events:
        store.append(event)
    assert RunStore.open(store.dir).events() == events


def test_torn_last_line_is_dropped_and_cut_before_the_next_append(tmp_path):
    store = new_store(tmp_path)
    store.append({"type": "noise", "std": 0.1, "time": 1.0})
    with open(store.journal_path, "ab") as f:
        f.write(b'{"type":"champion","mem')  # a crash mid-append
    reopened = RunStore.open(store.dir)
    assert reopened.events() == [{"type": "noise", "std": 0.1, "time": 1.0}]
    reopened.append({"type": "run_state", "state": "stopped", "time": 3.0})
    assert [e["type"] for e in reopened.events()] == ["noise", "run_state"]


def test_complete_json_without_newline_counts_as_torn(tmp_path):
    store = new_store(tmp_path)
    store.journal_path.write_bytes(b'{"type":"noise","std":0.1,"time":1}\n{"type":"noise","std":0.2,"time":2}')
    assert [e["std"] for e in store.events()] == [0.1]


def test_corrupt_earlier_line_is_an_error_naming_the_line(tmp_path):
    store = new_store(tmp_path)
    store.journal_path.write_bytes(b'{"type":"noise","std":0.1,"time":1}\nGARBAGE\n{"type":"noise","std":0.2,"time":2}\n')
    with pytest.raises(CorruptJournalError, match="line 2"):
        store.events()


def test_experiment_files_are_written_per_experiment(tmp_path):
    store = new_store(tmp_path)
    folder = store.write_experiment_files(7, {"run.log": "---\nval_bpb: 1.0\n", "diff.patch": b"+x\n",
                                              "transcript.txt": "hi", "prompt.md": "# do"})
    assert folder == store.dir / "experiments" / "7"
    assert (folder / "run.log").read_text().startswith("---")
    assert (folder / "diff.patch").read_bytes() == b"+x\n"
    with pytest.raises(ValueError):
        store.write_experiment_files(7, {"../escape": "x"})


def _try_lock(run_dir, queue):
    try:
        RunStore.open(run_dir).lock()
        queue.put("locked")
    except StoreLockedError as e:
        queue.put(str(e))


def test_a_second_driver_is_refused_with_the_holders_pid(tmp_path):
    store = new_store(tmp_path).lock()
    queue = multiprocessing.get_context("fork").Queue()
    other = multiprocessing.get_context("fork").Process(target=_try_lock, args=(store.dir, queue))
    other.start()
    other.join(30)
    assert queue.get(timeout=5) == f"run t1 is in use by another driver (pid {os.getpid()})"
    store.unlock()
    other = multiprocessing.get_context("fork").Process(target=_try_lock, args=(store.dir, queue))
    other.start()
    other.join(30)
    assert queue.get(timeout=5) == "locked"


def _rows():
    events = [
        {"type": "experiment_started", "id": 0, "kind": "baseline", "member": "m0000", "parent_id": None,
         "parent_commit": "", "worker": "w0", "agent": "none", "seed": 1, "budget_s": 300.0, "time": 1.0},
        {"type": "experiment_finished", "id": 0, "row": {"commit": "a" * 40, "status": "ok", "val_bpb": 1.0,
                                                         "peak_vram_mb": 45060.2, "description": "baseline"}},
        {"type": "experiment_started", "id": 1, "kind": "child", "member": "m0001", "parent_id": 0,
         "parent_commit": "a" * 40, "worker": "w1", "agent": "fake", "seed": 1, "budget_s": 300.0, "time": 2.0},
        {"type": "experiment_started", "id": 2, "kind": "child", "member": "m0002", "parent_id": 0,
         "parent_commit": "a" * 40, "worker": "w0", "agent": "fake", "seed": 1, "budget_s": 300.0, "time": 2.0},
        {"type": "experiment_started", "id": 3, "kind": "child", "member": "m0003", "parent_id": 0,
         "parent_commit": "a" * 40, "worker": "w0", "agent": "fake", "seed": 1, "budget_s": 300.0, "time": 2.0},
        {"type": "experiment_finished", "id": 1, "row": {"commit": "b" * 40, "status": "ok", "val_bpb": 0.99,
                                                         "peak_vram_mb": 1024.0, "description": "tab\there\nnewline",
                                                         "agent_tokens": 1200}},
        {"type": "experiment_finished", "id": 2, "row": {"commit": "c" * 40, "status": "ok", "val_bpb": 1.01,
                                                         "peak_vram_mb": 2048.0, "description": "worse"}},
        {"type": "experiment_finished", "id": 3, "row": {"commit": "d" * 40, "status": "crash",
                                                         "reason": "OOM", "description": "huge"}},
        {"type": "experiment_started", "id": 4, "kind": "rerun", "member": "m0001", "parent_id": 1,
         "parent_commit": "b" * 40, "worker": "w1", "agent": "fake", "seed": 2, "budget_s": 300.0, "time": 3.0},
        {"type": "experiment_finished", "id": 4, "row": {"commit": "b" * 40, "status": "ok", "val_bpb": 0.995,
                                                         "description": "tab\there\nnewline"}},
    ]
    return PopulationState.replay(events, "val_bpb").lineage_rows()


def test_results_tsv_matches_the_reference_format(tmp_path):
    lines = results_tsv(_rows(), "val_bpb").splitlines()
    assert lines[0] == "commit\tval_bpb\tmemory_gb\tstatus\tdescription"
    assert lines[1] == "aaaaaaa\t1.000000\t44.0\tkeep\tbaseline"
    assert lines[2] == "bbbbbbb\t0.990000\t1.0\tkeep\ttab here newline"
    assert lines[3] == "ccccccc\t1.010000\t2.0\tdiscard\tworse"
    assert lines[4] == "ddddddd\t0.000000\t0.0\tcrash\thuge"
    assert lines[5] == "bbbbbbb\t0.995000\t0.0\tkeep\ttab here newline"  # re-run: member mean 0.9925 < 1.0
    assert all(len(line.split("\t")) == 5 for line in lines)


def test_results_tsv_higher_is_better_flips_keep():
    lines = results_tsv(_rows(), "val_bpb", lower_is_better=False).splitlines()
    assert lines[2].split("\t")[3] == "discard" and lines[3].split("\t")[3] == "keep"


def test_write_tables_gives_typed_parquet_and_tsv(tmp_path):
    store = new_store(tmp_path)
    store.write_tables(_rows(), "val_bpb")
    table = pq.read_table(store.dir / "lineage.parquet")
    assert table.column_names == [name for name, _ in lineage_columns("val_bpb")]
    assert str(table.schema.field("parent_id").type) == "int64"
    assert str(table.schema.field("alive").type) == "bool"
    frame = store.read_lineage()
    assert list(frame["id"]) == [0, 1, 2, 3, 4]
    assert pd.isna(frame.loc[0, "parent_id"]) and frame.loc[1, "parent_id"] == 0
    assert frame.loc[1, "agent_tokens"] == 1200 and math.isnan(frame.loc[3, "val_bpb"])
    assert frame.loc[4, "metric_mean"] == pytest.approx(0.9925)
    assert (store.dir / "results.tsv").read_text().count("\n") == 6


def test_half_written_parquet_is_rebuilt_from_the_journal(tmp_path):
    store = new_store(tmp_path)
    (store.dir / "lineage.parquet").write_bytes(b"PAR1 torn")
    store.append({"type": "experiment_started", "id": 0, "kind": "baseline", "member": "m0000",
                  "parent_id": None, "parent_commit": "", "worker": "w", "agent": "a", "seed": 1,
                  "budget_s": 1.0, "time": 0.0})
    store.append({"type": "experiment_finished", "id": 0, "row": {"commit": "e" * 40, "status": "ok", "val_bpb": 2.0}})
    state = PopulationState.replay(RunStore.open(store.dir).events(), "val_bpb")
    store.write_tables(state.lineage_rows(), "val_bpb")
    assert list(store.read_lineage()["val_bpb"]) == [2.0]


def test_nan_metric_is_journalled_as_null_and_read_back_as_missing(tmp_path):
    store = new_store(tmp_path)
    store.append({"type": "experiment_started", "id": 0, "kind": "baseline", "member": "m0000",
                  "parent_id": None, "parent_commit": "", "worker": "w", "agent": "a", "seed": 1,
                  "budget_s": 1.0, "time": 0.0})
    store.append({"type": "experiment_finished", "id": 0,
                  "row": {"status": "crash", "val_bpb": float("nan"), "peak_vram_mb": float("inf")}})
    assert "NaN" not in store.journal_path.read_text() and "Infinity" not in store.journal_path.read_text()
    assert store.events()[1]["row"]["val_bpb"] is None
    row = PopulationState.replay(store.events(), "val_bpb").lineage_rows()[0]
    assert math.isnan(row["val_bpb"]) and math.isnan(row["peak_vram_mb"])


def test_long_torn_line_after_a_long_event_is_cut_exactly(tmp_path):
    store = new_store(tmp_path)
    big = {"type": "noise", "std": 0.1, "time": 1.0, "note": "x" * 200_000}
    store.append(big)
    with open(store.journal_path, "ab") as f:
        f.write(b'{"type":"noise","note":"' + b"y" * 150_000)
    reopened = RunStore.open(store.dir)
    reopened.append({"type": "run_state", "state": "stopped", "time": 3.0})
    assert reopened.events() == [big, {"type": "run_state", "state": "stopped", "time": 3.0}]


def test_a_journal_that_is_only_a_torn_line_becomes_empty(tmp_path):
    store = new_store(tmp_path)
    store.journal_path.write_bytes(b'{"type":"noi')
    assert store.events() == []
    store.append({"type": "noise", "std": 0.2, "time": 1.0})
    assert store.events() == [{"type": "noise", "std": 0.2, "time": 1.0}]


def test_tables_are_rewritten_at_most_every_interval(tmp_path):
    store = new_store(tmp_path)
    calls = []

    def rows():
        calls.append(1)
        return _rows()

    assert store.write_tables_if_due(rows, "val_bpb", min_interval_s=3600)
    assert not store.write_tables_if_due(rows, "val_bpb", min_interval_s=3600)
    assert len(calls) == 1  # rows are not even built when no rewrite is due
    assert store.write_tables_if_due(rows, "val_bpb", min_interval_s=3600, force=True)
    assert store.write_tables_if_due(rows, "val_bpb", min_interval_s=0)
    assert len(calls) == 3 and (store.dir / "lineage.parquet").exists()


# ---------------------------------------------------------------- a journal that lost what the run recorded (issue 29)

@pytest.mark.parametrize("how", ["deleted", "emptied"])
def test_a_deleted_or_emptied_journal_of_a_signed_run_is_refused_not_started_over(tmp_path, how):
    """The key is made by the first append: with the key there and no event, the journal was
    deleted or emptied, and reading it (what --resume does first) is one line, not an empty run."""
    store = new_store(tmp_path)
    store.append({"type": "run_state", "state": "running", "time": 1.0})
    if how == "deleted":
        store.journal_path.unlink()
    else:
        store.journal_path.write_bytes(b"")
    reopened = RunStore.open(store.dir)
    with pytest.raises(CorruptJournalError, match="the run's record is gone, and --resume will not start it over"):
        reopened.events()
    with pytest.raises(CorruptJournalError):
        reopened.append({"type": "run_state", "state": "running", "time": 2.0})     # nor is it appended to
    assert not store.journal_path.exists() or store.journal_path.read_bytes() == b""


def test_the_event_count_follows_reads_and_appends(tmp_path):
    store = new_store(tmp_path)
    assert store.event_count == 0
    store.append({"type": "noise", "std": 0.1, "time": 1.0})
    store.append({"type": "noise", "std": 0.2, "time": 2.0})
    assert store.event_count == 2 and RunStore.open(store.dir).event_count == 2


def test_the_tables_are_never_rewritten_from_fewer_rows_than_they_hold(tmp_path):
    store = new_store(tmp_path)
    rows = _rows()
    store.write_tables(rows, "val_bpb")
    with pytest.raises(StoreError, match=f"with 2 rows: they hold {len(rows)}"):
        store.write_tables(rows[:2], "val_bpb")
    with pytest.raises(StoreError, match="refusing to rewrite"):        # a new store (a resumed driver) reads the files
        RunStore.open(store.dir).write_tables(rows[:2], "val_bpb")
    assert len(store.read_lineage()) == len(rows)
    (store.dir / "lineage.parquet").write_bytes(b"PAR1 torn")             # unreadable: results.tsv still counts
    with pytest.raises(StoreError, match="refusing to rewrite"):
        RunStore.open(store.dir).write_tables(rows[:2], "val_bpb")
    RunStore.open(store.dir).write_tables(rows, "val_bpb")               # as many or more: rewritten
    assert list(store.lineage_ids()) == [row["id"] for row in rows]
