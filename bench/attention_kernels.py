#!/usr/bin/env python3
"""The attention kernels the train file can choose, on its own shapes: same answer, and how long.

For each window the model uses (half the context for `S` layers, the whole of it for `L`), it runs
forward + backward through every kernel on the same random q, k, v, each under torch.compile as in
training, checks the output and the gradients against FlexAttention's (a kernel that gets the window
wrong shows a large difference), then times each with CUDA events (median of --iters calls).

    python bench/attention_kernels.py                 # the train file's shapes (128 rows of 2048)
    python bench/attention_kernels.py --rows 8        # smaller, to check the answers quickly

Kernels: `flex` is the train file's FlexAttention backend (SDPA for the full-context layers);
`flash` is torch's FlashAttention-2 kernel called with a left window (`aten._flash_attention_forward`);
`cudnn_chunks` builds the window from causal cuDNN pieces (ChunkedWindowAttention below), a candidate
that lost; `sdpa` is scaled_dot_product_attention, which has no window argument, so it is timed only
on the full-context layers. Needs a CUDA GPU. On a CPU the module imports (its tests check the
chunked decomposition there).
"""
from __future__ import annotations

import sys

import torch

from profile_engine import layer_bench_parser, load_train_file, median_cuda_ms


def cudnn_causal(q, k, v):
    """Causal attention over chunks: q, k, v (B, m, W, H, D) -> out (B, m, W, H, D) and the softmax
    log-sum-exp (B, m, W, H, 1), float32. Each chunk is its own sequence; cuDNN's kernel."""
    B, m, W, H, D = q.shape
    out, lse = torch.ops.aten._scaled_dot_product_cudnn_attention(
        *(t.reshape(B * m, W, H, D).transpose(1, 2) for t in (q, k, v)), None, True, 0.0, True, False)[:2]
    return out.transpose(1, 2).reshape(B, m, W, H, D), lse.reshape(B, m, H, W).transpose(2, 3).unsqueeze(-1)


def cudnn_causal_backward(grad_out, q, k, v, out, lse):
    """Gradients of cudnn_causal given the output and log-sum-exp of the WHOLE attention the chunks
    are part of (so pieces of one softmax get exact gradients, as in ring attention)."""
    B, m, W, H, D = q.shape
    heads_first = [t.reshape(B * m, W, H, D).transpose(1, 2) for t in (grad_out, q, k, v, out)]
    lse = lse.squeeze(-1).transpose(2, 3).reshape(B * m, H, W, 1)
    # no dropout (seed, offset unused), no bias, not variable-length (offsets undefined)
    grads = torch.ops.aten._scaled_dot_product_cudnn_attention_backward(
        *heads_first, lse, None, None, None, None, None, W, W, 0.0, True)
    return [g.transpose(1, 2).reshape(B, m, W, H, D) for g in grads]


class ChunkedWindowAttention(torch.autograd.Function):
    """Sliding-window causal attention (query i sees keys i - W .. i) from causal pieces: cut the
    sequence into chunks of W; a chunk sees itself causally and the chunk before it where key offset
    >= query offset, which is causal again with both chunks reversed. The two pieces are merged by
    their log-sum-exps; the backward gives each piece the merged output and log-sum-exp. The pieces
    do three quarters of a full causal layer's work, but on an H100 the flips, merges and
    concatenations cost more than that saves (BENCHMARKS.md). Needs T % W == 0 and as many key as
    query heads."""

    @staticmethod
    def forward(ctx, q, k, v, window):
        B, T, H, D = q.shape
        q, k, v = (t.view(B, T // window, window, H, D) for t in (q, k, v))
        out, lse = cudnn_causal(q, k, v)
        if T > window:
            rev = lambda t: t.flip(2)
            out_prev, lse_prev = (rev(t) for t in cudnn_causal(rev(q[:, 1:]), rev(k[:, :-1]), rev(v[:, :-1])))
            lse_tail = torch.logaddexp(lse[:, 1:], lse_prev)
            out_tail = out[:, 1:] * torch.exp(lse[:, 1:] - lse_tail) + out_prev * torch.exp(lse_prev - lse_tail)
            out = torch.cat([out[:, :1], out_tail.to(out.dtype)], 1)
            lse = torch.cat([lse[:, :1], lse_tail], 1)
        ctx.save_for_backward(q, k, v, out, lse)
        return out.view(B, T, H, D)

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, out, lse = ctx.saved_tensors
        grad_out = grad_out.reshape(out.shape)
        dq, dk, dv = cudnn_causal_backward(grad_out, q, k, v, out, lse)
        if q.size(1) > 1:
            rev = lambda t: t.flip(2)
            dq_prev, dk_prev, dv_prev = cudnn_causal_backward(
                rev(grad_out[:, 1:]), rev(q[:, 1:]), rev(k[:, :-1]), rev(v[:, :-1]), rev(out[:, 1:]), rev(lse[:, 1:]))
            dq = torch.cat([dq[:, :1], dq[:, 1:] + rev(dq_prev)], 1)
            dk = torch.cat([dk[:, :-1] + rev(dk_prev), dk[:, -1:]], 1)
            dv = torch.cat([dv[:, :-1] + rev(dv_prev), dv[:, -1:]], 1)
        shape = grad_out.shape[:1] + (-1,) + grad_out.shape[3:]
        return dq.reshape(shape), dk.reshape(shape), dv.reshape(shape), None


def flash(q, k, v, window):
    """q, k, v: (B, T, H, D); torch's FA2 kernel, query i sees keys j with 0 <= i - j <= window."""
    T = q.size(1)
    return torch.ops.aten._flash_attention_forward(
        q, k, v, None, None, T, T, 0.0, True, False, window_size_left=window, window_size_right=0)[0]


def cudnn_chunks(q, k, v, window):
    return ChunkedWindowAttention.apply(q, k, v, window)


def sdpa(q, k, v, window):
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2)


def forward_backward(kernel, q, k, v, window, grad_out):
    for t in (q, k, v):
        t.grad = None
    out = kernel(q, k, v, window)
    out.backward(grad_out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = layer_bench_parser(__doc__, iters=20)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--head-dim", type=int, default=128)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("attention_kernels: needs a CUDA GPU", file=sys.stderr)
        return 2
    train = load_train_file(args.train_file)
    torch.manual_seed(0)
    B, T, H, D = args.rows, args.seq_len, args.heads, args.head_dim
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}: {B} x {T} tokens, {H} heads of {D}, bf16")
    for label, window in (("S (half context)", T // 2), ("L (full context)", T)):
        q, k, v = (torch.randn(B, T, H, D, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
        grad_out = torch.randn(B, T, H, D, device="cuda", dtype=torch.bfloat16)
        flex = train.Attention("flex")
        if flex.needs_mask(T, window):  # block masks are built outside the compiled code, as in training
            flex.mask(T, window, q.device)
        kernels = {"flex": flex, "flash": flash}
        kernels |= {"sdpa": sdpa} if window >= T - 1 else {"cudnn_chunks": cudnn_chunks}
        kernels = {name: torch.compile(lambda q, k, v, window, f=kernel: f(q, k, v, window), dynamic=False)
                   for name, kernel in kernels.items()}
        reference = None
        for name, kernel in kernels.items():
            out = forward_backward(kernel, q, k, v, window, grad_out)
            result = [out.detach().float()] + [t.grad.float() for t in (q, k, v)]
            if reference is None:
                reference, diff = result, 0.0
            else:
                diff = max((a - b).abs().max().item() for a, b in zip(result, reference))
            ms = median_cuda_ms(lambda: forward_backward(kernel, q, k, v, window, grad_out), args.warmup, args.iters)
            print(f"{label:17s} {name:6s} forward+backward {ms:7.3f} ms   max |diff| vs flex (out, dq, dk, dv) {diff:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
