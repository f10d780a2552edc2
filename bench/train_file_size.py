#!/usr/bin/env python3
"""What an agent reads per experiment: the train file, and the train file with program.md (issue 24).

Bytes, lines and tokens (tiktoken's cl100k_base and o200k_base) of each, at a git revision or in
the working tree. program.md is counted as it is on disk (its `{train_file}`-style placeholders
unfilled); the lineage context the driver adds varies per experiment and is not counted.

    python bench/train_file_size.py                  # the working tree
    python bench/train_file_size.py e38600c HEAD     # one row per revision and file set

tiktoken downloads its encodings on first use; offline, point TIKTOKEN_CACHE_DIR at a cache that
holds them (tokens print as n/a otherwise).
"""
from __future__ import annotations

import argparse
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ENCODINGS = ("cl100k_base", "o200k_base")
SETS = {"engine/train.py": ["engine/train.py"],
        "engine/train.py + program.md": ["engine/train.py", "program.md"]}


def read(path: str, revision: str | None) -> str:
    if revision is None:
        return (REPO / path).read_text(encoding="utf-8")
    return subprocess.run(["git", "show", f"{revision}:{path}"], cwd=REPO, check=True, capture_output=True,
                          text=True).stdout


def encoders() -> dict:
    try:
        import tiktoken
        return {name: tiktoken.get_encoding(name) for name in ENCODINGS}
    except Exception as exc:  # offline without a cache, or no tiktoken
        print(f"tokens: n/a ({type(exc).__name__}: {str(exc).splitlines()[0][:100]})")
        return {}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("revisions", nargs="*", help="git revisions (default: the working tree)")
    args = parser.parse_args(argv)
    encs = encoders()
    print(f"| revision | files | bytes | lines | {' | '.join(f'tokens ({n})' for n in ENCODINGS)} |")
    print("| --- | --- | ---: | ---: |" + " ---: |" * len(ENCODINGS))
    for revision in args.revisions or [None]:
        label = "working tree" if revision is None else subprocess.run(
            ["git", "rev-parse", "--short", revision], cwd=REPO, check=True, capture_output=True, text=True).stdout.strip()
        for name, paths in SETS.items():
            text = "".join(read(p, revision) for p in paths)
            tokens = [f"{len(encs[n].encode(text, disallowed_special=())):,}" if encs else "n/a" for n in ENCODINGS]
            print(f"| {label} | {name} | {len(text.encode('utf-8')):,} | {text.count(chr(10)):,} | {' | '.join(tokens)} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
