"""Issue 27: the journal is signed (HMAC-SHA256 chained line to line, with sequence numbers), so a
line forged, edited, inserted, reordered or deleted by another process is refused on --resume."""
import json
import os
import stat

import pytest

from population.state import PopulationState
from population.store import CorruptJournalError, JournalTampered, RunStore

META = {"tag": "t1", "task": "climbmix", "metric": "val_bpb", "lower_is_better": True, "budget_s": 300.0}
EVENTS = [{"type": "noise", "std": 0.0004, "time": 1.0},
          {"type": "run_state", "state": "running", "time": 2.0},
          {"type": "champion", "member": "m0000", "id": 0, "time": 3.0},
          {"type": "run_state", "state": "stopped", "time": 4.0}]


def signed_store(tmp_path, events=EVENTS):
    store = RunStore.create(tmp_path / "runs" / "t1", META)
    for event in events:
        store.append(event)
    return store


def lines(store):
    return store.journal_path.read_bytes().split(b"\n")[:-1]


def write_lines(store, new_lines):
    store.journal_path.write_bytes(b"".join(line + b"\n" for line in new_lines))


def test_round_trip_returns_the_events_without_signature_fields(tmp_path):
    store = signed_store(tmp_path)
    reopened = RunStore.open(store.dir)
    assert reopened.events() == EVENTS and reopened.journal_signed is True
    raw = [json.loads(line) for line in lines(store)]
    assert [e["_seq"] for e in raw] == [0, 1, 2, 3] and all(len(e["_mac"]) == 64 for e in raw)
    reopened.append({"type": "noise", "std": 0.1, "time": 5.0})        # a resumed run extends the chain
    assert RunStore.open(store.dir).events() == EVENTS + [{"type": "noise", "std": 0.1, "time": 5.0}]


def test_the_key_is_private_to_the_driver(tmp_path):
    store = signed_store(tmp_path)
    mode = stat.S_IMODE(os.stat(store.key_path).st_mode)
    assert mode == 0o600 and len(store.key_path.read_bytes()) == 32
    assert not [p for p in store.dir.iterdir() if p.name.endswith(".tmp")]
    other = signed_store(tmp_path / "other")
    assert other.key_path.read_bytes() != store.key_path.read_bytes()     # a key per run


def test_a_forged_unsigned_champion_appended_is_refused(tmp_path):
    store = signed_store(tmp_path)
    with open(store.journal_path, "ab") as f:
        f.write(b'{"type":"champion","member":"m0666","id":7,"time":9.0}\n')
    with pytest.raises(JournalTampered, match=r"line 5 is not signed.*--resume"):
        RunStore.open(store.dir).events()


def test_a_forged_line_with_a_made_up_signature_is_refused(tmp_path):
    store = signed_store(tmp_path)
    forged = b'{"type":"champion","member":"m0666","id":7,"time":9.0,"_seq":4,"_mac":"' + b"ab" * 32 + b'"}'
    with open(store.journal_path, "ab") as f:
        f.write(forged + b"\n")
    with pytest.raises(JournalTampered, match="line 5 does not match its signature"):
        RunStore.open(store.dir).events()


def test_a_line_signed_with_another_runs_key_is_refused(tmp_path):
    store = signed_store(tmp_path)
    other = signed_store(tmp_path / "other", EVENTS + [{"type": "champion", "member": "m0666", "id": 7, "time": 9.0}])
    with open(store.journal_path, "ab") as f:
        f.write(lines(other)[4] + b"\n")
    with pytest.raises(JournalTampered, match="line 5"):
        RunStore.open(store.dir).events()


def test_an_edited_event_is_refused(tmp_path):
    store = signed_store(tmp_path)
    edited = lines(store)
    assert b'"member":"m0000"' in edited[2]
    edited[2] = edited[2].replace(b'"member":"m0000"', b'"member":"m0666"')
    write_lines(store, edited)
    with pytest.raises(JournalTampered, match="line 3 does not match its signature"):
        RunStore.open(store.dir).events()


def test_a_deleted_middle_line_is_refused(tmp_path):
    store = signed_store(tmp_path)
    kept = lines(store)
    del kept[1]
    write_lines(store, kept)
    with pytest.raises(JournalTampered, match="line 2 has sequence number 2 where 1 is due"):
        RunStore.open(store.dir).events()


def test_reordered_lines_are_refused(tmp_path):
    store = signed_store(tmp_path)
    swapped = lines(store)
    swapped[1], swapped[2] = swapped[2], swapped[1]
    write_lines(store, swapped)
    with pytest.raises(JournalTampered, match="line 2"):
        RunStore.open(store.dir).events()


def test_a_replayed_line_is_refused(tmp_path):
    store = signed_store(tmp_path)
    replayed = lines(store)
    write_lines(store, replayed + [replayed[2]])
    with pytest.raises(JournalTampered, match="line 5"):
        RunStore.open(store.dir).events()


def test_a_torn_last_line_is_still_tolerated_and_cut(tmp_path):
    store = signed_store(tmp_path)
    with open(store.journal_path, "ab") as f:
        f.write(b'{"type":"champion","member":"m0')              # a crash mid-append
    reopened = RunStore.open(store.dir)
    assert reopened.events() == EVENTS
    reopened.append({"type": "noise", "std": 0.2, "time": 6.0})
    assert RunStore.open(store.dir).events() == EVENTS + [{"type": "noise", "std": 0.2, "time": 6.0}]


def test_a_torn_signed_line_is_tolerated(tmp_path):
    store = signed_store(tmp_path, EVENTS[:2])
    store.append(EVENTS[2])
    whole = store.journal_path.read_bytes()
    store.journal_path.write_bytes(whole[:-20])                # the last append torn by a crash
    reopened = RunStore.open(store.dir)
    assert reopened.events() == EVENTS[:2]
    reopened.append(EVENTS[3])
    assert RunStore.open(store.dir).events() == EVENTS[:2] + [EVENTS[3]]


def test_garbage_is_still_reported_as_corrupt(tmp_path):
    store = signed_store(tmp_path)
    broken = lines(store)
    broken[1] = b"GARBAGE" + broken[1][7:]
    write_lines(store, broken)
    with pytest.raises(CorruptJournalError, match="line 2 is corrupt"):
        RunStore.open(store.dir).events()


def test_a_missing_key_is_refused(tmp_path):
    store = signed_store(tmp_path)
    store.key_path.unlink()
    with pytest.raises(JournalTampered, match="key .* is missing"):
        RunStore.open(store.dir).events()


def test_a_journal_replaced_by_unsigned_lines_is_refused(tmp_path):
    store = signed_store(tmp_path)
    store.journal_path.write_text('{"type":"champion","member":"m0666","id":7,"time":9.0}\n')
    with pytest.raises(JournalTampered, match="no signed line"):
        RunStore.open(store.dir).events()


def test_an_append_after_another_process_wrote_the_journal_is_refused(tmp_path):
    store = signed_store(tmp_path)
    with open(store.journal_path, "ab") as f:
        f.write(b'{"type":"champion","member":"m0666","id":7,"time":9.0}\n')
    with pytest.raises(JournalTampered, match="changed since this driver last wrote it"):
        store.append({"type": "noise", "std": 0.3, "time": 7.0})


def test_signature_fields_are_reserved(tmp_path):
    store = signed_store(tmp_path)
    with pytest.raises(ValueError, match="reserved"):
        store.append({"type": "noise", "_mac": "x"})


def test_a_journal_from_before_signing_is_read_and_then_bound_into_the_chain(tmp_path):
    store = RunStore.create(tmp_path / "runs" / "old", META)
    old = [json.dumps(e, separators=(",", ":")).encode() for e in EVENTS[:2]]
    write_lines(store, old)                                    # written by a store without signing
    reopened = RunStore.open(store.dir)
    assert reopened.events() == EVENTS[:2] and reopened.journal_signed is False
    reopened.append(EVENTS[2])
    assert reopened.key_path.exists()
    again = RunStore.open(store.dir)
    assert again.events() == EVENTS[:3] and again.journal_signed is True
    # the unsigned lines are now bound: editing one, or adding one after the signed line, is caught
    edited = lines(store)
    write_lines(store, [edited[0].replace(b"0.0004", b"0.9"), *edited[1:]])
    with pytest.raises(JournalTampered, match="line 3"):
        RunStore.open(store.dir).events()
    write_lines(store, edited + [old[0]])
    with pytest.raises(JournalTampered, match="line 4 is not signed"):
        RunStore.open(store.dir).events()


def test_state_replays_the_verified_events(tmp_path):
    store = signed_store(tmp_path, [])
    store.append({"type": "experiment_started", "id": 0, "kind": "baseline", "member": "m0000",
                  "parent_id": None, "parent_commit": "", "worker": "w", "agent": "a", "seed": 1,
                  "budget_s": 1.0, "time": 0.0})
    store.append({"type": "experiment_finished", "id": 0, "row": {"commit": "e" * 40, "status": "ok", "val_bpb": 2.0}})
    rows = PopulationState.replay(RunStore.open(store.dir).events(), "val_bpb").lineage_rows()
    assert [r["val_bpb"] for r in rows] == [2.0]
