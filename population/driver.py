"""The Ray driver: hands out work to the workers, records every result, culls and promotes.

There is no generation barrier. Each worker has a two-stage pipeline: while its current experiment
trains (a Ray task holding one GPU, pinned to the worker's node), the worker's actor already
prepares the next one (the agent proposes a child), at most one ahead. Whenever anything finishes,
the driver journals it (store.append) BEFORE acting on it, then updates the population, culls,
promotes, refreshes the tables and hands out new work.

    start -> noise phase (the seed trained --noise-runs times; mean = m0000's score, spread = noise)
          -> children: parent by tournament, propose, train, record, cull, promote (or re-run)

`run_population(config, ray_init_kwargs=...)` is the API; `python -m population` the CLI.
"""
from __future__ import annotations

import math
import os
import random
import signal
import socket
import threading
import time
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from population import budget, gitops, readiness, sandbox
from population.config import (RERUN_OPTIMISM, ConfigError, RunConfig, default_tag, resolve, validate,
                               with_run_settings)
from population.console import Console, experiment_line, reason_headline, status_line
from population.selection import (choose_culls, clears_margin, estimate_noise, holdout_lags, posterior_choice,
                                  promotion_decision, tournament_select)
from population.state import PopulationState, holdout_column
from population.store import RunStore, StoreError
from population.summary import parse_summary, tail
from population.training import EVAL_HEADER, EVALUATOR_FILE, TrainJob, TrainResult, evaluation_files, train_task
from population.worker import PrepareJob, Prepared, WorkerActor
from prepare.tasks import Task, get_task

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
BASELINE_MEMBER = "m0000"
PROGRAM_FILE = "program.md"
LOG_TAIL_LINES = 40
MAX_ATTEMPTS = 3               # a piece of work lost this often (node loss...) is given up
WORKER_START_TIMEOUT_S = 180.0
NODE_READY_TIMEOUT_S = readiness.DEFAULT_LOCK_TIMEOUT_S + 600.0   # a node may first download its data
CONNECT_TIMEOUT_S = 5.0
CAPACITY_CHECK_EVERY_S = 5.0   # while a worker is dead: how often to look for a free slot (one ray.nodes())
_BUNDLE_CACHE = 64
TABLES_EVERY_S = 5.0
TABLES_MAX_SHARE = 0.02        # full rewrites grow with the run: at most this share of the driver's time


REPORT_TOLERANCE = 0.01        # a file's own claim better than the evaluator's figure by more: a violation


class DriverError(Exception):
    """Something the user must fix; the message is one line."""


# ---------------------------------------------------------------- pure helpers

def training_outcome(result: TrainResult, task: Task, timeout_s: float) -> tuple[str, str, dict]:
    """(status, reason, figures) of one training: ok, crash, timeout or violation. The metric and
    the holdout are the trusted evaluator's; what the file printed is information
    (`reported_<metric>` and its other summary figures)."""
    summary = parse_summary(result.log, task.summary_keys)
    figures = {k: v for k, v in summary.items() if k != task.metric}
    figures["reported_" + task.metric] = summary.get(task.metric)
    figures["busy_seconds"] = result.busy_seconds
    log_tail = tail(result.log, LOG_TAIL_LINES)
    if result.timed_out:
        return "timeout", f"killed at the {timeout_s:g} s wall-clock limit\n{log_tail}", figures
    if result.returncode != 0:
        broken = confinement_rule(result.log, task)
        if broken:
            return "violation", f"{broken}\nexit code {result.returncode}\n{log_tail}", figures
        return "crash", f"exit code {result.returncode}\n{log_tail}", figures
    verdict = result.evaluation or {"error": "the training was not scored", "rule": "crash"}
    if "error" in verdict:
        return verdict.get("rule", "crash"), f"{verdict['error']}\n{log_tail}", figures
    value = verdict.get("metric")
    figures.update({task.metric: value, holdout_column(task.metric): verdict.get("holdout"),
                    "eval_seconds": verdict.get("wall_seconds")})
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return "crash", f"the evaluator gave no finite {task.metric}", figures
    claimed = figures["reported_" + task.metric]
    if claimed is not None and math.isfinite(claimed) and task.better(claimed, value) and \
            abs(claimed - value) > REPORT_TOLERANCE * abs(value):
        figures[task.metric] = figures[holdout_column(task.metric)] = None
        return "violation", (f"report rule: the file claims {task.metric} {claimed:.6f}, the evaluator measured "
                             f"{value:.6f}; under the harness a train file prints no metric of its own"), figures
    return "ok", "", figures


def confinement_rule(log: str, task: Task) -> str | None:
    """Why a training that failed broke a rule, when its log shows it: it reached for the data only
    the evaluator reads (hidden from it), or tried to write where it may not (read-only)."""
    for name in (path.name for path in evaluation_files(task.name, Path("/"))):
        if name in log:
            return f"data rule: the training reached for {name}, which only the evaluator reads"
    if "Read-only file system" in log:
        return "confinement rule: the training tried to write outside its output directory"
    return None


def train_env(config: RunConfig, seed: int, source: dict[str, str]) -> dict[str, str]:
    """AUTORESEARCH_* for a training: the run's uniform budget, the seed, CPU mode, and the user's
    own AUTORESEARCH_* settings (cache, eval tokens) from the driver's environment."""
    env = {name: value for name, value in source.items()
           if name.startswith("AUTORESEARCH_") and name != "AUTORESEARCH_WORKDIR"}
    env["AUTORESEARCH_TIME_BUDGET"] = f"{config.budget_s:g}"
    env["AUTORESEARCH_SEED"] = str(seed)
    if config.device == "cpu":
        env["AUTORESEARCH_SMOKE"] = "1"
        env["AUTORESEARCH_DEVICE"] = "cpu"
    return env


def check_address(address: str, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """Fail fast, with one line, when a Ray cluster address does not answer."""
    if address == "auto":
        return
    host_port = address.split("://", 1)[-1].rstrip("/")
    host, _, port = host_port.rpartition(":")
    if not host or not port.isdigit():
        raise DriverError(f"--address {address!r} is not HOST:PORT (or ray://HOST:PORT, or auto)")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as e:
        raise DriverError(f"cannot reach the Ray cluster at {address} ({e.strerror or e}); "
                          "is `ray start --head` running there?") from None


def ray_address(address: str | None, environ) -> str | None:
    """What ray.init joins: --address; else nothing, so Ray reads RAY_ADDRESS itself; else "local",
    a Ray of our own (plain ray.init() would join whatever `ray start` left running on the machine)."""
    if address:
        return address
    return None if environ.get("RAY_ADDRESS") else "local"


def node_slots(nodes: list[dict], device: str, accelerator: str | None) -> list[tuple[str, str]]:
    """(node id, accelerator type) once per GPU (cuda) or CPU (cpu) of the usable alive nodes;
    worker i goes to slot i modulo the count."""
    slots = []
    for node in nodes:
        if not node.get("Alive", node.get("alive", False)):
            continue
        resources = node.get("Resources", {})
        types = [key.split(":", 1)[1] for key in resources if key.startswith("accelerator_type:")]
        if accelerator and accelerator not in types:
            continue
        count = int(resources.get("GPU" if device == "cuda" else "CPU", 0))
        slots += [(node["NodeID"], types[0] if types else "")] * count
    return slots


def free_slots(capacity: list[tuple[str, str]], used: list[str], refused: set[str]) -> list[tuple[str, str]]:
    """The slots of `capacity` (node_slots) that no live or starting worker takes (`used`: their
    node ids), on nodes not refused."""
    taken = Counter(used)
    free = []
    for node_id, accelerator in capacity:
        if taken[node_id] > 0:
            taken[node_id] -= 1
        elif node_id not in refused:
            free.append((node_id, accelerator))
    return free


@dataclass
class Work:
    """A piece of work to hand out: train a member's commit (baseline, rerun) or make a child."""
    kind: str                      # baseline | child | rerun
    member: str | None = None      # baseline/rerun: the member; child: None = a new name
    parent: str | None = None      # child: the parent member (None = tournament when handed out)
    seed: int = 0
    attempts: int = 0


@dataclass
class Flight:
    """An experiment in flight, as the driver knows it."""
    exp_id: int
    work: Work
    worker: str
    member: str
    parent: str | None
    parent_commit: str
    commit: str                    # what trains (the parent until the child is committed)
    agent: str
    started_at: float
    prompt: str = ""
    prepared: Prepared | None = None
    train_blob: str | None = None


@dataclass
class Slot:
    """One worker: its actor, node, and two-stage pipeline (prepare, then train)."""
    name: str
    actor: object
    node_id: str
    accelerator: str
    agent: str
    hostname: str = ""
    prep: tuple | None = None      # (ObjectRef, exp_id)
    ready: int | None = None       # exp_id prepared, waiting for the GPU
    train: tuple | None = None     # (ObjectRef, exp_id)
    dead: bool = False


@dataclass
class Joining:
    """A replacement worker starting where capacity returned; it takes a dead slot's place once
    its actor answered and its node is ready."""
    slot: Slot
    ready: list                    # ObjectRefs: info(), then ensure_ready() when there is a cache to match
    since: float


class Driver:
    def __init__(self, config: RunConfig, ray_init_kwargs: dict | None = None, out: TextIO | None = None,
                 console: Console | None = None):
        self.config = config
        self.ray_init_kwargs = dict(ray_init_kwargs or {})
        self.console = console or Console(out)
        self.task: Task | None = None
        self.rng = random.Random(config.seed)
        self.stop_reason: str | None = None
        self.slots: list[Slot] = []
        self.flights: dict[int, Flight] = {}
        self.pending: deque[Work] = deque()
        self.refs: dict = {}                 # ObjectRef -> (slot, stage, exp_id)
        self.bundles: OrderedDict[str, tuple] = OrderedDict()
        self.blobs: dict[str, str] = {}      # train file blob -> member that has it
        self.started_ray = False
        self.store: RunStore | None = None
        self.state: PopulationState | None = None
        self.locked = False
        self.failed = False
        self.tables_stale = False
        self.started_at = time.time()
        self.last_status = time.time()
        self.member_counter = 0
        self.joining: dict[int, Joining] = {}    # position in self.slots -> its replacement starting
        self.refused_nodes: set[str] = set()     # nodes where a replacement failed: not tried again
        self.capacity_checked_at = 0.0

    # ================================================================ set-up

    def setup(self) -> None:
        self.config = cfg = self.config.replace(tag=self.config.tag or default_tag())
        self.tag = cfg.tag
        self.repo = gitops.open_run_repo(cfg.repo)
        run_dir = Path(cfg.runs_dir) / cfg.tag
        if cfg.resume:
            self.store = RunStore.open(run_dir)
            meta = self.store.meta
            self.config = cfg = with_run_settings(cfg, meta)
            self.task = get_task(cfg.task)
            self.seed_commit = meta["seed_commit"]
            if not gitops.has_commit(self.repo, self.seed_commit):
                raise DriverError(f"the run's seed commit {self.seed_commit[:9]} is not in {self.repo.working_tree_dir}")
        else:
            self.config = cfg = with_run_settings(cfg)
            self.task = get_task(cfg.task)
            self.seed_commit = gitops.check_seed(self.repo, self.task.train_file)
            if (run_dir / "run.json").exists():
                raise DriverError(f"run {cfg.tag!r} already exists in {cfg.runs_dir}; "
                                  "pass --resume to continue it or pick another --run")
        self.program_md = self._program_md()
        self._check_evaluator()
        self._check_agents()
        if cfg.sandbox and not sandbox.available():
            raise DriverError(f"{sandbox.probe()}; or pass --no-sandbox to run trainings and agents unconfined "
                              "(README, 'Security')")
        self._init_ray()
        slots = self._node_slots()
        workers = cfg.workers or (len(slots) if cfg.device == "cuda" else 1)
        self.config = cfg = resolve(cfg, workers)
        self._check_data_here(slots[:workers])
        if not cfg.resume:
            self.store = RunStore.create(run_dir, self._meta())
        self.store.lock()
        self.locked = True
        for ref in gitops.clear_run_ref_locks(self.repo, self.tag):   # a driver killed inside git
            self.console.line(f"removed the stale git lock of {ref}")
        self.fingerprint = self._seed_fingerprint()
        gitops.set_ref(self.repo, gitops.member_branch(self.tag, BASELINE_MEMBER), self.seed_commit)
        self.state = PopulationState.replay(self.store.events(), self.task.metric, self.task.lower_is_better)
        self.member_counter = 1 + max((int(e.member[1:]) for e in self.state.experiments.values()
                                       if e.member[1:].isdigit()), default=0)
        self.cache_fingerprint = self._cache_fingerprint()
        self._start_workers(slots)
        self._check_nodes_ready()

    def _program_md(self) -> str:
        try:
            return gitops.file_text(self.repo, self.seed_commit, PROGRAM_FILE)
        except gitops.git.GitCommandError:
            raise DriverError(f"the seed commit {self.seed_commit[:9]} has no {PROGRAM_FILE}; "
                              "commit the agents' instructions first") from None

    def _check_evaluator(self) -> None:
        """The metric comes from the seed's fixed side: no prepare/trusted_eval.py, no run."""
        if gitops.file_blob(self.repo, self.seed_commit, EVALUATOR_FILE) is None:
            raise DriverError(f"the seed commit {self.seed_commit[:9]} has no {EVALUATOR_FILE}: the metric must be "
                              "computed on the fixed side (see docs/ARCHITECTURE.md, 'The trusted evaluation')")

    def _agent_options(self, index: int) -> dict:
        # each worker's mutator draws its own sequence (same seed = same proposals = duplicates)
        return {"seed": self.config.seed + 1000 * (index + 1), "train_file": self.task.train_file,
                "base_url": self.config.agent_base_url, "key_env": list(self.config.agent_env)}

    def _check_agents(self) -> None:
        from population.agents import make_agent   # raises AgentSpecError (one line) for a bad spec
        for index, spec in enumerate(self.config.agents):
            make_agent(spec, **self._agent_options(index))

    def _meta(self) -> dict:
        cfg = self.config
        return {"tag": cfg.tag, "task": cfg.task, "metric": self.task.metric,
                "lower_is_better": self.task.lower_is_better, "budget_s": cfg.budget_s,
                "workers": cfg.workers, "noise_std": None, "champion_id": None, "state": "running",
                "created_at": time.time(), "seed_commit": self.seed_commit, "device": cfg.device,
                "repo": str(self.repo.working_tree_dir),
                "args": {k: v for k, v in vars(cfg).items() if k not in ("workdir",)}}

    def _seed_fingerprint(self) -> str:
        """prepare/'s fingerprint in a fresh checkout of the seed (what every worktree must match)."""
        from population import guards
        path = self.store.dir / ".seed-check"
        gitops.add_detached_worktree(self.repo, path, self.seed_commit)
        try:
            return guards.tree_fingerprint(path, "prepare")
        finally:
            gitops.remove_worktree(self.repo, path)

    def _check_data_here(self, slots: list[tuple[str, str]]) -> None:
        """Refuse to start, before anything is recorded, when every worker would train on this
        node and its cache lacks what the seed's train file reads. On a cluster the head may hold
        no data: each worker's node then checks, and prepares, its own (`_check_nodes_ready`)."""
        from prepare.cache import cache_dir
        missing = readiness.missing_files(self.task, cache_dir())
        if not missing or not readiness.reads_prepared_data(
                gitops.file_text(self.repo, self.seed_commit, self.task.train_file)):
            return
        here = ray.get_runtime_context().get_node_id()
        if all(node_id == here for node_id, _ in slots):
            raise DriverError(f"no prepared data for task {self.task.name}: {missing[0]} is missing; "
                              f"run `{readiness.prepare_command(self.task)}` first, or point "
                              "AUTORESEARCH_CACHE at a prepared cache")

    def _cache_fingerprint(self) -> str | None:
        """The data cache's fingerprint on this node, that every worker's node must match; None
        (nothing to compare with) when this node has no prepared cache for the task."""
        from prepare.cache import cache_dir
        if readiness.missing_files(self.task, cache_dir()):
            return None
        return readiness.cache_fingerprint(self.task, cache_dir())

    def _check_nodes_ready(self) -> None:
        """Each worker's node has the task's data, equal to this node's (prepared there once if
        missing), before any experiment; otherwise the run ends with the node's one-line reason."""
        if self.cache_fingerprint is None:
            self.console.line(f"this node has no prepared cache for task {self.task.name}: "
                              "the workers' data caches are not checked")
            return
        cache = os.environ.get("AUTORESEARCH_CACHE")      # what the trainings get (train_env passes it on)
        pending = [slot.actor.ensure_ready.remote(self.task.name, self.cache_fingerprint, cache)
                   for slot in self.slots]
        try:
            ray.get(pending, timeout=NODE_READY_TIMEOUT_S)
        except ray.exceptions.GetTimeoutError:
            raise DriverError(f"the workers' nodes were not ready within {NODE_READY_TIMEOUT_S:g} s") from None
        except ray.exceptions.RayError as e:
            cause = getattr(e, "cause", None)
            if isinstance(cause, readiness.NodeNotReady):
                raise DriverError(_first_line(cause)) from None
            raise DriverError(f"a worker failed checking its node: {_first_line(e)}") from None

    # ---------------------------------------------------------------- Ray

    def _init_ray(self) -> None:
        cfg = self.config
        if ray.is_initialized():
            return
        kwargs = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
        if cfg.address:
            check_address(cfg.address)
        address = ray_address(cfg.address, os.environ)
        if address:
            kwargs["address"] = address
        # Workers import population/prepare from the project even when run outside its directory.
        project = str(Path(__file__).resolve().parent.parent)
        kwargs["job_config"] = ray.job_config.JobConfig(code_search_path=[project])
        kwargs.update(self.ray_init_kwargs)
        try:
            ray.init(**kwargs)
        except (ConnectionError, TimeoutError, RuntimeError, ValueError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise DriverError(f"cannot start or join Ray: {first}") from None
        self.started_ray = True

    def _node_slots(self) -> list[tuple[str, str]]:
        cfg = self.config
        slots = node_slots(ray.nodes(), cfg.device, cfg.accelerator)
        if not slots:
            if cfg.accelerator:
                raise DriverError(f"no alive Ray node has accelerator type {cfg.accelerator}")
            if cfg.device == "cuda":
                where = "the Ray cluster" if cfg.address or os.environ.get("RAY_ADDRESS") else "this machine's Ray"
                raise DriverError(f"no GPU in {where}; use --device cpu for a CPU run"
                                  + ("" if cfg.address else ", or --address auto to join a running cluster"))
            raise DriverError("no CPU in the Ray cluster")
        return slots

    def _launch_worker(self, number: int, position: int, node_id: str, accelerator: str) -> Slot:
        """Worker `w<number>` in slot `position` (which picks its agent) on the node, not yet ready."""
        cfg = self.config
        agent = cfg.agents[position % len(cfg.agents)]
        name = f"w{number}"
        actor = WorkerActor.options(
            num_cpus=0, max_restarts=0,
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False),
        ).remote(name, self.tag, agent, self._agent_options(number), cfg.workdir, cfg.sandbox)
        return Slot(name, actor, node_id, accelerator, agent)

    def _start_workers(self, slots: list[tuple[str, str]]) -> None:
        pending = []
        for index in range(self.config.workers):
            self.slots.append(self._launch_worker(index, index, *slots[index % len(slots)]))
            pending.append(self.slots[-1].actor.info.remote())
        try:
            infos = ray.get(pending, timeout=WORKER_START_TIMEOUT_S)
        except ray.exceptions.GetTimeoutError:
            raise DriverError(f"workers did not start within {WORKER_START_TIMEOUT_S:g} s") from None
        except ray.exceptions.RayError as e:
            reason = _raised_line(e, "SandboxUnavailable") or f"a worker failed to start: {_first_line(e)}"
            raise DriverError(reason) from None
        for slot, info in zip(self.slots, infos):
            slot.hostname, slot.agent = info["hostname"], info["agent"]   # Agent.spec: safe to record

    # ================================================================ recording

    def record(self, event: dict) -> None:
        """Journal first, then apply: what the driver acts on is always on disk."""
        event.setdefault("time", time.time())
        self.store.append(event)
        self.state.apply(event)

    def refresh_tables(self, force: bool = False) -> None:
        """The derived tables (throttled: the journal is the per-event truth; the loop writes
        them once due when a rewrite was skipped) and run.json."""
        self.tables_stale = not self.store.write_tables_if_due(
            self.state.lineage_rows, self.task.metric, min_interval_s=TABLES_EVERY_S, force=force,
            max_share=TABLES_MAX_SHARE)
        champion = self.state.members.get(self.state.champion) if self.state.champion else None
        self.store.update_meta(noise_std=self.state.noise_std, champion_id=champion.first_id if champion else None,
                               workers=self.config.workers)

    # ================================================================ the run

    def run(self) -> int:
        """Set up, run until done or stopped, and always leave the store consistent."""
        try:
            self.setup()
            self._install_signal_handlers()
            workers = len(self.slots)
            self.console.line(f"run {self.tag}: task {self.task.name}, {workers} worker{'s' if workers != 1 else ''} "
                              f"({', '.join(sorted(set(self.config.agents)))}), budget {self.config.budget_s:g} s, "
                              f"device {self.config.device}, "
                              f"{'sandboxed' if self.config.sandbox else 'NOT sandboxed (--no-sandbox)'}, "
                              f"store {self.store.dir}")
            self.record({"type": "run_state", "state": "running"})
            self.store.update_meta(state="running")
            self._recover()
            self.refresh_tables(force=True)
            self._loop()
        except BaseException:
            self.failed = True
            raise
        finally:
            outcome = self._finish()
        return outcome

    def _loop(self) -> None:
        self.started_at = self.last_status = time.time()
        while self.stop_reason is None:
            self._dispatch()
            self._replace_dead_workers()
            if not self.refs:
                if not all(s.dead for s in self.slots) or not self._can_hand_out():
                    break   # nothing in flight and nothing left to hand out
                self._replace_dead_workers(force=True)
                if not self.joining:
                    raise DriverError("every worker died and no node has a free slot; see the Ray logs")
                time.sleep(0.5)    # the run waits for its replacement workers
                continue
            refs = list(self.refs)
            if refs:
                done, _ = ray.wait(refs, num_returns=1, timeout=1.0)
                if done:
                    done, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
                for ref in done:
                    self._complete(ref)
            if self.tables_stale:
                self.refresh_tables()
            if time.time() - self.last_status >= self.config.status_every_s:
                self.last_status = time.time()
                self.console.line(self._status())

    def _finish(self) -> int:
        """Leave the store consistent whatever happened: trainings killed, in-flight work lost,
        the final state written."""
        self._restore_signal_handlers()
        finished = self.stop_reason is None and not self.failed and not self.flights
        for ref in list(self.refs):   # a cancelled training kills its process group
            try:
                ray.cancel(ref)
            except Exception:
                pass
        train_refs = [slot.train[0] for slot in self.slots if slot.train]
        self.refs.clear()
        if self.locked and self.state is not None:
            try:
                self._record_stop(finished)
            except StoreError as e:       # a full disk: Ray and the lock are still released
                finished = False
                if self.failed:           # the error that stopped the run is reported already
                    self.console.line(f"could not record the stop: {e}")
                else:
                    self.console.error(str(e))
        self._shutdown_ray(train_refs)
        if self.locked:
            self.store.unlock()
        if self.stop_reason == "interrupted":
            return EXIT_INTERRUPTED
        return EXIT_OK if finished else EXIT_ERROR

    def _record_stop(self, finished: bool) -> None:
        """Journal what was in flight as lost, then the run's final state."""
        lost = sorted(self.flights)
        for exp_id in lost:
            self.record({"type": "experiment_lost", "id": exp_id,
                         "reason": f"driver stopped ({self.stop_reason or 'error'})"})
        self.flights.clear()
        for slot in self.slots:
            slot.prep = slot.ready = slot.train = None
        state = "finished" if finished else "stopped"
        self.record({"type": "run_state", "state": state})
        self.refresh_tables(force=True)
        self.store.update_meta(state=state)
        note = f" ({len(lost)} in flight marked lost; --resume re-queues them)" if lost else ""
        self.console.line(f"run {self.tag} {state}{note}: " + self._status())

    def _shutdown_ray(self, train_refs: list) -> None:
        if not ray.is_initialized():      # (any Ray call would start a local Ray)
            return
        if train_refs:   # give cancelled trainings a moment to kill their process groups
            try:
                ray.wait(train_refs, num_returns=len(train_refs), timeout=15)
            except Exception:
                pass
        stops = []
        slots = self.slots + [joining.slot for joining in self.joining.values()]
        for slot in slots:            # agents mid-proposal run in sessions of their own: end them
            try:
                stops.append(slot.actor.stop.remote())
            except Exception:
                pass
        try:
            if stops:
                ray.wait(stops, num_returns=len(stops), timeout=10)
        except Exception:
            pass
        for slot in slots:
            try:
                ray.kill(slot.actor)
            except Exception:
                pass
        if self.started_ray:
            ray.shutdown()

    # ---------------------------------------------------------------- signals

    def _install_signal_handlers(self) -> None:
        self._old_handlers = {}
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old_handlers[sig] = signal.signal(sig, self._on_signal)

    def _restore_signal_handlers(self) -> None:
        for sig, handler in getattr(self, "_old_handlers", {}).items():
            signal.signal(sig, handler)

    def _on_signal(self, signum, frame) -> None:
        if self.stop_reason is None:
            self.stop_reason = "interrupted"
            self.console.line(f"{signal.Signals(signum).name}: stopping; in-flight experiments will be marked lost")

    # ---------------------------------------------------------------- resume

    def _recover(self) -> None:
        """Lost in-flight work is re-queued; refs, worktrees and pending work match the journal."""
        for exp in self.state.in_flight():
            self.record({"type": "experiment_lost", "id": exp.id, "reason": "in flight when the driver stopped"})
            started = exp.started
            parent = None
            if exp.kind == "child":
                parent_exp = self.state.experiments.get(exp.parent_id)
                parent = parent_exp.member if parent_exp else None
            self.pending.append(Work(exp.kind, exp.member if exp.kind != "child" else None, parent,
                                     int(started.get("seed", self.config.seed))))
            if exp.kind == "child":
                self.console.line(f"e{exp.id:04d} lost; its work is queued again")
        for exp in self.state.experiments.values():
            commit = exp.row.get("commit") if exp.phase == "finished" else None
            if commit:
                blob = gitops.file_blob(self.repo, commit, self.task.train_file)
                if blob:
                    self.blobs.setdefault(blob, exp.member)
        for member in self.state.members.values():
            path = self.store.members_dir / member.name
            if member.alive:
                gitops.add_worktree(self.repo, path, gitops.member_branch(self.tag, member.name))
            else:
                gitops.remove_worktree(self.repo, path)
        if self.state.noise_std is None:
            counted = sum(1 for e in self.state.experiments.values() if e.kind == "baseline" and e.phase == "finished")
            queued = sum(1 for w in self.pending if w.kind == "baseline")
            seeds = {int(e.started.get("seed", 0)) for e in self.state.experiments.values() if e.kind == "baseline"}
            baselines = []
            for i in range(max(0, self.config.noise_runs - counted - queued)):
                seed = self.config.seed + i
                while seed in seeds:
                    seed += 1
                seeds.add(seed)
                baselines.append(Work("baseline", BASELINE_MEMBER, None, seed))
            self.pending.extendleft(reversed(baselines))   # the noise phase goes first
            self._maybe_finish_noise()
        elif self.state.champion is None and self.state.members:
            self._promote(self.state.best_member())
        if self.state.champion:
            champion = self.state.members[self.state.champion]
            gitops.set_ref(self.repo, gitops.best_branch(self.tag), champion.commit)
        self._requeue_undecided_reruns()

    def _requeue_undecided_reruns(self) -> None:
        """Decisions are not journaled: re-derive them for members whose latest run came after the
        last promotion, in the order those runs finished (the decisions an uninterrupted driver
        would have made; a driver killed right after recording a result never made its own)."""
        if not self._noise_done():
            return          # verdicts wait for the noise, as in the live driver
        last_champion, last_run = -1, {}
        for index, event in enumerate(self.store.events()):
            if event["type"] == "champion":
                last_champion = index
            elif event["type"] == "experiment_finished":
                exp = self.state.experiments.get(int(event["id"]))
                if exp is not None:
                    last_run[exp.member] = index
        queued = {w.member for w in self.pending if w.kind == "rerun"}
        undecided = sorted((m for m in self.state.living()
                            if m.name not in queued and last_run.get(m.name, -1) > last_champion),
                           key=lambda m: last_run[m.name])
        for member in undecided:
            if member.alive and member.name != self.state.champion:
                self._judge(member.name)
        if undecided:
            self._cull()

    # ================================================================ handing out work

    def _can_hand_out(self) -> bool:
        """Not stopping, and under --max-experiments (lost experiments do not count)."""
        if self.stop_reason is not None:
            return False
        limit = self.config.max_experiments
        return limit is None or self.state.counted() < limit

    def _noise_done(self) -> bool:
        return self.state.noise_std is not None

    def _dispatch(self) -> None:
        for slot in self.slots:
            if not slot.dead:
                self._feed_gpu(slot)
        idle = [s for s in self.slots if not s.dead and s.prep is None and s.ready is None]
        for slot in idle:
            if not self._can_hand_out():
                break
            work = self._next_work()
            if work is not None:
                self._start_prepare(slot, work)

    def _feed_gpu(self, slot: Slot) -> None:
        """Start the slot's prepared experiment if its GPU is free. Children of the noise round train
        too (no GPU idles); only their verdict waits for the noise std."""
        if slot.train is None and slot.ready is not None:
            self._start_training(slot, self.flights[slot.ready])

    def _next_work(self) -> Work | None:
        if self.pending:
            return self.pending.popleft()
        if self._noise_done() and not self.state.living():
            return None
        return Work("child", seed=self.config.seed)

    def _choose_parent(self) -> str:
        if not self._noise_done() or not self.state.living():
            return BASELINE_MEMBER
        return tournament_select(self._candidates(), self.config.tournament_size, self.rng).member

    @property
    def _posterior(self) -> bool:
        return self.config.selection == "posterior"

    def _candidates(self):
        """Living members scored as the run's selection scores them."""
        return self.state.candidates(estimated=self._posterior)

    def _member_commit(self, member: str) -> str:
        if member in self.state.members:
            return self.state.members[member].commit
        if member == BASELINE_MEMBER:
            return self.seed_commit
        commit = gitops.ref_commit(self.repo, gitops.member_branch(self.tag, member))
        if not commit:
            raise DriverError(f"member {member} has no branch {gitops.member_branch(self.tag, member)}")
        return commit

    def _first_id(self, member: str) -> int | None:
        if member in self.state.members:
            return self.state.members[member].first_id
        ids = [i for i in self.state.experiment_ids(member) if self.state.experiments[i].kind != "rerun"]
        return min(ids) if ids else None

    def _member_parent(self, member: str) -> tuple[str | None, int | None, str]:
        """(parent member, parent_id, parent commit) of an existing member (for its re-runs)."""
        first = self.state.experiments.get(self._first_id(member) if member != BASELINE_MEMBER else -1)
        if first is None or first.parent_id is None:
            return None, None, self._member_commit(member)
        parent_exp = self.state.experiments.get(first.parent_id)
        return (parent_exp.member if parent_exp else None, first.parent_id,
                str(first.started.get("parent_commit") or ""))

    def _start_prepare(self, slot: Slot, work: Work) -> None:
        exp_id = self.state.next_id()
        if work.kind == "child":
            parent = work.parent or self._choose_parent()
            member = gitops.member_name(self.member_counter)
            self.member_counter += 1
            parent_id, parent_commit = self._first_id(parent), self._member_commit(parent)
            commit, agent = parent_commit, slot.agent
        else:
            member = work.member
            commit = self._member_commit(member)
            if work.kind == "baseline":
                parent, parent_id, parent_commit = None, None, commit
            else:
                parent, parent_id, parent_commit = self._member_parent(member)
            agent = "none"
        self.record({"type": "experiment_started", "id": exp_id, "kind": work.kind, "member": member,
                     "parent_id": parent_id, "parent_commit": parent_commit, "worker": slot.name,
                     "agent": agent, "seed": work.seed, "budget_s": self.config.budget_s,
                     "node_id": slot.node_id})
        flight = Flight(exp_id, work, slot.name, member, parent, parent_commit, commit, agent, time.time())
        self.flights[exp_id] = flight
        job = PrepareJob(exp_id=exp_id, commit=commit, bundle_ref="", prepare_fingerprint=self.fingerprint,
                         train_file=self.task.train_file, member=member,
                         agent_timeout_s=self.config.agent_timeout_s)
        if work.kind == "child":
            flight.prompt = self._prompt(parent_id)
            job.prompt = flight.prompt
            job.branch = gitops.member_branch(self.tag, member)
        bundle_ref, job.bundle_ref = self._bundle(commit)
        ref = slot.actor.prepare.remote(job, [bundle_ref])
        slot.prep = (ref, exp_id)
        self.refs[ref] = (slot, "prep", exp_id)

    def _prompt(self, parent_id: int | None) -> str:
        from population.context import IN_FLIGHT_SHOWN, build_prompt
        parent_id = parent_id if parent_id is not None else 0
        in_flight = []
        for exp in self.state.in_flight(newest=IN_FLIGHT_SHOWN):   # not all 1,000 of a large run
            record = dict(exp.started)
            flight = self.flights.get(exp.id)
            if flight and flight.prepared and flight.prepared.description:
                record["description"] = flight.prepared.description
            in_flight.append(record)
        # the rows the prompt draws on, not every experiment of the run (bench/simulate.py)
        return build_prompt(self.program_md, self.task, self.state.context_rows(parent_id), parent_id, in_flight)

    def _bundle(self, commit: str) -> tuple:
        """(ObjectRef of the bundle bytes, ref inside it) for `commit`, cached: parents recur."""
        if commit in self.bundles:
            self.bundles.move_to_end(commit)
            return self.bundles[commit]
        data, ref_name = gitops.bundle_bytes(self.repo, commit)
        self.bundles[commit] = (ray.put(data), ref_name)
        while len(self.bundles) > _BUNDLE_CACHE:
            self.bundles.popitem(last=False)
        return self.bundles[commit]

    def _start_training(self, slot: Slot, flight: Flight) -> None:
        cfg = self.config
        prepared = flight.prepared
        job = TrainJob(exp_id=flight.exp_id, worktree=prepared.worktree, train_file=self.task.train_file,
                       env=train_env(cfg, flight.work.seed, dict(os.environ)), timeout_s=cfg.train_timeout_s,
                       log_path=prepared.log_path, device=cfg.device, accelerator=slot.accelerator,
                       sandbox=cfg.sandbox, task=self.task.name, output_dir=prepared.output_dir)
        resources = {"num_gpus": 1, "num_cpus": 0} if cfg.device == "cuda" else {"num_gpus": 0, "num_cpus": 1}
        ref = train_task.options(
            **resources, scheduling_strategy=NodeAffinitySchedulingStrategy(slot.node_id, soft=False),
        ).remote(job)
        slot.ready = None
        slot.train = (ref, flight.exp_id)
        self.refs[ref] = (slot, "train", flight.exp_id)

    # ================================================================ completions

    def _complete(self, ref) -> None:
        slot, stage, exp_id = self.refs.pop(ref)
        flight = self.flights[exp_id]
        if stage == "prep":
            slot.prep = None
        else:
            slot.train = None
            if self.stop_reason is None:
                self._feed_gpu(slot)      # the next training first, the bookkeeping after
        try:
            value = ray.get(ref)
        except ray.exceptions.RayTaskError as e:
            if self.stop_reason is not None:
                return
            cause = getattr(e, "cause", None)
            if isinstance(cause, ray.exceptions.RayError) or isinstance(cause, KeyboardInterrupt):
                self._lose(slot, flight, f"{stage} failed: {_first_line(e)}")
            else:
                what = "training task" if stage == "train" else "worker, preparing the worktree,"
                self._finish_failed(flight, "crash", f"the {what} failed: {_error_tail(e)}")
            return
        except ray.exceptions.RayError as e:
            if self.stop_reason is None:
                self._lose(slot, flight, f"{stage} failed: {_first_line(e)}")
                if isinstance(e, ray.exceptions.RayActorError) or not self._node_alive(slot.node_id):
                    self._retire(slot, _first_line(e))
            return
        if stage == "prep":
            self._prepared(slot, flight, value)
        else:
            self._trained(slot, flight, value)

    def _retire(self, slot: Slot, why: str) -> None:
        """A worker whose actor or node died: its prepared experiment is lost too (the worktree
        was on it); a replacement starts once a node has a free slot (_replace_dead_workers)."""
        if slot.dead:
            return
        slot.dead = True
        self.console.line(f"worker {slot.name} died ({_first_sentence(why)}); the run goes on with fewer workers "
                          f"({self._live_workers()} of {self.config.workers}) until capacity returns")
        if slot.ready is not None and slot.ready in self.flights:
            self._lose(slot, self.flights[slot.ready], f"worker {slot.name} died")

    def _node_alive(self, node_id: str) -> bool:
        return any(node["NodeID"] == node_id and node.get("Alive") for node in ray.nodes())

    def _live_workers(self) -> int:
        return sum(1 for slot in self.slots if not slot.dead)

    # ---------------------------------------------------------------- replacing dead workers

    def _replace_dead_workers(self, force: bool = False) -> None:
        """Capacity back (a node rejoined, a new one came, a GPU freed): a dead worker's place gets
        a new actor on a free slot of the run's kind. Looks every CAPACITY_CHECK_EVERY_S seconds."""
        if self.joining:
            self._admit_replacements()
        dead = [position for position, slot in enumerate(self.slots)
                if slot.dead and slot.prep is None and slot.train is None and position not in self.joining]
        due = force or time.time() - self.capacity_checked_at >= CAPACITY_CHECK_EVERY_S
        if not dead or not due or not self._can_hand_out():
            return
        self.capacity_checked_at = time.time()
        used = [s.node_id for s in self.slots if not s.dead] + [j.slot.node_id for j in self.joining.values()]
        capacity = node_slots(ray.nodes(), self.config.device, self.config.accelerator)
        for position, (node_id, accelerator) in zip(dead, free_slots(capacity, used, self.refused_nodes)):
            number = 1 + max(int(s.name[1:]) for s in self.slots + [j.slot for j in self.joining.values()])
            slot = self._launch_worker(number, position, node_id, accelerator)
            ready = [slot.actor.info.remote()]
            if self.cache_fingerprint is not None:     # the node's data cache, as at the start
                ready.append(slot.actor.ensure_ready.remote(self.task.name, self.cache_fingerprint,
                                                            os.environ.get("AUTORESEARCH_CACHE")))
            self.joining[position] = Joining(slot, ready, time.time())

    def _admit_replacements(self) -> None:
        """Replacements whose actor answered and whose node is ready take their dead slot's place;
        a failed one is stopped, and its node not tried again."""
        for position, joining in list(self.joining.items()):
            slot = joining.slot
            done, _ = ray.wait(joining.ready, num_returns=len(joining.ready), timeout=0)
            reason = None
            if len(done) < len(joining.ready):
                if time.time() - joining.since < WORKER_START_TIMEOUT_S + NODE_READY_TIMEOUT_S:
                    continue
                reason = "not ready in time"
            else:
                try:
                    info = ray.get(joining.ready)[0]
                except ray.exceptions.RayError as e:
                    cause = getattr(e, "cause", None)
                    reason = (_first_line(cause) if isinstance(cause, readiness.NodeNotReady)
                              else _raised_line(e, "SandboxUnavailable") or _first_line(e))
            del self.joining[position]
            if reason is not None:
                self.refused_nodes.add(slot.node_id)
                ray.kill(slot.actor)
                self.console.line(f"replacement worker {slot.name} on node {slot.node_id[:8]} failed: {reason}")
                continue
            slot.hostname, slot.agent = info["hostname"], info["agent"]
            replaced, self.slots[position] = self.slots[position], slot
            self.console.line(f"worker {slot.name} replaces {replaced.name} on node {slot.node_id[:8]} "
                              f"({slot.hostname}): {self._live_workers()} of {self.config.workers} workers")

    def _lose(self, slot: Slot, flight: Flight, reason: str) -> None:
        """Ray lost the work (node or worker died): journal it lost, queue it again."""
        self.record({"type": "experiment_lost", "id": flight.exp_id, "reason": reason})
        self.flights.pop(flight.exp_id, None)
        if slot.ready == flight.exp_id:
            slot.ready = None
        work = flight.work
        if work.kind == "child":
            work.parent = flight.parent
        work.attempts += 1
        if work.attempts < MAX_ATTEMPTS:
            self.pending.appendleft(work)
        self.console.line(f"e{flight.exp_id:04d} lost ({_first_sentence(reason)})" + ("; queued again" if work.attempts < MAX_ATTEMPTS else ""))

    def _prepared(self, slot: Slot, flight: Flight, prepared: Prepared) -> None:
        flight.prepared = prepared
        if prepared.status != "ready":
            self._finish_untrained(slot, flight, prepared.status, prepared.reason)
            return
        if flight.work.kind != "child":
            slot.ready = flight.exp_id
            return
        branch = gitops.member_branch(self.tag, flight.member)
        try:
            flight.commit = gitops.fetch_bundle(self.repo, prepared.bundle, prepared.bundle_ref, f"refs/heads/{branch}")
        except gitops.GitOpsError as e:  # the worker's bundle is broken, not the driver's repository
            self._finish_untrained(slot, flight, "crash", f"the child's bundle could not be imported: {e}")
            return
        finally:
            prepared.bundle = None
        flight.train_blob = gitops.file_blob(self.repo, flight.commit, self.task.train_file)
        parent_blob = gitops.file_blob(self.repo, flight.parent_commit, self.task.train_file)
        if flight.train_blob == parent_blob:
            self._finish_untrained(slot, flight, "duplicate", f"{self.task.train_file} is identical to its parent's ({flight.parent})")
            return
        twin = self.blobs.get(flight.train_blob)
        if twin is not None:
            self._finish_untrained(slot, flight, "duplicate", f"{self.task.train_file} is identical to {twin}'s")
            return
        self.blobs[flight.train_blob] = flight.member
        slot.ready = flight.exp_id

    def _base_row(self, flight: Flight, status: str, reason: str) -> dict:
        prepared = flight.prepared
        kind = flight.work.kind
        row = {"commit": flight.commit if (kind != "child" or flight.commit != flight.parent_commit) else "",
               "branch": "", "status": status, "reason": reason, "worker": flight.worker, "agent": flight.agent,
               "seed": flight.work.seed, "budget_s": self.config.budget_s, "finished_at": None}
        if row["commit"]:
            row["branch"] = gitops.member_branch(self.tag, flight.member)
        if prepared is not None and kind == "child":
            row.update(description=prepared.description, agent_seconds=prepared.agent_seconds,
                       agent_tokens=prepared.agent_tokens, agent_cost_usd=prepared.agent_cost_usd)
        elif kind == "baseline":
            row["description"] = "baseline (the seed, unmodified)"
        elif kind == "rerun":
            first = self.state.experiments.get(self._first_id(flight.member))
            row["description"] = f"re-run of {flight.member}: " + str(first.row.get("description", "") if first else "")
        return row

    def _files(self, flight: Flight, log: str | None) -> dict:
        prepared = flight.prepared
        files = {}
        if log is not None:
            files["run.log"] = log
        if flight.work.kind != "baseline":
            if flight.commit and flight.commit != flight.parent_commit and flight.parent_commit:
                files["diff.patch"] = gitops.diff(self.repo, flight.parent_commit, flight.commit)
            elif prepared is not None and prepared.diff:
                files["diff.patch"] = prepared.diff
        if flight.work.kind == "child":
            files["prompt.md"] = flight.prompt
            files["transcript.txt"] = prepared.transcript if prepared else ""
        return files

    def _finish_untrained(self, slot: Slot, flight: Flight, status: str, reason: str) -> None:
        row = self._base_row(flight, status, reason)
        row["finished_at"] = time.time()
        self.store.write_experiment_files(flight.exp_id, self._files(flight, None))
        self._record_finished(flight, row)
        slot.actor.cleanup.remote(flight.exp_id)

    def _finish_failed(self, flight: Flight, status: str, reason: str) -> None:
        row = self._base_row(flight, status, reason)
        row["finished_at"] = time.time()
        self.store.write_experiment_files(flight.exp_id, self._files(flight, None))
        self._record_finished(flight, row)

    def _trained(self, slot: Slot, flight: Flight, result: TrainResult) -> None:
        status, reason, figures = training_outcome(result, self.task, self.config.train_timeout_s)
        if status == "ok" and flight.member != BASELINE_MEMBER:
            reason = self._budget_violation(result, figures) or ""
            status = "violation" if reason else status
        if status != "ok":                 # a rule breaker's score is no figure of the run (the reason says why)
            figures[self.task.metric] = figures[holdout_column(self.task.metric)] = None
        row = self._base_row(flight, status, reason)
        row.update(figures)
        row.update(gpu=result.gpu, node=result.node, train_seconds=result.seconds,
                   finished_at=time.time(), cuda_visible_devices=result.cuda_visible_devices,
                   node_id=result.extra.get("node_id", ""), train_started_at=result.started_at)
        log = f"{result.log}\n{EVAL_HEADER}\n{result.eval_log}" if result.evaluation is not None else result.log
        self.store.write_experiment_files(flight.exp_id, self._files(flight, log))
        self._record_finished(flight, row)
        slot.actor.cleanup.remote(flight.exp_id)

    def _budget_violation(self, result: TrainResult, figures: dict) -> str | None:
        """The budget rule (population/budget.py) against the seed's own runs so far."""
        seed_rows = [self.state.experiments[i].row for i in self.state.experiment_ids(BASELINE_MEMBER)
                     if self.state.experiments[i].row.get("status") == "ok"]
        budget_s = self.config.budget_s
        return budget.budget_violation(
            budget_s, result.seconds, figures.get("training_seconds"), result.busy_seconds,
            budget.excess((r.get("train_seconds") for r in seed_rows), budget_s),
            budget.excess((r.get("busy_seconds") for r in seed_rows), budget_s),
            self.config.overhead_allowance_s)

    def _record_finished(self, flight: Flight, row: dict) -> None:
        self.record({"type": "experiment_finished", "id": flight.exp_id, "row": row})
        self.flights.pop(flight.exp_id, None)
        member = self.state.members.get(flight.member)
        counted = member is not None and flight.exp_id in member.run_ids
        if counted and member.first_id == flight.exp_id and member.alive:
            gitops.add_worktree(self.repo, self.store.members_dir / member.name,
                                gitops.member_branch(self.tag, member.name))
        self._announce(flight, row)
        if flight.work.kind == "baseline":
            self._maybe_finish_noise()
        elif counted and member.alive and self._noise_done():
            self._judge(member.name)
            if flight.work.kind == "child":
                self._cull()
        self.refresh_tables()

    def _announce(self, flight: Flight, row: dict) -> None:
        member = self.state.members.get(flight.member)
        champion = self.state.members.get(self.state.champion) if self.state.champion else None
        self.console.line(experiment_line(
            exp_id=flight.exp_id, kind=flight.work.kind, member=flight.member, parent=flight.parent,
            worker=flight.worker, status=row["status"], metric=self.task.metric, value=row.get(self.task.metric),
            best=champion.mean if champion else None, mean=member.mean if member else None,
            description=row.get("description", "") if flight.work.kind == "child" else "", reason=row.get("reason", "")))

    # ---------------------------------------------------------------- population decisions

    def _maybe_finish_noise(self) -> None:
        """After the last baseline run: the seed's spread is the noise, m0000 the first champion."""
        if self._noise_done():
            return
        if any(w.kind == "baseline" for w in self.pending) or any(
                f.work.kind == "baseline" for f in self.flights.values()):
            return
        member = self.state.members.get(BASELINE_MEMBER)
        if member is None:
            raise DriverError(f"the unmodified seed failed in every baseline run ({self._last_baseline_error()}); "
                              f"see {self.store.dir / 'experiments'}/*/run.log")
        std = estimate_noise(member.runs)
        self.record({"type": "noise", "std": std})
        self.console.line(f"noise: {self.task.metric} std {std:.6f} from {len(member.runs)} baseline run(s), "
                          f"mean {member.mean:.6f}")
        self._promote(BASELINE_MEMBER)
        self._judge_noise_round_children()

    def _last_baseline_error(self) -> str:
        """The headline of the latest baseline's failure: the rule it broke, else the last line of its
        log (often the train file's own advice)."""
        runs = [e for e in self.state.experiments.values() if e.kind == "baseline" and e.phase == "finished"]
        reason = str(runs[-1].row.get("reason") or "") if runs else ""
        return reason_headline(reason) if reason.strip() else "no log"

    def _judge_noise_round_children(self) -> None:
        """Children that finished while the noise was unknown get their verdict now, in id order
        (the best of them becomes champion only by beating the seed, then each other, by the margin)."""
        waiting = sorted((m for m in self.state.living() if m.name != BASELINE_MEMBER and m.runs),
                         key=lambda m: m.first_id)
        for member in waiting:
            if member.alive and member.name != self.state.champion:
                self._judge(member.name)
        if waiting:
            self._cull()

    def _judge(self, member: str) -> None:
        """After a result of `member`: promote whom the rule says, or queue `member`'s re-run (margin).
        Posterior selection looks at every living member: a child's result also moves its parent's
        estimate."""
        if self._posterior:
            best = posterior_choice(self._candidates(), self.state.champion, self.state.posterior,
                                    confidence=self.config.promotion_confidence, min_evidence=self.config.confirm_runs)
            if best is not None:
                self._promote(best)
            return
        decision = self._decision(member)
        if decision == "promote":
            self._promote(member)
        elif decision == "rerun":
            self._queue_rerun(member)

    def _decision(self, member: str) -> str:
        if member == self.state.champion:
            return "keep"
        champion = self.state.members.get(self.state.champion) if self.state.champion else None
        cfg = self.config
        return promotion_decision(self.state.members[member].runs, champion.runs if champion else [],
                                  self.state.noise_std or 0.0, z=cfg.promotion_z, min_runs=cfg.confirm_runs,
                                  max_runs=cfg.max_runs_per_member, rerun_optimism=RERUN_OPTIMISM,
                                  lower_is_better=self.task.lower_is_better)

    def _promote(self, member: str) -> None:
        previous = self.state.champion
        gains = self._gains_over_seed(member)
        self.record({"type": "champion", "member": member, **gains})
        gitops.set_ref(self.repo, gitops.best_branch(self.tag), self.state.members[member].commit)
        mean = self.state.members[member].mean
        why = ""
        if self._posterior and previous and member in self.state.posterior and previous in self.state.posterior:
            estimate = self.state.estimate(member) * (1 if self.task.lower_is_better else -1)
            why = (f", estimate {estimate:.6f}, "
                   f"{self.state.posterior.prob_better(member, previous):.0%} likely better than {previous}")
        self.console.line(f"champion: {member} {self.task.metric} {mean:.6f}"
                          + (f" (was {previous}{why})" if previous else ""))
        if gains and holdout_lags(gains["val_gain"], gains["holdout_gain"], self.state.noise_std):
            self.console.line(f"warning: champion {member} gains {gains['val_gain']:.6f} over the seed on the "
                              f"validation rows but {gains['holdout_gain']:.6f} on the hidden holdout: possibly "
                              "selected for the validation set rather than better")

    def _gains_over_seed(self, member: str) -> dict:
        """The member's gain over the seed on the validation rows and on the hidden holdout (means
        of their ok runs, positive is better), when both have both; {} otherwise."""
        holdout = holdout_column(self.task.metric)
        sign = 1 if self.task.lower_is_better else -1

        def means(name: str) -> tuple[float, float] | None:
            rows = [self.state.experiments[i].row for i in self.state.experiment_ids(name)
                    if self.state.experiments[i].row.get("status") == "ok"]
            pairs = [(r[self.task.metric], r[holdout]) for r in rows
                     if isinstance(r.get(self.task.metric), (int, float)) and isinstance(r.get(holdout), (int, float))]
            return (sum(v for v, _ in pairs) / len(pairs), sum(h for _, h in pairs) / len(pairs)) if pairs else None

        seed, child = means(BASELINE_MEMBER), means(member)
        if seed is None or child is None:
            return {}
        return {"val_gain": sign * (seed[0] - child[0]), "holdout_gain": sign * (seed[1] - child[1])}

    def _queue_rerun(self, member: str) -> None:
        if any(w.kind == "rerun" and w.member == member for w in self.pending) or any(
                f.work.kind == "rerun" and f.member == member for f in self.flights.values()):
            return
        runs = self.state.members[member].runs
        seed = self.config.seed + len(runs)
        self.pending.append(Work("rerun", member, None, seed))
        champion = self.state.members[self.state.champion].runs
        if clears_margin(runs, champion, self.state.noise_std or 0.0, z=self.config.promotion_z,
                         lower_is_better=self.task.lower_is_better):
            why = f"beats the champion past the noise margin on {len(runs)} of {self.config.confirm_runs} runs"
        else:
            why = "beats the champion by less than the noise margin"
        self.console.line(f"{member} {why}: re-run on seed {seed}")

    def _cull(self) -> None:
        protect = {self.state.champion} if self.state.champion else set()
        protect |= {w.member for w in self.pending if w.kind == "rerun"}
        protect |= {f.member for f in self.flights.values() if f.work.kind == "rerun"}
        if self._posterior:
            protect |= self.state.awaiting_confirmation(self.config.confirm_runs)
        culls = choose_culls(self._candidates(), self.config.population_size, self.config.cull,
                             self.config.tournament_size, self.rng, frozenset(protect))
        for member in culls:
            self.record({"type": "member_culled", "member": member})
            gitops.remove_worktree(self.repo, self.store.members_dir / member)
            self.console.line(f"culled {member} ({self.config.cull})")

    # ---------------------------------------------------------------- status

    def _status(self) -> str:
        exps = self.state.experiments.values()
        champion = self.state.members.get(self.state.champion) if self.state.champion else None
        return status_line(
            finished=sum(1 for e in exps if e.phase == "finished"),
            ok=sum(1 for e in exps if e.phase == "finished" and e.row.get("status") == "ok"),
            in_flight=len(self.flights), training=sum(1 for s in self.slots if s.train),
            workers=self._live_workers(), alive=len(self.state.living()), champion=self.state.champion,
            metric=self.task.metric, best=champion.mean if champion else None,
            elapsed_s=time.time() - self.started_at, max_experiments=self.config.max_experiments)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _first_sentence(text: str) -> str:
    """Ray's error lines run on with advice; the console keeps their first sentence (the journal all)."""
    head, dot, _ = text.partition(". ")
    return head + dot.strip()


def _git_error_line(error) -> str:
    """`git <subcommand> failed: <git's first line>` from a GitCommandError's multi-line text."""
    command = error.command if isinstance(error.command, (list, tuple)) else str(error.command).split()
    stderr = str(error.stderr or "").strip().removeprefix("stderr:").strip().strip("'").strip()
    said = next((line.strip() for line in stderr.splitlines() if line.strip()), f"exit code {error.status}")
    return f"git {command[1] if len(command) > 1 else ''} failed: {said}"


def _raised_line(error: BaseException, exception_name: str) -> str | None:
    """The message of `exception_name` quoted in a Ray error's remote traceback, if it is there."""
    marker = f"{exception_name}: "
    for line in reversed(str(error).splitlines()):
        if marker in line:
            return line.split(marker, 1)[1].strip() or None
    return None


def _error_tail(error: BaseException, lines: int = 12) -> str:
    return tail(str(error).strip(), lines) or type(error).__name__


def run_population(config: RunConfig, ray_init_kwargs: dict | None = None, out: TextIO | None = None) -> int:
    """Run (or resume) a population; returns the exit code. Errors the user must fix print one line."""
    from population.agents import AgentSpecError

    console = Console(out if out is not None else __import__("sys").stdout)
    try:
        validate(config)
    except ConfigError as e:
        console.error(str(e))
        return EXIT_USAGE
    driver = Driver(config, ray_init_kwargs, console=console)
    try:
        return driver.run()
    except KeyboardInterrupt:          # Ctrl-C before the driver's own handler was installed
        console.error("interrupted")
        return EXIT_INTERRUPTED
    except ConfigError as e:
        console.error(str(e))
        return EXIT_USAGE
    except (DriverError, gitops.GitOpsError, StoreError, AgentSpecError) as e:
        console.error(str(e))
        return EXIT_ERROR
    except gitops.git.GitCommandError as e:     # git refused (disk full, a path in the way...): its own words
        console.error(_git_error_line(e))
        return EXIT_ERROR
