"""The lineage store of one run: the directory `runs/<tag>/` (docs/ARCHITECTURE.md).

- `events.jsonl`, the journal, is the source of truth: one JSON event a line, appended and
  fsynced before the driver acts. A torn last line (a crash mid-append) is dropped on read and cut
  off before the next append; a corrupt earlier line is an error naming the line.
- `run.json`, `lineage.parquet`, `results.tsv` and the files of `experiments/<id>/` are written
  atomically (temp file + fsync + os.replace), so a reader never sees half a file; the two tables
  are derived from the journal and can always be rebuilt from it.
- `.lock`: one driver per run (fcntl.flock, released by the OS when the process dies).
- `.journal.key`: the run's secret (32 random bytes, mode 0600), made by the first append. Every
  journal line the store writes carries `"_seq"` (0, 1, 2, ...) and `"_mac"`, an HMAC-SHA256 of
  the line (without its `_mac`) chained over the previous line's MAC, so a line forged, edited,
  inserted, reordered or deleted by another process (a training, an agent) is a JournalTampered
  error on read instead of something --resume obeys (issue 27). The torn last line of a crash is
  still dropped unverified (it is never obeyed). Cutting complete lines off the END is not caught.
  A journal from before signing (no key, no signed line) is read as it is (`journal_signed` is
  False); its first append makes the key and binds the unsigned lines into the chain by hash.
  `events()` returns the events without `_seq` and `_mac`. A journal deleted or emptied while the
  run's key is there is refused the same way (issue 29): the key is made by the first append, so
  the run had recorded events; --resume must never start such a run over.
- The tables are never rewritten from fewer rows than they hold (`write_tables`): rows only come
  from the journal, which only grows, so fewer rows mean a journal that lost events.
"""
from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import math
import os
import re
import secrets
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from population.state import lineage_columns

RUN_JSON, JOURNAL, LINEAGE, RESULTS, LOCK = "run.json", "events.jsonl", "lineage.parquet", "results.tsv", ".lock"
JOURNAL_KEY = ".journal.key"
_SEQ, _MAC = "_seq", "_mac"                                   # the signature fields of a journal line
_MAC_SUFFIX = re.compile(rb',"_mac":"([0-9a-f]{64})"\}$')     # how a signed line ends, exactly
_KEY_BYTES = 32
_ARROW_TYPES = {"int": pa.int64(), "float": pa.float64(), "str": pa.string(), "bool": pa.bool_()}


class StoreError(Exception):
    """A run directory that cannot be used; the message is one line for the user."""


class StoreLockedError(StoreError):
    pass


class CorruptJournalError(StoreError):
    pass


class JournalTampered(CorruptJournalError):
    """A journal line whose signature or sequence number does not verify: something other than
    the driver wrote, edited, reordered or deleted lines of events.jsonl."""


def atomic_write(path: Path, data: str | bytes) -> None:
    """Write `data` to `path` so that readers see the old file or the new one, never a mix."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):      # a full disk, a read-only mount: the old file is intact
            raise StoreError(_write_error(path, e)) from None
        raise


def _write_error(path: Path, error: OSError) -> str:
    return f"cannot write {path}: {error.strerror or error}; the store keeps its last complete state " \
           "(free the space, then --resume)"


class RunStore:
    """A run directory. Use `RunStore.create` for a new run, `RunStore.open` to resume or read."""

    def __init__(self, run_dir: Path | str):
        self.dir = Path(run_dir)
        self._lock_fd: int | None = None
        self._journal_checked = False
        self._tables_written_at: float | None = None
        self._tables_write_s = 0.0          # how long the last rewrite took
        # where the signed chain stands after the last complete line: (next _seq, previous MAC,
        # byte offset of the journal's end, key or None); None until read (events() or append)
        self._chain: tuple[int, bytes, int, bytes | None] | None = None
        self.journal_signed: bool | None = None     # after events(): False for a pre-signing journal
        self._event_count: int | None = None        # complete events in the journal, once read
        self._rows_held: int | None = None          # rows the tables hold (write_tables never goes below)

    # ---- paths -------------------------------------------------------------------------------

    @property
    def journal_path(self) -> Path:
        return self.dir / JOURNAL

    @property
    def key_path(self) -> Path:
        return self.dir / JOURNAL_KEY

    @property
    def members_dir(self) -> Path:
        return self.dir / "members"

    def experiment_dir(self, exp_id: int) -> Path:
        return self.dir / "experiments" / str(int(exp_id))

    # ---- creating and opening ----------------------------------------------------------------

    @classmethod
    def create(cls, run_dir: Path | str, meta: Mapping[str, Any]) -> "RunStore":
        """A new run: `run_dir` with run.json = `meta` and an empty journal. Refuses an existing run."""
        store = cls(run_dir)
        if (store.dir / RUN_JSON).exists():
            raise StoreError(f"run directory {store.dir} already holds a run; "
                             "use --resume to continue it or pick another --tag")
        store.dir.mkdir(parents=True, exist_ok=True)
        store.journal_path.touch()
        store._write_meta(dict(meta))
        return store

    @classmethod
    def open(cls, run_dir: Path | str) -> "RunStore":
        """An existing run (to resume it, or read-only for the app)."""
        store = cls(run_dir)
        if not (store.dir / RUN_JSON).is_file():
            raise StoreError(f"no run at {store.dir} (missing {RUN_JSON}); start one without --resume")
        store.meta  # fail early on a broken run.json
        return store

    # ---- run.json ----------------------------------------------------------------------------

    @property
    def meta(self) -> dict:
        path = self.dir / RUN_JSON
        try:
            return json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise StoreError(f"cannot read {path}: {e}") from None

    def update_meta(self, **changes: Any) -> dict:
        """Merge `changes` into run.json (atomically) and return the new meta. Nothing is
        written when nothing changes (the driver calls this after every experiment)."""
        old = self.meta
        meta = old | changes
        if meta != old:
            self._write_meta(meta)
        return meta

    def _write_meta(self, meta: dict) -> None:
        atomic_write(self.dir / RUN_JSON, json.dumps(meta, indent=2, sort_keys=True, default=str) + "\n")

    # ---- the journal -------------------------------------------------------------------------

    def append(self, event: Mapping[str, Any]) -> None:
        """Append one event and fsync it: once this returns, the event survives a crash.
        Non-finite floats are written as null (the state reads a missing metric as NaN)."""
        if _SEQ in event or _MAC in event:
            raise ValueError(f"event fields {_SEQ!r} and {_MAC!r} are reserved for the journal's signature")
        safe = _json_safe(event)
        if not self._journal_checked:
            self._cut_torn_tail()
            self._journal_checked = True
        if self._chain is None:
            self._read_journal()                      # verifies it: never extend a tampered chain
        seq, previous, end, key = self._chain
        if key is None:
            key = self._make_key()
        body = json.dumps({**safe, _SEQ: seq}, separators=(",", ":"), allow_nan=False).encode()
        mac = _line_mac(key, previous, body)
        line = body[:-1] + b',"_mac":"' + mac.hex().encode() + b'"}\n'
        try:
            with open(self.journal_path, "ab", buffering=0) as f:      # unbuffered: no late flush at close
                size = os.fstat(f.fileno()).st_size
                if size != end:
                    self._chain = None
                    raise JournalTampered(f"{self.journal_path} changed since this driver last wrote it "
                                          f"({size} bytes, {end} expected): another process writes the "
                                          "journal; stop it, check the journal, then --resume")
                try:
                    data = memoryview(line)
                    while data:
                        data = data[f.write(data):]
                    os.fsync(f.fileno())
                except OSError:
                    self._journal_checked = False     # the next append cuts what part of it landed
                    self._chain = None                # ... and reads back where the chain stands
                    _truncate_quietly(f, size)
                    raise
        except OSError as e:
            raise StoreError(_write_error(self.journal_path, e)) from None
        self._chain = (seq + 1, mac, end + len(line), key)
        self._event_count = (self._event_count or 0) + 1

    @property
    def event_count(self) -> int:
        """Complete events in the journal (read and verified once, then counted as appended)."""
        if self._event_count is None:
            self._read_journal()
        return self._event_count

    def _load_key(self) -> bytes | None:
        """The run's journal key, or None when it has none yet (a new or pre-signing run)."""
        try:
            key = self.key_path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise StoreError(f"cannot read the journal key {self.key_path}: {e.strerror or e}") from None
        if len(key) != _KEY_BYTES:
            raise JournalTampered(f"the journal key {self.key_path} is damaged ({len(key)} bytes, "
                                  f"{_KEY_BYTES} expected); the journal cannot be verified")
        return key

    def _make_key(self) -> bytes:
        """Create the run's key (mode 0600, atomically: a crash leaves no half key); if one
        appeared meanwhile, use that one."""
        key = secrets.token_bytes(_KEY_BYTES)
        tmp = None
        try:
            fd, tmp = tempfile.mkstemp(dir=self.dir, prefix=f"{JOURNAL_KEY}.", suffix=".tmp")   # 0600
            with os.fdopen(fd, "wb") as f:
                os.fchmod(f.fileno(), 0o600)
                f.write(key)
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp, self.key_path)          # never replaces an existing key
            except FileExistsError:
                return self._load_key()
            _fsync_dir(self.dir)
            return key
        except OSError as e:
            raise StoreError(_write_error(self.key_path, e)) from None
        finally:
            if tmp is not None:
                Path(tmp).unlink(missing_ok=True)

    def _cut_torn_tail(self) -> None:
        """Drop a half-written last line so the next event starts on a line of its own."""
        if not self.journal_path.exists():
            return
        with open(self.journal_path, "r+b") as f:
            end = f.seek(0, os.SEEK_END)
            if end == 0 or (f.seek(end - 1), f.read(1))[1] == b"\n":
                return
            # a torn line is short: search backwards for the last newline, block by block
            position = end
            while position > 0:
                start = max(0, position - 65536)
                f.seek(start)
                cut = f.read(position - start).rfind(b"\n")
                if cut >= 0:
                    position = start + cut + 1
                    break
                position = start
            f.truncate(position)
            os.fsync(f.fileno())

    def events(self) -> list[dict]:
        """Every complete event in order, verified, without the signature fields. A last line
        without its newline was torn by a crash and is dropped; an unreadable complete line is a
        CorruptJournalError naming it, and one whose signature or sequence number does not
        verify a JournalTampered naming it."""
        return self._read_journal()

    def _read_journal(self) -> list[dict]:
        """events(), and where the chain stands (self._chain) for the next append."""
        key = self._load_key()
        try:
            data = self.journal_path.read_bytes()
        except FileNotFoundError:
            if key is not None:
                raise self._gone("is missing") from None
            data = b""
        lines = data.split(b"\n")  # the last piece is b"" or a torn line
        events = []
        seq, previous, offset = 0, b"", 0
        signed_from = None                  # byte offset of the first signed line
        for number, line in enumerate(lines[:-1], start=1):
            start, offset = offset, offset + len(line) + 1
            if not line.strip():
                if signed_from is not None:
                    raise self._tampered(number, "is blank inside the signed journal")
                continue
            try:
                event = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise CorruptJournalError(f"{self.journal_path} line {number} is corrupt ({e}); "
                                          "repair or remove that line to resume") from None
            if not isinstance(event, dict) or "type" not in event:
                raise CorruptJournalError(f"{self.journal_path} line {number} is not an event object")
            if _MAC not in event and _SEQ not in event and signed_from is None:
                events.append(event)        # a line from before signing (bound below by hash)
                continue
            if key is None:
                raise JournalTampered(f"{self.journal_path} line {number} is signed but the run's key "
                                      f"{self.key_path} is missing, so the journal cannot be verified; "
                                      "restore the key to resume")
            if signed_from is None:
                signed_from, previous = start, hashlib.sha256(data[:start]).digest()
            match = _MAC_SUFFIX.search(line)
            if match is None:
                raise self._tampered(number, "is not signed (the driver signs every line)")
            body = line[:match.start()] + b"}"
            try:
                event = json.loads(body)
            except (json.JSONDecodeError, UnicodeDecodeError):
                event = None
            if not isinstance(event, dict):
                raise self._tampered(number, "does not match its signature (forged or edited)")
            if event.get(_SEQ) != seq:
                raise self._tampered(number, f"has sequence number {event.get(_SEQ)!r} where {seq} is due "
                                             "(a line before it was deleted, or lines were reordered)")
            mac = _line_mac(key, previous, body)
            if not hmac.compare_digest(mac, bytes.fromhex(match.group(1).decode())):
                raise self._tampered(number, "does not match its signature (forged or edited)")
            del event[_SEQ]
            events.append(event)
            seq, previous = seq + 1, mac
        if key is not None and not events:
            raise self._gone("holds no event")
        if key is not None and signed_from is None and events:
            raise JournalTampered(f"{self.journal_path} holds no signed line although the run has a key "
                                  f"({self.key_path}); lines were replaced or forged. If this is a run from "
                                  "before journal signing, remove the key to resume it unsigned")
        if signed_from is None:
            previous = hashlib.sha256(data[:offset]).digest()    # binds any pre-signing lines
        self._chain = (seq, previous, offset, key)
        self.journal_signed = signed_from is not None or not events
        self._event_count = len(events)
        return events

    def _gone(self, what: str) -> JournalTampered:
        """The journal deleted or emptied: the key exists, so the run had recorded events."""
        return JournalTampered(f"{self.journal_path} {what}, but the run's key {self.key_path.name} shows that it "
                               "recorded events: the run's record is gone, and --resume will not start it over "
                               "(restore events.jsonl, or start a new run under another --run)")

    def _tampered(self, number: int, what: str) -> JournalTampered:
        return JournalTampered(f"{self.journal_path} line {number} {what}: something other than the "
                               "driver changed the journal; do not resume it as it is: remove the "
                               "foreign line(s) or restore the journal, then --resume")

    # ---- per-experiment files ----------------------------------------------------------------

    def write_experiment_files(self, exp_id: int, files: Mapping[str, str | bytes]) -> Path:
        """Write `experiments/<id>/<name>` for each entry (each atomically); returns the folder."""
        folder = self.experiment_dir(exp_id)
        for name, content in files.items():
            if Path(name).name != name or name.startswith("."):
                raise ValueError(f"experiment file name must be a plain file name, got {name!r}")
            atomic_write(folder / name, content if content is not None else "")
        return folder

    # ---- derived tables ----------------------------------------------------------------------

    def write_tables(self, rows: list[dict], metric: str, lower_is_better: bool | None = None) -> None:
        """Rewrite lineage.parquet and results.tsv from lineage rows (state.lineage_rows())."""
        if lower_is_better is None:
            lower_is_better = bool(self.meta.get("lower_is_better", True))
        held = self.rows_held()
        if len(rows) < held:
            raise StoreError(f"refusing to rewrite {self.dir / LINEAGE} and {RESULTS} with {len(rows)} rows: they "
                             f"hold {held}, so the journal lacks experiments the run recorded (restore it)")
        atomic_write(self.dir / LINEAGE, lineage_parquet_bytes(rows, metric))
        atomic_write(self.dir / RESULTS, results_tsv(rows, metric, lower_is_better))
        self._rows_held = len(rows)

    def rows_held(self) -> int:
        """Rows lineage.parquet or results.tsv hold now (the larger; read once, then tracked); an
        unreadable table holds none (it is rebuilt from the journal)."""
        if self._rows_held is None:
            self._rows_held = max(len(self.lineage_ids()), len(self.results_commits()))
        return self._rows_held

    def lineage_ids(self) -> dict[int, str]:
        """{id: commit} of lineage.parquet's rows; {} when it is missing or unreadable."""
        try:
            table = pq.read_table(self.dir / LINEAGE, columns=["id", "commit"])
        except (OSError, pa.ArrowException):
            return {}
        return dict(zip(table.column("id").to_pylist(), (c or "" for c in table.column("commit").to_pylist())))

    def results_commits(self) -> list[str]:
        """The short commit of each row of results.tsv, in order; [] when it is missing."""
        try:
            lines = (self.dir / RESULTS).read_text(errors="replace").splitlines()[1:]
        except OSError:
            return []
        return [line.split("\t", 1)[0] for line in lines]

    def write_tables_if_due(self, rows: Callable[[], list[dict]], metric: str, *,
                            min_interval_s: float = 30.0, force: bool = False,
                            max_share: float | None = None) -> bool:
        """Rewrite the tables unless they were rewritten less than `min_interval_s` ago.

        At 100,000 experiments a rewrite costs seconds, so the driver calls this after every
        event and with `force=True` on stop; the journal stays the per-event source of truth.
        `max_share` (e.g. 0.02) stretches the interval to the last rewrite's cost / max_share,
        so rewrites, which grow with the run, never take more than that share of the driver's
        time. `rows` is called only when a rewrite is due. Returns whether it wrote.
        """
        now = time.monotonic()
        interval = min_interval_s
        if max_share:
            interval = max(interval, self._tables_write_s / max_share)
        if not force and self._tables_written_at is not None \
                and now - self._tables_written_at < interval:
            return False
        self.write_tables(rows(), metric)
        self._tables_written_at = time.monotonic()
        self._tables_write_s = self._tables_written_at - now
        return True

    def read_lineage(self):
        """lineage.parquet as a pandas DataFrame (None when not written yet)."""
        path = self.dir / LINEAGE
        return pq.read_table(path).to_pandas() if path.exists() else None

    # ---- one driver per run ------------------------------------------------------------------

    def lock(self) -> "RunStore":
        """Take the run's exclusive lock (held until `unlock` or the process ends)."""
        if self._lock_fd is not None:
            return self
        self.dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.dir / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise StoreLockedError(f"run {self.dir.name} is in use by another driver (pid {holder})") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd
        return self

    def unlock(self) -> None:
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> "RunStore":
        return self.lock()

    def __exit__(self, *exc) -> None:
        self.unlock()


def _line_mac(key: bytes, previous: bytes, body: bytes) -> bytes:
    """A journal line's MAC: HMAC-SHA256 over the previous line's MAC and this line's bytes."""
    return hmac.new(key, previous + body, hashlib.sha256).digest()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def _truncate_quietly(f, size: int) -> None:
    """Cut a failed append back to where it started (best effort: the disk may refuse even that)."""
    try:
        f.truncate(size)
        os.fsync(f.fileno())
    except OSError:
        pass


# ---- table formats (pure) --------------------------------------------------------------------

def lineage_table(rows: Iterable[dict], metric: str) -> pa.Table:
    """The lineage rows as an Arrow table with the documented column types."""
    rows = list(rows)
    columns = lineage_columns(metric)
    arrays = {name: pa.array([row.get(name) for row in rows], type=_ARROW_TYPES[kind])
              for name, kind in columns}
    return pa.table(arrays)


def lineage_parquet_bytes(rows: Iterable[dict], metric: str) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(lineage_table(rows, metric), sink)
    return sink.getvalue().to_pybytes()


# Statuses of experiments that never produced a result of their own: `lost` (its task, actor or
# node died; the work was queued again under a new id) and `stopped` (in flight when the driver
# stopped; --resume queues it again). Neither is a crash of the experiment's code.
UNFINISHED_STATUSES = ("lost", "stopped")


def results_tsv(rows: Iterable[dict], metric: str, lower_is_better: bool = True) -> str:
    """autoresearch's results.tsv: `commit <metric> memory_gb status description`, one line a row.

    status: keep (ok and better than its parent member's mean, or a baseline), discard (ok, not
    better), crash (the experiment failed: crash, timeout, violation, duplicate, agent_error).
    A re-run is judged, like its member, against the member's parent.

    Lost and stopped experiments (UNFINISHED_STATUSES) keep their row, so that line i + 1 is still
    experiment i, but with their own status word (`lost`, `stopped`) and an empty metric and memory:
    autoresearch's analysis.ipynb counts only KEEP, DISCARD and CRASH and plots only KEEP and DISCARD
    rows, so it ignores them, and they never count as crashes that did not happen.
    """
    rows = list(rows)
    mean_by_id = {row["id"]: row.get("metric_mean") for row in rows}
    member_parent = {row["member"]: row.get("parent_id") for row in rows
                     if row.get("kind") in ("baseline", "child") and row.get("status") == "ok"}
    lines = [f"commit\t{metric}\tmemory_gb\tstatus\tdescription"]
    for row in rows:
        commit = (row.get("commit") or "")[:7]
        description = " ".join(str(row.get("description") or "").replace("\t", " ").splitlines())
        if row.get("status") in UNFINISHED_STATUSES:
            lines.append(f"{commit}\t\t\t{row['status']}\t{description}")
            continue
        value = _finite(row.get(metric))
        parent_id = member_parent.get(row.get("member"), row.get("parent_id")) if row.get("kind") == "rerun" \
            else row.get("parent_id")
        status = tsv_status(row, value, _finite(mean_by_id.get(parent_id)), lower_is_better)
        memory = _finite(row.get("peak_vram_mb"))
        memory_gb = 0.0 if status == "crash" or math.isnan(memory) else memory / 1024
        lines.append(f"{commit}\t{value if status != 'crash' else 0.0:.6f}\t"
                     f"{memory_gb:.1f}\t{status}\t{description}")
    return "\n".join(lines) + "\n"


def tsv_status(row: dict, value: float, parent_mean: float, lower_is_better: bool) -> str:
    """keep / discard / crash for one finished row (see results_tsv)."""
    if row.get("status") != "ok" or math.isnan(value):
        return "crash"
    if row.get("kind") == "baseline" or math.isnan(parent_mean):
        return "keep"
    mean = _finite(row.get("metric_mean"))
    mean = value if math.isnan(mean) else mean
    better = mean < parent_mean if lower_is_better else mean > parent_mean
    return "keep" if better else "discard"


def _json_safe(value: Any) -> Any:
    """NaN and infinities as null, so the journal stays standard JSON (jq, other languages)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _finite(value: Any) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return math.nan
    return value if math.isfinite(value) else math.nan
