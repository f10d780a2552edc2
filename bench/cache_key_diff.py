#!/usr/bin/env python3
"""Why did a training miss torch.compile's cache? Compare the cache-key components of two logs.

Run both trainings with TORCH_LOGS="+torch._inductor.codecache,+torch._functorch._aot_autograd.autograd_cache"
(bench/gpu/compile_cache.sh does): inductor then logs, for every graph, each component of its
FX-graph and AOTAutograd cache keys with the component's hash. This prints the components whose
hash differs between the first graph of each log (the model's forward; later graphs share the
settings), e.g. `inductor_config[cpp.cxx]` when one run had CXX set and the other not.

    python bench/cache_key_diff.py warm-up.log missed.log
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

BLOCK_HEADERS = {"aot": "Autograd graph cache hash details", "fx": "FX graph cache hash details"}
COMPONENT = re.compile(r"\] \[(?P<hash>[a-z0-9]{40,64})\] (?P<name>[^:\s]+): ?(?P<value>.*)")


def first_key_components(log_text: str, header: str) -> dict[str, tuple[str, str]]:
    """Component name -> (hash, first line of its value), for the first key logged under `header`."""
    components: dict[str, tuple[str, str]] = {}
    in_block = False
    for line in log_text.splitlines():
        if "cache hash details for key" in line:
            if in_block:
                break                      # the next key (of either kind) starts: this one is complete
            in_block = header in line
            continue
        match = COMPONENT.search(line) if in_block else None
        if match:
            components.setdefault(match["name"], (match["hash"], match["value"][:200]))
    return components


def differing(a: dict[str, tuple[str, str]], b: dict[str, tuple[str, str]]) -> list[tuple[str, str, str]]:
    """(component, value in a, value in b) for every component whose hash differs or is missing."""
    missing = ("", "<absent>")
    return [(name, a.get(name, missing)[1], b.get(name, missing)[1])
            for name in sorted(set(a) | set(b)) if a.get(name, missing)[0] != b.get(name, missing)[0]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("log_a", type=Path, help="a training's log (the one that warmed the cache)")
    parser.add_argument("log_b", type=Path, help="another training's log (the one that missed)")
    args = parser.parse_args(argv)
    texts = [path.read_text(errors="replace") for path in (args.log_a, args.log_b)]
    found_any = False
    for kind, header in BLOCK_HEADERS.items():
        a, b = (first_key_components(text, header) for text in texts)
        if not a or not b:
            print(f"{kind}: no key logged in {args.log_b if a else args.log_a} (TORCH_LOGS unset, or an "
                  f"AOTAutograd hit, which skips the FX-graph key)")
            continue
        found_any = True
        diffs = differing(a, b)
        print(f"{kind}: {len(a)} components, {len(diffs)} differ")
        for name, value_a, value_b in diffs:
            print(f"  {name}\n    {args.log_a}: {value_a}\n    {args.log_b}: {value_b}")
    return 0 if found_any else 1


if __name__ == "__main__":
    sys.exit(main())
