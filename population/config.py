"""A run's settings: one dataclass, its defaults, and the checks that make bad input one clear line.

Pure: no Ray, no git, no files. The CLI builds a RunConfig from its flags; tests and the bench build
one directly. `validate` raises ConfigError naming the bad setting; `resolve` fills the defaults that
depend on other settings (noise runs, tournament size, train timeout, tag).
"""
from __future__ import annotations

import dataclasses
import re
import time
from dataclasses import dataclass, field

from population.selection import CULL_POLICIES
from prepare.tasks import TASKS, DEFAULT_TASK

DEFAULT_BUDGET_S = 300.0
DEFAULT_AGENT = "mutate"
DEFAULT_AGENT_TIMEOUT_S = 1800.0
DEFAULT_POPULATION_SIZE = 16
DEFAULT_TOURNAMENT_SIZE = None     # the whole population: the landscape bench's better rule (BENCHMARKS.md)
# How members are scored and promoted (BENCHMARKS.md, "Search quality"):
# - "posterior" (the default): members are scored by the lineage posterior's estimate
#   (population.posterior), and the best living member becomes champion once the posterior gives it
#   the promotion confidence of being better than the champion, with CONFIRM_RUNS trainings behind it
#   (its own runs and its descendants'). No re-runs: its children are its confirmation. The
#   confidence is 1 - FALSE_PROMOTION_RATE / workers: with N workers the champion meets about N
#   challengers in the time one worker brings one, and each must pass a test N times stricter
#   (a Bonferroni correction) so that lucky promotions stay as rare per generation.
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
RERUN_OPTIMISM = 0.0
DEFAULT_SEED = 42
DEFAULT_NOISE_RUNS = 3            # also with one worker: the noise is measured in every run
DEVICES = ("cuda", "cpu")
_TAG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


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
    runs_dir: str = "runs"
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
                                                   # 1 - 0.1/workers (default_promotion_confidence)
    promotion_z: float = DEFAULT_PROMOTION_Z       # margin: promotion margin, in standard errors of the difference
    confirm_runs: int = DEFAULT_CONFIRM_RUNS       # trainings behind a child before it can be promoted
    max_runs_per_member: int = DEFAULT_MAX_RUNS    # promotion: at most this many runs before "keep"
    sandbox: bool = True                    # trainings, model servers and subprocess agents in bubblewrap (sandbox.py)

    def replace(self, **changes) -> "RunConfig":
        return dataclasses.replace(self, **changes)


def default_tag(now: float | None = None) -> str:
    """A date-based tag like autoresearch's `mar5`, with the time so two runs a day do not clash."""
    return time.strftime("%b%d-%H%M%S", time.localtime(now)).lower()


def default_train_timeout(budget_s: float) -> float:
    return 2 * budget_s + 300


def default_promotion_confidence(workers: int) -> float:
    return 1.0 - FALSE_PROMOTION_RATE / workers


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
    need(bool(config.runs_dir.strip()), "--runs-dir must not be empty")
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
    budget = config.budget_s or DEFAULT_BUDGET_S
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
    need(config.max_runs_per_member >= 1, f"--max-runs must be >= 1, got {config.max_runs_per_member}")
    need(config.selection != "margin" or config.confirm_runs <= config.max_runs_per_member,
         f"--confirm-runs ({config.confirm_runs}) must be <= --max-runs ({config.max_runs_per_member}) "
         "with --selection margin")


def with_run_settings(config: RunConfig, meta: dict | None = None) -> RunConfig:
    """Task, budget and device: what the user gave, else the resumed run's (`meta`), else the
    defaults. A resumed run keeps them (the budget is uniform for a whole run): a different
    explicit value is a ConfigError."""
    meta = meta or {}
    settings = {"task": ("--task", DEFAULT_TASK), "budget_s": ("--budget", DEFAULT_BUDGET_S),
                "device": ("--device", "cuda")}
    changes = {}
    for name, (flag, default) in settings.items():
        given, stored = getattr(config, name), meta.get(name)
        if given is not None and stored is not None and given != stored:
            raise ConfigError(f"run {config.tag!r} was started with {flag} {stored}; "
                              f"a resumed run keeps it (got {given})")
        changes[name] = given if given is not None else stored if stored is not None else default
    return config.replace(**changes)


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
