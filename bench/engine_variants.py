#!/usr/bin/env python3
"""Candidate speed-ups of engine/train.py, each timed against the file as it is on the same GPU.

Every variant is the train file with a few exact text replacements (a replacement that no longer
matches is an error, so a variant never silently times the unchanged file). Each runs in its own
process through bench/profile_engine.py (`--no-profile`: step times only, on random tokens), cold
compile included in its warm-up, so the table also shows what a variant costs in compile time.

    python bench/engine_variants.py                      # every variant
    python bench/engine_variants.py base qkv_cat         # some of them
    python bench/engine_variants.py mlp_torch+ce_plain   # two at once: the file before session 8
    python bench/engine_variants.py --list

The step is what decides the tokens in a fixed budget: tokens ~ 1 / step time. Needs a CUDA GPU.
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TRAIN_FILE = REPO / "engine" / "train.py"

_AFTER_TORCH_IMPORT = "import torch.nn.functional as F\n"
_FLEX_CALL = "flex_attention(q, k, v, block_mask=self.mask(T, window, q.device), enable_gqa=gqa)"
_QKV = ("        q = self.c_q(x).view(B, T, self.n_head, self.head_dim)\n"
        "        k = self.c_k(x).view(B, T, self.n_kv_head, self.head_dim)\n"
        "        v = self.c_v(x).view(B, T, self.n_kv_head, self.head_dim)\n")

# torch's FA2 kernel takes bf16 (B, T, H, D) (rms_norm runs in fp32 under autocast, so q and k are
# cast); the flex call site has (B, H, T, D) views, so _flash transposes back and forth.
_FLASH = ("def _flash_bthd(q, k, v, window):\n"
          "    T = q.size(1)\n"
          "    q, k, v = q.bfloat16(), k.bfloat16(), v.bfloat16()\n"
          "    return torch.ops.aten._flash_attention_forward(q, k, v, None, None, T, T, 0.0, True, False, "
          "window_size_left=window, window_size_right=0)[0]\n"
          "def _flash(q, k, v, window):\n"
          "    return _flash_bthd(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), window).transpose(1, 2)\n")


# Liger's kernels run outside the compiled graph (torch.compiler.disable): traced by dynamo, its
# imports pull in scipy and its cross-entropy kernel fails Triton's type check (2026-11-22, H100).
_LIGER = ("from liger_kernel.ops.cross_entropy import LigerCrossEntropyFunction as _LigerCE\n"
          "from liger_kernel.ops.fused_linear_cross_entropy import LigerFusedLinearCrossEntropyFunction as _LigerFLCE\n"
          "@torch.compiler.disable\n"
          "def _liger_ce(logits, targets, cap):\n"
          "    return _LigerCE.apply(logits, targets, None, -1, 0.0, 0.0, 'mean', cap)[0]\n"
          "@torch.compiler.disable\n"
          "def _liger_flce(x, weight, targets, cap):\n"
          "    return _LigerFLCE.apply(x, weight, targets, None, None, -1, 0.0, 0.0, 'mean', cap)[0]\n")


def _liger_loss(call: str) -> list[tuple[str, str]]:
    """The training loss (mean) through a Liger kernel; evaluation keeps the file's own path."""
    return [(_AFTER_TORCH_IMPORT, _AFTER_TORCH_IMPORT + _LIGER), (_TRAINING_LOSS, f"            return {call}\n")]


# The training loss and the MLP's kernels, as the file has them since session 8 (variants undo them).
_TRAINING_LOSS_IF = '        if targets is not None and reduction == "mean":  # training: the same loss, a leaner backward\n'
_TRAINING_LOSS = "            return SoftcapCrossEntropy.apply(self.lm_head(x).flatten(0, 1), targets.reshape(-1), cap)\n"
_FUSED_MLP_IF = "        if self.fused:\n            return relu2_mlp("

# name -> (what it tries, [(old, new), ...])
VARIANTS: dict[str, tuple[str, list[tuple[str, str]]]] = {
    "base": ("the file as it is", []),
    "qkv_cat": (
        "q, k and v from one matmul over the concatenated weights (same parameters, same math)",
        [(_QKV,
          "        q_dim, kv_dim = self.n_head * self.head_dim, self.n_kv_head * self.head_dim\n"
          "        qkv = F.linear(x, torch.cat([self.c_q.weight, self.c_k.weight, self.c_v.weight]))\n"
          "        q, k, v = qkv.split([q_dim, kv_dim, kv_dim], dim=-1)\n"
          "        q = q.view(B, T, self.n_head, self.head_dim)\n"
          "        k = k.view(B, T, self.n_kv_head, self.head_dim)\n"
          "        v = v.view(B, T, self.n_kv_head, self.head_dim)\n")]),
    "cudnn_full": (
        "the full-context layers through cuDNN's attention instead of SDPA's flash kernel",
        [(_AFTER_TORCH_IMPORT, _AFTER_TORCH_IMPORT +
          "torch.backends.cuda.enable_flash_sdp(False)\n"
          "torch.backends.cuda.enable_mem_efficient_sdp(False)\n"
          "torch.backends.cuda.enable_cudnn_sdp(True)\n")]),
    "flex_tma": (
        "FlexAttention forward and backward with Hopper's TMA loads",
        [(_FLEX_CALL, _FLEX_CALL[:-1] + ', kernel_options={"USE_TMA": True})')]),
    "flex_fwd64": (
        "FlexAttention's forward on 64x64 tiles, 4 warps (flex_autotune's winner on an H100)",
        [(_FLEX_CALL, _FLEX_CALL[:-1] + ', kernel_options={"fwd_BLOCK_M": 64, "fwd_BLOCK_N": 64, '
                                        '"fwd_num_warps": 4, "fwd_num_stages": 3})')]),
    "flex_autotune": (
        "FlexAttention's block sizes autotuned (matmuls stay on cuBLAS); the winners are in the log",
        [(_AFTER_TORCH_IMPORT, _AFTER_TORCH_IMPORT +
          "import torch._inductor.config as _inductor_config\n"
          "_inductor_config.max_autotune = True\n"
          "_inductor_config.max_autotune_gemm_backends = 'ATEN'\n")]),
    "gemm_autotune": (
        "matmuls autotuned against Triton templates, which can fuse ReLU² and casts into their epilogue",
        [(_AFTER_TORCH_IMPORT, _AFTER_TORCH_IMPORT +
          "import torch._inductor.config as _inductor_config\n"
          "_inductor_config.max_autotune = True\n"
          "_inductor_config.max_autotune_gemm_backends = 'ATEN,TRITON'\n")]),
    "liger_ce": (
        "the loss through Liger's cross-entropy kernel (softcap, log-softmax, loss and gradient in one pass, "
        "no fp32 copy of the logits)",
        _liger_loss("_liger_ce(self.lm_head(x).flatten(0, 1), targets.reshape(-1), cap)")),
    "liger_flce": (
        "the lm_head matmul and the loss fused by Liger in chunks: the logits are never stored",
        _liger_loss("_liger_flce(x.flatten(0, 1), self.lm_head.weight, targets.reshape(-1), cap)")),
    "flash_window": (
        "the windowed layers through torch's own FlashAttention-2 kernel with a left window "
        "(aten._flash_attention_forward) instead of FlexAttention",
        [(_AFTER_TORCH_IMPORT, _AFTER_TORCH_IMPORT + _FLASH),
         (_FLEX_CALL, "_flash(q, k, v, window)")]),
    "flash_all": (
        "every layer through torch's FlashAttention-2 kernel, called on (B, T, H, D) without transposes",
        [(_AFTER_TORCH_IMPORT, _AFTER_TORCH_IMPORT + _FLASH),
         ("        gqa = k.size(2) != q.size(2)\n",
          "        return _flash_bthd(q, k, v, window)\n"
          "        gqa = k.size(2) != q.size(2)\n")]),
    "mlp_torch": (
        "the MLP as plain torch, compiled by inductor, without its Triton kernels (the file before session 8)",
        [(_FUSED_MLP_IF, "        if False:\n            return relu2_mlp(")]),
    "ce_plain": (
        "the training loss through inductor's graph instead of SoftcapCrossEntropy (the file before session 8)",
        [(_TRAINING_LOSS_IF, "        if False:\n")]),
    "coord": (
        "inductor's coordinate-descent tuning of its own (norm, elementwise, loss) kernels",
        [(_AFTER_TORCH_IMPORT, _AFTER_TORCH_IMPORT +
          "import torch._inductor.config as _inductor_config\n"
          "_inductor_config.coordinate_descent_tuning = True\n")]),
}


def replacements(name: str) -> list[tuple[str, str]]:
    """A variant's replacements; `a+b` applies a's, then b's (both must still match)."""
    return [pair for part in name.split("+") for pair in VARIANTS[part][1]]


def describe(name: str) -> str:
    return "; and ".join(VARIANTS[part][0] for part in name.split("+"))


def variant_text(source: str, name: str) -> str:
    """The train file's text with the variant's replacements; a replacement that misses is an error."""
    text = source
    for old, new in replacements(name):
        if text.count(old) != 1:
            raise ValueError(f"variant {name}: expected exactly one {old.splitlines()[0].strip()!r} in the train file")
        text = text.replace(old, new)
    return text


STEP_LINE = re.compile(r"step ms: p10 ([\d.]+)\s+median ([\d.]+)\s+p90 ([\d.]+)")
WARMUP_LINE = re.compile(r"warm-up ([\d.]+) s")


def parse_profile_output(text: str) -> dict[str, float] | None:
    """Step p10/median/p90 (ms) and warm-up seconds from profile_engine's output, None if absent."""
    step, warmup = STEP_LINE.search(text), WARMUP_LINE.search(text)
    if not step:
        return None
    p10, median, p90 = map(float, step.groups())
    return {"p10": p10, "median": median, "p90": p90, "warmup_s": float(warmup.group(1)) if warmup else float("nan")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help="variants to time (default: all); base is always timed first")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=240.0, help="seconds per variant")
    parser.add_argument("--log-dir", type=Path, help="where each variant's file and output go")
    parser.add_argument("--list", action="store_true", help="list the variants and exit")
    args = parser.parse_args(argv)
    if args.list:
        for name, (what, _) in VARIANTS.items():
            print(f"{name:14s} {what}")
        return 0
    unknown = [n for n in args.names if any(part not in VARIANTS for part in n.split("+"))]
    if unknown:
        parser.error(f"unknown variant(s) {', '.join(unknown)}; --list shows them")
    names = ["base"] + [n for n in (args.names or VARIANTS) if n != "base"]
    source = TRAIN_FILE.read_text()
    texts = {name: variant_text(source, name) for name in names}  # every variant applies, before any GPU time
    log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix="engine_variants_"))
    log_dir.mkdir(parents=True, exist_ok=True)
    print(f"logs: {log_dir}")
    results = {}
    for name in names:
        path = log_dir / f"{name}.py"
        path.write_text(texts[name])
        cmd = [sys.executable, str(REPO / "bench" / "profile_engine.py"), "--train-file", str(path),
               "--no-profile", "--steps", str(args.steps), "--warmup", str(args.warmup)]
        try:
            proc = subprocess.run(cmd, cwd=REPO, capture_output=True, timeout=args.timeout)
            output = (proc.stdout + proc.stderr).decode(errors="replace")
        except subprocess.TimeoutExpired as exc:
            output = ((exc.stdout or b"") + (exc.stderr or b"")).decode(errors="replace")
            output += f"\ntimed out after {args.timeout:.0f} s"
        (log_dir / f"{name}.log").write_text(output)
        results[name] = parse_profile_output(output)
        r = results[name]
        print(f"{name:14s} " + (f"median {r['median']:.1f} ms  (p10 {r['p10']:.1f}, p90 {r['p90']:.1f}), "
                                 f"warm-up {r['warmup_s']:.0f} s" if r else "failed: see its log"), flush=True)
    base = results.get("base")
    print(f"\n{'variant':14s} {'median ms':>9s} {'vs base':>8s} {'warm-up s':>9s}  what")
    for name in names:
        r = results[name]
        if r is None:
            print(f"{name:14s} {'failed':>9s} {'':>8s} {'':>9s}  {describe(name)}")
            continue
        ratio = f"{base['median'] / r['median']:.3f}x" if base else "n/a"
        print(f"{name:14s} {r['median']:9.1f} {ratio:>8s} {r['warmup_s']:9.0f}  {describe(name)}")
    return 0 if base else 1


if __name__ == "__main__":
    sys.exit(main())
