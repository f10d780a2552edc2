"""The trusted evaluation against the old in-process one, on the same weights (issue 26).

Trains the seed (engine/train.py) once for --budget seconds through population.training.run_training,
exactly as a population worker does it (an export of the files, the sandbox unless --no-sandbox,
the trusted evaluator started beside the training and told to go when it ends), then scores the
same checkpoint the old way, twice (one process, the compiled model, prepare.evaluate_bpb). With
--standalone N it then trains the seed as a user's plain `python engine/train.py` would (the old
contract: the file scores itself), whose eval_seconds is what a worker paid before. The last of
each kind is the warm one (compile caches filled by the ones before).

    python bench/trusted_eval.py --budget 60 [--standalone N] [--repeat N] [--no-sandbox] [--device cuda] [--out FILE]

Prints one JSON object (also written to --out): both metrics, the seconds the evaluation costs
after the training ends, the training's wall and busy seconds, and what the trusted evaluator
reports of itself.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from population.summary import parse_summary  # noqa: E402
from population.training import TrainJob, run_training  # noqa: E402

OLD_PATH = '''
import contextlib, importlib.util, json, sys, time, torch
from prepare import Tokenizer
from prepare.runtime import evaluate_standalone
spec = importlib.util.spec_from_file_location("seed", "engine/train.py")
seed = importlib.util.module_from_spec(spec); spec.loader.exec_module(seed)
device = torch.device(sys.argv[2])
started = time.perf_counter()
compiled = seed.load_model(sys.argv[1], device)
autocast = torch.amp.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
value, _ = evaluate_standalone(compiled, getattr(compiled, "_orig_mod", compiled), Tokenizer.from_directory(),
                               seed.EVAL_BATCH_SIZE, autocast)
print(json.dumps({"val_bpb": value, "seconds": time.perf_counter() - started}))
'''


def export_of_repo(dest: Path) -> Path:
    """What a worker trains: the committed files (here: engine/ and prepare/ of this checkout)."""
    for part in ("engine", "prepare"):
        shutil.copytree(REPO / part, dest / part, ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def run_env(budget: float, device: str) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if name.startswith("AUTORESEARCH_")}
    env.update(AUTORESEARCH_TIME_BUDGET=f"{budget:g}", AUTORESEARCH_SEED="42")
    if device == "cpu":
        env.update(AUTORESEARCH_SMOKE="1", AUTORESEARCH_DEVICE="cpu")
    return env


def standalone(export: Path, budget: float, device: str) -> dict:
    """The old contract: `python engine/train.py`, scoring itself (no AUTORESEARCH_CHECKPOINT)."""
    env = {**{k: v for k, v in os.environ.items() if k != "AUTORESEARCH_CHECKPOINT"}, **run_env(budget, device),
           "PYTHONPATH": str(export)}
    started = time.time()
    out = subprocess.run([sys.executable, "engine/train.py"], cwd=export, env=env, capture_output=True, text=True)
    summary = parse_summary(out.stdout)
    return {"returncode": out.returncode, "wall_seconds": time.time() - started, "val_bpb": summary.get("val_bpb"),
            "eval_seconds": summary.get("eval_seconds"), "total_seconds": summary.get("total_seconds"),
            "training_seconds": summary.get("training_seconds"), "tail": out.stdout[-600:] + out.stderr[-1500:]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=60.0, help="training seconds (default: %(default)g)")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--sandbox", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--standalone", type=int, default=0, metavar="N",
                        help="then train the seed N times the old way")
    parser.add_argument("--old-repeat", type=int, default=2, help="old-path evaluations of the last checkpoint")
    parser.add_argument("--repeat", type=int, default=1,
                        help="trusted trainings in a row (the first may compile the model server's graph cold)")
    parser.add_argument("--out", default=None, help="also write the JSON here")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="trusted-eval-bench-"))
    export = export_of_repo(work / "export")
    report: dict = {"budget_s": args.budget, "device": args.device, "sandbox": args.sandbox}
    if args.device == "cuda":
        os.environ.setdefault("CUDA_VISIBLE_DEVICES", "0")    # what Ray sets for a worker's training
    report["standalone"] = []
    runs = []
    for index in range(args.repeat):
        job = TrainJob(exp_id=index, worktree=str(export), train_file="engine/train.py",
                       env=run_env(args.budget, args.device), timeout_s=2 * args.budget + 900,
                       log_path=str(work / f"run{index}.log"), device=args.device, sandbox=args.sandbox,
                       output_dir=str(work / "out" / str(index)))
        result = run_training(job)
        summary = parse_summary(result.log)
        run = {"returncode": result.returncode, "training_wall_seconds": result.seconds,
               "busy_seconds": result.busy_seconds, "evaluation": result.evaluation,
               "training_seconds": summary.get("training_seconds"), "total_seconds": summary.get("total_seconds"),
               "startup_seconds": summary.get("startup_seconds"), "compile_seconds": summary.get("compile_seconds"),
               "gpu": result.gpu, "busy_timeline": result.extra.get("busy_timeline"),
               # where the evaluation's seconds go (prepare/model_server.py), and why a kernel was not used
               "server_times": [line for line in result.eval_log.splitlines() if line.startswith("model server,")],
               "fallbacks": [line for line in result.log.splitlines() if "unavailable" in line][:4]}
        if result.evaluation is None or "error" in result.evaluation:
            run["log_tail"] = result.log[-3000:] + "\n" + result.eval_log[-3000:]
        runs.append(run)
        shown = {key: value for key, value in run.items() if key != "busy_timeline"}
        print(f"trusted run {index}:", json.dumps(shown, default=str)[:1500], flush=True)
    report["trusted"] = runs
    checkpoint = work / "out" / str(args.repeat - 1) / "model.pt"
    if checkpoint.is_file():
        env = {**os.environ, **run_env(args.budget, args.device), "PYTHONPATH": str(export)}
        for _ in range(args.old_repeat):    # the second from a warm compile cache
            out = subprocess.run([sys.executable, "-c", OLD_PATH, str(checkpoint), args.device], cwd=export,
                                 env=env, capture_output=True, text=True)
            report["old_path_same_weights"] = json.loads(out.stdout.strip().splitlines()[-1]) \
                if out.returncode == 0 else {"error": out.stderr[-1500:]}
            print("old path, same weights:", json.dumps(report["old_path_same_weights"])[:300], flush=True)
    for _ in range(args.standalone):        # last: the compile caches are warm for it
        report["standalone"].append(standalone(export, args.budget, args.device))
        print("standalone:", json.dumps(report["standalone"][-1])[:400], flush=True)
    evaluation = runs[-1]["evaluation"] or {}
    if "metric" in evaluation and "val_bpb" in report.get("old_path_same_weights", {}):
        report["metric_difference"] = evaluation["metric"] - report["old_path_same_weights"]["val_bpb"]
    if "wall_seconds" in evaluation and report["standalone"] and report["standalone"][-1]["eval_seconds"] is not None:
        report["extra_eval_seconds_vs_standalone"] = evaluation["wall_seconds"] - report["standalone"][-1]["eval_seconds"]
    text = json.dumps(report, indent=1, default=str)
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
