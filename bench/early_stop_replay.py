"""Replay a candidate early-stop rule on recorded loss curves (issue 23, item 3: the data side).

    python bench/early_stop_replay.py runs/a runs/b [--margin-noise 3] [--at 0.25,0.5,0.75] [--json]

Reads each store's lineage.parquet (RunStore) and its experiments/<id>/curve.json (the training
loss by fraction of the time budget, population/curves.py). A pair is an ok child and its parent
experiment (the lineage's parent_id: the parent member's run it was bred from), both with a curve.

The rule, at a fraction f of the budget:
    stop the child when  child_loss(f) - parent_loss(f)  >  K x noise_sd(f)
where noise_sd(f) is the store's measured noise of that same difference: the root mean square,
over every ok run of a member that is not the member's first run, of its loss at f minus the
first run's (identical code, other seeds: the baselines of the seed and the re-runs). A store with
fewer than MIN_NOISE_RUNS such runs has no noise figure, and its pairs are not judged.

For each f it reports how many pairs were judged, how many children the rule would stop, and how
many of those stopped children ended with a better final metric than their parent experiment (the
issue's target: none). Mind children that edit the schedule (warm-up, warm-down): their mid-run
loss misleads. With fewer than MIN_PAIRS judged pairs it says that nothing is validated.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from population.curves import loss_at  # noqa: E402
from population.store import RunStore, StoreError  # noqa: E402

MIN_NOISE_RUNS = 2      # same-code runs a store needs for its noise figure
MIN_PAIRS = 30          # judged parent/child pairs before a rule can be called validated


def load_store(path: Path) -> dict:
    """The ok rows of a store by id, their curves, its metric and its direction."""
    store = RunStore.open(path)
    meta = store.meta
    metric = meta.get("metric") or "val_bpb"
    lineage = store.read_lineage()
    rows = {} if lineage is None else {int(r["id"]): r for r in lineage.to_dict("records") if r["status"] == "ok"}
    curves = {}
    for exp_id in rows:
        file = store.experiment_dir(exp_id) / "curve.json"
        if file.is_file():
            points = json.loads(file.read_text()).get("points") or []
            if points:
                curves[exp_id] = points
    lower = meta.get("lower_is_better")
    return {"path": str(path), "rows": rows, "curves": curves, "metric": metric,
            "lower_is_better": lower if isinstance(lower, bool) else True}


def _number(value) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def noise_sd(store: dict, fraction: float) -> tuple[float | None, int]:
    """(RMS of a same-code run's loss at `fraction` minus its member's first run's, runs used)."""
    by_member: dict[str, list[int]] = {}
    for exp_id in sorted(store["curves"]):
        by_member.setdefault(store["rows"][exp_id]["member"], []).append(exp_id)
    diffs = []
    for ids in by_member.values():
        first = loss_at(store["curves"][ids[0]], fraction)
        for other in ids[1:]:
            loss = loss_at(store["curves"][other], fraction)
            if first is not None and loss is not None:
                diffs.append(loss - first)
    if len(diffs) < MIN_NOISE_RUNS:
        return None, len(diffs)
    return math.sqrt(sum(d * d for d in diffs) / len(diffs)), len(diffs)


def pairs(store: dict) -> list[tuple[int, int]]:
    """(child id, parent id) of every ok child with an ok parent, both with a curve."""
    rows, curves = store["rows"], store["curves"]
    found = []
    for exp_id, row in sorted(rows.items()):
        parent = _number(row.get("parent_id"))
        if row.get("kind") == "child" and parent is not None and int(parent) in curves and exp_id in curves:
            found.append((exp_id, int(parent)))
    return found


def replay(stores: list[dict], fractions: list[float], margin_noise: float) -> dict:
    """Per fraction: pairs judged, children stopped, stopped children whose final metric beat their parent's."""
    result = {"margin_noise": margin_noise, "fractions": [], "stores": []}
    for store in stores:
        result["stores"].append({"path": store["path"], "ok_runs": len(store["rows"]),
                                 "curves": len(store["curves"]), "pairs": len(pairs(store))})
    for f in fractions:
        judged, stopped, wrongly = 0, [], []
        noise = []
        for store in stores:
            sd, used = noise_sd(store, f)
            noise.append({"path": store["path"], "noise_sd": sd, "noise_runs": used})
            if sd is None:
                continue
            metric, sign = store["metric"], 1.0 if store["lower_is_better"] else -1.0
            for child, parent in pairs(store):
                c, p = loss_at(store["curves"][child], f), loss_at(store["curves"][parent], f)
                c_final, p_final = (_number(store["rows"][i].get(metric)) for i in (child, parent))
                if c is None or p is None or c_final is None or p_final is None:
                    continue
                judged += 1
                if c - p > margin_noise * sd:
                    stopped.append(f"{store['path']}#{child}")
                    if sign * (c_final - p_final) < 0:
                        wrongly.append(f"{store['path']}#{child}")
        result["fractions"].append({"fraction": f, "judged": judged, "stopped": len(stopped),
                                    "stopped_but_better": len(wrongly), "wrongly_stopped": wrongly,
                                    "noise": noise})
    most = max((r["judged"] for r in result["fractions"]), default=0)
    result["enough_pairs"] = most >= MIN_PAIRS
    safe = all(r["stopped_but_better"] == 0 for r in result["fractions"])
    result["verdict"] = (
        f"too few pairs to validate anything: at most {most} judged pairs (at least {MIN_PAIRS} needed)"
        if most < MIN_PAIRS else "on these stores the rule stopped no child that beat its parent" if safe
        else "the rule stopped children that beat their parent: not safe at this margin")
    return result


def render(result: dict) -> str:
    lines = [f"{s['path']}: {s['ok_runs']} ok runs, {s['curves']} with a curve, {s['pairs']} parent/child pairs"
             for s in result["stores"]]
    lines.append("rule: stop a child whose loss exceeds its parent's by more than "
                 f"{result['margin_noise']:g} x noise sd")
    lines.append(f"{'fraction':>8}  {'judged':>6}  {'stopped':>7}  {'stopped but better':>18}"
                 "  noise sd (runs) per store")
    for r in result["fractions"]:
        noise = ", ".join("none" if n["noise_sd"] is None else f"{n['noise_sd']:.4f}" for n in r["noise"])
        runs = ", ".join(str(n["noise_runs"]) for n in r["noise"])
        lines.append(f"{r['fraction']:>8.2f}  {r['judged']:>6}  {r['stopped']:>7}  {r['stopped_but_better']:>18}"
                     f"  {noise} ({runs})")
    lines.append(result["verdict"])
    return "\n".join(lines)


def fractions_arg(text: str) -> list[float]:
    try:
        fractions = [float(f) for f in text.split(",") if f.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of fractions: {text!r}") from None
    if not fractions or not all(0 <= f <= 1 for f in fractions):
        raise argparse.ArgumentTypeError(f"fractions of the budget are between 0 and 1: {text!r}")
    return fractions


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("stores", nargs="+", type=Path, help="run directories (runs/<tag>)")
    parser.add_argument("--margin-noise", type=float, default=3.0, help="K: the margin in noise sds (default 3)")
    parser.add_argument("--at", default=[0.25, 0.5, 0.75], type=fractions_arg,
                        help="fractions of the budget, comma-separated (default 0.25,0.5,0.75)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    try:
        stores = [load_store(p) for p in args.stores]
    except StoreError as e:
        parser.exit(2, f"early_stop_replay: {e}\n")
    result = replay(stores, args.at, args.margin_noise)
    print(json.dumps(result, indent=1) if args.json else render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
