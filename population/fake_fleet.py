"""The fleet's interface (population/fleet.py) in process, on a virtual clock: no Ray.

A `workload` answers each stage of an experiment at once, with how long it takes; its answer
becomes visible that many virtual seconds later, so a "300 s" training costs no wall time:

    workload.prepare(worker, job) -> (Prepared, seconds)     (job.commit: what to start from)
    workload.train(worker, job)   -> (TrainResult, seconds)
    an exception raised by either is a failed stage (the driver records a crash)

Each worker has the Ray fleet's two-stage pipeline (prepares one ahead while it trains, one
training at a time). `kill(worker)` is a node lost: what the worker had in flight is lost (the
driver queues it again), and `spare` workers take dead workers' places, as capacity returning
would. Used by the driver's tests without Ray and by bench/simulate.py.
"""
from __future__ import annotations

import heapq
import itertools
from typing import TYPE_CHECKING

from population.fleet import Completion, Fleet, Slot

if TYPE_CHECKING:                      # (their modules import Ray; the fake fleet needs none)
    from population.config import RunConfig
    from population.training import TrainJob
    from population.worker import PrepareJob


class VirtualClock:
    """Seconds that move only when told to (`jump_to`: never backwards)."""

    def __init__(self, start: float = 0.0):
        self.t = start

    def now(self) -> float:
        return self.t

    def jump_to(self, t: float) -> None:
        self.t = max(self.t, t)


class FakeFleet(Fleet):
    def __init__(self, workload, config: RunConfig, clock=None, spare: int = 0, say=lambda line: None):
        self.workload = workload
        self.config = config
        self.clock = clock or VirtualClock()
        self.spare = spare                   # workers that may still start in dead workers' places
        self.say = say
        self.slots: list[Slot] = []
        self.pending: list = []              # heap of (done_at, order, slot, stage, exp_id, value, error)
        self._order = itertools.count()
        self._lost: list[Completion] = []

    # ---- start-up: nothing to connect to -------------------------------------------------------

    def connect(self) -> None:
        pass

    def capacity(self) -> list[tuple[str, str]]:
        return [("fake-node", "")] * (self.config.workers or 1)

    def on_this_node(self, slots) -> bool:
        return False                         # a workload brings its own data

    def start(self, slots: list[tuple[str, str]], workers: int) -> None:
        for index in range(workers):
            self.slots.append(self._new_worker(index, index))

    def _new_worker(self, number: int, position: int) -> Slot:
        agents = self.config.agents
        return Slot(f"w{number}", None, "fake-node", "", agents[position % len(agents)], hostname="fake")

    def check_ready(self, task_name: str, fingerprint: str, cache: str | None) -> None:
        pass

    # ---- work --------------------------------------------------------------------------------

    def busy(self) -> bool:
        return bool(self.pending or self._lost)

    def prepare(self, slot: Slot, job: PrepareJob, commit: str) -> None:
        job.bundle_ref = ""
        slot.prep = self._schedule(slot, "prep", job.exp_id, self.workload.prepare, job)

    def _start_training(self, slot: Slot, exp_id: int, job: TrainJob) -> tuple:
        return self._schedule(slot, "train", exp_id, self.workload.train, job)

    def _schedule(self, slot: Slot, stage: str, exp_id: int, call, job) -> tuple:
        now = self.clock.now()
        try:
            value, seconds = call(slot.name, job)
            entry = (now + seconds, next(self._order), slot, stage, exp_id, value, None)
        except Exception as error:          # a failed stage, as a task's own exception on Ray
            entry = (now, next(self._order), slot, stage, exp_id, None, error)
        heapq.heappush(self.pending, entry)
        return entry

    def cleanup(self, worker: str, exp_id: int) -> None:
        pass

    def wait(self, timeout: float) -> list[Completion]:
        """The stages done by the next moment one is, if that is within `timeout` virtual seconds."""
        if self._lost:
            lost, self._lost = self._lost, []
            return lost
        if not self.pending:
            return []
        now = self.clock.now()
        if self.pending[0][0] > now + timeout:
            self.clock.jump_to(now + timeout)
            return []
        self.clock.jump_to(self.pending[0][0])
        completions = []
        while self.pending and self.pending[0][0] <= self.clock.now():
            _, _, slot, stage, exp_id, value, error = heapq.heappop(self.pending)
            if stage == "prep":
                slot.prep = None
            else:
                slot.train = None
                self._feed(slot)             # the next training first, the bookkeeping after
            if error is None:
                completions.append(Completion(slot.name, exp_id, stage, "done", value))
            else:
                completions.append(Completion(slot.name, exp_id, stage, "failed",
                                              reason=f"{type(error).__name__}: {error}"))
        return completions

    def kill(self, worker: str, reason: str = "node lost") -> None:
        """The worker's node died: whatever it had in flight or prepared is lost."""
        slot = self.worker(worker)
        slot.dead = True
        for entry in [e for e in self.pending if e[2] is slot]:
            self.pending.remove(entry)
            self._lost.append(Completion(slot.name, entry[4], entry[3], "lost", reason=f"{entry[3]} failed: {reason}"))
        heapq.heapify(self.pending)
        if slot.ready is not None:
            self._lost.append(Completion(slot.name, slot.ready[0], "prep", "lost", reason=f"worker {slot.name} died"))
        slot.prep = slot.ready = slot.train = None
        self.say(f"worker {slot.name} died ({reason}); the run goes on with fewer workers "
                 f"({self.live()} of {self.config.workers}) until capacity returns")

    def maintain(self, can_hand_out: bool, force: bool = False) -> bool:
        """A spare worker takes each dead worker's place at once."""
        for position, slot in enumerate(self.slots):
            if slot.dead and self.spare > 0 and can_hand_out:
                self.spare -= 1
                number = 1 + max(int(s.name[1:]) for s in self.slots)
                self.slots[position] = self._new_worker(number, position)
                self.say(f"worker w{number} replaces {slot.name}: {self.live()} of {self.config.workers} workers")
        return False

    def pause(self, seconds: float) -> None:
        self.clock.jump_to(self.clock.now() + seconds)

    def halt(self) -> None:
        self.pending.clear()
        self._lost.clear()
        for slot in self.slots:
            slot.prep = slot.ready = slot.train = None

    def shutdown(self) -> None:
        pass
