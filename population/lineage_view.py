"""Read-only view of a run's lineage store: the data logic behind `app.py`.

Loads a run directory defensively (a live, crashed or half-written run never raises; what went
wrong becomes a note for the page), and derives what the app draws: node categories, the
champion and its path from the baseline, the tree layout, the running best, run totals and table
filters. Pure functions over a DataFrame apart from `load_run`, `list_runs` and the file readers;
nothing here writes to a run.
"""
from __future__ import annotations

import io
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

DEFAULT_METRIC = "val_bpb"
KNOWN_METRICS = ("val_bpb", "val_bpc")
STORE_FILES = ("run.json", "lineage.parquet", "results.tsv", "events.jsonl")

# The documented lineage.parquet columns (the metric column is added per run) and how to fill
# one that a writer left out.
STRING_COLUMNS = ("kind", "member", "commit", "parent_commit", "branch", "status", "reason",
                  "gpu", "node", "worker", "agent", "description")
FLOAT_COLUMNS = ("metric_mean", "training_seconds", "total_seconds", "peak_vram_mb", "mfu_percent",
                 "total_tokens_M", "num_steps", "num_params_M", "depth", "culled_at",
                 "agent_seconds", "agent_cost_usd", "train_seconds", "budget_s", "started_at",
                 "finished_at")
INT_COLUMNS = ("generation", "seed")
NULLABLE_INT_COLUMNS = ("parent_id", "agent_tokens")
BOOL_COLUMNS = ("alive", "champion")
SUMMARY_COLUMNS = ("training_seconds", "total_seconds", "peak_vram_mb", "mfu_percent",
                   "total_tokens_M", "num_steps", "num_params_M", "depth")

CRASHED_STATUSES = ("crash", "timeout")
FAILED_STATUSES = ("crash", "timeout", "violation", "duplicate", "agent_error", "lost")
# Node categories, in the order the legend lists them.
CATEGORIES = ("champion", "living", "culled", "crashed", "violation", "failed")


@dataclass
class RunData:
    """One run as the app sees it; `notes` are (level, text) pairs, level `info` or `warning`."""
    path: Path
    meta: dict
    frame: pd.DataFrame
    metric: str
    lower_is_better: bool
    source: str                      # the file the rows came from, or "" when there are none
    notes: list[tuple[str, str]] = field(default_factory=list)

    @property
    def live(self) -> bool:
        return self.meta.get("state") == "running"

    @property
    def tag(self) -> str:
        return str(self.meta.get("tag") or self.path.name)


# --------------------------------------------------------------------------- finding runs

def looks_like_run(path: Path) -> bool:
    return path.is_dir() and any((path / name).exists() for name in STORE_FILES)


def list_runs(runs_dir: Path) -> list[Path]:
    """Run directories under `runs_dir`, newest first (by the mtime of their store files)."""
    if not runs_dir.is_dir():
        return []
    runs = [p for p in runs_dir.iterdir() if looks_like_run(p)]
    return sorted(runs, key=lambda p: (-_newest_mtime(p), p.name))


def _newest_mtime(run_dir: Path) -> float:
    return max((s[1] for s in store_signature(run_dir)), default=0.0)


def store_signature(run_dir: Path) -> tuple:
    """(name, mtime, size) of each store file: a cache key that changes when the run does."""
    signature = []
    for name in STORE_FILES:
        try:
            stat = os.stat(run_dir / name)
        except OSError:
            continue
        signature.append((name, stat.st_mtime, stat.st_size))
    return tuple(signature)


# --------------------------------------------------------------------------- loading

def load_run(run_dir: Path) -> RunData:
    """Read a run directory; never raises for a missing, torn or corrupt file."""
    run_dir = Path(run_dir)
    notes: list[tuple[str, str]] = []
    if not run_dir.is_dir():
        notes.append(("warning", f"{run_dir} is not a directory."))
        return RunData(run_dir, {}, normalize_frame(pd.DataFrame(), DEFAULT_METRIC),
                       DEFAULT_METRIC, True, "", notes)

    meta = _read_run_json(run_dir / "run.json", notes)
    raw, source = _read_rows(run_dir, notes)
    metric = _pick_metric(meta, raw)
    lower = meta.get("lower_is_better")
    lower = lower if isinstance(lower, bool) else True
    if source == "results.tsv":
        raw = frame_from_results_tsv(raw, metric)
    frame = normalize_frame(raw, metric)
    # While the driver runs, a torn last line is most likely an append in progress.
    if meta.get("state") != "running" and _torn_events(run_dir / "events.jsonl"):
        notes.append(("info", "events.jsonl ends with a torn line (the driver stopped mid-write); "
                              "`--resume` drops it. The lineage shows what was recorded."))
    if frame.empty and not any(level == "warning" for level, _ in notes):
        notes.append(("info", "No experiments recorded yet."))
    return RunData(run_dir, meta, frame, metric, lower, source if not frame.empty else "", notes)


def _read_run_json(path: Path, notes: list) -> dict:
    if not path.exists():
        notes.append(("warning", "run.json is missing: metric and state are guessed."))
        return {}
    try:
        meta = json.loads(path.read_text())
        if not isinstance(meta, dict):
            raise ValueError("not a JSON object")
        return meta
    except (OSError, ValueError) as err:
        notes.append(("warning", f"run.json is unreadable ({short_error(err)}): metric and state are guessed."))
        return {}


def _read_rows(run_dir: Path, notes: list) -> tuple[pd.DataFrame, str]:
    parquet, tsv = run_dir / "lineage.parquet", run_dir / "results.tsv"
    if parquet.exists():
        try:
            return pd.read_parquet(parquet), "lineage.parquet"
        except Exception as err:  # pyarrow raises several types for a torn file
            notes.append(("warning", f"lineage.parquet is unreadable ({short_error(err)})"
                                     + ("; showing results.tsv instead." if tsv.exists() else ".")))
    elif tsv.exists():
        notes.append(("info", "lineage.parquet is missing; showing results.tsv (no parents, so no tree edges)."))
    if tsv.exists():
        try:
            return pd.read_csv(tsv, sep="\t", dtype=str, keep_default_na=False), "results.tsv"
        except Exception as err:
            notes.append(("warning", f"results.tsv is unreadable ({short_error(err)})."))
    return pd.DataFrame(), ""


def _pick_metric(meta: dict, raw: pd.DataFrame) -> str:
    metric = meta.get("metric")
    if isinstance(metric, str) and metric:
        return metric
    return next((m for m in KNOWN_METRICS if m in raw.columns), DEFAULT_METRIC)


def _torn_events(path: Path) -> bool:
    """True when the journal's last line is not valid JSON."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 65536))
            tail = f.read().rstrip(b"\n").rsplit(b"\n", 1)[-1]
    except OSError:
        return False
    if not tail.strip():
        return False
    try:
        json.loads(tail)
        return False
    except ValueError:
        return True


def short_error(err: Exception) -> str:
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return text[:160]


def frame_from_results_tsv(tsv: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Lineage rows from autoresearch's columns: `commit <metric> memory_gb status description`."""
    status = tsv.get("status", pd.Series("", index=tsv.index)).str.strip().str.lower()
    status = status.replace({"keep": "ok", "discard": "ok", "": "ok"})
    value = pd.to_numeric(tsv.get(metric), errors="coerce")
    value = value.where(status == "ok")   # autoresearch writes 0.000000 for crashes
    return pd.DataFrame({
        "id": range(len(tsv)),
        "kind": ["baseline"] + ["child"] * (len(tsv) - 1) if len(tsv) else [],
        "commit": tsv.get("commit", ""),
        "status": status,
        metric: value,
        "metric_mean": value,
        "peak_vram_mb": pd.to_numeric(tsv.get("memory_gb"), errors="coerce") * 1024,
        "description": tsv.get("description", ""),
        "alive": True,
    })


def normalize_frame(raw: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Every documented column present with a usable dtype, one row per id, sorted by id."""
    frame = raw.copy()
    n = len(frame)
    if "id" not in frame:
        frame["id"] = range(n)
    frame["id"] = pd.to_numeric(frame["id"], errors="coerce")
    frame = frame[frame["id"].notna()]
    frame["id"] = frame["id"].astype("int64")
    for col in STRING_COLUMNS:
        frame[col] = frame[col].fillna("").astype(str) if col in frame else ""
    for col in (metric,) + FLOAT_COLUMNS:
        frame[col] = pd.to_numeric(frame[col], errors="coerce").astype("float64") if col in frame else np.nan
    for col in INT_COLUMNS:
        values = pd.to_numeric(frame[col], errors="coerce") if col in frame else pd.Series(0, index=frame.index)
        frame[col] = values.fillna(0).astype("int64")
    for col in NULLABLE_INT_COLUMNS:
        values = pd.to_numeric(frame[col], errors="coerce") if col in frame else pd.Series(np.nan, index=frame.index)
        frame[col] = values.round().astype("Int64")
    for col in BOOL_COLUMNS:
        frame[col] = frame[col].fillna(False).astype(bool) if col in frame else False
    frame["status"] = frame["status"].replace("", "ok")
    frame = frame.drop_duplicates("id", keep="last").sort_values("id", kind="stable")
    return frame.reset_index(drop=True)


# --------------------------------------------------------------------------- derived views

def node_categories(frame: pd.DataFrame) -> pd.Series:
    """One of CATEGORIES per row: failures by status first, then champion, living, culled."""
    status = frame["status"]
    category = np.select(
        [status.isin(CRASHED_STATUSES), status.eq("violation"), status.ne("ok"),
         frame["champion"], frame["alive"]],
        ["crashed", "violation", "failed", "champion", "living"], default="culled")
    return pd.Series(category, index=frame.index, name="category")


def champion_id(frame: pd.DataFrame, meta: dict, metric: str, lower_is_better: bool) -> int | None:
    """The champion experiment: run.json's champion_id, else the champion flag, else the best ok row."""
    if frame.empty:
        return None
    ids = frame["id"]
    wanted = meta.get("champion_id")
    if isinstance(wanted, (int, np.integer)) and not isinstance(wanted, bool) and (ids == wanted).any():
        return int(wanted)
    if isinstance(wanted, str) and wanted:
        rows = frame[(frame["member"] == wanted) | (frame["commit"] == wanted)]
        if not rows.empty:
            return int(rows["id"].min())
    flagged = frame[frame["champion"] & frame["status"].eq("ok") & frame["kind"].ne("rerun")]
    if not flagged.empty:
        return int(flagged["id"].min())
    return best_id(frame, metric, lower_is_better)


def best_id(frame: pd.DataFrame, metric: str, lower_is_better: bool) -> int | None:
    ok = frame[frame["status"].eq("ok") & frame[metric].notna()]
    if ok.empty:
        return None
    pos = ok[metric].idxmin() if lower_is_better else ok[metric].idxmax()
    return int(ok.at[pos, "id"])


def ancestry(frame: pd.DataFrame, exp_id: int) -> list[int]:
    """Ids from the root (baseline) down to `exp_id`, following parent_id; cycle-safe."""
    parents = dict(zip(frame["id"].tolist(), frame["parent_id"].tolist()))
    path, current = [], exp_id
    while current is not None and current in parents and current not in path:
        path.append(current)
        parent = parents[current]
        current = None if parent is pd.NA or parent is None else int(parent)
    return path[::-1]


def tree_parents(frame: pd.DataFrame) -> pd.Series:
    """The node each experiment hangs from in the tree: a re-run hangs from its member's first
    run, anything else from parent_id. Nullable Int64, NA for roots."""
    first_of_member = frame[frame["member"].ne("")].groupby("member")["id"].min()
    rerun_parent = frame["member"].map(first_of_member)
    is_rerun = frame["kind"].eq("rerun") & rerun_parent.notna() & rerun_parent.ne(frame["id"])
    parent = frame["parent_id"].astype("Float64").where(~is_rerun, rerun_parent)
    known = parent.isin(frame["id"])
    return parent.where(known).astype("Int64")


def failure_band(values: pd.Series, lower_is_better: bool) -> float:
    """The y value where rows without a metric are drawn: just below the plotted range."""
    finite = values.dropna()
    if finite.empty:
        return 0.0
    lo, hi = float(finite.min()), float(finite.max())
    span = hi - lo if hi > lo else max(abs(hi) * 0.01, 1e-3)
    return lo - 0.12 * span


def has_timestamps(frame: pd.DataFrame) -> bool:
    return bool(frame["finished_at"].notna().any() or frame["started_at"].notna().any())


def x_title(frame: pd.DataFrame, x_mode: str) -> str:
    """The tree's x axis title for `x_positions`."""
    if x_mode == "generation":
        return "generation"
    return "hours since start" if has_timestamps(frame) else "experiment #"


def x_positions(frame: pd.DataFrame, x_mode: str) -> pd.Series:
    """Hours since the run's first start (`time`), or the generation (`generation`)."""
    if x_mode == "generation":
        return frame["generation"].astype(float)
    started = frame["started_at"]
    when = frame["finished_at"].fillna(started)
    if not has_timestamps(frame):   # results.tsv has no times: fall back to recording order
        return frame["id"].astype(float)
    start = started.min() if started.notna().any() else when.min()
    return (when - start) / 3600.0


def tree_layout(frame: pd.DataFrame, metric: str, lower_is_better: bool, x_mode: str = "time"):
    """Node positions and edges of the lineage tree.

    Returns (nodes, edge_x, edge_y): nodes has id, x, y, category, failed; the edge arrays hold one
    segment per child (parent -> child) separated by NaN, ready for a single line trace."""
    nodes = frame[["id", "member", "kind", "status", "reason", "description", "agent", "generation",
                   metric]].copy()
    nodes["category"] = node_categories(frame)
    nodes["failed"] = frame[metric].isna().to_numpy()
    nodes["x"] = x_positions(frame, x_mode)
    nodes["x"] = nodes["x"].fillna(nodes["x"].max() if nodes["x"].notna().any() else 0.0)
    nodes["y"] = frame[metric].fillna(failure_band(frame[metric], lower_is_better))
    nodes["tree_parent"] = tree_parents(frame)
    edge_x, edge_y = edges_for(nodes, nodes["tree_parent"])
    return nodes, edge_x, edge_y


def edges_for(nodes: pd.DataFrame, parents: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Segment arrays [x_parent, x_child, NaN, ...] for every node with a parent in `nodes`: one
    line trace draws them all, NaN breaking the line between segments."""
    has_parent = parents.notna().to_numpy()
    pos = pd.Series(np.arange(len(nodes)), index=nodes["id"].to_numpy())
    child_rows = np.flatnonzero(has_parent)
    parent_rows = pos.loc[parents[has_parent].astype("int64").to_numpy()].to_numpy()
    xs, ys = nodes["x"].to_numpy(float), nodes["y"].to_numpy(float)
    seg_x = np.full((len(child_rows), 3), np.nan)
    seg_y = np.full((len(child_rows), 3), np.nan)
    seg_x[:, 0], seg_x[:, 1] = xs[parent_rows], xs[child_rows]
    seg_y[:, 0], seg_y[:, 1] = ys[parent_rows], ys[child_rows]
    return seg_x.ravel(), seg_y.ravel()


def path_line(nodes: pd.DataFrame, path: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """x and y of a polyline through the nodes of `path` (the champion's ancestry), in order."""
    by_id = nodes.set_index("id")
    on_path = by_id.loc[[i for i in path if i in by_id.index]]
    return on_path["x"].to_numpy(float), on_path["y"].to_numpy(float)


def running_best(frame: pd.DataFrame, metric: str, lower_is_better: bool) -> pd.DataFrame:
    """Ok rows in id order with `best` (running best so far) and `improved` (set a new best)."""
    ok = frame[frame["status"].eq("ok") & frame[metric].notna()][["id", metric, "description"]].copy()
    values = ok[metric]
    ok["best"] = values.cummin() if lower_is_better else values.cummax()
    previous = ok["best"].shift(1)
    ok["improved"] = previous.isna() | (ok["best"] != previous)
    return ok.reset_index(drop=True)


def baseline_value(frame: pd.DataFrame, metric: str) -> float:
    """Mean metric of the baseline's ok runs (the first baseline member, noise re-runs included)."""
    base = frame[frame["kind"].eq("baseline")]
    if base.empty:
        return math.nan
    member = base["member"].iloc[0]
    rows = frame[frame["member"].eq(member)] if member else base.iloc[:1]
    values = rows.loc[rows["status"].eq("ok"), metric].dropna()
    return float(values.mean()) if not values.empty else math.nan


def run_totals(frame: pd.DataFrame, metric: str, lower_is_better: bool) -> dict:
    """The run's headline figures; NaN where unknown."""
    n = len(frame)
    gpu_hours = float(frame["train_seconds"].sum(min_count=1)) / 3600.0   # NaN when unknown
    best = best_id(frame, metric, lower_is_better)
    best_value = float(frame.loc[frame["id"] == best, metric].iloc[0]) if best is not None else math.nan
    baseline = baseline_value(frame, metric)
    gain = (baseline - best_value) if lower_is_better else (best_value - baseline)
    return {
        "experiments": n,
        "ok": int(frame["status"].eq("ok").sum()),
        "failed": int(frame["status"].ne("ok").sum()),
        "living": int(frame.loc[frame["alive"], "member"].nunique()),
        "gpu_hours": gpu_hours,
        "agent_cost_usd": float(frame["agent_cost_usd"].sum(min_count=1)),
        "per_gpu_hour": n / gpu_hours if gpu_hours > 0 else math.nan,
        "best": best_value,
        "best_id": best,
        "baseline": baseline,
        "gain": gain,
        "gain_pct": 100.0 * gain / baseline if baseline and not math.isnan(baseline) else math.nan,
    }


SEARCH_COLUMNS = ("description", "member", "commit", "reason", "agent", "branch", "status")


def filter_mask(frame: pd.DataFrame, statuses=(), agents=(), workers=(), text: str = "") -> pd.Series:
    """Rows matching every given filter (empty filters match all); `text` is a case-insensitive
    substring over the descriptive columns, or an exact id when it is a number."""
    mask = pd.Series(True, index=frame.index)
    if statuses:
        mask &= frame["status"].isin(statuses)
    if agents:
        mask &= frame["agent"].isin(agents)
    if workers:
        mask &= frame["worker"].isin(workers)
    text = text.strip().lower()
    if text:
        hit = pd.Series(False, index=frame.index)
        for col in SEARCH_COLUMNS:
            hit |= frame[col].str.lower().str.contains(text, regex=False)
        if text.isdigit():
            hit |= frame["id"].eq(int(text))
        mask &= hit
    return mask


def children_of(frame: pd.DataFrame, exp_id: int) -> list[int]:
    """Experiments whose tree parent is `exp_id` (children and the member's re-runs)."""
    parents = tree_parents(frame)
    return frame.loc[parents.eq(exp_id).fillna(False), "id"].astype(int).tolist()


def export_bytes(frame: pd.DataFrame, fmt: str) -> bytes:
    """The lineage as a download: `csv` or `parquet`."""
    if fmt == "csv":
        return frame.to_csv(index=False).encode()
    if fmt == "parquet":
        buffer = io.BytesIO()
        frame.to_parquet(buffer, index=False)
        return buffer.getvalue()
    raise ValueError(f"unknown export format {fmt!r}; use csv or parquet")


def row_of(frame: pd.DataFrame, exp_id: int) -> pd.Series | None:
    rows = frame[frame["id"] == exp_id]
    return rows.iloc[0] if not rows.empty else None


# --------------------------------------------------------------------------- experiment files

EXPERIMENT_FILES = ("run.log", "diff.patch", "transcript.txt", "prompt.md")


def read_tail(path: Path, max_bytes: int = 64_000) -> tuple[str | None, bool]:
    """The last `max_bytes` of a text file and whether it was cut; (None, False) if absent."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            data = f.read()
    except OSError:
        return None, False
    text = data.decode("utf-8", errors="replace")
    if size > max_bytes:   # start at a whole line
        text = text.split("\n", 1)[-1]
    return text, size > max_bytes


def read_head(path: Path, max_bytes: int = 200_000) -> tuple[str | None, bool]:
    """The first `max_bytes` of a text file and whether it was cut; (None, False) if absent."""
    try:
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)
    except OSError:
        return None, False
    return data[:max_bytes].decode("utf-8", errors="replace"), len(data) > max_bytes


def tail_lines(text: str, n: int) -> str:
    return "\n".join(text.rstrip("\n").split("\n")[-n:])
