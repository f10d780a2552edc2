#!/usr/bin/env python3
"""The train file's ReLU² MLP, plain torch against its Triton kernels (`MLP.fused`), on its shapes.

One layer's MLP, forward + backward, on the same random input (fp32, as the residual stream's norm
gives it) and fp32 weights under bf16 autocast, as in training; each under torch.compile, and the
kernels also eagerly. The kernels' output and gradients are checked against the plain formula's,
then each is timed with CUDA events (median of --iters calls).

    python bench/mlp_kernels.py              # 128 rows of 2048 tokens, the file's width
    python bench/mlp_kernels.py --rows 8     # smaller, to check the answers quickly

Needs a CUDA GPU with Triton.
"""
from __future__ import annotations

import sys

import torch

from profile_engine import layer_bench_parser, load_train_file, median_cuda_ms


def forward_backward(mlp, x, grad_y):
    x.grad = None
    mlp.zero_grad(set_to_none=True)
    with torch.amp.autocast(device_type="cuda", dtype=torch.bfloat16):
        y = mlp(x)
    y.backward(grad_y)
    return y


def main(argv: list[str] | None = None) -> int:
    parser = layer_bench_parser(__doc__, iters=30)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("mlp_kernels: needs a CUDA GPU", file=sys.stderr)
        return 2
    train = load_train_file(args.train_file)
    config = train.build_config(8192, args.seq_len)
    torch.manual_seed(0)
    mlp = train.MLP(config).cuda()
    for weight in (mlp.c_fc.weight, mlp.c_proj.weight):
        torch.nn.init.normal_(weight, std=weight.shape[1] ** -0.5)
    C, H = config.n_embd, config.mlp_ratio * config.n_embd
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}: {args.rows} x {args.seq_len} tokens, "
          f"width {C} -> {H} -> {C}, bf16 autocast")
    x = torch.randn(args.rows, args.seq_len, C, device="cuda", requires_grad=True)
    grad_y = torch.randn(args.rows, args.seq_len, C, device="cuda", dtype=torch.bfloat16)

    # name -> (module, MLP.fused)
    variants = {"torch": (torch.compile(mlp, dynamic=False), False),
                "triton": (torch.compile(mlp, dynamic=False), True), "triton eager": (mlp, True)}
    reference, times = None, {}
    for name, (module, fused) in variants.items():
        mlp.fused = fused
        torch._dynamo.reset()
        y = forward_backward(module, x, grad_y)
        result = [y.detach().float(), x.grad.float(), mlp.c_fc.weight.grad.float(), mlp.c_proj.weight.grad.float()]
        if reference is None:
            reference, diffs = result, "(reference)"
        else:
            # relative to each tensor's largest value: the kernel squares the fp32 accumulator, torch
            # squares the bf16-rounded pre-activation, so they differ by bf16 rounding
            diffs = ", ".join(f"{(a - b).abs().max().item() / b.abs().max().item():.4f}"
                              for a, b in zip(result, reference))
            diffs = f"max |diff| / max (y, dx, dW1, dW2) vs torch: {diffs}"
        times[name] = median_cuda_ms(lambda: forward_backward(module, x, grad_y), args.warmup, args.iters)
        print(f"{name:16s} forward+backward {times[name]:7.3f} ms   {diffs}", flush=True)
    calls = config.n_layer * max(1, train.TOTAL_BATCH_SIZE // (args.rows * args.seq_len))
    print(f"triton / torch: {times['torch'] / times['triton']:.3f}x; at {calls} MLP calls a step "
          f"({config.n_layer} layers x micro-batches): {calls * (times['torch'] - times['triton']):.1f} ms a step saved")
    return 0


if __name__ == "__main__":
    sys.exit(main())
