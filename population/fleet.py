"""The fleet: the driver's workers behind a small interface (no Ray here).

    connect() -> capacity() -> start(slots, n) -> check_ready(...)
    idle() / prepare(worker, job, commit) / train(worker, exp_id, job) / cleanup(worker, exp_id)
    wait(timeout) -> [Completion]     done, failed (a crash to record) or lost (the work goes again)
    maintain(can_hand_out)            replacement workers where capacity returned
    halt() then shutdown()

Each worker prepares its next experiment (the agent proposes a child) while its current one trains,
at most one ahead; `train` starts a prepared experiment at once when the worker's GPU is free, else
when its training ends (the next training first, the bookkeeping after). population/ray_fleet.py
is the fleet on Ray; population/fake_fleet.py the same in process, for tests and bench/simulate.py.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass


class DriverError(Exception):
    """Something the user must fix; the message is one line."""


@dataclass
class Completion:
    """What `wait` returns: a stage of an experiment ended."""
    worker: str
    exp_id: int
    stage: str                     # prep | train
    status: str                    # done | failed (a crash: `reason`) | lost (node, worker or task died)
    value: object = None           # done: Prepared (prep) or TrainResult (train)
    reason: str = ""


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
    ready: tuple | None = None     # (exp_id, TrainJob): prepared, waiting for the GPU
    train: tuple | None = None     # (ObjectRef, exp_id)
    dead: bool = False


class Fleet:
    """What both fleets share: the slots and their pipelines' bookkeeping."""
    slots: list[Slot]
    gpus: Counter = Counter()      # node id -> its GPUs (CPUs on a CPU run): the capacity last seen

    def note_capacity(self, capacity: list[tuple[str, str]]) -> None:
        self.gpus = Counter(node_id for node_id, _ in capacity)

    def worker(self, name: str) -> Slot:
        return next(slot for slot in self.slots if slot.name == name)

    def idle(self) -> list[Slot]:
        """Live workers with nothing to prepare and nothing prepared: they take new work."""
        return [s for s in self.slots if not s.dead and s.prep is None and s.ready is None]

    def live(self) -> int:
        return sum(1 for slot in self.slots if not slot.dead)

    def training(self) -> int:
        """Trainings submitted (holding a GPU or queued for one)."""
        return sum(1 for slot in self.slots if slot.train)

    def activity(self) -> dict[int, tuple[str, float]]:
        """Experiment id -> (stage, seconds since it last wrote anything) of what the workers are
        preparing (their agents) and training; empty where a fleet cannot tell."""
        return {}

    def waiting_for_gpu(self) -> int:
        """Trainings submitted beyond their node's GPUs: Ray queues them (the one-GPU fallback queues
        all but one), so they hold no GPU yet."""
        submitted = Counter(slot.node_id for slot in self.slots if slot.train)
        return sum(max(0, count - self.gpus[node]) for node, count in submitted.items() if node in self.gpus)

    def train(self, slot: Slot, exp_id: int, job) -> None:
        """Train the prepared `exp_id` on the slot's GPU: now if free, else after its training."""
        slot.ready = (exp_id, job)
        self._feed(slot)

    def _feed(self, slot: Slot) -> None:
        if slot.train is not None or slot.ready is None or slot.dead:
            return
        (exp_id, job), slot.ready = slot.ready, None
        slot.train = self._start_training(slot, exp_id, job)

    def _start_training(self, slot: Slot, exp_id: int, job) -> tuple:
        raise NotImplementedError
