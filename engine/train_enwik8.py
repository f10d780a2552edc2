"""Character-level enwik8 with x-transformers: THE file an agent edits for the `enwik8` task.

One run trains for a fixed budget of training seconds (compile warm-up excluded) on the train split
only, then, under the population (AUTORESEARCH_CHECKPOINT set), saves the model for the harness,
whose trusted evaluator scores it (val_bpc: bits per character over the same validation
characters at the same context, from the logits of `load_model`'s model); run by hand, it scores
itself with the same fixed metric of prepare/enwik8.py. Then it prints a summary block.

    python engine/train_enwik8.py                       # GPU, bf16 autocast, 300 s
    USE_FP8=1 python engine/train_enwik8.py             # torchao float8 training (compute capability >= 8.9)
    AUTORESEARCH_SMOKE=1 python engine/train_enwik8.py  # tiny CPU configuration
"""
import os
import time

T_START = time.time()
os.environ.setdefault("PYTORCH_ALLOC_CONF", "expandable_segments:True")

import math
import sys

import torch
from x_transformers import AutoregressiveWrapper, Decoder, TransformerWrapper

from prepare.enwik8 import (EVAL_SEQ_LEN, SMOKE, TIME_BUDGET, VOCAB_SIZE, CausalityError,
                            evaluate_bpc, random_windows)
from prepare.runtime import peak_flops as device_name_peak_flops

# ---------------------------------------------------------------------------------------------
# Device and precision (bf16 autocast by default; USE_FP8=1 -> torchao float8 for the body)

DEVICE = os.environ.get("AUTORESEARCH_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
SEED = int(os.environ.get("AUTORESEARCH_SEED", "42"))


def pick_precision() -> str:
    if DEVICE != "cuda":
        if os.environ.get("USE_FP8") == "1":
            print("FP8 is not supported on the CPU; training in fp32")
        return "fp32"                              # bf16 matmuls are slow on CPUs
    if os.environ.get("USE_FP8") != "1":
        return "bf16"
    capability = torch.cuda.get_device_capability()
    if capability < (8, 9):
        print(f"FP8 is not supported on this GPU (compute capability {capability[0]}.{capability[1]}, "
              "needs >= 8.9); training in bf16")
        return "bf16"
    try:
        import torchao.float8  # noqa: F401
    except ImportError:
        print("FP8 needs torchao, which is not installed; training in bf16")
        return "bf16"
    return "fp8"


PRECISION = pick_precision()

# ---------------------------------------------------------------------------------------------
# Optimizer import (MuonAdamAtan2; AdamW when adam-atan2-pytorch is missing)

try:
    from adam_atan2_pytorch import MuonAdamAtan2
except ImportError:
    MuonAdamAtan2 = None

# ---------------------------------------------------------------------------------------------
# Fixed (do not modify): the budget and the metric live in prepare/enwik8.py

COMPILE_WARMUP_STEPS = 5  # fixed: steps 0..5 (compile) are not counted in the budget

# ---------------------------------------------------------------------------------------------
# Hyperparameters (edit these)

# model
DIM = 512
DEPTH = 6
HEADS = 8
# optimization
LR = 1e-4
BATCH_SIZE = 4            # sequences per micro-batch
GRAD_ACCUM = 4            # micro-batches per optimizer step: 16 x 1024 = 16,384 characters
SEQ_LEN = 1024            # training context; the metric always uses EVAL_SEQ_LEN
WEIGHT_DECAY = 0.01       # used by the AdamW fallback only
GRAD_CLIP = 0.5
WARMUP_RATIO = 0.05       # of the time budget
WARMDOWN_RATIO = 0.3      # linear decay over the last 30 % of the budget
FINAL_LR_FRAC = 0.0
# bookkeeping (outside the budget)
LOG_EVERY = 25
EVAL_BATCH_SIZE = 32      # windows per forward pass of the final evaluation
COMPILE = True            # torch.compile on the GPU

if SMOKE:  # tiny CPU configuration (tests, laptops): the recipe above scaled down, so its edits still count
    DIM, DEPTH, HEADS = max(DIM // 8, 16), max(DEPTH // 3, 1), max(HEADS // 2, 1)
    SEQ_LEN, BATCH_SIZE, GRAD_ACCUM = max(SEQ_LEN // 8, 16), 2 * BATCH_SIZE, max(GRAD_ACCUM // 4, 1)
    LR = 20 * LR
    LOG_EVERY, EVAL_BATCH_SIZE = 10, 64
    if DEVICE == "cpu":
        torch.set_num_threads(1)  # its matmuls are too small to gain from threads; a CPU population runs one per core

# ---------------------------------------------------------------------------------------------
# Model


def build_model() -> AutoregressiveWrapper:
    net = TransformerWrapper(
        num_tokens=VOCAB_SIZE,
        max_seq_len=max(SEQ_LEN + 1, EVAL_SEQ_LEN),  # the wrapper feeds SEQ_LEN + 1 positions
        attn_layers=Decoder(
            dim=DIM,
            depth=DEPTH,
            heads=HEADS,
            rotary_pos_emb=True,
            attn_flash=True,
            attn_qk_norm=True,
            ff_relu_squared=True,
            use_rmsnorm=True,
        ),
    )
    return AutoregressiveWrapper(net)


def load_model(checkpoint_path, device):
    """The evaluator's way back to the trained model (keep it working when you change the model):
    what main() saved, as a module mapping character ids (B, T) to logits (B, T, 256)."""
    model = build_model()
    model.load_state_dict(torch.load(checkpoint_path, map_location="cpu", weights_only=True)["model"])
    return model.net.to(device).eval()


# ---------------------------------------------------------------------------------------------
# FP8 (USE_FP8=1): train with torchao Float8Linear layers, evaluate with plain ones


def use_float8_linears(model: AutoregressiveWrapper) -> None:
    """Swap the decoder's nn.Linear layers for torchao's Float8Linear (dynamic per-tensor scaling).
    Off the GPU torchao emulates the FP8 matmuls (CPU tests)."""
    from torchao.float8 import Float8LinearConfig, convert_to_float8_training
    config = Float8LinearConfig(pad_inner_dim=True, emulate=DEVICE != "cuda")
    convert_to_float8_training(model.net.attn_layers, config=config)


def use_plain_linears(model: torch.nn.Module) -> None:
    """Swap every Float8Linear back to an nn.Linear sharing its weight and bias (no copy), so the
    model evaluates in bf16. A Float8Linear scales its input by the max over the whole batch, which
    makes one window's predictions depend on the other windows: the metric's guard refuses that."""
    from torchao.float8.float8_linear import Float8Linear
    for name, module in list(model.named_modules()):
        if isinstance(module, Float8Linear):
            plain = torch.nn.Linear(module.in_features, module.out_features, bias=module.bias is not None,
                                    device="meta")         # no allocation: the parameters are shared
            plain.weight, plain.bias = module.weight, module.bias
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, plain)


# ---------------------------------------------------------------------------------------------
# Optimizer


def build_optimizer(model: AutoregressiveWrapper) -> torch.optim.Optimizer:
    if MuonAdamAtan2 is None:
        print("adam-atan2-pytorch is not installed; falling back to AdamW")
        return torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    return MuonAdamAtan2(muon_params=model.net.muon_parameters(), params=model.parameters(),
                         remove_muon_params_from_params=True, lr=LR)


# ---------------------------------------------------------------------------------------------
# Schedule: driven by training time, not steps


def lr_multiplier(progress: float) -> float:
    if progress < WARMUP_RATIO:
        return progress / WARMUP_RATIO
    if progress < 1.0 - WARMDOWN_RATIO:
        return 1.0
    cooldown = (1.0 - progress) / WARMDOWN_RATIO
    return cooldown + (1.0 - cooldown) * FINAL_LR_FRAC


# ---------------------------------------------------------------------------------------------
# Autocast


def autocast():
    if PRECISION == "fp32":
        return torch.autocast(device_type=DEVICE, enabled=False)
    return torch.autocast(device_type=DEVICE, dtype=torch.bfloat16)


# ---------------------------------------------------------------------------------------------
# FLOPs and MFU

def peak_flops() -> float:
    """The GPU's dense bf16 peak (the fixed side's table, prepare/runtime.py), NaN on the CPU."""
    if DEVICE != "cuda":
        return float("nan")
    name = torch.cuda.get_device_name()
    peak = device_name_peak_flops(name)
    if math.isnan(peak):
        print(f"no bf16 peak known for {name}; mfu_percent is NaN")
    return peak


def flops_per_token(model: torch.nn.Module, seq_len: int) -> float:
    """6 x matmul weights (lm head included, embedding excluded) + 12 x attention width x context."""
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    attention = sum(m.to_q.out_features for m in model.modules() if hasattr(m, "to_q"))
    return 6 * linear + 12 * attention * seq_len


# ---------------------------------------------------------------------------------------------
# Training


def final_val_bpc(model: AutoregressiveWrapper) -> float:
    """The fixed metric; an FP8-trained model is scored in bf16 on the same weights."""
    if PRECISION == "fp8":
        use_plain_linears(model)
    model.eval()
    with autocast():
        return evaluate_bpc(lambda x: model.net(x), EVAL_BATCH_SIZE, DEVICE)


def main() -> None:
    torch.manual_seed(SEED)
    train_batches = random_windows("train", BATCH_SIZE, SEQ_LEN, DEVICE, seed=SEED)   # windows of SEQ_LEN + 1
    model = build_model().to(DEVICE)
    num_params = sum(p.numel() for p in model.parameters())
    if PRECISION == "fp8":
        use_float8_linears(model)
    optimizer = build_optimizer(model)
    step_fn = torch.compile(model, dynamic=False) if COMPILE and DEVICE == "cuda" else model
    tokens_per_step = BATCH_SIZE * GRAD_ACCUM * SEQ_LEN
    flops_token, peak = flops_per_token(model, SEQ_LEN), peak_flops()
    print(f"device {DEVICE}, precision {PRECISION}, {num_params / 1e6:.1f} M parameters, "
          f"{tokens_per_step:,} characters per step, budget {TIME_BUDGET:.0f} s")

    step, total_training_time, smooth_loss = 0, 0.0, 0.0
    while True:
        if DEVICE == "cuda":
            torch.cuda.synchronize()
        t0 = time.time()
        progress = min(total_training_time / TIME_BUDGET, 1.0)
        lr = LR * lr_multiplier(progress)
        for group in optimizer.param_groups:
            group["lr"] = lr
        for _ in range(GRAD_ACCUM):
            with autocast():
                loss = step_fn(next(train_batches))
            (loss / GRAD_ACCUM).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        train_loss = loss.item()                   # last micro-batch; also syncs
        if not math.isfinite(train_loss) or train_loss > 100:
            print(f"FAIL: training loss {train_loss} at step {step} (NaN or exploded); stopping")
            sys.exit(1)
        dt = time.time() - t0
        if step > COMPILE_WARMUP_STEPS:
            total_training_time += dt

        smooth_loss = 0.9 * smooth_loss + 0.1 * train_loss
        if step % LOG_EVERY == 0:
            debiased = smooth_loss / (1 - 0.9 ** (step + 1))
            mfu = 100 * flops_token * tokens_per_step / dt / peak
            print(f"step {step:5d} | {100 * progress:5.1f}% | loss {debiased:.4f} nats | lr {lr:.2e} | "
                  f"{1000 * dt:6.0f} ms | {tokens_per_step / dt:9,.0f} chars/s | mfu {mfu:5.1f}% | "
                  f"left {max(TIME_BUDGET - total_training_time, 0):.0f} s", flush=True)
        step += 1
        if step > COMPILE_WARMUP_STEPS and total_training_time >= TIME_BUDGET:
            break

    # -----------------------------------------------------------------------------------------
    # The model for the harness's evaluator (under the population), or the fixed metric here; summary

    checkpoint = os.environ.get("AUTORESEARCH_CHECKPOINT", "").strip()
    val_bpc = None
    if checkpoint:
        if PRECISION == "fp8":
            use_plain_linears(model)       # scored in bf16 on the same weights
        torch.save({"model": model.state_dict()}, checkpoint)
        print(f"checkpoint: {checkpoint}")
    else:
        val_bpc = final_val_bpc(model)
    t_end = time.time()
    counted_steps = step - COMPILE_WARMUP_STEPS - 1
    mfu = 100 * flops_token * tokens_per_step * counted_steps / max(total_training_time, 1e-9) / peak
    peak_vram_mb = torch.cuda.max_memory_allocated() / 1024 / 1024 if DEVICE == "cuda" else 0.0
    print("---")
    if val_bpc is not None:
        print(f"val_bpc:          {val_bpc:.6f}")
    print(f"training_seconds: {total_training_time:.1f}")
    print(f"total_seconds:    {t_end - T_START:.1f}")
    print(f"peak_vram_mb:     {peak_vram_mb:.1f}")
    print(f"mfu_percent:      {mfu:.2f}")
    print(f"total_tokens_M:   {step * tokens_per_step / 1e6:.1f}")
    print(f"num_steps:        {step}")
    print(f"num_params_M:     {num_params / 1e6:.1f}")
    print(f"depth:            {DEPTH}")
    print(f"precision:        {PRECISION}")


if __name__ == "__main__":
    try:
        main()
    except (FileNotFoundError, CausalityError) as e:
        sys.exit(f"FAIL: {e}")
