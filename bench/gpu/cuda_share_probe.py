"""Can a sandboxed process (bwrap, its own PID namespace) write into GPU memory that a process
outside allocated? prepare/cuda_share.py's VMM buffers, shared as inherited file descriptors.

    python bench/gpu/cuda_share_probe.py [--bwrap PATH]

Prints one line per variant: no sandbox, bwrap with the whole filesystem read-only, bwrap with
only the system directories and this Python bound (what population/sandbox.py binds), and how
long a fresh process takes to import torch and make a CUDA context.
"""
from __future__ import annotations

import argparse
import glob
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

CHILD = r"""
import sys, time, torch
sys.path.insert(0, {root!r})
from prepare import cuda_share
t0 = time.perf_counter()
torch.zeros(1, device="cuda")
t1 = time.perf_counter()
fd, size, n = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
buf = cuda_share.open_shared(fd, size)
x = buf.tensor(torch.float32, (n,))
seen = float(x.double().sum())
x.mul_(2.0)
torch.cuda.synchronize()
print(f"child: cuda init {{t1 - t0:.2f}} s, saw sum {{seen:.0f}}, doubled it")
"""


def bwrap_full(bwrap: str) -> list[str]:
    devs = [a for d in glob.glob("/dev/nvidia*") for a in ("--dev-bind", d, d)]
    return [bwrap, "--ro-bind", "/", "/", "--dev", "/dev", *devs, "--proc", "/proc", "--tmpfs", "/tmp",
            "--unshare-all", "--die-with-parent", "--"]


def bwrap_minimal(bwrap: str) -> list[str]:
    devs = [a for d in glob.glob("/dev/nvidia*") for a in ("--dev-bind", d, d)]
    binds = []
    for path in ["/usr", "/bin", "/sbin", "/lib", "/lib64", "/lib32", "/etc", "/opt", "/sys", sys.prefix,
                 sys.base_prefix, ROOT, *[p for p in sys.path if p.startswith("/") and os.path.isdir(p)]]:
        if os.path.exists(path):
            binds += ["--ro-bind", path, path]
    return [bwrap, *binds, "--dev", "/dev", *devs, "--proc", "/proc", "--tmpfs", "/tmp", "--unshare-all",
            "--die-with-parent", "--"]


def trial(name: str, prefix: list[str]) -> None:
    import torch
    from prepare import cuda_share

    n = 1 << 24
    buf = cuda_share.allocate(4 * n)
    x = buf.tensor(torch.float32, (n,))
    x.copy_(torch.ones(n, device="cuda"))
    torch.cuda.synchronize()
    started = time.perf_counter()
    out = subprocess.run([*prefix, sys.executable, "-c", CHILD.format(root=ROOT), str(buf.fd), str(buf.size), str(n)],
                         pass_fds=(buf.fd,), capture_output=True, text=True, timeout=300)
    wall = time.perf_counter() - started
    total = float(x.double().sum())
    ok = out.returncode == 0 and total == 2.0 * n
    print(f"{name}: {'OK' if ok else 'FAILED'} (exit {out.returncode}, sum after {total:.0f}, "
          f"expected {2 * n}, child wall {wall:.2f} s) {out.stdout.strip()} {out.stderr.strip()[-600:]}", flush=True)
    buf.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bwrap", default="bwrap")
    args = parser.parse_args()
    import torch
    torch.zeros(1, device="cuda")
    print(f"gpu: {torch.cuda.get_device_name()}, torch {torch.__version__}", flush=True)
    trial("no sandbox", [])
    trial("bwrap, / read-only, own pid namespace", bwrap_full(args.bwrap))
    trial("bwrap, system dirs only, own pid namespace", bwrap_minimal(args.bwrap))
    return 0


if __name__ == "__main__":
    sys.exit(main())
