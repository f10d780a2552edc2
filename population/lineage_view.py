"""Read-only view of a run's lineage store: the data logic behind `app.py`.

What the page says about selection is what the selection said: the journal (`events.jsonl`, read
through `RunStore.events()`, which verifies its signatures) is replayed into the driver's own
`PopulationState`, so the champion is the last `champion` event, a member's estimate is the lineage
posterior's (population/posterior.py) and a member is one commit with all of its runs. Without a
readable journal (a store from before it, a results.tsv alone) the page falls back to run.json and
the rows, and says so.

Loading never raises for a live, crashed or half-written run (what went wrong becomes a note for
the page). Everything below `load_run` and the readers is pure: DataFrames in, DataFrames out.
Nothing here writes to a run; the git readers run confined (population/gitops.py) and read only.
"""
from __future__ import annotations

import html
import io
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from population.selection import holdout_lags
from population.state import PopulationState, holdout_column
from population.store import UNFINISHED_STATUSES, RunStore, StoreError

DEFAULT_METRIC = "val_bpb"
KNOWN_METRICS = ("val_bpb", "val_bpc")
STORE_FILES = ("run.json", "lineage.parquet", "results.tsv", "events.jsonl")
SEED_MEMBER = "m0000"

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
# Columns a journal's finished rows carry beyond lineage.parquet (the throughput view's lanes).
JOURNAL_ROW_COLUMNS = ("train_started_at", "cuda_visible_devices", "node_id")

# Failures are outcomes of the experiment's code or agent; lost and stopped experiments never had
# an outcome (their work was queued again) and are counted on their own, never as failures.
FAILED_STATUSES = ("crash", "timeout", "violation", "duplicate", "agent_error")
CRASHED_STATUSES = ("crash", "timeout")


def reported_column(metric: str) -> str:
    """What the train file printed itself (the trusted evaluation scores the metric)."""
    return "reported_" + metric


# --------------------------------------------------------------------------- the data

MEMBER_COLUMNS = ("member", "first_id", "parent", "generation", "born", "runs", "mean", "spread", "best_run",
                  "estimate", "estimate_sd", "estimated", "alive", "culled_at", "champion", "promoted",
                  "commit", "branch", "description", "run_ids")
PROMOTION_COLUMNS = ("step", "member", "first_id", "at_id", "time", "previous", "runs", "mean", "estimate",
                     "estimate_sd", "prob_better", "description")


@dataclass
class Selection:
    """What the driver's selection holds: its members (one row per commit that trained ok, with its
    runs and posterior estimate), its champion and every promotion, in order."""
    source: str                       # "journal", "run.json" (fallback) or "" (nothing known)
    champion: str | None
    members: pd.DataFrame             # MEMBER_COLUMNS, indexed by member name
    promotions: pd.DataFrame          # PROMOTION_COLUMNS, in order
    noise_std: float | None = None

    @property
    def champion_row(self) -> pd.Series | None:
        if self.champion is None or self.champion not in self.members.index:
            return None
        return self.members.loc[self.champion]

    @property
    def champion_id(self) -> int | None:
        row = self.champion_row
        return int(row["first_id"]) if row is not None else None


@dataclass
class RunData:
    """One run as the app sees it; `notes` are (level, text) pairs, level `info` or `warning`."""
    path: Path
    meta: dict
    frame: pd.DataFrame
    metric: str
    lower_is_better: bool
    source: str                      # the file the rows came from, or "" when there are none
    selection: Selection = None
    notes: list[tuple[str, str]] = field(default_factory=list)
    journal: str = ""                # "signed" (verified), "unsigned" (before signing), "" (none read)

    def __post_init__(self):
        if self.selection is None:
            self.selection = empty_selection()

    @property
    def live(self) -> bool:
        return self.meta.get("state") == "running"

    @property
    def tag(self) -> str:
        return str(self.meta.get("tag") or self.path.name)

    @property
    def holdout(self) -> str | None:
        """The holdout column when the rows carry one (the trusted evaluation), else None."""
        name = holdout_column(self.metric)
        return name if name in self.frame and self.frame[name].notna().any() else None


def empty_selection() -> Selection:
    return Selection("", None, pd.DataFrame(columns=list(MEMBER_COLUMNS)).set_index("member", drop=False),
                     pd.DataFrame(columns=list(PROMOTION_COLUMNS)))


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


# --------------------------------------------------------------------------- loading (I/O)

def load_run(run_dir: Path) -> RunData:
    """Read a run directory and replay its journal; never raises for a missing, torn or corrupt file."""
    run_dir = Path(run_dir)
    notes: list[tuple[str, str]] = []
    if not run_dir.is_dir():
        notes.append(("warning", f"{run_dir} is not a directory."))
        return RunData(run_dir, {}, normalize_frame(pd.DataFrame(), DEFAULT_METRIC),
                       DEFAULT_METRIC, True, "", notes=notes)

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
    events, journal = read_journal(run_dir, notes, expected=not frame.empty)
    if events:
        selection, extra = replay_selection(events, metric, lower)
        frame = with_journal_rows(frame, extra)
    else:
        selection = selection_from_frame(frame, meta, metric, lower)
    frame = with_member_columns(frame, selection, metric, lower)
    if frame.empty and not any(level == "warning" for level, _ in notes):
        notes.append(("info", "No experiments recorded yet."))
    return RunData(run_dir, meta, frame, metric, lower, source if not frame.empty else "", selection, notes, journal)


def read_journal(run_dir: Path, notes: list, expected: bool = True) -> tuple[list[dict] | None, str]:
    """The journal's events, verified by the store (its signature chain), and "signed"/"unsigned";
    (None, "") with a note when it is missing or does not verify (the page then trusts run.json)."""
    if not (run_dir / "events.jsonl").exists():
        if expected:
            notes.append(("info", "events.jsonl is missing: champion from run.json, no promotion history, "
                                  "and member estimates are plain means (no posterior)."))
        return None, ""
    store = RunStore(run_dir)
    try:
        events = store.events()
    except StoreError as err:           # tampered, corrupt, or the key unreadable to this user
        notes.append(("warning", f"The journal cannot be trusted ({short_error(err)}); champion from run.json, "
                                 "member estimates are plain means."))
        return None, ""
    except OSError as err:
        notes.append(("warning", f"events.jsonl is unreadable ({short_error(err)})."))
        return None, ""
    return events, "signed" if store.journal_signed else "unsigned"


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
    """Every documented column present with a usable dtype, one row per id, sorted by id. Columns
    the trusted evaluation adds (holdout_*, reported_*) are read as floats when present."""
    frame = raw.copy()
    n = len(frame)
    if "id" not in frame:
        frame["id"] = range(n)
    frame["id"] = pd.to_numeric(frame["id"], errors="coerce")
    frame = frame[frame["id"].notna()]
    frame["id"] = frame["id"].astype("int64")
    for col in STRING_COLUMNS:
        frame[col] = frame[col].fillna("").astype(str) if col in frame else ""
    optional = [c for c in (holdout_column(metric), reported_column(metric)) if c in frame]
    for col in (metric,) + FLOAT_COLUMNS + tuple(optional):
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


# --------------------------------------------------------------------------- the selection (pure)

def replay_selection(events: list[dict], metric: str, lower_is_better: bool) -> tuple[Selection, pd.DataFrame]:
    """Replay the journal with the driver's PopulationState: the members, the champion (the last
    `champion` event), the posterior's estimates, and each promotion as selection saw it then
    (the promoted member's runs, mean and estimate at that moment, and how likely the posterior
    held it better than the champion it replaced). Also returns the journal-only columns of each
    finished experiment (JOURNAL_ROW_COLUMNS), indexed by id."""
    state = PopulationState(metric, lower_is_better)
    sign = 1.0 if lower_is_better else -1.0
    promotions, last_result, extra = [], -1, {}
    for event in events:
        previous = state.champion
        state.apply(event)
        kind = event.get("type")
        if kind in ("experiment_finished", "experiment_lost") and isinstance(event.get("id"), int):
            last_result = max(last_result, event["id"])
            row = event.get("row") or {}
            if any(row.get(name) is not None for name in JOURNAL_ROW_COLUMNS):
                extra[event["id"]] = {name: row.get(name) for name in JOURNAL_ROW_COLUMNS}
        elif kind == "champion" and state.champion == event.get("member"):
            member = state.members[state.champion]
            estimate, sd = _estimate(state, member.name, sign)
            better = math.nan
            if previous and previous != member.name and previous in state.posterior and member.name in state.posterior:
                better = state.posterior.prob_better(member.name, previous)
            promotions.append({"step": len(promotions), "member": member.name, "first_id": member.first_id,
                               "at_id": last_result, "time": _float(event.get("time")), "previous": previous or "",
                               "runs": len(member.runs), "mean": member.mean, "estimate": estimate,
                               "estimate_sd": sd, "prob_better": better,
                               "description": _description(state, member.first_id)})
    members = members_from_state(state, sign)
    members["promoted"] = members["member"].isin({p["member"] for p in promotions})
    extra_frame = pd.DataFrame.from_dict(extra, orient="index", columns=list(JOURNAL_ROW_COLUMNS))
    return (Selection("journal", state.champion, members, pd.DataFrame(promotions, columns=list(PROMOTION_COLUMNS)),
                      state.noise_std), extra_frame)


def _estimate(state: PopulationState, name: str, sign: float) -> tuple[float, float]:
    """(estimate, posterior sd) in the metric's own direction; the mean and NaN when the
    posterior has no say (no noise yet, or the member folded away after a cull)."""
    if name in state.posterior:
        mean = state.posterior.mean(name)
        if math.isfinite(mean):
            return sign * mean, math.sqrt(state.posterior.variance(name))
    return state.members[name].mean, math.nan


def _description(state: PopulationState, exp_id: int) -> str:
    exp = state.experiments.get(exp_id)
    return str(exp.row.get("description") or "") if exp is not None else ""


def members_from_state(state: PopulationState, sign: float) -> pd.DataFrame:
    """One row per member (MEMBER_COLUMNS), from the replayed state (`promoted` is filled in by
    replay_selection, which sees the champion events)."""
    rows = []
    for member in state.members.values():
        estimate, sd = _estimate(state, member.name, sign)
        runs = member.runs
        rows.append({
            "member": member.name, "first_id": member.first_id, "parent": member.parent or "",
            "generation": member.generation, "born": member.born, "runs": len(runs), "mean": member.mean,
            "spread": float(np.std(runs, ddof=1)) if len(runs) > 1 else math.nan,
            "best_run": min(runs) if sign > 0 else max(runs), "estimate": estimate, "estimate_sd": sd,
            "estimated": bool(math.isfinite(sd)), "alive": member.alive, "culled_at": _float(member.culled_at),
            "champion": member.name == state.champion, "promoted": False, "commit": member.commit,
            "branch": member.branch, "description": _description(state, member.first_id),
            "run_ids": list(member.run_ids)})
    return pd.DataFrame(rows, columns=list(MEMBER_COLUMNS)).set_index("member", drop=False)


def selection_from_frame(frame: pd.DataFrame, meta: dict, metric: str, lower_is_better: bool) -> Selection:
    """Without a journal: members from the rows (their ok runs, plain means), the champion from
    run.json's champion_id (else the rows' champion flag); no promotion history."""
    if frame.empty:
        return empty_selection()
    ok = frame[frame["status"].eq("ok") & frame[metric].notna() & frame["member"].ne("")]
    member_of = dict(zip(frame["id"], frame["member"]))
    rows = []
    for name, runs in ok.groupby("member", sort=False):
        first = runs.iloc[0]
        values = runs[metric].to_numpy(float)
        parent_id = first["parent_id"]
        parent = member_of.get(int(parent_id), "") if parent_id is not pd.NA else ""
        rows.append({"member": name, "first_id": int(first["id"]), "parent": parent if parent != name else "",
                     "generation": int(first["generation"]), "born": len(rows), "runs": len(values),
                     "mean": float(values.mean()), "spread": float(values.std(ddof=1)) if len(values) > 1 else math.nan,
                     "best_run": float(values.min() if lower_is_better else values.max()),
                     "estimate": float(values.mean()), "estimate_sd": math.nan, "estimated": False,
                     "alive": bool(runs["alive"].iloc[-1]), "culled_at": float(runs["culled_at"].iloc[-1]),
                     "champion": False, "promoted": False, "commit": first["commit"], "branch": first["branch"],
                     "description": first["description"], "run_ids": runs["id"].astype(int).tolist()})
    members = pd.DataFrame(rows, columns=list(MEMBER_COLUMNS)).set_index("member", drop=False)
    champion = _champion_from_meta(frame, meta, members)
    if champion is not None:
        members.loc[champion, ["champion", "promoted"]] = True
    noise = meta.get("noise_std")
    return Selection("run.json" if champion is not None else "", champion, members,
                     pd.DataFrame(columns=list(PROMOTION_COLUMNS)),
                     float(noise) if isinstance(noise, (int, float)) and not isinstance(noise, bool) else None)


def _champion_from_meta(frame: pd.DataFrame, meta: dict, members: pd.DataFrame) -> str | None:
    wanted = meta.get("champion_id")
    if isinstance(wanted, (int, np.integer)) and not isinstance(wanted, bool):
        rows = frame.loc[frame["id"] == wanted, "member"]
        if not rows.empty and rows.iloc[0] in members.index:
            return rows.iloc[0]
    flagged = frame.loc[frame["champion"] & frame["member"].isin(members.index), "member"]
    return flagged.iloc[0] if not flagged.empty else None


def with_journal_rows(frame: pd.DataFrame, extra: pd.DataFrame) -> pd.DataFrame:
    """The rows plus what only the journal keeps of each finished experiment (train start, GPU)."""
    frame = frame.copy()
    for name in JOURNAL_ROW_COLUMNS:
        values = frame["id"].map(extra[name]) if name in extra and not extra.empty else pd.Series(None, index=frame.index)
        frame[name] = pd.to_numeric(values, errors="coerce") if name == "train_started_at" \
            else values.fillna("").astype(str)
    return frame


def with_member_columns(frame: pd.DataFrame, selection: Selection, metric: str, lower_is_better: bool) -> pd.DataFrame:
    """Each row with its member as selection sees it now: alive, champion (from the journal, which
    is fresher than the throttled table), the member's estimate and runs, and the row's gain over
    its parent member's estimate (`delta_parent`, oriented: positive = better)."""
    frame = frame.copy()
    members = selection.members
    if frame.empty or members.empty:
        for name, value in (("estimate", np.nan), ("estimate_sd", np.nan), ("member_runs", 0),
                            ("delta_parent", np.nan), ("parent_member", "")):
            frame[name] = value
        if selection.champion is not None:
            frame["champion"] = frame["member"].eq(selection.champion)
        return frame
    if selection.source == "journal":
        frame["alive"] = frame["member"].map(members["alive"].astype(bool).to_dict()).eq(True)
    frame["champion"] = frame["member"].eq(selection.champion) if selection.champion else False
    frame["estimate"] = frame["member"].map(members["estimate"]).astype(float)
    frame["estimate_sd"] = frame["member"].map(members["estimate_sd"]).astype(float)
    frame["member_runs"] = frame["member"].map(members["runs"]).fillna(0).astype(int)
    member_of = pd.Series(frame["member"].to_numpy(), index=frame["id"].to_numpy())
    parent_member = frame["parent_id"].map(member_of)
    own = frame["member"].map(members["parent"])          # a member's own runs: its recorded parent member
    frame["parent_member"] = own.where(own.notna(), parent_member).fillna("").astype(str)
    parent_estimate = frame["parent_member"].map(members["estimate"]).astype(float)
    sign = 1.0 if lower_is_better else -1.0
    frame["delta_parent"] = sign * (parent_estimate - frame[metric])
    return frame


def seed_member(selection: Selection) -> str | None:
    """The seed's member: m0000, else the oldest member without a parent."""
    members = selection.members
    if SEED_MEMBER in members.index:
        return SEED_MEMBER
    roots = members[members["parent"].eq("")]
    return str(roots.sort_values("first_id").index[0]) if not roots.empty else None


def member_holdout(frame: pd.DataFrame, column: str | None) -> pd.Series:
    """Mean holdout score of each member's ok runs (empty without the column)."""
    if column is None or column not in frame:
        return pd.Series(dtype=float)
    ok = frame[frame["status"].eq("ok") & frame[column].notna()]
    return ok.groupby("member")[column].mean()


# --------------------------------------------------------------------------- headline figures (pure)

def headline(run: RunData) -> dict:
    """The champion (its estimate, runs and gain over the seed), the best single run (secondary)
    and the counts; NaN/None where unknown."""
    frame, metric, selection = run.frame, run.metric, run.selection
    sign = 1.0 if run.lower_is_better else -1.0
    champion, seed = selection.champion_row, seed_member(selection)
    seed_row = selection.members.loc[seed] if seed is not None else None
    out = {"champion": selection.champion, "champion_id": selection.champion_id, "source": selection.source,
           "estimate": math.nan, "estimate_sd": math.nan, "runs": 0, "mean": math.nan, "spread": math.nan,
           "seed": seed, "seed_estimate": math.nan, "gain": math.nan, "gain_pct": math.nan,
           "promotions": len(selection.promotions)}
    if champion is not None:
        out.update(estimate=float(champion["estimate"]), estimate_sd=float(champion["estimate_sd"]),
                   runs=int(champion["runs"]), mean=float(champion["mean"]), spread=float(champion["spread"]))
    if seed_row is not None:
        out["seed_estimate"] = float(seed_row["estimate"])
        if champion is not None:
            out["gain"] = sign * (out["seed_estimate"] - out["estimate"])       # positive: better
            out["gain_pct"] = 100.0 * out["gain"] / abs(out["seed_estimate"]) if out["seed_estimate"] else math.nan
    best = best_id(frame, metric, run.lower_is_better)
    out["best_id"] = best
    out["best"] = float(frame.loc[frame["id"] == best, metric].iloc[0]) if best is not None else math.nan
    out.update(counts(frame))
    holdout = member_holdout(frame, run.holdout)
    out["holdout"] = float(holdout.get(selection.champion, math.nan)) if selection.champion else math.nan
    out["seed_holdout"] = float(holdout.get(seed, math.nan)) if seed else math.nan
    out["overfitting"] = overfitting(selection, holdout, sign)
    return out


def counts(frame: pd.DataFrame) -> dict:
    """Experiments by outcome: ok, failed (the experiment's own failure), unfinished (lost/stopped)."""
    status = frame["status"]
    gpu_hours = float(frame["train_seconds"].sum(min_count=1)) / 3600.0   # NaN when unknown
    return {"experiments": len(frame), "ok": int(status.eq("ok").sum()),
            "failed": int(status.isin(FAILED_STATUSES).sum()),
            "lost": int(status.isin(UNFINISHED_STATUSES).sum()),
            "living": int(frame.loc[frame["alive"], "member"].nunique()),
            "gpu_hours": gpu_hours, "per_gpu_hour": len(frame) / gpu_hours if gpu_hours > 0 else math.nan,
            "agent_cost_usd": float(frame["agent_cost_usd"].sum(min_count=1))}


def overfitting(selection: Selection, holdout: pd.Series, sign: float) -> dict | None:
    """The champion's gain over the seed on validation and on the hidden holdout, from the same
    runs (means of each member's runs on both); `flagged` by the driver's rule
    (selection.holdout_lags: a clear validation gain, under half of it on the holdout): possible
    overfitting to the validation set. None without a holdout for both or without the noise."""
    champion, seed = selection.champion_row, seed_member(selection)
    if champion is None or seed is None or selection.champion not in holdout or seed not in holdout:
        return None
    val_gain = sign * (float(selection.members.loc[seed, "mean"]) - float(champion["mean"]))
    holdout_gain = sign * (float(holdout[seed]) - float(holdout[selection.champion]))
    noise = selection.noise_std
    flagged = bool(noise) and holdout_lags(val_gain, holdout_gain, noise)   # the driver's own rule
    return {"val_gain": val_gain, "holdout_gain": holdout_gain, "noise_std": noise, "flagged": flagged}


def best_id(frame: pd.DataFrame, metric: str, lower_is_better: bool) -> int | None:
    """The best single run (one training; lucky runs are why selection does not trust it)."""
    ok = frame[frame["status"].eq("ok") & frame[metric].notna()]
    if ok.empty:
        return None
    pos = ok[metric].idxmin() if lower_is_better else ok[metric].idxmax()
    return int(ok.at[pos, "id"])


def promotion_table(run: RunData) -> pd.DataFrame:
    """The promotion staircase: each promotion with its member's estimate then and now, its
    description and (when the rows carry one) its mean holdout score."""
    promotions = run.selection.promotions.copy()
    members = run.selection.members
    promotions["estimate_now"] = promotions["member"].map(members["estimate"]).astype(float)
    promotions["runs_now"] = promotions["member"].map(members["runs"])
    holdout = member_holdout(run.frame, run.holdout)
    promotions["holdout"] = promotions["member"].map(holdout).astype(float) if not holdout.empty else np.nan
    return promotions


# --------------------------------------------------------------------------- the tree (pure)

@dataclass
class TreeLayout:
    """A layered drawing of the members: x = generation (or time), y = sibling order.

    nodes: one row per drawn member (member, first_id, x, y, category, hidden_members, failed,
    lost, tree_parent...); ticks: the failed and lost children drawn under their parent member
    (one row per parent and kind, with the count and the newest id); path: the champion's line."""
    nodes: pd.DataFrame
    edge_x: np.ndarray
    edge_y: np.ndarray
    ticks: pd.DataFrame
    path_x: np.ndarray
    path_y: np.ndarray
    scope: str


def member_failures(frame: pd.DataFrame, members: pd.DataFrame) -> pd.DataFrame:
    """Experiments that never became a member (failed or lost children), each with the member it
    hangs from (`parent_member`) and its kind: `failed` or `lost`."""
    unborn = frame[frame["status"].ne("ok")]
    parent = unborn["parent_member"] if "parent_member" in unborn else pd.Series("", index=unborn.index)
    # a failed re-run or baseline run hangs from its own member
    parent = parent.where(~unborn["member"].isin(members.index), unborn["member"])
    out = pd.DataFrame({"id": unborn["id"].astype(int), "parent_member": parent.astype(str),
                        "status": unborn["status"],
                        "kind": np.where(unborn["status"].isin(UNFINISHED_STATUSES), "lost", "failed")})
    return out[out["parent_member"].isin(members.index)]


def drawn_members(members: pd.DataFrame, champion: str | None, scope: str) -> set[str]:
    """`all`: every member; `living`: the living members, the champion and every ancestor of
    them (so each drawn member is connected to the root)."""
    if scope == "all":
        return set(members.index)
    parent = members["parent"].to_dict()
    keep = set(members.index[members["alive"].astype(bool)])
    if champion in parent:
        keep.add(champion)
    for name in list(keep):
        current = parent.get(name, "")
        while current and current in parent and current not in keep:
            keep.add(current)
            current = parent[current]
    return keep


def ancestry_members(members: pd.DataFrame, name: str | None) -> list[str]:
    """Members from the root down to `name`, following each member's parent; cycle-safe."""
    parent = members["parent"].to_dict()
    path, current = [], name
    while current and current in parent and current not in path:
        path.append(current)
        current = parent[current]
    return path[::-1]


def tree_layout(members: pd.DataFrame, frame: pd.DataFrame, champion: str | None, scope: str = "living",
                x_mode: str = "generation") -> TreeLayout:
    """The lineage as a layered tree that stays readable at any size: only the drawn members are
    nodes (see drawn_members); each hidden (culled) subtree becomes a count on its nearest drawn
    ancestor, failed and lost children ticks under their parent (or counts, when it is hidden).
    Leaves take consecutive rows in depth-first order of birth; a parent sits midway between its
    first and last child."""
    drawn = drawn_members(members, champion, scope)
    parent_of = members["parent"].to_dict()
    nearest = _nearest_drawn(parent_of, drawn)
    table = members.loc[[m for m in members.index if m in drawn]].copy()
    table["tree_parent"] = [parent_of[m] if parent_of[m] in drawn else "" for m in table.index]
    hidden = pd.Series([nearest[m] for m in members.index if m not in drawn], dtype=object)
    table["hidden_members"] = table.index.map(hidden.value_counts()).fillna(0).astype(int)
    fails = member_failures(frame, members) if "parent_member" in frame else member_failures(
        frame.assign(parent_member=""), members)
    fails = fails.assign(anchor=fails["parent_member"].map(nearest))
    direct = fails[fails["anchor"].eq(fails["parent_member"])]
    table["hidden_failed"] = table.index.map(fails[fails["anchor"].ne(fails["parent_member"])]
                                             .groupby("anchor").size()).fillna(0).astype(int)
    table["failed"] = table.index.map(direct[direct["kind"].eq("failed")].groupby("anchor").size()).fillna(0).astype(int)
    table["lost"] = table.index.map(direct[direct["kind"].eq("lost")].groupby("anchor").size()).fillna(0).astype(int)
    table["y"] = _leaf_rows(table)
    table["x"] = _x_positions(table, frame, x_mode)
    table["category"] = _categories(table, champion)
    table = table.reset_index(drop=True)
    edge_x, edge_y = elbow_edges(table, table["tree_parent"])
    ticks = _ticks(direct, table)
    path = [m for m in ancestry_members(members, champion) if m in drawn]
    px, py = np.array([]), np.array([])
    if len(path) > 1:
        on_path = table.set_index("member").loc[path].reset_index()
        px, py = elbow_edges(on_path, pd.Series([""] + path[:-1]))
    return TreeLayout(table, edge_x, edge_y, ticks, px, py, scope)


def _nearest_drawn(parent_of: dict, drawn: set[str]) -> dict[str, str]:
    """For every member, itself when drawn, else its nearest drawn ancestor ("" if none); memoised
    walks up, so a 10,000-member lineage costs one pass."""
    nearest: dict[str, str] = {}
    for name in parent_of:
        chain, current = [], name
        while current and current not in nearest and current not in drawn and current in parent_of \
                and current not in chain:
            chain.append(current)
            current = parent_of[current]
        found = current if current in drawn else nearest.get(current, "")
        for item in chain:
            nearest[item] = found
        if name in drawn:
            nearest[name] = name
    return nearest


def _leaf_rows(table: pd.DataFrame) -> pd.Series:
    """Depth-first rows: leaves 0, 1, 2, ... in birth order; a parent midway between its children.
    Iterative (a lineage can be thousands of generations deep)."""
    order = table.sort_values("first_id")
    children: dict[str, list[str]] = {}
    for name, parent in zip(order.index, order["tree_parent"]):
        children.setdefault(parent, []).append(name)
    rows: dict[str, float] = {}
    next_row = 0
    stack = [(root, False) for root in reversed(children.get("", []))]
    while stack:
        name, done = stack.pop()
        kids = children.get(name, [])
        if done:
            rows[name] = (rows[kids[0]] + rows[kids[-1]]) / 2.0
        elif not kids:
            rows[name] = float(next_row)
            next_row += 1
        else:
            stack.append((name, True))
            stack.extend((kid, False) for kid in reversed(kids))
    return pd.Series(rows).reindex(table.index).astype(float)


def _x_positions(table: pd.DataFrame, frame: pd.DataFrame, x_mode: str) -> pd.Series:
    """The generation, or (`time`) hours from the run's start to the member's first result."""
    if x_mode != "time" or not has_timestamps(frame):
        return table["generation"].astype(float)
    when = frame.set_index("id")["finished_at"].fillna(frame.set_index("id")["started_at"])
    start = frame["started_at"].min() if frame["started_at"].notna().any() else when.min()
    hours = (table["first_id"].map(when) - start) / 3600.0
    return hours.fillna(hours.max() if hours.notna().any() else 0.0)


def _categories(table: pd.DataFrame, champion: str | None) -> pd.Series:
    category = np.where(table.index == champion, "champion", np.where(table["alive"].astype(bool), "living", "culled"))
    return pd.Series(category, index=table.index)


def _ticks(direct: pd.DataFrame, table: pd.DataFrame) -> pd.DataFrame:
    """One tick per (parent member, failed|lost): just under the parent, with the count, the
    statuses and the newest such experiment (what a click opens)."""
    columns = ["parent_member", "kind", "count", "newest_id", "statuses", "x", "y"]
    if direct.empty:
        return pd.DataFrame(columns=columns)
    grouped = direct.groupby(["anchor", "kind"])
    ticks = grouped.agg(count=("id", "size"), newest_id=("id", "max")).reset_index()
    statuses = grouped["status"].agg(lambda s: ", ".join(f"{k} {v}" for k, v in s.value_counts().items()))
    ticks["statuses"] = statuses.to_numpy()
    position = table.set_index("member")[["x", "y"]]
    ticks["x"] = ticks["anchor"].map(position["x"]) + np.where(ticks["kind"].eq("lost"), 0.18, 0.0)
    ticks["y"] = ticks["anchor"].map(position["y"]) - 0.38
    return ticks.rename(columns={"anchor": "parent_member"})[columns]


def elbow_edges(nodes: pd.DataFrame, parents: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Elbow segments parent -> child (across to the midpoint, along, across), separated by NaN,
    for one line trace; `parents` holds each node's parent member ("" for none)."""
    position = {name: (x, y) for name, x, y in zip(nodes["member"], nodes["x"], nodes["y"])}
    xs, ys = [], []
    for name, parent in zip(nodes["member"], parents):
        if not parent or parent not in position:
            continue
        (x0, y0), (x1, y1) = position[parent], position[name]
        middle = x0 + (x1 - x0) / 2.0
        xs += [x0, middle, middle, x1, np.nan]
        ys += [y0, y0, y1, y1, np.nan]
    return np.array(xs, dtype=float), np.array(ys, dtype=float)


def has_timestamps(frame: pd.DataFrame) -> bool:
    return bool(frame["finished_at"].notna().any() or frame["started_at"].notna().any())


# --------------------------------------------------------------------------- the table (pure)

SEARCH_COLUMNS = ("description", "member", "commit", "reason", "agent", "branch", "status")


def filter_mask(frame: pd.DataFrame, statuses=(), agents=(), workers=(), text: str = "",
                living_only: bool = False) -> pd.Series:
    """Rows matching every given filter (empty filters match all); `text` is a case-insensitive
    substring over the descriptive columns, or an exact id when it is a number; `living_only`
    keeps the rows of living members."""
    mask = pd.Series(True, index=frame.index)
    if statuses:
        mask &= frame["status"].isin(statuses)
    if agents:
        mask &= frame["agent"].isin(agents)
    if workers:
        mask &= frame["worker"].isin(workers)
    if living_only:
        mask &= frame["alive"]
    text = text.strip().lower()
    if text:
        hit = pd.Series(False, index=frame.index)
        for col in SEARCH_COLUMNS:
            hit |= frame[col].str.lower().str.contains(text, regex=False)
        if text.isdigit():
            hit |= frame["id"].eq(int(text))
        mask &= hit
    return mask


SORTS = ("newest first", "{metric}, best first", "member estimate, best first", "gain over parent, best first")


def sort_rows(frame: pd.DataFrame, how: str, metric: str, lower_is_better: bool) -> pd.DataFrame:
    """The table's order; rows without the sorted value (failures, lost) always come last."""
    if how == SORTS[1].format(metric=metric):
        return frame.sort_values([metric, "id"], ascending=[lower_is_better, False], na_position="last", kind="stable")
    if how == SORTS[2]:
        return frame.sort_values(["estimate", metric, "id"], ascending=[lower_is_better, lower_is_better, False],
                                 na_position="last", kind="stable")
    if how == SORTS[3]:
        return frame.sort_values(["delta_parent", "id"], ascending=[False, False], na_position="last", kind="stable")
    return frame.sort_values("id", ascending=False, kind="stable")


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


def member_runs(frame: pd.DataFrame, member: str) -> pd.DataFrame:
    """Every experiment of a member (its first run, re-runs, further baseline runs), in order."""
    return frame[frame["member"].eq(member)].sort_values("id")


# --------------------------------------------------------------------------- throughput (pure)

def training_spans(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per training that ran: its lane (the GPU: node and CUDA device when the journal
    says, else the worker), start and end (unix seconds) and status."""
    ran = frame[frame["train_seconds"].fillna(0) > 0]
    if ran.empty:
        return pd.DataFrame(columns=["id", "lane", "start", "end", "status", "member"])
    started = ran["train_started_at"] if "train_started_at" in ran else pd.Series(np.nan, index=ran.index)
    start = started.fillna(ran["finished_at"] - ran["train_seconds"]).fillna(ran["started_at"])
    device = ran["cuda_visible_devices"] if "cuda_visible_devices" in ran else pd.Series("", index=ran.index)
    where = ran["node"].where(ran["node"].ne(""), ran["worker"])
    lane = np.where(device.ne(""), where + " · GPU " + device, where + " · " + ran["worker"])
    timed = ran["training_seconds"] if "training_seconds" in ran else pd.Series(np.nan, index=ran.index)
    busy = ran["busy_seconds"] if "busy_seconds" in ran else pd.Series(np.nan, index=ran.index)
    spans = pd.DataFrame({"id": ran["id"], "lane": lane, "start": start, "end": start + ran["train_seconds"],
                          "status": ran["status"], "member": ran["member"],
                          "timed": timed.clip(upper=ran["train_seconds"]), "busy": busy})
    return spans.dropna(subset=["start"]).sort_values(["lane", "start"]).reset_index(drop=True)


def lane_busy(spans: pd.DataFrame) -> pd.DataFrame:
    """Per lane: trainings, the hours a training held it and that share of the run's span (overlaps
    counted once: the reservation), and what the GPU did with it: the share of the span in timed
    training steps (each training's own `training_seconds`) and the share it was busy, measured from
    outside (`busy_seconds`: NVML on a GPU, CPU time on a CPU run). A GPU held by a training that is
    importing, compiling or saving is reserved, not used."""
    columns = ["lane", "trainings", "busy_h", "share", "timed_share", "device_share"]
    if spans.empty:
        return pd.DataFrame(columns=columns)
    span = spans["end"].max() - spans["start"].min()
    rows = []
    for lane, part in spans.groupby("lane"):
        held, until = 0.0, -math.inf
        for start, end in zip(part["start"], part["end"]):
            if end > until:
                held += end - max(start, until)
                until = end
        share = (lambda seconds: seconds / span if span > 0 else math.nan)
        timed = part["timed"].sum(min_count=1) if "timed" in part else math.nan
        busy = part["busy"].sum(min_count=1) if "busy" in part else math.nan
        rows.append({"lane": lane, "trainings": len(part), "busy_h": held / 3600.0, "share": share(held),
                     "timed_share": share(timed), "device_share": share(busy)})
    return pd.DataFrame(rows, columns=columns)


def agent_cost_over_time(frame: pd.DataFrame) -> pd.DataFrame:
    """Cumulative agent dollars by the time each experiment finished."""
    paid = frame[frame["agent_cost_usd"].notna() & frame["finished_at"].notna()].sort_values("finished_at")
    return pd.DataFrame({"time": paid["finished_at"], "cost": paid["agent_cost_usd"].cumsum(), "id": paid["id"]})


# --------------------------------------------------------------------------- diffs (pure)

_HUNK = re.compile(r"^@@ -(\d+)(?:,\d+)? \+(\d+)(?:,\d+)? @@(.*)$")


def side_by_side(diff: str) -> list[tuple[str, int | None, str, int | None, str]]:
    """A unified diff as side-by-side rows (kind, old line no, old text, new line no, new text);
    kind is `file`, `hunk`, `same`, `change`, `delete` or `insert`. A run of removed lines and the
    run of added lines after it are paired row by row."""
    rows: list[tuple[str, int | None, str, int | None, str]] = []
    old_no = new_no = 0
    removed: list[tuple[int, str]] = []
    added: list[tuple[int, str]] = []

    def flush():
        for i in range(max(len(removed), len(added))):
            left = removed[i] if i < len(removed) else (None, "")
            right = added[i] if i < len(added) else (None, "")
            kind = "change" if left[0] is not None and right[0] is not None else "delete" if right[0] is None else "insert"
            rows.append((kind, left[0], left[1], right[0], right[1]))
        removed.clear()
        added.clear()

    in_hunk = False
    for line in diff.splitlines():
        match = _HUNK.match(line)
        if line.startswith("diff --git "):
            flush()
            in_hunk = False
            rows.append(("file", None, line[len("diff --git "):], None, ""))
        elif match:
            flush()
            in_hunk = True
            old_no, new_no = int(match.group(1)), int(match.group(2))
            rows.append(("hunk", None, line, None, ""))
        elif not in_hunk:
            continue                      # index, ---, +++ and mode lines
        elif line.startswith("-"):
            removed.append((old_no, line[1:]))
            old_no += 1
        elif line.startswith("+"):
            added.append((new_no, line[1:]))
            new_no += 1
        elif line.startswith("\\"):
            continue                      # "\ No newline at end of file"
        else:
            flush()
            text = line[1:] if line.startswith(" ") else line
            rows.append(("same", old_no, text, new_no, text))
            old_no += 1
            new_no += 1
    flush()
    return rows


def side_by_side_html(rows: list[tuple], max_rows: int = 4000) -> str:
    """The side-by-side rows as an HTML table (escaped; styles inline, so it needs no CSS file)."""
    colours = {"delete": ("#ffebe9", ""), "insert": ("", "#dafbe1"), "change": ("#ffebe9", "#dafbe1")}
    out = ["<div class='sbs' style='overflow:auto;max-height:560px;border:1px solid #ddd;border-radius:6px'>"
           "<table style='border-collapse:collapse;width:100%;font-family:monospace;font-size:12px;"
           "table-layout:fixed'><colgroup><col style='width:3.2em'><col><col style='width:3.2em'><col>"
           "</colgroup>"]
    for kind, old_no, old, new_no, new in rows[:max_rows]:
        if kind in ("file", "hunk"):
            out.append(f"<tr><td colspan='4' style='background:#f0f3f8;color:#57606a;padding:2px 6px'>"
                       f"{html.escape(old)}</td></tr>")
            continue
        left_bg, right_bg = colours.get(kind, ("", ""))
        cell = "padding:0 6px;white-space:pre;overflow:hidden;text-overflow:ellipsis;"
        number = "color:#8c959f;text-align:right;padding:0 4px;user-select:none;"
        out.append(
            f"<tr><td style='{number}background:{left_bg}'>{'' if old_no is None else old_no}</td>"
            f"<td style='{cell}background:{left_bg}' class='old'>{html.escape(old)}</td>"
            f"<td style='{number}background:{right_bg};border-left:1px solid #ddd'>{'' if new_no is None else new_no}</td>"
            f"<td style='{cell}background:{right_bg}' class='new'>{html.escape(new)}</td></tr>")
    out.append("</table></div>")
    return "".join(out)


# --------------------------------------------------------------------------- experiment files (I/O)

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


def train_file(meta: dict, diff: str | None = None) -> str:
    """The task's one editable file: from the task table, else from a diff's header."""
    try:
        from prepare.tasks import TASKS
        task = TASKS.get(str(meta.get("task") or ""))
        if task is not None:
            return task.train_file
    except ImportError:
        pass
    match = re.search(r"^diff --git a/(\S+) b/", diff or "", re.M)
    return match.group(1) if match else "engine/train.py"


def git_text(meta: dict, commit: str, path: str) -> str | None:
    """`path` at `commit` in the run's repository (run.json `repo`), read confined; None when the
    repository or the commit is not here."""
    return _with_repo(meta, lambda gitops, repo: gitops.file_text(repo, commit, path)) if commit else None


def git_diff(meta: dict, old: str, new: str) -> str | None:
    """The diff between two commits of the run's repository (what the driver keeps as diff.patch)."""
    return _with_repo(meta, lambda gitops, repo: gitops.diff(repo, old, new)) if old and new else None


def _with_repo(meta: dict, read):
    where = meta.get("repo")
    if not isinstance(where, str) or not where or not Path(where).is_dir():
        return None
    try:
        from population import gitops
        repo = gitops.open_run_repo(where)
    except Exception:               # GitOpsError, no git, a path that is not a repository
        return None
    try:
        return read(gitops, repo)
    except Exception:               # GitCommandError: a commit this clone does not have
        return None
    finally:
        repo.close()


def _float(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def spend_table(frame: pd.DataFrame, metric: str, lower_is_better: bool) -> pd.DataFrame:
    """The spend ledger per agent backend, then the whole run (population.ledger over the rows)."""
    from population.ledger import ledger

    rows = frame.to_dict("records")
    total, by_backend = ledger(rows, metric, lower_is_better)
    records = []
    for name, spend in [*sorted(by_backend.items()), ("whole run", total)]:
        records.append({"backend": name, "experiments": spend.experiments, "keep_rate": spend.keep_rate,
                        "crash_rate": spend.crash_rate, "tokens": spend.agent_tokens,
                        "dollars": spend.agent_cost_usd, "agent_hours": spend.agent_seconds / 3600,
                        "gpu_hours": spend.gpu_hours, "best_gain": spend.best_gain,
                        "gain_per_dollar": spend.gain_per(spend.agent_cost_usd),
                        "gain_per_gpu_hour": spend.gain_per(spend.gpu_hours)})
    return pd.DataFrame.from_records(records)
