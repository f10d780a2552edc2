"""What a training did with its device, measured from outside the training (its claims aside).

`BusySampler` runs beside a training and integrates busy seconds: on a GPU, NVML's utilisation
(the share of time a kernel was running) of the training's GPU; on the CPU, the CPU time of the
training's session (every process it started without leaving it), at most one core per second
of wall time, so a multithreaded honest run reads like a GPU's 100 %. Busy seconds beyond the
budget are untimed work (warm-up steps, a budget redefined inside the file): the budget rule
(`population/budget.py`) compares them with the seed's. It also keeps a coarse timeline for the
store. A GPU without NVML (no `nvidia-ml-py`, no driver) gives None: the wall-clock rule still holds.
"""
from __future__ import annotations

import os
import threading
import time
from pathlib import Path

SAMPLE_EVERY_S = 0.25
TIMELINE_EVERY_S = 5.0
_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def session_cpu_seconds(session: int, proc: Path = Path("/proc")) -> float:
    """CPU seconds of every live process in `session`, their reaped children included."""
    total = 0
    for stat in proc.glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[3]) == session:          # fields after the name: state ppid pgrp session ...
            total += sum(int(v) for v in fields[11:15])   # utime stime cutime cstime
    return total / _TICKS


class _Nvml:
    """The busy fraction of one GPU through NVML (nvidia-ml-py), or None when it cannot be read."""

    def __init__(self, cuda_visible_devices: str):
        import pynvml

        self._nvml = pynvml
        pynvml.nvmlInit()
        first = cuda_visible_devices.split(",")[0].strip()
        self.handle = (pynvml.nvmlDeviceGetHandleByUUID(first) if first.startswith(("GPU-", "MIG-"))
                       else pynvml.nvmlDeviceGetHandleByIndex(int(first or 0)))

    def busy_fraction(self) -> float:
        return self._nvml.nvmlDeviceGetUtilizationRates(self.handle).gpu / 100.0

    def close(self) -> None:
        try:
            self._nvml.nvmlShutdown()
        except Exception:      # noqa: BLE001 (NVML's own errors; nothing to do about them at the end)
            pass


class BusySampler:
    """Integrates busy seconds of a training's device until `stop()`; `busy_s` is None where the
    device cannot be read. `timeline` holds (seconds since start, busy fraction) every TIMELINE_EVERY_S."""

    def __init__(self, device: str, session: int, cuda_visible_devices: str = ""):
        self.device, self.session = device, session
        self.busy_s: float | None = 0.0
        self.timeline: list[tuple[float, float]] = []
        self._nvml = None
        if device == "cuda":
            try:
                self._nvml = _Nvml(cuda_visible_devices)
            except Exception:  # noqa: BLE001 (no pynvml, no driver, an unknown GPU: not measurable)
                self.busy_s = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="busy-sampler", daemon=True)

    def start(self) -> "BusySampler":
        if self.busy_s is not None:
            self._thread.start()
        return self

    def _run(self) -> None:
        started = last = time.monotonic()
        last_cpu = session_cpu_seconds(self.session) if self._nvml is None else 0.0
        window, window_start = 0.0, started
        while not self._stop.wait(SAMPLE_EVERY_S):
            now = time.monotonic()
            dt = now - last
            if self._nvml is not None:
                busy = self._nvml.busy_fraction() * dt
            else:
                cpu = session_cpu_seconds(self.session)
                busy, last_cpu = min(max(cpu - last_cpu, 0.0), dt), cpu
            self.busy_s += busy
            window += busy
            last = now
            if now - window_start >= TIMELINE_EVERY_S:
                self.timeline.append((round(window_start - started, 1), round(window / (now - window_start), 3)))
                window, window_start = 0.0, now

    def stop(self) -> float | None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        if self._nvml is not None:
            self._nvml.close()
        return self.busy_s
