"""A run's settings: one dataclass, its defaults, and the checks that make bad input one clear line.

Pure: no Ray, no git, no files. The CLI builds a RunConfig from its flags; tests and the bench build
one directly. `validate` raises ConfigError naming the bad setting; `resolve` fills the defaults that
depend on other settings (noise runs, tournament size, train timeout, tag).

A run keeps what shapes its decisions and its results (issue 29): FIXED_SETTINGS never change
within a run, RUN_SETTINGS change only on purpose (`--resume --set KEY=VALUE`, `changed_settings`),
and a plain flag that contradicts the resumed run is a ConfigError pointing at --set
(`with_run_settings`). The rest (--max-experiments, --max-cost, --max-gpu-hours, --stall-minutes,
--agent-timeout, where it runs) bounds or places one invocation.
"""
from __future__ import annotations

import dataclasses
import re
import time
from dataclasses import dataclass, field

from population.selection import CULL_POLICIES
from prepare.tasks import TASKS, DEFAULT_TASK

DEFAULT_BUDGET_S = 300.0
DEFAULT_CPU_BUDGET_S = 60.0        # --device cpu without --budget: the engine's smoke config needs no more
DEFAULT_AGENT = "mutate"
DEFAULT_AGENT_TIMEOUT_S = 1800.0
DEFAULT_POPULATION_SIZE = 16
DEFAULT_TOURNAMENT_SIZE = None     # the whole population: the landscape bench's better rule (BENCHMARKS.md)
# How members are scored and promoted (BENCHMARKS.md, "Search quality"):
# - "posterior" (the default): members are scored by the lineage posterior's estimate
#   (population.posterior), and the best living member becomes champion once the posterior gives it
#   the promotion confidence of being better than the champion, with CONFIRM_RUNS trainings behind it
#   (its own runs and its descendants'). A member the posterior would promote on fewer than
#   PROMOTION_RUNS runs of its own is first trained again (a confirming re-run on another seed) and
#   promoted only if it is still probably better with that run counted (issue 21: codes noisier than
#   the seed won on lucky runs; BENCHMARKS.md); once no training is left to hand out, it is promoted
#   without one. The confidence is 1 - FALSE_PROMOTION_RATE / sqrt(workers): with N workers the
#   champion meets about N challengers in the time one worker brings one, so each must pass a
#   stricter test; the confirming re-run is a second test, so sqrt(N) (0.965 with 8 workers, chosen
#   on development seeds) rather than the Bonferroni N (0.9875, the default before re-runs).
# - "margin" ("confirm once", the rule before): members are scored by the mean of their own runs; a
#   child whose first run beats the champion by PROMOTION_Z standard errors is trained once more, and
#   promoted only if the mean of both still clears the margin; a smaller gain is re-run only if its
#   mean could still clear it (optimism 0).
SELECTIONS = ("posterior", "margin")
DEFAULT_SELECTION = "posterior"
FALSE_PROMOTION_RATE = 0.1
DEFAULT_PROMOTION_Z = 1.0
DEFAULT_CONFIRM_RUNS = 2
DEFAULT_MAX_RUNS = 2
DEFAULT_PROMOTION_RUNS = 2        # posterior: own runs before a promotion; fewer: re-run first (1: never)
DEFAULT_ENDGAME = 0.1             # posterior: the last share of --max-experiments re-runs the best (policy.py)
RERUN_OPTIMISM = 0.0
DEFAULT_SEED = 42
DEFAULT_NOISE_RUNS = 3            # also with one worker: the noise is measured in every run
DEVICES = ("cuda", "cpu")
_TAG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")

# A run's settings, by RunConfig field, with their flag. FIXED_SETTINGS hold for the whole run (the
# budget is uniform, results of one task and device compare); RUN_SETTINGS are kept by a resumed
# run unless changed on purpose with --set.
FIXED_SETTINGS = {"task": "--task", "budget_s": "--budget", "device": "--device"}
RUN_SETTINGS = {
    "workers": "--workers", "population_size": "--population-size", "tournament_size": "--tournament-size",
    "cull": "--cull", "selection": "--selection", "promotion_confidence": "--promotion-confidence",
    "promotion_z": "--promotion-z", "confirm_runs": "--confirm-runs", "promotion_runs": "--promotion-runs",
    "max_runs_per_member": "--max-runs", "endgame": "--endgame",
    "noise_runs": "--noise-runs", "seed": "--seed", "agents": "--agent", "agent_base_url": "--agent-base-url",
    "train_timeout_s": "--train-timeout", "overhead_allowance_s": "--overhead-allowance",
    "accelerator": "--accelerator",
}
# Settings added since runs were first stored: the value a resumed run from before one ran with
ADDED_SETTINGS = {"promotion_runs": 1, "endgame": 0.0}
# Flags that bound one invocation only (never stored, never --set)
PER_INVOCATION = ("--max-experiments", "--max-cost", "--max-gpu-hours", "--stall-minutes", "--agent-timeout")


class ConfigError(ValueError):
    """A setting out of range; the message is one line for the user."""


@dataclass
class RunConfig:
    workers: int | None = None              # None: one per GPU (cuda) or 1 (cpu)
    budget_s: float | None = None           # None: 300, or the resumed run's
    agents: list[str] = field(default_factory=lambda: [DEFAULT_AGENT])
    agent_base_url: str | None = None
    agent_env: list[str] = field(default_factory=list)   # further variables subprocess agents may see
    agent_timeout_s: float = DEFAULT_AGENT_TIMEOUT_S
    task: str | None = None                 # None: climbmix, or the resumed run's
    tag: str | None = None                  # None: a date-based tag
    runs_dir: str | None = None             # None: runs/ at the run repository's root
    population_size: int = DEFAULT_POPULATION_SIZE
    tournament_size: int | None = DEFAULT_TOURNAMENT_SIZE   # None: the population size
    cull: str = "age"
    max_experiments: int | None = None      # None: until stopped
    max_cost_usd: float | None = None       # agents' dollars before no new proposal starts (population/ledger.py)
    max_gpu_hours: float | None = None      # GPU-hours (trainings and evaluations), likewise
    noise_runs: int | None = None           # None: 3 (default_noise_runs)
    train_timeout_s: float | None = None    # None: 2 * budget + 300
    overhead_allowance_s: float = 60.0      # the budget rule's wall-clock slack beyond twice the seed's (population/budget.py)
    device: str | None = None               # None: cuda, or the resumed run's
    resume: bool = False
    address: str | None = None
    accelerator: str | None = None
    repo: str | None = None                 # None: the git root of the current directory
    seed: int = DEFAULT_SEED
    workdir: str | None = None              # workers' clones; None: $AUTORESEARCH_WORKDIR or the temp dir
    status_every_s: float = 60.0
    stall_minutes: float = 10.0             # an agent or a training silent this long shows as stalled
    selection: str = DEFAULT_SELECTION             # posterior | margin
    promotion_confidence: float | None = None      # posterior: P(better than the champion); None:
                                                   # 1 - 0.1/sqrt(workers) (default_promotion_confidence)
    promotion_z: float = DEFAULT_PROMOTION_Z       # margin: promotion margin, in standard errors of the difference
    confirm_runs: int = DEFAULT_CONFIRM_RUNS       # trainings behind a child before it can be promoted
    promotion_runs: int = DEFAULT_PROMOTION_RUNS   # posterior: the member's own runs before it is promoted
    max_runs_per_member: int = DEFAULT_MAX_RUNS    # promotion: at most this many runs before "keep"
    endgame: float = DEFAULT_ENDGAME               # posterior: share of --max-experiments spent telling the best apart
    sandbox: bool = True                    # trainings, model servers and subprocess agents in bubblewrap (sandbox.py)
    explicit: frozenset[str] | None = None  # fields the user gave (the CLI knows); None: those unlike their default
    set_values: dict = field(default_factory=dict)   # --resume --set: field -> new value, from now on

    def replace(self, **changes) -> "RunConfig":
        return dataclasses.replace(self, **changes)


def default_tag(now: float | None = None) -> str:
    """A date-based tag like autoresearch's `mar5`, with the time so two runs a day do not clash."""
    return time.strftime("%b%d-%H%M%S", time.localtime(now)).lower()


def default_train_timeout(budget_s: float) -> float:
    return 2 * budget_s + 300


def default_promotion_confidence(workers: int) -> float:
    return 1.0 - FALSE_PROMOTION_RATE / workers ** 0.5


def default_noise_runs(workers: int) -> int:
    """Baseline trainings of the noise phase: three whatever the number of workers. With one worker
    the run once trained the seed once and assumed the noise; two runs are one degree of freedom,
    and three found better code than two at a noise std of 0.003 on the landscape bench's
    development seeds (BENCHMARKS.md), at the price of two trainings."""
    return DEFAULT_NOISE_RUNS


def validate(config: RunConfig) -> None:
    """Raise ConfigError (one line) for the first setting out of range."""
    def need(ok: bool, message: str) -> None:
        if not ok:
            raise ConfigError(message)

    need(config.workers is None or config.workers >= 1, f"--workers must be >= 1, got {config.workers}")
    need(config.budget_s is None or config.budget_s > 0, f"--budget must be > 0 seconds, got {config.budget_s}")
    need(bool(config.agents), "--agent needs at least one agent spec")
    need(all(spec.strip() for spec in config.agents), "--agent must not be empty")
    need(all(re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", name) for name in config.agent_env),
         f"--agent-env takes variable names, got {', '.join(config.agent_env)}")
    need(config.agent_timeout_s > 0, f"--agent-timeout must be > 0 seconds, got {config.agent_timeout_s:g}")
    need(config.task is None or config.task in TASKS, f"--task must be one of {', '.join(TASKS)}, got {config.task!r}")
    need(config.tag is None or bool(_TAG.match(config.tag)),
         f"--run {config.tag!r} is not a valid tag: use letters, digits, '.', '_' or '-' "
         "(no '/', no spaces, at most 64 characters)")
    need(config.tag is None or ".." not in config.tag, f"--run {config.tag!r} must not contain '..'")
    need(not config.resume or config.tag is not None, "--resume needs --run TAG (the run to continue)")
    need(config.runs_dir is None or bool(config.runs_dir.strip()), "--runs-dir must not be empty")
    need(not config.set_values or config.resume, "--set changes the settings of a resumed run: it needs --resume "
                                                 "(a new run takes the flags themselves)")
    need(config.population_size >= 1, f"--population-size must be >= 1, got {config.population_size}")
    need(config.tournament_size is None or config.tournament_size >= 1,
         f"--tournament-size must be >= 1, got {config.tournament_size}")
    need(config.tournament_size is None or config.tournament_size <= config.population_size,
         f"--tournament-size ({config.tournament_size}) must be <= --population-size ({config.population_size})")
    need(config.cull in CULL_POLICIES, f"--cull must be one of {', '.join(CULL_POLICIES)}, got {config.cull!r}")
    need(config.max_cost_usd is None or config.max_cost_usd > 0, f"--max-cost must be > 0 dollars, got {config.max_cost_usd}")
    need(config.max_gpu_hours is None or config.max_gpu_hours > 0,
         f"--max-gpu-hours must be > 0, got {config.max_gpu_hours}")
    need(config.max_experiments is None or config.max_experiments >= 1,
         f"--max-experiments must be >= 1, got {config.max_experiments}")
    need(config.noise_runs is None or config.noise_runs >= 1, f"--noise-runs must be >= 1, got {config.noise_runs}")
    need(config.noise_runs is None or config.max_experiments is None or config.noise_runs <= config.max_experiments,
         f"--noise-runs ({config.noise_runs}) must be <= --max-experiments ({config.max_experiments})")
    budget = config.budget_s or default_budget(config.device)
    need(config.train_timeout_s is None or config.train_timeout_s > budget,
         f"--train-timeout ({config.train_timeout_s} s) must be longer than the budget ({budget:g} s)")
    need(config.overhead_allowance_s >= 0, f"--overhead-allowance must be >= 0 seconds, got {config.overhead_allowance_s:g}")
    need(config.device is None or config.device in DEVICES,
         f"--device must be one of {', '.join(DEVICES)}, got {config.device!r}")
    need(config.address is None or bool(config.address.strip()), "--address must not be empty")
    need(config.accelerator is None or bool(re.match(r"^[A-Za-z0-9_.-]+$", config.accelerator)),
         f"--accelerator {config.accelerator!r} is not an accelerator type (e.g. H100, H200, A100)")
    need(config.accelerator is None or config.device != "cpu", "--accelerator needs --device cuda")
    need(config.seed >= 0, f"--seed must be >= 0, got {config.seed}")
    need(config.status_every_s > 0, "status interval must be > 0")
    need(config.stall_minutes > 0, f"--stall-minutes must be > 0, got {config.stall_minutes:g}")
    need(config.selection in SELECTIONS, f"--selection must be one of {', '.join(SELECTIONS)}, got {config.selection!r}")
    need(config.promotion_confidence is None or 0.5 <= config.promotion_confidence < 1,
         f"--promotion-confidence must be >= 0.5 and < 1, got {config.promotion_confidence}")
    need(config.promotion_z >= 0, f"--promotion-z must be >= 0, got {config.promotion_z:g}")
    need(config.confirm_runs >= 1, f"--confirm-runs must be >= 1, got {config.confirm_runs}")
    need(config.promotion_runs >= 1, f"--promotion-runs must be >= 1, got {config.promotion_runs}")
    need(config.max_runs_per_member >= 1, f"--max-runs must be >= 1, got {config.max_runs_per_member}")
    need(0 <= config.endgame <= 0.5, f"--endgame must be between 0 and 0.5, got {config.endgame:g}")
    need(config.selection != "margin" or config.confirm_runs <= config.max_runs_per_member,
         f"--confirm-runs ({config.confirm_runs}) must be <= --max-runs ({config.max_runs_per_member}) "
         "with --selection margin")


def default_budget(device: str | None) -> float:
    """The training budget when --budget is not given: short on a CPU (the smoke configuration)."""
    return DEFAULT_CPU_BUDGET_S if device == "cpu" else DEFAULT_BUDGET_S


def given(config: RunConfig, name: str) -> bool:
    """Whether the user set `name` (a RunConfig field): on the command line when the CLI says
    (`explicit`), else when it differs from its default."""
    if config.explicit is not None:
        return name in config.explicit
    default = _DEFAULTS[name]
    return getattr(config, name) != (default.default_factory() if default.default_factory is not dataclasses.MISSING
                                     else default.default)


_DEFAULTS = {f.name: f for f in dataclasses.fields(RunConfig)}


def shown(value) -> str:
    """A setting's value as a flag takes it."""
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def stored_settings(meta: dict, changes=()) -> dict:
    """The settings a run holds: its fixed ones (run.json), the rest as it started (`args`), each
    change journaled since (`changes`: the `changes` of its settings_changed events) applied."""
    args = meta.get("args") or {}
    settings = {name: meta.get(name, args.get(name)) for name in FIXED_SETTINGS}
    settings.update({name: args[name] for name in RUN_SETTINGS if name in args})
    for change in changes:
        settings.update({name: new for name, (_, new) in change.items()})
    return settings


def with_run_settings(config: RunConfig, meta: dict | None = None, changes=()) -> RunConfig:
    """Task, budget and device: what the user gave, else the resumed run's (`meta`), else the
    defaults; a resumed run keeps them (the budget is uniform for a whole run): a different
    explicit value is a ConfigError. A resumed run also keeps every other setting that shapes its
    decisions and results (RUN_SETTINGS, with the `changes` journaled since it started): a flag
    that contradicts it is a ConfigError pointing at --set."""
    if meta is None:
        device = config.device or "cuda"
        return config.replace(task=config.task or DEFAULT_TASK, device=device,
                              budget_s=config.budget_s or default_budget(device))
    stored = stored_settings(meta, changes)
    updates = {}
    for name, flag in FIXED_SETTINGS.items():
        value, kept = getattr(config, name), stored.get(name)
        if value is not None and kept is not None and value != kept:
            raise ConfigError(f"run {config.tag!r} was started with {flag} {kept}; "
                              f"a resumed run keeps it (got {value})")
        updates[name] = value if value is not None else kept
    updates["task"] = updates["task"] or DEFAULT_TASK
    updates["device"] = updates["device"] or "cuda"
    updates["budget_s"] = updates["budget_s"] or default_budget(updates["device"])
    for name, flag in RUN_SETTINGS.items():
        if name not in stored:                    # a run from before this setting was stored
            if name in ADDED_SETTINGS and not given(config, name):
                updates[name] = ADDED_SETTINGS[name]   # what it ran with, before the setting existed
            continue
        value, kept = getattr(config, name), stored[name]
        if given(config, name) and value is not None and not _same(value, kept):
            raise ConfigError(f"run {config.tag!r} runs with {flag} {shown(kept)}; a resumed run keeps its "
                              f"settings (got {shown(value)}): to change it from now on, pass "
                              f"--set {flag[2:]}={shown(value)}")
        updates[name] = kept
    return config.replace(**updates)


def _same(value, kept) -> bool:
    """Equal as settings (a float flag given as 2 for a stored 2.0, a list for a stored list)."""
    if isinstance(value, (int, float)) and isinstance(kept, (int, float)) and not isinstance(value, bool):
        return float(value) == float(kept)
    return list(value) == list(kept) if isinstance(value, (list, tuple)) and isinstance(kept, (list, tuple)) \
        else value == kept


def changed_settings(config: RunConfig) -> tuple[RunConfig, dict[str, list]]:
    """`config` (a resumed run's, its settings filled in) with its --set values applied, and the
    changes {field: [old, new]}. A setting left at the default that another one sets follows it
    (the tournament size the population size, the promotion confidence the number of workers)
    and is listed too. ConfigError for a value that does not fit the run."""
    values = dict(config.set_values)
    for name in values:
        if name not in RUN_SETTINGS:
            flag = FIXED_SETTINGS.get(name) or name
            raise ConfigError(f"--set cannot change {flag}: a run keeps it from start to end (start a new run)")
    if "population_size" in values and "tournament_size" not in values \
            and config.tournament_size == config.population_size:
        values["tournament_size"] = values["population_size"]
    if "workers" in values and "promotion_confidence" not in values and config.workers \
            and config.promotion_confidence == default_promotion_confidence(config.workers):
        values["promotion_confidence"] = default_promotion_confidence(values["workers"])
    new = config.replace(**values, set_values={})
    validate(new.replace(max_experiments=None))      # --max-experiments bounds this invocation only
    changes = {name: [getattr(config, name), value] for name, value in values.items()
               if not _same(value, getattr(config, name))}
    return new, changes


def resolve(config: RunConfig, workers: int) -> RunConfig:
    """The config with every default filled in, once the number of workers is known."""
    return config.replace(
        workers=workers,
        tag=config.tag or default_tag(),
        noise_runs=config.noise_runs or default_noise_runs(workers),
        tournament_size=config.tournament_size or config.population_size,
        promotion_confidence=config.promotion_confidence or default_promotion_confidence(workers),
        train_timeout_s=config.train_timeout_s or default_train_timeout(config.budget_s),
    )


def settings_of(config: RunConfig) -> dict:
    """The settings in force (FIXED_SETTINGS and RUN_SETTINGS), as run.json shows them."""
    return {name: getattr(config, name) for name in (*FIXED_SETTINGS, *RUN_SETTINGS)}
