"""The offline agent: perturb one or two UPPER_CASE numeric constants of the train file.

No model, no network, deterministic given a seed: the default agent, the test agent, and a
baseline that tells how much a language model adds over random hyperparameter search.
"""
from __future__ import annotations

import ast
import math
import random
import re
from dataclasses import dataclass
from pathlib import Path

from population.agents.base import Agent, Proposal

_CONSTANT_NAME = re.compile(r"^[A-Z][A-Z0-9_]*$")
# Part of the fixed experiment (metric, budget, data), never hyperparameters.
_FIXED_NAMES = {"MAX_SEQ_LEN", "TIME_BUDGET", "EVAL_TOKENS", "VOCAB_SIZE"}
_FIXED_COMMENT = re.compile(r"#.*\b(fixed|do not (modify|change|edit))\b", re.IGNORECASE)
# Logging and validation cadence: not hyperparameters of the result.
_BOOKKEEPING = re.compile(r"EVERY|^LOG_|^VAL_|^EVAL_")
# Names whose values are fractions: they stay in (0, 1].
_FRACTION_WORDS = ("RATIO", "FRAC", "DROPOUT")
# Averaging coefficients just below 1: perturbed through 1 - value (0.95 -> 0.9 .. 0.975).
_MOMENTUM_WORDS = ("MOMENTUM", "BETA")
_MAX_FACTOR = 2.0
_SMALL_INT = 16   # above this, a step of one is too small to measure: step by 20-25 % instead


@dataclass(frozen=True)
class Candidate:
    name: str
    value: int | float
    power_of_two_exponent: bool   # the value is written `2**N` and we change N
    line: int                     # 1-based
    col: int                      # byte offsets of the literal to replace within the line
    end_col: int


def find_candidates(source: str) -> list[Candidate]:
    """Module-level `NAME = <number>` or `NAME = 2**N` assignments that are safe to perturb."""
    lines = source.splitlines()
    found = []
    for node in ast.parse(source).body:
        target, value = _assignment(node)
        if (target is None or not _CONSTANT_NAME.match(target) or target in _FIXED_NAMES
                or "SEED" in target or _BOOKKEEPING.search(target)):
            continue
        if _FIXED_COMMENT.search(lines[node.lineno - 1]):
            continue
        literal, is_exponent = _literal(value)
        if literal is None or literal.lineno != literal.end_lineno:
            continue
        found.append(Candidate(target, literal.value, is_exponent, literal.lineno,
                               literal.col_offset, literal.end_col_offset))
    return found


def _assignment(node: ast.stmt) -> tuple[str | None, ast.expr | None]:
    if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
        return node.targets[0].id, node.value
    if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
        return node.target.id, node.value
    return None, None


def _literal(value: ast.expr) -> tuple[ast.Constant | None, bool]:
    if _is_number(value):
        return value, False
    if (isinstance(value, ast.BinOp) and isinstance(value.op, ast.Pow) and _is_number(value.left)
            and value.left.value == 2 and _is_number(value.right) and isinstance(value.right.value, int)
            and value.right.value >= 1):
        return value.right, True
    return None, False


def _is_number(node: ast.expr) -> bool:
    """A positive int or float literal (zero cannot be scaled; bools are not numbers here)."""
    return (isinstance(node, ast.Constant) and isinstance(node.value, (int, float))
            and not isinstance(node.value, bool) and node.value > 0)


def new_value(candidate: Candidate, rng: random.Random) -> int | float:
    """A different value: floats scaled by a log-uniform factor in [1/2, 2] (3 significant digits;
    momenta through 1 - value), powers of two doubled or halved, other ints stepped by one (by
    -20 %/+25 % when large) or doubled/halved; never below 1."""
    old = candidate.value
    if candidate.power_of_two_exponent:
        return old + 1 if old == 1 else old + rng.choice((-1, 1))
    if isinstance(old, float):
        return _new_float(candidate.name, old, rng)
    if old >= 2 and old & (old - 1) == 0:
        return rng.choice((old // 2, old * 2))
    steps = (old - 1, old + 1) if old <= _SMALL_INT else (round(old * 0.8), round(old * 1.25))
    options = sorted({v for v in (*steps, old // 2, old * 2) if v >= 1 and v != old})
    return rng.choice(options)


def _new_float(name: str, old: float, rng: random.Random) -> float:
    if any(word in name for word in _MOMENTUM_WORDS) and old < 1.0:
        return float(f"{1.0 - _new_float('', 1.0 - old, rng):.6g}")
    is_fraction = any(word in name for word in _FRACTION_WORDS) and old <= 1.0
    for _ in range(20):
        value = float(f"{old * math.exp(rng.uniform(-1, 1) * math.log(_MAX_FACTOR)):.3g}")
        if is_fraction:
            value = min(value, 1.0)
        if value != old and value > 0:
            return value
    return float(f"{old / 2:.3g}")


def format_value(candidate: Candidate, value: int | float) -> str:
    return repr(value) if isinstance(value, float) else str(value)


def describe(candidate: Candidate, value: int | float) -> str:
    if candidate.power_of_two_exponent:
        return f"{candidate.name} 2**{candidate.value} -> 2**{value}"
    return f"{candidate.name} {format_value(candidate, candidate.value)} -> {format_value(candidate, value)}"


def mutate_source(source: str, rng: random.Random) -> tuple[str, str]:
    """Change one or two distinct constants; return the new source and a one-line description.
    Raises ValueError when the file has nothing to mutate."""
    by_name = {}
    for candidate in find_candidates(source):
        by_name.setdefault(candidate.name, candidate)   # a name assigned twice: its first assignment
    if not by_name:
        raise ValueError("no UPPER_CASE numeric constants to mutate")
    count = min(len(by_name), rng.choice((1, 2)))
    chosen = rng.sample(sorted(by_name), count)
    changes = [(by_name[name], new_value(by_name[name], rng)) for name in chosen]
    lines = source.splitlines(keepends=True)
    # Replace from the end of the file backwards so earlier offsets stay valid.
    for candidate, value in sorted(changes, key=lambda c: (c[0].line, c[0].col), reverse=True):
        raw = lines[candidate.line - 1].encode()
        raw = raw[:candidate.col] + format_value(candidate, value).encode() + raw[candidate.end_col:]
        lines[candidate.line - 1] = raw.decode()
    new_source = "".join(lines)
    ast.parse(new_source)   # a mutation must never break the file
    return new_source, ", ".join(describe(c, v) for c, v in changes)


class MutateAgent(Agent):
    """`mutate`: options `seed` (default 0) and `train_file` (else read from the prompt)."""

    def __init__(self, *, seed: int | None = None, train_file: str | None = None, **common):
        super().__init__(**common)
        self.spec = "mutate"
        self.train_file = train_file
        self._rng = random.Random(0 if seed is None else seed)

    def _propose(self, worktree: Path, prompt: str, *, timeout: float) -> Proposal:
        from population.context import train_file_in_prompt

        train_file = self.train_file or train_file_in_prompt(prompt)
        if not train_file:
            return Proposal("", "", 0.0, error="mutate: no train file given (option train_file or the prompt)")
        path = worktree / train_file
        try:
            source = path.read_text()
            new_source, description = mutate_source(source, self._rng)
        except (OSError, SyntaxError, ValueError) as exc:
            return Proposal("", "", 0.0, error=f"mutate: {train_file}: {exc}")
        path.write_text(new_source)
        return Proposal(description, f"mutate {train_file}: {description}\n", 0.0, tokens=0, cost_usd=0.0)
