"""The workers on Ray (population/fleet.py's interface): actors on the nodes' slots, their
two-stage pipelines, node loss, replacement workers, the bundle cache and the shutdown.

A task's error is a failed stage (a crash the driver records); a lost actor, node or object is a
lost stage (the driver journals it lost and the policy queues its work again). A worker whose actor
or node died is retired: its prepared experiment is lost too (the worktree was on it), and a
replacement starts once a node has a free slot of the run's kind (`maintain`).
"""
from __future__ import annotations

import os
import socket
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from population import readiness
from population.config import RunConfig
from population.fleet import Completion, DriverError, Fleet, Slot
from population.summary import tail
from population.training import TrainJob, train_task
from population.worker import PrepareJob, WorkerActor

WORKER_START_TIMEOUT_S = 180.0
NODE_READY_TIMEOUT_S = readiness.DEFAULT_LOCK_TIMEOUT_S + 600.0   # a node may first download its data
CONNECT_TIMEOUT_S = 5.0
ACTIVITY_TIMEOUT_S = 10.0   # the watchdog's look at every worker
CAPACITY_CHECK_EVERY_S = 5.0   # while a worker is dead: how often to look for a free slot (one ray.nodes())
BUNDLE_CACHE = 64


@dataclass
class Joining:
    """A replacement worker starting where capacity returned; it takes a dead slot's place once
    its actor answered and its node is ready."""
    slot: Slot
    ready: list                    # ObjectRefs: info(), then ensure_ready() when there is a cache to match
    since: float


# ---------------------------------------------------------------- pure helpers

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


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def first_sentence(text: str) -> str:
    """Ray's error lines run on with advice; the console keeps their first sentence (the journal all)."""
    head, dot, _ = text.partition(". ")
    return head + dot.strip()


def raised_line(error: BaseException, exception_name: str) -> str | None:
    """The message of `exception_name` quoted in a Ray error's remote traceback, if it is there."""
    marker = f"{exception_name}: "
    for line in reversed(str(error).splitlines()):
        if marker in line:
            return line.split(marker, 1)[1].strip() or None
    return None


def error_tail(error: BaseException, lines: int = 12) -> str:
    return tail(str(error).strip(), lines) or type(error).__name__


# ---------------------------------------------------------------- the fleet

class RayFleet(Fleet):
    def __init__(self, config: RunConfig, tag: str, agent_options: Callable[[int], dict],
                 bundle_bytes: Callable[[str], tuple[bytes, str]], say: Callable[[str], None],
                 ray_init_kwargs: dict | None = None):
        self.config = config
        self.tag = tag
        self.agent_options = agent_options
        self.bundle_bytes = bundle_bytes
        self.say = say
        self.ray_init_kwargs = dict(ray_init_kwargs or {})
        self.slots: list[Slot] = []
        self.refs: dict = {}                     # ObjectRef -> (slot, stage, exp_id)
        self.bundles: OrderedDict[str, tuple] = OrderedDict()
        self.joining: dict[int, Joining] = {}    # position in self.slots -> its replacement starting
        self.refused_nodes: set[str] = set()     # nodes where a replacement failed: not tried again
        self.capacity_checked_at = 0.0
        self.started_ray = False
        self.readiness: tuple | None = None      # (task name, cache fingerprint, cache) replacements must match
        self._halted: list = []

    # ---- start-up --------------------------------------------------------------------------

    def connect(self) -> None:
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

    def capacity(self) -> list[tuple[str, str]]:
        """The run's slots (node_slots), or a one-line DriverError when there are none."""
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
        self.note_capacity(slots)
        return slots

    def on_this_node(self, slots: list[tuple[str, str]]) -> bool:
        here = ray.get_runtime_context().get_node_id()
        return all(node_id == here for node_id, _ in slots)

    def _launch(self, number: int, position: int, node_id: str, accelerator: str) -> Slot:
        """Worker `w<number>` in slot `position` (which picks its agent) on the node, not yet ready."""
        cfg = self.config
        agent = cfg.agents[position % len(cfg.agents)]
        actor = WorkerActor.options(
            num_cpus=0, max_restarts=0,
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False),
        ).remote(f"w{number}", self.tag, agent, self.agent_options(number), cfg.workdir, cfg.sandbox)
        return Slot(f"w{number}", actor, node_id, accelerator, agent)

    def start(self, slots: list[tuple[str, str]], workers: int) -> None:
        pending = []
        for index in range(workers):
            self.slots.append(self._launch(index, index, *slots[index % len(slots)]))
            pending.append(self.slots[-1].actor.info.remote())
        try:
            infos = ray.get(pending, timeout=WORKER_START_TIMEOUT_S)
        except ray.exceptions.GetTimeoutError:
            raise DriverError(f"workers did not start within {WORKER_START_TIMEOUT_S:g} s") from None
        except ray.exceptions.RayError as e:
            reason = raised_line(e, "SandboxUnavailable") or f"a worker failed to start: {first_line(e)}"
            raise DriverError(reason) from None
        for slot, info in zip(self.slots, infos):
            slot.hostname, slot.agent = info["hostname"], info["agent"]   # Agent.spec: safe to record

    def check_ready(self, task_name: str, fingerprint: str, cache: str | None) -> None:
        """Each worker's node has the task's data, equal to this node's (prepared there once if
        missing); otherwise a DriverError with the node's one-line reason. Replacements match it too."""
        self.readiness = (task_name, fingerprint, cache)
        pending = [slot.actor.ensure_ready.remote(*self.readiness) for slot in self.slots]
        try:
            ray.get(pending, timeout=NODE_READY_TIMEOUT_S)
        except ray.exceptions.GetTimeoutError:
            raise DriverError(f"the workers' nodes were not ready within {NODE_READY_TIMEOUT_S:g} s") from None
        except ray.exceptions.RayError as e:
            cause = getattr(e, "cause", None)
            if isinstance(cause, readiness.NodeNotReady):
                raise DriverError(first_line(cause)) from None
            raise DriverError(f"a worker failed checking its node: {first_line(e)}") from None

    # ---- work ------------------------------------------------------------------------------

    def busy(self) -> bool:
        return bool(self.refs)

    def prepare(self, slot: Slot, job: PrepareJob, commit: str) -> None:
        bundle_ref, job.bundle_ref = self._bundle(commit)
        ref = slot.actor.prepare.remote(job, [bundle_ref])
        slot.prep = (ref, job.exp_id)
        self.refs[ref] = (slot, "prep", job.exp_id)

    def _bundle(self, commit: str) -> tuple:
        """(ObjectRef of the bundle bytes, ref inside it) for `commit`, cached: parents recur."""
        if commit in self.bundles:
            self.bundles.move_to_end(commit)
            return self.bundles[commit]
        data, ref_name = self.bundle_bytes(commit)
        self.bundles[commit] = (ray.put(data), ref_name)
        while len(self.bundles) > BUNDLE_CACHE:
            self.bundles.popitem(last=False)
        return self.bundles[commit]

    def _start_training(self, slot: Slot, exp_id: int, job: TrainJob) -> tuple:
        cfg = self.config
        resources = {"num_gpus": 1, "num_cpus": 0} if cfg.device == "cuda" else {"num_gpus": 0, "num_cpus": 1}
        ref = train_task.options(
            **resources, scheduling_strategy=NodeAffinitySchedulingStrategy(slot.node_id, soft=False),
        ).remote(job)
        self.refs[ref] = (slot, "train", exp_id)
        return ref, exp_id

    def cleanup(self, worker: str, exp_id: int) -> None:
        self.worker(worker).actor.cleanup.remote(exp_id)

    def wait(self, timeout: float) -> list[Completion]:
        """The stages that ended within `timeout` seconds (at least one, unless none did)."""
        refs = list(self.refs)
        if not refs:
            return []
        done, _ = ray.wait(refs, num_returns=1, timeout=timeout)
        if done:
            done, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
        completions = []
        for ref in done:
            completions += self._complete(ref)
        return completions

    def _complete(self, ref) -> list[Completion]:
        slot, stage, exp_id = self.refs.pop(ref)
        if stage == "prep":
            slot.prep = None
        else:
            slot.train = None
            self._feed(slot)              # the next training first, the bookkeeping after
        try:
            return [Completion(slot.name, exp_id, stage, "done", ray.get(ref))]
        except ray.exceptions.RayTaskError as e:
            cause = getattr(e, "cause", None)
            if isinstance(cause, ray.exceptions.RayError) or isinstance(cause, KeyboardInterrupt):
                return [Completion(slot.name, exp_id, stage, "lost", reason=f"{stage} failed: {first_line(e)}")]
            what = "training task" if stage == "train" else "worker, preparing the worktree,"
            return [Completion(slot.name, exp_id, stage, "failed", reason=f"the {what} failed: {error_tail(e)}")]
        except ray.exceptions.RayError as e:
            lost = [Completion(slot.name, exp_id, stage, "lost", reason=f"{stage} failed: {first_line(e)}")]
            if isinstance(e, ray.exceptions.RayActorError) or not self._node_alive(slot.node_id):
                lost += self._retire(slot, first_line(e))
            return lost

    def _retire(self, slot: Slot, why: str) -> list[Completion]:
        """A worker whose actor or node died: its prepared experiment is lost too (the worktree
        was on it); a replacement starts once a node has a free slot (`maintain`)."""
        if slot.dead:
            return []
        slot.dead = True
        self.say(f"worker {slot.name} died ({first_sentence(why)}); the run goes on with fewer workers "
                 f"({self.live()} of {self.config.workers}) until capacity returns")
        if slot.ready is None:
            return []
        exp_id, slot.ready = slot.ready[0], None
        return [Completion(slot.name, exp_id, "prep", "lost", reason=f"worker {slot.name} died")]

    def _node_alive(self, node_id: str) -> bool:
        return any(node["NodeID"] == node_id and node.get("Alive") for node in ray.nodes())

    # ---- replacing dead workers --------------------------------------------------------------

    def activity(self) -> dict[int, tuple[str, float]]:
        asked = {}
        for slot in self.slots:
            if not slot.dead and (slot.prep or slot.train):
                preparing, training = slot.prep[1] if slot.prep else None, slot.train[1] if slot.train else None
                asked[slot.actor.activity.remote(preparing, training)] = (preparing, training)
        try:
            answers = ray.get(list(asked), timeout=ACTIVITY_TIMEOUT_S) if asked else []
        except ray.exceptions.RayError:            # a worker busy dying: the next look will tell
            return {}
        seen = {}
        for (preparing, training), answer in zip(asked.values(), answers):
            for exp_id, idle in answer.items():
                seen[exp_id] = ("agent" if exp_id == preparing else "training", idle)
        return seen

    def maintain(self, can_hand_out: bool, force: bool = False) -> bool:
        """Capacity back (a node rejoined, a new one came, a GPU freed): a dead worker's place gets
        a new actor on a free slot of the run's kind. Looks every CAPACITY_CHECK_EVERY_S seconds.
        Returns whether replacements are starting."""
        if self.joining:
            self._admit_replacements()
        dead = [position for position, slot in enumerate(self.slots)
                if slot.dead and slot.prep is None and slot.train is None and position not in self.joining]
        due = force or time.time() - self.capacity_checked_at >= CAPACITY_CHECK_EVERY_S
        if not dead or not due or not can_hand_out:
            return bool(self.joining)
        self.capacity_checked_at = time.time()
        used = [s.node_id for s in self.slots if not s.dead] + [j.slot.node_id for j in self.joining.values()]
        capacity = node_slots(ray.nodes(), self.config.device, self.config.accelerator)
        self.note_capacity(capacity)
        for position, (node_id, accelerator) in zip(dead, free_slots(capacity, used, self.refused_nodes)):
            number = 1 + max(int(s.name[1:]) for s in self.slots + [j.slot for j in self.joining.values()])
            slot = self._launch(number, position, node_id, accelerator)
            ready = [slot.actor.info.remote()]
            if self.readiness is not None:     # the node's data cache, as at the start
                ready.append(slot.actor.ensure_ready.remote(*self.readiness))
            self.joining[position] = Joining(slot, ready, time.time())
        return bool(self.joining)

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
                    reason = (first_line(cause) if isinstance(cause, readiness.NodeNotReady)
                              else raised_line(e, "SandboxUnavailable") or first_line(e))
            del self.joining[position]
            if reason is not None:
                self.refused_nodes.add(slot.node_id)
                ray.kill(slot.actor)
                self.say(f"replacement worker {slot.name} on node {slot.node_id[:8]} failed: {reason}")
                continue
            slot.hostname, slot.agent = info["hostname"], info["agent"]
            replaced, self.slots[position] = self.slots[position], slot
            self.say(f"worker {slot.name} replaces {replaced.name} on node {slot.node_id[:8]} "
                     f"({slot.hostname}): {self.live()} of {self.config.workers} workers")

    def pause(self, seconds: float) -> None:
        time.sleep(seconds)

    # ---- stopping ----------------------------------------------------------------------------

    def halt(self) -> None:
        """Cancel everything in flight (a cancelled training kills its process group)."""
        for ref in list(self.refs):
            try:
                ray.cancel(ref)
            except Exception:
                pass
        self._halted = [slot.train[0] for slot in self.slots if slot.train]
        self.refs.clear()
        for slot in self.slots:
            slot.prep = slot.ready = slot.train = None

    def shutdown(self) -> None:
        """Give cancelled trainings a moment to kill their process groups, end the agents, the
        actors, and Ray if this fleet started it."""
        if not ray.is_initialized():      # (any Ray call would start a local Ray)
            return
        if self._halted:
            try:
                ray.wait(self._halted, num_returns=len(self._halted), timeout=15)
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
