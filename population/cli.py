"""`python -m population`: the command line. Flags -> RunConfig -> driver.run_population;
`python -m population clean TAG` removes what a finished run leaves in the repository.

Bad input is one line and exit 2; problems found while starting (a dirty seed, an existing run, an
unreachable cluster) one line and exit 1; Ctrl-C leaves the store consistent and exits 130.
"""
from __future__ import annotations

import argparse
import os
import sys
import textwrap
from pathlib import Path

from population import config as C
from population.config import ConfigError, RunConfig, validate
from population.selection import CULL_POLICIES
from prepare.tasks import DEFAULT_TASK, TASKS


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        """One line, not the usage block: `population: error: <what> (see --help)`."""
        print(f"population: error: {message} (see --help)", file=sys.stderr)
        raise SystemExit(2)


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


DESCRIPTION = ("Evolve a population of train.py variants: one agent and one GPU per worker, the same training "
               "budget for all, tournament selection on the task's metric. Run it anywhere inside the project's "
               "git repository (its HEAD is the seed).")
EPILOG = """\
words: the champion is the member the policy promoted (the `best` branch): it needs evidence
beyond the run-to-run noise, so it is not always the lowest val_bpb seen. In results.tsv `keep`
means better than its parent member (in autoresearch: kept on its one branch). A resumed run keeps every setting that
shapes its decisions; --set KEY=VALUE changes one from then on. --max-experiments, --max-cost,
--max-gpu-hours, --stall-minutes and --agent-timeout bound one invocation and are given anew.
`python -m population clean TAG` lists (then, with --yes, removes) a finished run's worktrees
and the branches of members outside the champion's ancestry.

examples:
  python -m population --device cpu --max-experiments 12
  python -m population --run nov21 --agent claude --max-cost 50 --max-experiments 200
  python -m population --run nov21 --resume --set population-size=8 --max-experiments 400"""
# RunConfig fields whose flag's dest is named otherwise
_DEST_FIELDS = {"budget": "budget_s", "agent_timeout": "agent_timeout_s", "max_runs": "max_runs_per_member",
                "train_timeout": "train_timeout_s", "overhead_allowance": "overhead_allowance_s",
                "status_every": "status_every_s"}


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="python -m population",
        description=textwrap.fill(DESCRIPTION, 100),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run = p.add_argument_group("the run")
    run.add_argument("--run", dest="tag", metavar="TAG", default=None,
                     help="run tag: the store is RUNS_DIR/TAG, branches population/TAG/*; "
                          "letters, digits, '.', '_', '-' (default: a date-based tag such as nov21-140501)")
    run.add_argument("--runs-dir", default=None,
                     help="directory holding the run stores (default: runs/ at the repository's root)")
    run.add_argument("--resume", action="store_true",
                     help="continue the run TAG: replay its journal, re-queue work lost in flight; it keeps the "
                          "settings it runs with (a flag that contradicts one is an error)")
    run.add_argument("--set", dest="set_values", action="append", default=None, metavar="KEY=VALUE",
                     help="with --resume: change one of the run's settings from now on (journaled, printed, "
                          "shown in run.json), repeatable; KEY is a flag's name: workers, population-size, "
                          "tournament-size, cull, selection, promotion-confidence, promotion-z, confirm-runs, "
                          "promotion-runs, max-runs, endgame, noise-runs, seed, agent, agent-base-url, train-timeout, "
                          "overhead-allowance, accelerator. A smaller population shrinks by one member per result")
    run.add_argument("--task", choices=sorted(TASKS), default=None,
                     help=f"what to search over (default: {DEFAULT_TASK}; a resumed run keeps its task)")
    run.add_argument("--repo", default=None,
                     help="the run repository (default: the git root of the current directory)")
    run.add_argument("--budget", type=_number, default=None, metavar="SECONDS",
                     help=f"training seconds per experiment, uniform for the run "
                          f"(default: {C.DEFAULT_BUDGET_S:g}, {C.DEFAULT_CPU_BUDGET_S:g} with --device cpu; "
                          "a resumed run keeps its budget)")
    run.add_argument("--overhead-allowance", type=_number, default=C.RunConfig.overhead_allowance_s, metavar="SECONDS",
                     help="budget rule: a training process may run beyond the budget by twice the seed's "
                          "time outside it plus this many seconds (a cold compile must fit); more is a "
                          "violation. Busy device time beyond the budget has its own rule (population/budget.py) "
                          "(default: %(default)g)")
    run.add_argument("--train-timeout", type=_number, default=None, metavar="SECONDS",
                     help="hard wall-clock limit of one training; the process group is killed "
                          "(default: 2 * budget + 300)")
    run.add_argument("--max-experiments", type=_integer, default=None, metavar="N",
                     help="stop after N experiments in the run, baselines and re-runs included; bounds this "
                          "invocation: a resumed run takes a new one (default: run until Ctrl-C)")
    run.add_argument("--max-cost", dest="max_cost_usd", type=_number, default=None, metavar="DOLLARS",
                     help="no new proposal once the agents have spent this many dollars (as they report it: "
                          "Claude Code does, Codex and the mutator do not); what is in flight finishes, and "
                          "--resume with a higher cap goes on; bounds this invocation (default: no cap)")
    run.add_argument("--max-gpu-hours", type=_number, default=None, metavar="HOURS",
                     help="likewise once trainings and their evaluations have held GPUs this many hours; "
                          "bounds this invocation (default: no cap)")
    run.add_argument("--seed", type=_integer, default=C.DEFAULT_SEED,
                     help="training seed of first runs (re-runs use SEED+1, SEED+2...) and selection's random seed "
                          "(default: %(default)s)")

    pop = p.add_argument_group("selection")
    pop.add_argument("--population-size", type=_integer, default=C.DEFAULT_POPULATION_SIZE, metavar="N",
                     help="living members kept; beyond it members are culled (default: %(default)s)")
    pop.add_argument("--tournament-size", type=_integer, default=C.DEFAULT_TOURNAMENT_SIZE, metavar="K",
                     help="members drawn per tournament (parent = best of K); must be <= population size "
                          "(default: the population size, i.e. the best living member: it found better code "
                          "than K=3 on the landscape bench, BENCHMARKS.md)")
    pop.add_argument("--cull", choices=CULL_POLICIES, default="age",
                     help="who dies when the population is full: the oldest (age) or the worst of a tournament "
                          "(default: %(default)s)")
    pop.add_argument("--selection", choices=C.SELECTIONS, default=C.DEFAULT_SELECTION,
                     help="posterior: members scored by a posterior that pools every training along the lineage "
                          "(a child's runs also tell about its parent, and back), the best promoted once it is "
                          "probably better than the champion; margin: members scored by their own runs' mean, "
                          "promoted past a noise margin and confirmed by re-runs (default: %(default)s; "
                          "BENCHMARKS.md compares them)")
    pop.add_argument("--promotion-confidence", type=_number, default=None, metavar="P",
                     help="posterior: the best living member becomes champion when the posterior gives it "
                          "probability P of being better than the champion (default: 1 - 0.1/sqrt(workers), i.e. "
                          "0.9 with one worker and 0.965 with 8: more challengers at once, a stricter test each)")
    pop.add_argument("--promotion-z", type=_number, default=C.DEFAULT_PROMOTION_Z, metavar="Z",
                     help="margin: a child becomes champion when its mean beats the champion's by Z standard errors "
                          "of the difference, measured from the baseline's run-to-run noise (default: %(default)s)")
    pop.add_argument("--confirm-runs", type=_integer, default=C.DEFAULT_CONFIRM_RUNS, metavar="N",
                     help="trainings behind a child before it can be promoted: its own and its descendants' "
                          "(posterior), or its own, a first run past the margin being trained again on another "
                          "seed (margin); 1 promotes on one run (default: %(default)s)")
    pop.add_argument("--promotion-runs", type=_integer, default=C.DEFAULT_PROMOTION_RUNS, metavar="N",
                     help="posterior: runs of its own a member needs to be promoted; one the posterior would "
                          "promote on fewer is first trained again on another seed, and promoted only if it is "
                          "still probably better with that run counted (a lucky run of a noisy code rarely "
                          "repeats); 1 promotes without re-runs (default: %(default)s)")
    pop.add_argument("--endgame", type=_number, default=C.DEFAULT_ENDGAME, metavar="SHARE",
                     help="posterior, with --max-experiments: in the last SHARE of the experiments, when the "
                          "run's edits hide in the noise, re-run the best members instead of making children, "
                          "then promote the probable best (0: off; default: %(default)s)")
    pop.add_argument("--max-runs", type=_integer, default=C.DEFAULT_MAX_RUNS, metavar="N",
                     help="margin: trainings of one commit at most: a gain inside the margin is re-run while its "
                          "mean could still clear it (default: %(default)s)")
    pop.add_argument("--noise-runs", type=_integer, default=None, metavar="N",
                     help="baseline trainings of the seed that measure the noise; the seed trains again "
                          "until two ran ok, and every commit trained twice refines it (default: 3)")

    work = p.add_argument_group("workers and agents")
    work.add_argument("--workers", type=_integer, default=None, metavar="N",
                      help="workers (one agent each); more workers than GPUs queue trainings for the GPUs "
                           "(default: one per GPU of the cluster; 1 with --device cpu)")
    work.add_argument("--agent", dest="agents", action="append", default=None, metavar="SPEC",
                      help="agent spec, repeatable (workers take them in turn): mutate, claude, codex, "
                           f"command:TEMPLATE, openai:MODEL (default: {C.DEFAULT_AGENT}, the offline mutator)")
    work.add_argument("--agent-base-url", default=None, metavar="URL",
                      help="the agents' model API: chat completions for openai:MODEL, the Messages API for "
                           "claude (ANTHROPIC_BASE_URL), a Responses API provider for codex; under the sandbox the "
                           "agents' only network (default: each API's own)")
    work.add_argument("--agent-env", dest="agent_env", action="append", default=None, metavar="NAME",
                      help="pass this variable of the driver's environment to subprocess agents (claude, codex, "
                           "command:), repeatable: a gateway's setting, CLAUDE_CODE_MAX_RETRIES... (agents get "
                           "only their own key and these)")
    work.add_argument("--agent-timeout", type=_number, default=C.DEFAULT_AGENT_TIMEOUT_S, metavar="SECONDS",
                      help="wall-clock limit of one agent proposal; bounds this invocation (default: %(default)g)")
    work.add_argument("--stall-minutes", type=_number, default=C.RunConfig.stall_minutes, metavar="MINUTES",
                      help="an agent or a training that printed nothing this long shows as stalled (console, "
                           "status line, the app) before its timeout fires; bounds this invocation "
                           "(default: %(default)g)")

    where = p.add_argument_group("where it runs")
    where.add_argument("--device", choices=C.DEVICES, default=None,
                       help="cuda: one GPU per training; cpu: the engine's tiny smoke config, no GPU needed "
                            "(default: cuda; a resumed run keeps its device)")
    where.add_argument("--address", default=None,
                       help="join this Ray cluster (HOST:PORT, ray://HOST:PORT or auto) "
                            "(default: start a local Ray on this machine)")
    where.add_argument("--accelerator", default=None, metavar="TYPE",
                       help="use only nodes of this Ray accelerator_type (H100, H200...): results compare "
                            "only within one GPU type (default: any)")
    where.add_argument("--sandbox", action=argparse.BooleanOptionalAction, default=True,
                       help="run every training, the model server of its evaluation and every subprocess agent "
                            "(claude, codex, command:) inside bubblewrap (bwrap, Linux user namespaces): only "
                            "what the process needs is visible, its own output directory the only place it may "
                            "write, a private /tmp and PID namespace; trainings see no validation data and no "
                            "network, agents reach only their model's endpoint. Without it the metric is still "
                            "the fixed side's, but a training can read the validation data and change the node "
                            "(README, 'Security'). Each node checks that bwrap works before it starts "
                            "(default: on; --no-sandbox turns it off)")
    # Hidden, for tests and laptops: a local Ray with fake GPUs / a set CPU count.
    p.add_argument("--ray-num-gpus", type=_integer, default=None, help=argparse.SUPPRESS)
    p.add_argument("--ray-num-cpus", type=_integer, default=None, help=argparse.SUPPRESS)
    p.add_argument("--workdir", default=None, help=argparse.SUPPRESS)
    p.add_argument("--status-every", type=_number, default=60.0, help=argparse.SUPPRESS)
    return p


def given_fields(argv: list[str] | None) -> frozenset[str]:
    """The RunConfig fields whose flags `argv` gives (what a resumed run compares with its own)."""
    quiet = build_parser()
    for action in quiet._actions:          # no defaults: only what was given lands in the namespace
        action.default = argparse.SUPPRESS
    return frozenset(_DEST_FIELDS.get(dest, dest) for dest in vars(quiet.parse_args(argv)))


def set_values(items: list[str] | None) -> dict:
    """--set KEY=VALUE items as {RunConfig field: value}, each value parsed and checked as its flag's."""
    flags = {flag: name for name, flag in {**C.FIXED_SETTINGS, **C.RUN_SETTINGS}.items()}
    flags.update({"--" + name.replace("_", "-"): name for name in (*C.FIXED_SETTINGS, *C.RUN_SETTINGS)})
    values: dict = {}
    for item in items or []:
        key, equals, text = item.partition("=")
        flag = "--" + key.strip().lstrip("-").replace("_", "-")
        if not equals or flag == "--":
            raise ConfigError(f"--set takes KEY=VALUE (e.g. --set population-size=8), got {item!r}")
        if flag in C.PER_INVOCATION:
            raise ConfigError(f"--set {key.strip()}: {flag} bounds one invocation, not the run: pass {flag} itself")
        if flag not in flags:
            keys = ", ".join(f[2:] for f in C.RUN_SETTINGS.values())
            raise ConfigError(f"--set {key.strip()}: no such setting; one of {keys}")
        name = flags[flag]
        if name in C.FIXED_SETTINGS:
            raise ConfigError(f"--set cannot change {C.FIXED_SETTINGS[name]}: a run keeps it from start to end "
                              "(start a new run)")
        parsed = vars(build_parser().parse_args([C.RUN_SETTINGS[name], text]))   # exits 2 on a bad value
        value = parsed[next(dest for dest in parsed if _DEST_FIELDS.get(dest, dest) == name)]
        values[name] = values.get(name, []) + value if name == "agents" else value
    return values


def config_from_args(args: argparse.Namespace, given: frozenset[str] | None = None) -> RunConfig:
    cfg = RunConfig(
        workers=args.workers, budget_s=args.budget,
        agents=args.agents or [C.DEFAULT_AGENT], agent_base_url=args.agent_base_url, agent_env=args.agent_env or [],
        agent_timeout_s=args.agent_timeout, task=args.task, tag=args.tag,
        runs_dir=args.runs_dir, population_size=args.population_size, tournament_size=args.tournament_size,
        cull=args.cull, selection=args.selection, promotion_confidence=args.promotion_confidence,
        promotion_z=args.promotion_z, confirm_runs=args.confirm_runs, promotion_runs=args.promotion_runs,
        max_runs_per_member=args.max_runs, max_experiments=args.max_experiments, noise_runs=args.noise_runs,
        endgame=args.endgame,
        max_cost_usd=args.max_cost_usd, max_gpu_hours=args.max_gpu_hours, stall_minutes=args.stall_minutes,
        train_timeout_s=args.train_timeout, overhead_allowance_s=args.overhead_allowance, device=args.device,
        resume=args.resume, address=args.address,
        accelerator=args.accelerator, repo=args.repo, seed=args.seed, workdir=args.workdir,
        status_every_s=args.status_every, sandbox=args.sandbox, explicit=given,
        set_values=set_values(args.set_values))
    validate(cfg)
    return cfg


def ray_init_kwargs(args: argparse.Namespace) -> dict:
    kwargs = {}
    if args.ray_num_gpus is not None:
        kwargs["num_gpus"] = args.ray_num_gpus
    if args.ray_num_cpus is not None:
        kwargs["num_cpus"] = args.ray_num_cpus
    if kwargs and args.address:
        raise ConfigError("--ray-num-gpus/--ray-num-cpus describe a local Ray; they do not go with --address")
    return kwargs


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["clean"]:
        return clean_main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        cfg = config_from_args(args, given_fields(argv))
        init_kwargs = ray_init_kwargs(args)
    except ConfigError as e:
        print(f"population: error: {e}", file=sys.stderr)
        return 2
    if not args.agents and not args.resume:
        print(f"population: no --agent given: using the offline '{C.DEFAULT_AGENT}' agent "
              "(random changes to the train file's constants)", flush=True)
    from population.driver import run_population   # Ray is imported only for a real run
    return run_population(cfg, ray_init_kwargs=init_kwargs)


# ---------------------------------------------------------------- python -m population clean TAG

def build_clean_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m population clean",
                description="What a run leaves in the repository: the worktrees of its members (a full checkout "
                            "each) and a branch per member. Lists what it would remove; --yes removes it. Keeps the "
                            "branches of the champion's ancestry (and `best`); a run that did not finish keeps all "
                            "its branches, which --resume needs.")
    p.add_argument("tag", metavar="TAG", help="the run (its --run tag)")
    p.add_argument("--runs-dir", default=None, help="directory holding the run stores (default: runs/ at the "
                                                    "repository's root)")
    p.add_argument("--repo", default=None, help="the run repository (default: the git root of the current directory)")
    p.add_argument("--keep-branches", action="store_true", help="remove the worktrees only")
    p.add_argument("--all", action="store_true", help="every branch of the run, the champion's ancestry and `best` "
                                                     "too (to use the tag again once its store is deleted)")
    p.add_argument("--yes", action="store_true", help="remove them (default: only list them)")
    return p


def clean_main(argv: list[str]) -> int:
    """`python -m population clean TAG`: one line per worktree and branch it would remove (or
    removes, with --yes); refuses a run whose driver is running. Exit 0, 1 on a refusal, 2 on bad input."""
    from population import gitops, startup
    from population.fleet import DriverError
    from population.store import RunStore, StoreError

    args = build_clean_parser().parse_args(argv)
    if not C._TAG.match(args.tag) or ".." in args.tag:
        print(f"population: error: {args.tag!r} is not a valid run tag", file=sys.stderr)
        return 2
    store = None
    try:
        repo = gitops.open_run_repo(args.repo)
        run_dir = startup.runs_dir(args.runs_dir, repo) / args.tag
        if (run_dir / "run.json").exists():
            store = RunStore.open(run_dir).lock()          # refuses a running run (StoreLockedError)
        plan = _clean_plan(repo, args.tag, run_dir, store, args.keep_branches, args.all)
        for line in plan["lines"]:
            print(line)
        if not args.yes:
            if plan["worktrees"] or plan["branches"]:
                print("dry run: nothing removed; pass --yes to remove them")
            return 0
        for path in plan["worktrees"]:
            gitops.remove_worktree(repo, Path(path))
        for branch in plan["branches"]:
            gitops.delete_branch(repo, branch)
        gitops.git_prune_worktrees(repo)
        members = run_dir / "members"
        if members.is_dir() and not any(members.iterdir()):
            members.rmdir()
        if store is not None and plan["branches"]:
            store.update_meta(cleaned={"branches_removed": len(plan["branches"])})
        print(f"removed {len(plan['worktrees'])} worktree(s) and {len(plan['branches'])} branch(es) of run {args.tag}")
        return 0
    except (DriverError, StoreError, gitops.GitOpsError) as e:
        print(f"population: error: {e}", file=sys.stderr)
        return 1
    finally:
        if store is not None:
            store.unlock()


def _clean_plan(repo, tag: str, run_dir: Path, store, keep_branches: bool, everything: bool = False) -> dict:
    """The worktrees (under the run's folder, or on its branches when the folder is gone) and the
    branches `clean` removes, and the lines that say so."""
    from population import gitops

    prefix = f"population/{tag}/"
    run_path = os.path.realpath(run_dir)
    worktrees = [w["path"] for w in gitops.list_worktrees(repo)
                 if os.path.realpath(w["path"]).startswith(run_path + os.sep) or w["branch"].startswith(prefix)]
    branches = gitops.list_branches(repo, prefix)
    state = store.meta.get("state") if store is not None else None
    lines = [f"run {tag}: " + (f"{state}" if store is not None else f"no store at {run_dir} (deleted by hand?)")]
    best = branches.get(gitops.best_branch(tag))
    kept = gitops.ancestry_branches(repo, best, prefix) if best else set()
    kept = set() if everything else kept | {gitops.best_branch(tag), gitops.member_branch(tag, "m0000")}
    if keep_branches:
        why = "--keep-branches"
    elif store is not None and state != "finished":
        why = f"the run is {state}, not finished: --resume needs them"
    else:
        why = None
    removed = [] if why else sorted(name for name in branches if name not in kept)
    for path in worktrees:
        lines.append(f"  worktree {path}")
    for name in removed:
        lines.append(f"  branch {name} ({branches[name][:9]})")
    kept_names = sorted(name.removeprefix(prefix) for name in branches if name not in removed)
    lines.append(f"{len(worktrees)} worktree(s) and {len(removed)} of {len(branches)} branch(es) to remove; "
                 + (f"every branch kept ({why})" if why else "none kept (--all)" if everything else
                    f"kept: {', '.join(kept_names) or 'none'} (the champion's ancestry)"))
    return {"worktrees": worktrees, "branches": removed, "lines": lines}
