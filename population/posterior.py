"""The lineage posterior: every training's evidence about every member, pooled along the lineage tree.

Pure: no Ray, git or files. A child is its parent plus one edit, so a member's value is its
parent's plus a step, and every run of a relative says something about it:

    value(child) = value(parent) + step,   step ~ Student-t(dof 2, scale PRIOR_SCALE x noise std)
    run          = value(member) + noise,  noise ~ Normal(0, noise std)

The heavy-tailed step is what makes the pooling right for code edits: a child whose runs look like
its parent's is taken to be a small edit and shares its parent's evidence (a lucky run of either is
pulled back by the other's), while a child far from its parent is taken to be a real change and
keeps its own. The scale is fitted per edge by EM (a Student-t is a Gaussian whose variance is drawn
per edge), with Gaussian belief propagation on the tree in between: O(members) per solve. Each
solve starts the weights afresh, so a replayed journal gives the live run's numbers.

Why by hand: the model is a Gaussian tree with per-edge variances; the two passes below are the
whole solver, where a probabilistic-programming library would be a heavy dependency for a tree.

To keep a solve small in a long run, members that can no longer be parents or champion (culled)
are folded away once no living member descends from them: a dead leaf becomes a fixed message to
its parent, and a dead root with one line of descent a fixed prior on its child.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

PRIOR_SCALE = 2.0     # an edit's typical effect, in noise standard deviations (bench/landscape.py)
PRIOR_DOF = 2.0       # Student-t degrees of freedom of an edit's effect: most small, a few large
EM_ITERATIONS = 3     # per solve, from fresh weights: a solve depends on the lineage, not on when it ran


@dataclass
class _Node:
    parent: str | None
    children: set[str] = field(default_factory=set)
    alive: bool = True
    runs: int = 0                  # this member's own runs
    total: float = 0.0             # their sum (oriented: lower is better)
    evidence: int = 0              # runs of this member and of everything folded into or below it
    fixed_precision: float = 0.0   # evidence folded in: dead subtrees below, the dead lineage above
    fixed_information: float = 0.0
    weight: float = 1.0            # the edge to the parent: precision multiplier (the t's mixing variable);
                                   # refitted by every solve, frozen once the node is folded
    # from the latest solve
    up_precision: float = 0.0      # this subtree's evidence about this member
    up_information: float = 0.0
    message_precision: float = 0.0  # what this subtree tells the parent
    message_information: float = 0.0
    precision: float = 0.0         # the posterior
    information: float = 0.0


class LineagePosterior:
    """Members added parent first, runs observed (lower is better), culled members retired."""

    def __init__(self, prior_scale: float = PRIOR_SCALE, dof: float = PRIOR_DOF):
        self.prior_scale = prior_scale
        self.dof = dof
        self.noise_std: float | None = None
        self._nodes: dict[str, _Node] = {}   # the active tree, parents before children
        self._root: str | None = None
        self._stale = True

    # ---- building ----------------------------------------------------------------------------

    def add(self, name: str, parent: str | None) -> None:
        if name in self._nodes:
            raise ValueError(f"member {name} is already in the lineage")
        if parent is not None and parent not in self._nodes:
            raise ValueError(f"member {name}'s parent {parent} is not in the lineage (or was folded away)")
        if parent is None and self._root is not None:
            raise ValueError(f"member {name} has no parent, but {self._root} is already the root")
        self._nodes[name] = _Node(parent)
        if parent is None:
            self._root = name
        else:
            self._nodes[parent].children.add(name)
        self._stale = True

    def observe(self, name: str, value: float) -> None:
        node = self._nodes[name]
        node.runs += 1
        node.total += value
        while node is not None:
            node.evidence += 1
            node = self._nodes[node.parent] if node.parent is not None else None
        self._stale = True

    def set_noise(self, std: float) -> None:
        if not std > 0:
            raise ValueError(f"noise std must be > 0, got {std}")
        self.noise_std = std
        self._stale = True
        for name in [name for name, node in self._nodes.items() if not node.alive]:
            if name in self._nodes:   # culled before the noise was known: fold now
                self._fold(name)

    def retire(self, name: str) -> None:
        """The member was culled: it can no longer breed or be champion. Its runs stay evidence."""
        self._nodes[name].alive = False
        self._fold(name)

    def __contains__(self, name: str) -> bool:
        return name in self._nodes

    def __len__(self) -> int:
        """Members still solved individually (the rest are folded into them)."""
        return len(self._nodes)

    # ---- queries -----------------------------------------------------------------------------

    def evidence(self, name: str) -> int:
        """Runs that inform the member most directly: its own and its descendants'."""
        return self._nodes[name].evidence

    def mean(self, name: str) -> float:
        """The posterior mean of the member's value (inf before the noise is known or without any run)."""
        self._solve()
        node = self._nodes[name]
        return node.information / node.precision if node.precision > 0 else math.inf

    def variance(self, name: str) -> float:
        self._solve()
        node = self._nodes[name]
        return 1.0 / node.precision if node.precision > 0 else math.inf

    def prob_better(self, a: str, b: str) -> float:
        """The posterior probability that member a's value is lower (better) than member b's."""
        if a == b:
            return 0.0
        difference = self.mean(a) - self.mean(b)
        spread = self._difference_variance(a, b)
        if not (math.isfinite(difference) and math.isfinite(spread)):
            return 0.5
        if spread <= 0:
            return 1.0 if difference < 0 else 0.0
        return 0.5 * math.erfc(difference / math.sqrt(2.0 * spread))

    # ---- the solver --------------------------------------------------------------------------

    def _edge_variance(self, node: _Node) -> float:
        return (self.prior_scale * self.noise_std) ** 2 / node.weight

    def _solve(self) -> None:
        if not self._stale or self.noise_std is None:
            return
        for node in self._nodes.values():
            node.weight = 1.0
        for _ in range(EM_ITERATIONS):
            self._propagate()
            self._reweight()
        self._propagate()
        self._stale = False

    def _propagate(self) -> None:
        """Two passes of Gaussian belief propagation: evidence up to the root, then back down."""
        run_precision = 1.0 / self.noise_std ** 2
        # members without a run below them (children still training) neither send nor are asked
        order = [node for node in self._nodes.values() if node.evidence]
        for node in order:
            node.up_precision = node.runs * run_precision + node.fixed_precision
            node.up_information = node.total * run_precision + node.fixed_information
        for node in reversed(order):              # children first
            if node.parent is None:
                continue
            if node.up_precision > 0:
                precision = 1.0 / (1.0 / node.up_precision + self._edge_variance(node))
                node.message_precision = precision
                node.message_information = precision * node.up_information / node.up_precision
            else:
                node.message_precision = node.message_information = 0.0
            parent = self._nodes[node.parent]
            parent.up_precision += node.message_precision
            parent.up_information += node.message_information
        for node in order:                        # parents first
            if node.parent is None:
                node.precision, node.information = node.up_precision, node.up_information
                continue
            precision, information = self._from_parent(node)
            node.precision = node.up_precision + precision
            node.information = node.up_information + information

    def _outside(self, node: _Node) -> tuple[float, float]:
        """What everything but the node's subtree says about its parent."""
        parent = self._nodes[node.parent]
        return (parent.precision - node.message_precision, parent.information - node.message_information)

    def _from_parent(self, node: _Node) -> tuple[float, float]:
        outside_precision, outside_information = self._outside(node)
        if outside_precision <= 0:
            return 0.0, 0.0
        precision = 1.0 / (1.0 / outside_precision + self._edge_variance(node))
        return precision, precision * outside_information / outside_precision

    def _reweight(self) -> None:
        """EM for the Student-t steps: an edge whose step looks large gets a wider prior."""
        scale2 = (self.prior_scale * self.noise_std) ** 2
        for node in self._nodes.values():
            if node.parent is None or not node.evidence or node.precision <= 0:
                continue
            outside_precision, _ = self._outside(node)
            coupling = node.weight / scale2
            a, d = outside_precision + coupling, node.up_precision + coupling   # joint precision of
            determinant = a * d - coupling * coupling                            # (parent, node)
            if determinant <= 0:
                continue
            step_variance = (a + d - 2.0 * coupling) / determinant
            parent = self._nodes[node.parent]
            step = node.information / node.precision - parent.information / parent.precision
            node.weight = (self.dof + 1.0) / (self.dof + (step * step + step_variance) / scale2)

    def _difference_variance(self, a: str, b: str) -> float:
        """Var(value a - value b): the tree is a Markov chain along the path from a to b, so their
        covariance is a's variance times the regression coefficient of each step along it."""
        path = self._path(a, b)
        coefficient = 1.0
        for here, there in zip(path, path[1:]):
            if self._nodes[there].parent == here:        # down to a child: its subtree's side
                child = self._nodes[there]
                coupling = child.weight / (self.prior_scale * self.noise_std) ** 2
                coefficient *= coupling / (child.up_precision + coupling)
            else:                                         # up to the parent: everything else
                child = self._nodes[here]
                coupling = child.weight / (self.prior_scale * self.noise_std) ** 2
                outside_precision, _ = self._outside(child)
                coefficient *= coupling / (outside_precision + coupling)
        variance_a, variance_b = self.variance(a), self.variance(b)
        return variance_a + variance_b - 2.0 * coefficient * variance_a

    def _path(self, a: str, b: str) -> list[str]:
        up_from_a = [a]
        while self._nodes[up_from_a[-1]].parent is not None:
            up_from_a.append(self._nodes[up_from_a[-1]].parent)
        position = {name: i for i, name in enumerate(up_from_a)}
        up_from_b = [b]
        while up_from_b[-1] not in position:
            up_from_b.append(self._nodes[up_from_b[-1]].parent)
        return up_from_a[:position[up_from_b[-1]] + 1] + up_from_b[-2::-1]

    # ---- folding -----------------------------------------------------------------------------

    def _fold(self, name: str) -> None:
        """Fold dead members no living one descends from: leaves into their parents, the root into
        its one line of descent. The messages need a solve, so this waits for the noise."""
        if self.noise_std is None:
            return
        self._solve()
        node = self._nodes.get(name)
        while node is not None and not node.alive and not node.children and node.parent is not None:
            parent = self._nodes[node.parent]
            parent.fixed_precision += node.message_precision
            parent.fixed_information += node.message_information
            parent.children.discard(name)
            del self._nodes[name]
            name, node = node.parent, parent
        self._fold_root()
        self._stale = True

    def _fold_root(self) -> None:
        while self._root is not None:
            root = self._nodes[self._root]
            if root.alive or len(root.children) != 1:
                return
            heir_name = next(iter(root.children))
            heir = self._nodes[heir_name]
            precision, information = self._from_parent(heir)
            heir.fixed_precision += precision
            heir.fixed_information += information
            heir.parent = None
            del self._nodes[self._root]
            self._root = heir_name
