"""The driver: hands out work to the workers, records every result, and applies the population
policy's decisions. It never decides: population/policy.py does, over the pure PopulationState.

There is no generation barrier. Each worker prepares its next experiment (the agent proposes a
child) while its current one trains (population/fleet.py). Whenever anything finishes, the driver
journals it (store.append) BEFORE acting on it, then asks the policy; each decision is journaled
first, then applied (git, the fleet, the console), and a `decided` marker closes the decisions of
each result, so that `--resume` replays decisions instead of re-deriving them.

`run_population(config, ray_init_kwargs=...)` is the API; `python -m population` the CLI.
"""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import TextIO

from population import gitops, startup
from population.agent_pauses import AgentPauses
from population.config import ConfigError, RunConfig, default_tag, resolve, settings_of, validate, with_run_settings
from population.console import Console, drop_leak_report, run_line, status_line
from population.context import IN_FLIGHT_SHOWN, build_prompt
from population.fleet import DriverError
from population.flight import Flight, in_flight_records
from population.narration import decision_lines, limit_reached_line, lost_line, result_line, settings_lines
from population.outcome import (duplicate_reason, experiment_log, gains_over_seed, judged, last_baseline_error,
                                train_env, where_it_trained)
from population.policy import SEED_MEMBER, Cull, Policy, Promote, Queue, Settings, Stop, Train
from population.ray_fleet import RayFleet, first_sentence
from population.state import PopulationState
from population.store import RunStore, StoreError
from population.training import TrainJob, TrainResult
from population.watchdog import Watchdog
from population.worker import PrepareJob, Prepared
from prepare.tasks import Task, get_task

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
TABLES_EVERY_S = 5.0
TABLES_MAX_SHARE = 0.02        # full rewrites grow with the run: at most this share of the driver's time


class Driver:
    def __init__(self, config: RunConfig, ray_init_kwargs: dict | None = None, out: TextIO | None = None,
                 console: Console | None = None, fleet=None, git=gitops, clock=time.time):
        self.config = config
        self.ray_init_kwargs = dict(ray_init_kwargs or {})
        self.console = console or Console(out)
        self.fleet = fleet                   # None: a RayFleet, made in setup
        self.git = git                       # population.gitops, or a stand-in with its functions
        self.clock = clock
        self.repo = None
        self.tag = config.tag
        self.task: Task | None = None
        self.policy: Policy | None = None
        self.stop_reason: str | None = None
        self.cap_said: str | None = None          # the spending cap already announced
        self.watchdog = Watchdog()
        self.flights: dict[int, Flight] = {}
        self.blobs: dict[str, str] = {}      # train file blob -> member that has it
        self.store: RunStore | None = None
        self.state: PopulationState | None = None
        self.locked = False
        self.failed = False
        self.tables_stale = False
        self._old_handlers: dict = {}
        self.started_at = self.last_status = clock()
        self.runs_dir: Path | None = None
        self.made: dict[str, bool] = {}      # what this start made (a new run's folders, its m0000 branch)
        self.started = False                 # the run began (its first event): a failed start leaves nothing
        self.budget_defaulted = False
        self.setting_changes: dict[str, list] = {}   # --resume --set: field -> [old, new]
        self.agents = AgentPauses(clock)     # workers paused or stopped by their failing agent

    # ================================================================ set-up

    def setup(self) -> None:
        self.config = cfg = self.config.replace(tag=self.config.tag or default_tag())
        self.tag = cfg.tag
        self.budget_defaulted = cfg.budget_s is None and not cfg.resume    # said so on the run's first line
        self.repo = self.git.open_run_repo(cfg.repo)
        self.runs_dir = startup.runs_dir(cfg.runs_dir, self.repo)
        run_dir = self.runs_dir / cfg.tag
        replayed = None
        if cfg.resume:
            replayed = self._open_resumed(run_dir)
            cfg = self.config
        else:
            self.config = cfg = with_run_settings(cfg)
            self.task = get_task(cfg.task)
            self.seed_commit = self.git.check_seed(self.repo, self.task.train_file)
            startup.check_new_run(self.git, self.repo, run_dir, self.tag)
        self.program_md = startup.program_md(self.git, self.repo, self.seed_commit)
        startup.check_evaluator(self.git, self.repo, self.seed_commit)
        startup.check_agents(cfg.agents, self._agent_options)
        startup.check_sandbox(cfg.sandbox)
        if self.fleet is None:
            self.fleet = RayFleet(cfg, self.tag, self._agent_options, lambda commit: self.git.bundle_bytes(
                self.repo, commit), self.console.line, self.ray_init_kwargs)
        self.fleet.connect()
        slots = self.fleet.capacity()
        self.config = cfg = resolve(cfg, cfg.workers or (len(slots) if cfg.device == "cuda" else 1))
        startup.check_data_here(self.git, self.repo, self.seed_commit, self.task,
                                lambda: self.fleet.on_this_node(slots[:cfg.workers]))
        if not cfg.resume:
            self.made = {"runs_dir": not self.runs_dir.exists(), "run_dir": True}
            self.store = RunStore.create(run_dir, startup.run_meta(cfg, self.task, self.seed_commit, self.repo,
                                                                  self.clock()))
            self.store.lock()
            self.locked = True
        for ref in self.git.clear_run_ref_locks(self.repo, self.tag):   # a driver killed inside git
            self.console.line(f"removed the stale git lock of {ref}")
        self.fingerprint = self._seed_fingerprint()
        self.git.set_ref(self.repo, gitops.member_branch(self.tag, SEED_MEMBER), self.seed_commit)
        self.made["m0000"] = not cfg.resume
        self.state = replayed if replayed is not None else PopulationState.replay(
            self.store.events(), self.task.metric, self.task.lower_is_better)
        self.policy = Policy(Settings.from_config(cfg, self.task.lower_is_better))
        self.fleet.start(slots, cfg.workers)
        fingerprint = self._cache_fingerprint()
        if fingerprint is None:
            self.console.line(f"this node has no prepared cache for task {self.task.name}: "
                              "the workers' data caches are not checked")
        else:       # each worker's node has the task's data, equal to this node's (prepared there if missing)
            self.fleet.check_ready(self.task.name, fingerprint, os.environ.get("AUTORESEARCH_CACHE"))

    def _open_resumed(self, run_dir: Path) -> PopulationState:
        self.store = RunStore.open(run_dir)
        self.store.lock()                      # first: a live driver's journal is not read half-way
        self.locked = True
        self.config, self.setting_changes, state = startup.resumed_state(self.store, self.config, self.git, self.repo)
        self.task, self.seed_commit = get_task(self.config.task), self.store.meta["seed_commit"]
        return state

    def _agent_options(self, index: int) -> dict:
        # each worker's mutator draws its own sequence (same seed = same proposals = duplicates)
        return {"seed": self.config.seed + 1000 * (index + 1), "train_file": self.task.train_file,
                "base_url": self.config.agent_base_url, "key_env": list(self.config.agent_env)}

    def _seed_fingerprint(self) -> str:       # bench/simulate.py and tests stand in for these two
        return startup.seed_fingerprint(self.git, self.repo, self.store.dir, self.seed_commit)

    def _cache_fingerprint(self) -> str | None:
        return startup.cache_fingerprint(self.task)

    # ================================================================ recording

    def record(self, event: dict) -> None:
        """Journal first, then apply: what the driver acts on is always on disk."""
        event.setdefault("time", self.clock())
        self.store.append(event)
        self.state.apply(event)

    def refresh_tables(self, force: bool = False) -> None:
        """The derived tables (throttled: the journal is the per-event truth; the loop writes
        them once due when a rewrite was skipped) and run.json, which counts the journal's events
        whenever the tables are written (--resume checks that the journal still holds them)."""
        written = self.store.write_tables_if_due(
            self.state.lineage_rows, self.task.metric, min_interval_s=TABLES_EVERY_S, force=force,
            max_share=TABLES_MAX_SHARE)
        self.tables_stale = not written
        champion = self.state.champion_member()
        counted = {"journal_events": self.store.event_count} if written else {}
        self.store.update_meta(noise_std=self.state.noise_std, champion_id=champion.first_id if champion else None,
                               workers=self.config.workers, **counted)

    # ================================================================ the run

    def run(self) -> int:
        """Set up, run until done or stopped, and always leave the store consistent."""
        try:
            self.setup()
            self._old_handlers = startup.install_signal_handlers(self._on_signal)
            cfg = self.config
            self.console.line(run_line(tag=self.tag, task=self.task.name, workers=cfg.workers, agents=cfg.agents,
                                       budget_s=cfg.budget_s, device=cfg.device, sandbox=cfg.sandbox,
                                       store=self.store.dir, default_budget=self.budget_defaulted))
            self.started = True
            self.record({"type": "run_state", "state": "running"})
            self._change_settings()
            self.store.update_meta(state="running", settings=settings_of(self.config),
                                   settings_history=self.state.settings_changes)
            self._recover()
            self.refresh_tables(force=True)
            if cfg.resume and cfg.max_experiments is not None and self.state.counted() >= cfg.max_experiments:
                self.console.line(limit_reached_line(cfg.max_experiments, self.state.counted()))
            self._loop()
        except BaseException:
            self.failed = True
            raise
        finally:
            outcome = self._finish()
        return outcome

    def _loop(self) -> None:
        self.started_at = self.last_status = self.clock()
        while self.stop_reason is None:
            self._dispatch()
            self.fleet.maintain(self._can_hand_out())
            if not self.fleet.busy():
                step, wait = self.agents.when_idle(self.fleet.slots, self._can_hand_out())
                if step == "end":
                    break
                if step == "back off":
                    self.fleet.pause(min(wait, 1.0))
                    continue
                if not self.fleet.maintain(True, force=True):
                    raise DriverError("every worker died and no node has a free slot; see the Ray logs")
                self.fleet.pause(0.5)    # the run waits for its replacement workers
                continue
            for done in self.fleet.wait(timeout=1.0):
                self._complete(done)
            if self.tables_stale:
                self.refresh_tables()
            if self.watchdog.due(self.clock(), self.config.stall_minutes):
                self._watch()
            if self.clock() - self.last_status >= self.config.status_every_s:
                self.last_status = self.clock()
                self.console.line(self._status())

    def _watch(self) -> None:
        lines, report = self.watchdog.look(self.fleet.activity(), self.flights, self.config.stall_minutes)
        for line in lines:
            self.console.line(line)
        if report is not None:
            self.store.update_meta(stalled=report)

    def _can_hand_out(self) -> bool:
        if self.stop_reason is not None:
            return False
        cap = self.policy.cap_reached(self.state)
        if cap and cap != self.cap_said:
            self.cap_said = cap
            self.console.line(f"no new proposals: {cap}; what is in flight finishes")
        return self.policy.can_hand_out(self.state)

    def _finish(self) -> int:
        """Leave the store consistent whatever happened: trainings killed, in-flight work lost
        (and queued for a resume), the final state written."""
        startup.restore_signal_handlers(self._old_handlers)
        finished = self.stop_reason is None and not self.failed and not self.flights
        if self.fleet is not None:
            self.fleet.halt()
        if self.locked and self.state is not None and self.started:
            try:
                self._record_stop(finished)
            except StoreError as e:       # a full disk: Ray and the lock are still released
                finished = False
                if self.failed:           # the error that stopped the run is reported already
                    self.console.line(f"could not record the stop: {e}")
                else:
                    self.console.error(str(e))
        if self.fleet is not None:
            self.fleet.shutdown()
        if self.locked:
            self.store.unlock()
        if not self.started:
            startup.undo_start(self.git, self.repo, self.tag, self.made, self.store and self.store.dir, self.runs_dir)
        if self.stop_reason == "interrupted":
            return EXIT_INTERRUPTED
        return EXIT_OK if finished else EXIT_ERROR

    def _change_settings(self) -> None:
        """--resume --set: the changes journaled, printed, and in force from here on (the policy
        was made with them); a smaller population shrinks by one member per result."""
        changes = self.setting_changes
        if not changes:
            return
        self.record({"type": "settings_changed", "changes": changes})
        for line in settings_lines(changes, self.state, self.config.population_size):
            self.console.line(line)

    def _record_stop(self, finished: bool) -> None:
        """Journal what was in flight as lost (its work queued for a resume), then the final state."""
        lost = sorted(self.flights)
        for exp_id in lost:
            self.record(self.flights[exp_id].lost_event(f"driver stopped ({self.stop_reason or 'error'})"))
            self._decide(self.policy.on_lost(self.state, exp_id, front=False))
        self.flights.clear()
        state = "finished" if finished else "stopped"
        self.record({"type": "run_state", "state": state})
        self.refresh_tables(force=True)
        self.store.update_meta(state=state, stalled=[])
        note = f" ({len(lost)} in flight marked lost; --resume re-queues them)" if lost else ""
        self.console.line(f"run {self.tag} {state}{note}: " + self._status())

    def _on_signal(self, signum, frame) -> None:
        if self.stop_reason is None:
            self.stop_reason = "interrupted"
            self.console.line(f"{signal.Signals(signum).name}: stopping; in-flight experiments will be marked lost")

    # ---------------------------------------------------------------- resume

    def _recover(self) -> None:
        """Refs and worktrees match the journal; then the policy's decisions for a new run, or for
        a resumed one (in-flight work lost and queued again, results without decisions judged)."""
        self.blobs = startup.trained_blobs(self.git, self.repo, self.state, self.task.train_file)
        startup.sync_worktrees(self.git, self.repo, self.tag, self.state, self.store.members_dir)
        resumed = self.state.experiments or self.state.pending
        arrived = startup.arrived_commits(self.git, self.repo, self.tag, self.state) if resumed else {}
        made = self._decide(self.policy.on_resume(self.state, commits=arrived) if resumed
                            else self.policy.on_start(self.state))
        for decision in made:       # what becomes of the work in flight when the driver stopped
            if isinstance(decision, Queue) and decision.lost is not None:
                self.console.line(f"{decision.reason} (in flight when the driver stopped)")
        if self.state.champion:
            self.git.set_ref(self.repo, gitops.best_branch(self.tag), self.state.members[self.state.champion].commit)

    # ================================================================ applying decisions

    def _decide(self, decisions) -> list:
        """Each decision journaled first, then applied (git, the fleet, the console), before the
        policy makes the next; returns them."""
        made = []
        for decision in decisions:
            event = decision.event()
            if isinstance(decision, Promote):
                event.update(gains_over_seed(self.state, decision.member))
            self.record(event)
            self._apply(decision, event)
            made.append(decision)
        return made

    def _apply(self, decision, event: dict) -> None:
        if isinstance(decision, Promote):
            self.git.set_ref(self.repo, gitops.best_branch(self.tag), self.state.members[decision.member].commit)
        elif isinstance(decision, Cull):
            self.git.remove_worktree(self.repo, self.store.members_dir / decision.member)
        elif isinstance(decision, Stop):
            raise DriverError(f"{decision.reason} ({last_baseline_error(self.state)}); "
                              f"see {self.store.dir / 'experiments'}/*/run.log")
        for line in decision_lines(decision, event, self.state, self.task.metric, self.task.lower_is_better,
                                   self.policy.settings.posterior):
            self.console.line(line)

    # ================================================================ handing out work

    def _dispatch(self) -> None:
        for slot in self.fleet.idle():
            if not self.agents.may_propose(slot.name):
                continue                          # stopped, or backing off after its agent's failures
            train = self.policy.next_work(self.state) if self.stop_reason is None else None
            if train is None:
                break
            self._start(slot, train)

    def _start(self, slot, train: Train) -> None:
        flight = Flight.start(train, self.state, self.state.next_id(), slot.name, slot.agent, self._member_commit)
        work, exp_id, commit = train.work, flight.exp_id, flight.commit
        self.record(train.started(exp_id, flight.member, flight.parent_id, parent_commit=flight.parent_commit,
                                  worker=slot.name, agent=flight.agent, budget_s=self.config.budget_s,
                                  node_id=slot.node_id))
        self.flights[exp_id] = flight
        if work.commit:                 # its branch, once the journal knows the member (as a fetched child's)
            self.git.set_ref(self.repo, gitops.member_branch(self.tag, flight.member), commit)
        job = PrepareJob(exp_id=exp_id, commit=commit, bundle_ref="", prepare_fingerprint=self.fingerprint,
                         train_file=self.task.train_file, member=flight.member,
                         agent_timeout_s=self.config.agent_timeout_s)
        if work.kind == "child" and not work.commit:
            job.prompt = flight.prompt = self._prompt(flight.parent_id)
            job.branch = gitops.member_branch(self.tag, flight.member)
        self.fleet.prepare(slot, job, commit)

    def _member_commit(self, member: str) -> str:
        if member in self.state.members:
            return self.state.members[member].commit
        if member == SEED_MEMBER:
            return self.seed_commit
        commit = self.git.ref_commit(self.repo, gitops.member_branch(self.tag, member))
        if not commit:
            raise DriverError(f"member {member} has no branch {gitops.member_branch(self.tag, member)}")
        return commit

    def _prompt(self, parent_id: int | None) -> str:
        parent_id = parent_id if parent_id is not None else 0
        # the rows the prompt draws on, not every experiment of the run (bench/simulate.py)
        return build_prompt(self.program_md, self.task, self.state.context_rows(parent_id), parent_id,
                            in_flight_records(self.state, self.flights, IN_FLIGHT_SHOWN))

    # ================================================================ completions

    def _complete(self, done) -> None:
        flight = self.flights.get(done.exp_id)
        if flight is None or (self.stop_reason is not None and done.status != "done"):
            return
        if done.status == "lost":
            self._lose(flight, done.reason)
        elif done.status == "failed":
            self._finish_untrained(flight, "crash", done.reason, cleanup=False)
        elif done.stage == "prep":
            self._prepared(flight, done.value)
        else:
            self._trained(flight, done.value)

    def _lose(self, flight: Flight, reason: str) -> None:
        """The fleet lost the work (node or worker died): journal it lost; the policy queues it again
        (a child whose commit had arrived as that commit, one lost during its agent as a new proposal)."""
        self.record(flight.lost_event(reason))
        self.flights.pop(flight.exp_id, None)
        queued = [d for d in self._decide(self.policy.on_lost(self.state, flight.exp_id)) if isinstance(d, Queue)]
        self.console.line(lost_line(flight, first_sentence(reason), queued[0] if queued else None))

    def _prepared(self, flight: Flight, prepared: Prepared) -> None:
        flight.prepared = prepared
        refused = (prepared.status, prepared.reason) if prepared.status != "ready" else self._take_in(flight)
        if refused:
            self._finish_untrained(flight, *refused)
            return
        slot, cfg = self.fleet.worker(flight.worker), self.config
        self.fleet.train(slot, flight.exp_id, TrainJob(
            exp_id=flight.exp_id, worktree=prepared.worktree, train_file=self.task.train_file,
            env=train_env(cfg, flight.work.seed, dict(os.environ)), timeout_s=cfg.train_timeout_s,
            log_path=prepared.log_path, device=cfg.device, accelerator=slot.accelerator, sandbox=cfg.sandbox,
            task=self.task.name, output_dir=prepared.output_dir))

    def _take_in(self, flight: Flight) -> tuple[str, str] | None:
        """A child's commit into the run's repository (a lost child's is there already), unless its
        train file was trained before; returns the (status, reason) of a child that may not train."""
        if flight.work.kind != "child":
            return None
        train_file, prepared = self.task.train_file, flight.prepared
        if flight.work.commit:
            flight.note_retraining(self.state, lambda: self.git.commit_subject(self.repo, flight.commit))
            flight.train_blob = self.git.file_blob(self.repo, flight.commit, train_file)
        else:
            try:
                flight.commit = self.git.fetch_bundle(self.repo, prepared.bundle, prepared.bundle_ref,
                                                      f"refs/heads/{gitops.member_branch(self.tag, flight.member)}")
            except gitops.GitOpsError as e:  # the worker's bundle is broken, not the driver's repository
                return "crash", f"the child's bundle could not be imported: {e}"
            finally:
                prepared.bundle = None
            flight.train_blob = self.git.file_blob(self.repo, flight.commit, train_file)
            duplicate = duplicate_reason(train_file, flight.train_blob, self.git.file_blob(
                self.repo, flight.parent_commit, train_file), flight.parent, self.blobs.get(flight.train_blob))
            if duplicate:
                return "duplicate", duplicate
        self.blobs[flight.train_blob] = flight.member
        return None

    def _row(self, flight: Flight, status: str, reason: str) -> dict:
        return flight.row(status, reason, self.state, branch=gitops.member_branch(self.tag, flight.member),
                          budget_s=self.config.budget_s)

    def _finish_untrained(self, flight: Flight, status: str, reason: str, cleanup: bool = True) -> None:
        self._record_finished(flight, self._row(flight, status, reason), cleanup=cleanup)

    def _trained(self, flight: Flight, result: TrainResult) -> None:
        status, reason, figures = judged(result, self.task, self.config, self.state, flight.member)
        row = self._row(flight, status, drop_leak_report(reason))        # judged on the log as it came
        row.update(figures, **where_it_trained(result))
        self._record_finished(flight, row, result)

    def _record_finished(self, flight: Flight, row: dict, result: TrainResult | None = None,
                         cleanup: bool = True) -> None:
        """Its files and its row journaled, its worktree (a new member's), then the policy's decisions."""
        row["finished_at"] = self.clock()
        log, busy = (experiment_log(result), result.extra.get("busy_timeline")) if result else (None, None)
        self.store.write_experiment_files(flight.exp_id, flight.files(
            log, lambda: self.git.diff(self.repo, flight.parent_commit, flight.commit), busy))
        self.record({"type": "experiment_finished", "id": flight.exp_id, "row": row})
        self.flights.pop(flight.exp_id, None)
        member = self.state.members.get(flight.member)
        if member is not None and member.first_id == flight.exp_id and member.alive:
            self.git.add_worktree(self.repo, self.store.members_dir / member.name,
                                  gitops.member_branch(self.tag, member.name))
        self.console.line(result_line(flight, row, self.state, self.task.metric))
        self._note_agent(flight, row)
        self._decide(self.policy.on_result(self.state, flight.exp_id))
        self.refresh_tables()
        if cleanup:
            self.fleet.cleanup(flight.worker, flight.exp_id)

    def _note_agent(self, flight: Flight, row: dict) -> None:
        if flight.work.kind == "child" and not flight.work.commit:      # an agent ran
            line = self.agents.note(flight.worker, flight.agent, row["status"], row.get("reason", ""),
                                    self.fleet.slots)
            if line:
                self.console.line(line)

    # ---------------------------------------------------------------- status

    def _status(self) -> str:
        """The status line; only a started run prints one, so its fleet is up."""
        champion, waiting = self.state.champion_member(), self.fleet.waiting_for_gpu()
        return status_line(
            finished=self.state.finished_count(), ok=self.state.ok_count(), in_flight=len(self.flights),
            training=self.fleet.training() - waiting, waiting_for_gpu=waiting,
            workers=len(self.agents.usable(self.fleet.slots)), alive=len(self.state.living()),
            champion=self.state.champion,
            metric=self.task.metric, best=champion.mean if champion else None,
            elapsed_s=self.clock() - self.started_at, max_experiments=self.config.max_experiments,
            stalled=len(self.watchdog.stalled))


def run_population(config: RunConfig, ray_init_kwargs: dict | None = None, out: TextIO | None = None) -> int:
    """Run (or resume) a population; returns the exit code. Errors the user must fix print one line."""
    from population.agents import AgentSpecError

    startup.quiet_ray_notices()
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
    except (ConfigError, AgentSpecError) as e:     # a bad flag, found once the resumed run's settings are known
        console.error(str(e))
        return EXIT_USAGE
    except (DriverError, gitops.GitOpsError, StoreError) as e:
        console.error(str(e))
        return EXIT_ERROR
    except gitops.git.GitCommandError as e:     # git refused (disk full, a path in the way...): its own words
        console.error(startup.git_error_line(e))
        return EXIT_ERROR
