"""The train file's plumbing, on the fixed side: what no experiment needs to change.

`engine/train.py` imports it (agents edit the train file, never this): the process's cache and
environment set-up before torch loads, FA3's download from the kernels hub, the parsing of the
AUTORESEARCH_* variables, the device and its peak FLOP/s for MFU, the evaluation's batch and model
wrapper for a standalone run, the early copy of the model for the evaluator's warm-up, and the
summary block the driver parses (`population/summary.py`).

torch is imported only inside functions, so that `setup_environment()` runs before it loads.
"""
from __future__ import annotations

import inspect
import math
import os
import socket
import sys
import threading
import time
import warnings
from urllib.parse import urlparse

from .constants import EVAL_TOKENS, MAX_SEQ_LEN


class ConfigError(Exception):
    """Bad input (configuration, environment, missing data): one clear line, exit code 1."""


# ---------------------------------------------------------------------------
# Process set-up: before torch is imported
# ---------------------------------------------------------------------------

def setup_environment():
    """Call before importing torch: the allocator reads its config once, and the compile caches
    live in the shared data cache so the 2nd..Nth experiment of a population compiles from cache.
    Imports torch at its end, to let the compile caches keep the train file's autograd.Functions."""
    cache_root = os.path.expanduser(os.environ.get("AUTORESEARCH_CACHE", "~/.cache/autoresearch"))
    os.environ.setdefault("PYTORCH_ALLOC_CONF", "expandable_segments:True")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", os.path.join(cache_root, "torch_compile"))
    os.environ.setdefault("TRITON_CACHE_DIR", os.path.join(cache_root, "triton"))
    os.environ.setdefault("TORCHINDUCTOR_FX_GRAPH_CACHE", "1")
    os.environ.setdefault("TORCHINDUCTOR_AUTOGRAD_CACHE", "1")

    # Python bytecode, cached in the data cache too: where torch ships without it and writing it is off
    # (PYTHONDONTWRITEBYTECODE, common in images), every training and each of its compile workers would
    # recompile ~2,000 torch modules: ~6 s of every start on the lent H200s. The children inherit it.
    # A sandboxed training's cache is read-only: it reads the bytecode a trusted process wrote there
    # (population/training.py, warm_bytecode) and writes nothing; before that, Python's default.
    pycache = os.path.join(cache_root, "pycache")
    writable = os.access(cache_root, os.W_OK)
    if writable or os.path.exists(torch_bytecode(pycache)):
        os.environ.setdefault("PYTHONPYCACHEPREFIX", pycache)
        if writable:
            os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
        else:
            os.environ["PYTHONDONTWRITEBYTECODE"] = "1"
        sys.pycache_prefix, sys.dont_write_bytecode = os.environ["PYTHONPYCACHEPREFIX"], not writable

    # The model's autograd.Functions (the MLP's kernels, the loss) would make AOTAutograd skip its
    # cache for the whole forward graph: 5 s more compile in every experiment (H100). Safe to cache:
    # their traced bodies are part of the key, and the Triton kernels' source is, through triton_op.
    import torch._functorch.config as functorch_config

    if hasattr(functorch_config, "autograd_cache_allow_custom_autograd_functions"):  # torch >= 2.8
        functorch_config.autograd_cache_allow_custom_autograd_functions = True


def torch_bytecode(pycache: str) -> str:
    """Where torch's own package bytecode lies under the bytecode prefix `pycache` (without importing
    torch): there once torch was imported with that prefix."""
    import importlib.util

    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.origin:
        return os.path.join(pycache, "no-torch")
    directory, name = os.path.split(spec.origin)
    return os.path.join(pycache, directory.lstrip(os.sep), f"{os.path.splitext(name)[0]}.{sys.implementation.cache_tag}.pyc")


# ---------------------------------------------------------------------------
# FA3 from the kernels hub
# ---------------------------------------------------------------------------

# Pinned kernel builds, tried in order: `v1` is the stable-API branch of each kernel repository.
FA3_HOPPER = [("varunneal/flash-attention-3", "v1"), ("kernels-community/flash-attn3", "v1")]  # sm_90
FA3_OTHER = [("kernels-community/flash-attn3", "v1")]  # Ampere / Ada


def hub_reachable(timeout=2.0):
    """True when the Hugging Face hub answers a TCP connect within `timeout` (DNS included)."""
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    result = []

    def probe():
        try:
            socket.create_connection((host, 443), timeout=timeout).close()
            result.append(True)
        except OSError:
            pass

    thread = threading.Thread(target=probe, daemon=True)  # a hung DNS lookup must not block us
    thread.start()
    thread.join(timeout)
    return bool(result)


def load_fa3():
    """(module, None) with `flash_attn_func`, or (None, reason). Never slow when offline."""
    import torch

    major, minor = torch.cuda.get_device_capability()
    if major < 8 or major >= 10:
        return None, f"no FA3 build for compute capability {major}.{minor}"
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() not in ("1", "true", "yes") and not hub_reachable():
        os.environ["HF_HUB_OFFLINE"] = "1"  # resolve from the local cache only
    try:
        import huggingface_hub.constants
        from kernels import get_kernel
    except ImportError as exc:
        return None, f"kernels is not installed ({exc})"
    if os.environ.get("HF_HUB_OFFLINE") == "1":  # the hub may have been imported before we decided
        huggingface_hub.constants.HF_HUB_OFFLINE = True
    reasons = []
    for repo, revision in FA3_HOPPER if (major, minor) == (9, 0) else FA3_OTHER:
        kwargs = {"revision": revision}
        if "trust_remote_code" in inspect.signature(get_kernel).parameters:
            kwargs["trust_remote_code"] = True  # varunneal is not one of `kernels`' trusted orgs
        try:
            module = get_kernel(repo, **kwargs)
        except Exception as exc:  # offline without a cached build, ABI mismatch, ...
            reasons.append(f"{repo}@{revision}: {type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:120]}")
            continue
        module = getattr(module, "flash_attn_interface", module)
        if hasattr(module, "flash_attn_func"):
            return module, None
        reasons.append(f"{repo}@{revision} has no flash_attn_func")
    return None, "; ".join(reasons)


# ---------------------------------------------------------------------------
# Environment and device
# ---------------------------------------------------------------------------

def env_int(name, default):
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"{name}={value!r}: must be an integer") from None


def fault_step():
    """AUTORESEARCH_FAULT=nan_at_step:N makes step N's loss NaN (tests the fast-fail path)."""
    value = os.environ.get("AUTORESEARCH_FAULT", "").strip()
    if not value:
        return None
    kind, _, arg = value.partition(":")
    if kind != "nan_at_step" or not arg.isdigit():
        raise ConfigError(f"AUTORESEARCH_FAULT={value!r}: the only fault is nan_at_step:N")
    return int(arg)


def select_device(smoke):
    """'cuda' or 'cpu', from AUTORESEARCH_DEVICE; unset, a GPU unless `smoke`."""
    wanted = os.environ.get("AUTORESEARCH_DEVICE", "").strip().lower()
    if wanted not in ("", "cuda", "cpu"):
        raise ConfigError(f"AUTORESEARCH_DEVICE={wanted!r}: use cuda or cpu")
    if wanted == "cuda" or (not wanted and not smoke):
        import torch

        if not torch.cuda.is_available():
            raise ConfigError("no CUDA GPU found; set AUTORESEARCH_SMOKE=1 for the tiny CPU configuration")
        return "cuda"
    return "cpu"


def forced_attention(device_type):
    """The kernel named by AUTORESEARCH_ATTENTION ('' when unset), checked against the device."""
    forced = os.environ.get("AUTORESEARCH_ATTENTION", "").strip().lower()
    if forced not in ("", "fa3", "flex", "sdpa"):
        raise ConfigError(f"AUTORESEARCH_ATTENTION={forced!r}: use fa3, flex or sdpa")
    if device_type != "cuda" and forced in ("fa3", "flex"):  # FlexAttention has no backward on a CPU
        raise ConfigError(f"AUTORESEARCH_ATTENTION={forced} needs a CUDA GPU; on a CPU use sdpa")
    return forced


# Dense (no 2:4 sparsity) bf16 tensor-core peaks, matched in order against the lower-case device
# name, more specific names first. GeForce cards: the FP32-accumulate rate.
PEAK_BF16_FLOPS = [
    ("gb200", 2.5e15), ("b200", 2.25e15), ("b100", 1.75e15),
    ("h200 nvl", 835e12), ("h200", 989.5e12),
    ("h100 nvl", 835e12), ("h100 pcie", 756e12), ("h100", 989.5e12),
    ("h800 pcie", 756e12), ("h800", 989.5e12), ("h20", 148e12),
    ("a100", 312e12), ("a800", 312e12),
    ("l40s", 362.05e12), ("l40", 181.05e12), ("l4", 121e12),
    ("a10g", 70e12), ("a10", 125e12), ("a40", 149.7e12), ("a30", 165e12),
    ("rtx 6000 ada", 364.2e12), ("rtx a6000", 154.8e12),
    ("rtx 5090", 209.5e12), ("rtx 4090", 165.2e12), ("rtx 3090", 71e12),
]


def peak_flops(device_name):
    """Dense bf16 peak FLOP/s of the named device, NaN when unknown."""
    name = device_name.lower()
    for key, flops in PEAK_BF16_FLOPS:
        if key in name:
            return flops
    return float("nan")


def device_peak_flops(device_type):
    """Dense bf16 peak FLOP/s of the device in use (NaN when unknown), after a line naming it."""
    import torch

    device_name = torch.cuda.get_device_name() if device_type == "cuda" else "cpu"
    peak = peak_flops(device_name)
    print(f"device: {device_name} (peak bf16 {peak / 1e12:.1f} TFLOP/s dense)" if math.isfinite(peak) else
          f"device: {device_name} (peak bf16 FLOP/s unknown: mfu_percent will be nan)")
    return peak


# ---------------------------------------------------------------------------
# A standalone run's own evaluation (under the harness, prepare/trusted_eval.py scores instead)
# ---------------------------------------------------------------------------

def eval_batch_size(wanted, eval_tokens=EVAL_TOKENS, seq_len=MAX_SEQ_LEN):
    """The largest batch <= wanted that divides the eval rows, so the evaluated tokens never change."""
    rows = max(1, eval_tokens // seq_len)
    return max(b for b in range(1, min(wanted, rows) + 1) if rows % b == 0)


class EvalModel:
    """The model as evaluate_bpb sees it: the compiled model at the eval batch size, the plain one
    for any other (the single-row causality check), so the evaluation compiles one graph, not two."""

    def __init__(self, compiled, plain, batch_size):
        self.compiled, self.plain, self.batch_size = compiled, plain, batch_size

    def parameters(self):
        return self.plain.parameters()

    def __call__(self, idx, targets=None, reduction="mean"):
        if idx.size(0) == self.batch_size:
            return self.compiled(idx, targets, reduction=reduction)
        with warnings.catch_warnings():  # uncompiled FlexAttention warns that it is slow: it is a 1-row check
            warnings.filterwarnings("ignore", message=".*flex_attention called without torch.compile.*")
            return self.plain(idx, targets, reduction=reduction)


def evaluate_standalone(model, raw_model, tokenizer, wanted_batch_size, autocast):
    """(val_bpb, seconds) of the trained model by prepare's fixed metric, `model` (compiled) in eval mode."""
    import torch

    from .evaluate import evaluate_bpb

    t_eval = time.perf_counter()
    model.eval()
    batch_size = eval_batch_size(wanted_batch_size)
    with torch.no_grad(), autocast:
        val_bpb = evaluate_bpb(EvalModel(model, raw_model, batch_size), tokenizer, batch_size)
    return val_bpb, time.perf_counter() - t_eval


# ---------------------------------------------------------------------------
# The summary block
# ---------------------------------------------------------------------------

def save_warmup_checkpoint(payload):
    """Under the population (AUTORESEARCH_WARMUP_CHECKPOINT set), an early copy of the model in the
    checkpoint's format: the model server compiles its forward on it while the training goes on
    (prepare/model_server.py), so the scoring after the training does not. Written whole or not at
    all; never scored. Nothing happens in a standalone run."""
    path = os.environ.get("AUTORESEARCH_WARMUP_CHECKPOINT", "").strip()
    if not path:
        return
    import torch

    partial = f"{path}.partial"
    torch.save(payload, partial)
    os.replace(partial, path)


def percentile(values, q):
    """Nearest-rank percentile (q in [0, 100]); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def format_summary(m):
    """The block the driver parses (keys as in the reference), then extra keys the bench reads."""
    lines = [
        "---",
        *([f"val_bpb:          {m['val_bpb']:.6f}"] if m["val_bpb"] is not None else []),
        f"training_seconds: {m['training_seconds']:.1f}",
        f"total_seconds:    {m['total_seconds']:.1f}",
        f"peak_vram_mb:     {m['peak_vram_mb']:.1f}",
        f"mfu_percent:      {m['mfu_percent']:.2f}",
        f"total_tokens_M:   {m['total_tokens_M']:.1f}",
        f"num_steps:        {m['num_steps']}",
        f"num_params_M:     {m['num_params_M']:.1f}",
        f"depth:            {m['depth']}",
        f"attention:        {m['attention']}",
        f"step_ms_p10:      {m['step_ms_p10']:.1f}",
        f"step_ms_p50:      {m['step_ms_p50']:.1f}",
        f"step_ms_p90:      {m['step_ms_p90']:.1f}",
        f"startup_seconds:  {m['startup_seconds']:.1f}",
        f"compile_seconds:  {m['compile_seconds']:.1f}",
        f"eval_seconds:     {m['eval_seconds']:.1f}",
    ]
    return "\n".join(lines)


def summary(*, val_bpb, training_seconds, step_times, num_steps, untimed_steps, tokens_per_step, flops_per_token,
            peak_flops, num_params, depth, attention, device_type, process_start, loop_start, compile_seconds,
            eval_seconds):
    """The summary block of a finished run: its metrics formatted by format_summary. The MFU counts
    the timed steps only (the untimed warm-up steps carry the compile); the tokens count them all."""
    import torch

    timed_steps = num_steps - untimed_steps
    metrics = dict(
        val_bpb=val_bpb,
        training_seconds=training_seconds,
        total_seconds=time.time() - process_start,
        peak_vram_mb=torch.cuda.max_memory_allocated() / 1024 / 1024 if device_type == "cuda" else 0.0,
        mfu_percent=(100 * flops_per_token * tokens_per_step * timed_steps / training_seconds / peak_flops
                     if training_seconds > 0 else float("nan")),
        total_tokens_M=num_steps * tokens_per_step / 1e6,
        num_steps=num_steps,
        num_params_M=num_params / 1e6,
        depth=depth,
        attention=attention,
        step_ms_p10=1000 * percentile(step_times, 10),
        step_ms_p50=1000 * percentile(step_times, 50),
        step_ms_p90=1000 * percentile(step_times, 90),
        startup_seconds=loop_start - process_start,
        compile_seconds=compile_seconds,
        eval_seconds=eval_seconds,
    )
    return format_summary(metrics)
