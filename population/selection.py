"""Selection rules: pure functions over plain records, no Ray, git or files.

Every score here is oriented lower-is-better (the state negates a higher-is-better metric), so
"best" is always the minimum. Records are `Candidate`s: a member name, its score (the mean of its
ok runs) and its birth order (the order in which members joined the population).

The rules, in the spirit of regularized evolution (Real et al., 2019):
- a parent is the best of `k` living members drawn at random (tournament selection);
- when the population is over its size, the oldest members die (aging), or the worst of a
  tournament; the champion is never culled;
- a child is promoted to champion only when its mean beats the champion's by more than the
  measured run-to-run noise allows by chance (`z` standard errors), over at least `min_runs` runs:
  a first run past the margin is confirmed by another run on another seed; a child that beats it by
  less is re-run, up to `max_runs` runs, but only while it could still clear the margin: a gain far
  inside the noise would need luck to pass, and its re-runs would be trainings taken from new
  children (bench/landscape.py measures these choices).

The driver passes its settings explicitly (population.config); the keyword defaults of
`promotion_decision` are the plain rule: one run, 2 standard errors. `posterior_choice` is the
default rule instead: the same question asked of the lineage posterior (population.posterior).
"""
from __future__ import annotations

import math
import random
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from population.posterior import LineagePosterior

Decision = Literal["promote", "rerun", "keep"]
CullPolicy = Literal["age", "tournament"]
CULL_POLICIES: tuple[str, ...] = ("age", "tournament")


@dataclass(frozen=True)
class Candidate:
    """A living member as selection sees it."""
    member: str
    score: float   # lower is better (mean of the member's ok runs, oriented)
    born: int      # birth order: smaller = older


def tournament_select(candidates: Sequence[Candidate], k: int, rng: random.Random) -> Candidate:
    """Draw `k` distinct candidates at random (all of them if fewer) and return the best.

    Ties go to the older member, so a result never depends on the order of `candidates`
    beyond the random draw.
    """
    if not candidates:
        raise ValueError("tournament_select needs at least one candidate")
    if k < 1:
        raise ValueError(f"tournament size must be >= 1, got {k}")
    sample = rng.sample(list(candidates), min(k, len(candidates)))
    return min(sample, key=lambda c: (c.score, c.born))


def choose_culls(candidates: Sequence[Candidate], population_size: int,
                 policy: CullPolicy = "age", k: int = 2, rng: random.Random | None = None,
                 protect: frozenset[str] = frozenset()) -> list[str]:
    """Names of the members to cull so that at most `population_size` stay alive.

    policy "age": the oldest by birth die first (regularized evolution).
    policy "tournament": repeatedly, the worst of `k` random unprotected members dies.
    Members in `protect` (the champion, at least) are never culled, even if that leaves the
    population over its size.
    """
    if population_size < 1:
        raise ValueError(f"population size must be >= 1, got {population_size}")
    if policy not in CULL_POLICIES:
        raise ValueError(f"unknown cull policy {policy!r}; choose one of: {', '.join(CULL_POLICIES)}")
    excess = len(candidates) - population_size
    pool = [c for c in candidates if c.member not in protect]
    if excess <= 0 or not pool:
        return []
    if policy == "age":
        return [c.member for c in sorted(pool, key=lambda c: c.born)[:excess]]
    rng = rng or random.Random()
    culled: list[str] = []
    while len(culled) < excess and pool:
        sample = rng.sample(pool, min(k, len(pool)))
        worst = max(sample, key=lambda c: (c.score, -c.born))  # ties: the older dies
        pool.remove(worst)
        culled.append(worst.member)
    return culled


def noise_margin(noise_std: float, n_candidate: int, n_champion: int, z: float = 2.0) -> float:
    """The gain a candidate's mean needs over the champion's mean to count as real.

    z standard errors of the difference of two means of n_candidate and n_champion runs, each
    run with standard deviation `noise_std`.
    """
    if n_candidate < 1 or n_champion < 1:
        raise ValueError("noise_margin needs at least one run on each side")
    return z * noise_std * math.sqrt(1.0 / n_candidate + 1.0 / n_champion)


def mean_gain(candidate_runs: Sequence[float], champion_runs: Sequence[float], lower_is_better: bool = True) -> float:
    """How much better the candidate's mean is than the champion's (positive: better)."""
    sign = 1.0 if lower_is_better else -1.0
    return sign * (statistics.fmean(champion_runs) - statistics.fmean(candidate_runs))


def clears_margin(candidate_runs: Sequence[float], champion_runs: Sequence[float], noise_std: float, *,
                  z: float = 2.0, lower_is_better: bool = True) -> bool:
    """Whether the candidate's mean beats the champion's by at least `noise_margin` (both non-empty)."""
    return mean_gain(candidate_runs, champion_runs, lower_is_better) >= \
        noise_margin(noise_std, len(candidate_runs), len(champion_runs), z)


def promotion_decision(candidate_runs: Sequence[float], champion_runs: Sequence[float],
                       noise_std: float, *, z: float = 2.0, max_runs: int = 3, min_runs: int = 1,
                       lower_is_better: bool = True, rerun_optimism: float | None = 1.0) -> Decision:
    """What to do with a candidate after its latest run, given every ok run of both commits.

    "promote": its mean beats the champion's by at least `noise_margin` (or there is no champion),
               over at least `min_runs` runs (capped at `max_runs`).
    "rerun":   it clears the margin on fewer than `min_runs` runs (a confirming run), or
               it beats the champion, but by less than the margin, has fewer than `max_runs` runs,
               and could still clear the margin it will face after `max_runs` runs: its gain plus
               `rerun_optimism` standard errors of its own mean reaches that margin. None re-runs
               every candidate with a positive gain (the first rule; many such re-runs cannot succeed).
    "keep":    anything else; it stays a living member and may still breed.
    Runs are raw metric values; `lower_is_better` orients them.
    """
    if not candidate_runs:
        return "keep"
    if not champion_runs:
        return "promote"
    runs, champion = len(candidate_runs), len(champion_runs)
    gain = mean_gain(candidate_runs, champion_runs, lower_is_better)
    if gain >= noise_margin(noise_std, runs, champion, z):  # clears_margin, with the gain at hand
        return "promote" if runs >= min(min_runs, max_runs) else "rerun"
    if gain <= 0 or runs >= max_runs:
        return "keep"
    if rerun_optimism is None:
        return "rerun"
    reachable = gain + rerun_optimism * noise_std / math.sqrt(runs)
    return "rerun" if reachable >= noise_margin(noise_std, max_runs, champion, z) else "keep"


def posterior_choice(candidates: Sequence[Candidate], champion: str | None, posterior: "LineagePosterior", *,
                     confidence: float, min_evidence: int) -> str | None:
    """The member to promote under posterior selection, or None.

    `candidates` are scored by their posterior estimates. The best of those that at least
    `min_evidence` trainings inform directly (their own runs and their descendants') replaces the
    champion when the posterior gives it at least `confidence` probability of a lower value: a
    member that looks best on one lucky run waits for its first child's result, which costs no
    training, while the members behind it that have been confirmed can still be promoted.
    """
    if champion is None:
        return min(candidates, key=lambda c: (c.score, c.born)).member if candidates else None
    if champion not in posterior:
        return None
    backed = [c for c in candidates if c.member in posterior and posterior.evidence(c.member) >= min_evidence]
    if not backed:
        return None
    best = min(backed, key=lambda c: (c.score, c.born)).member
    if best == champion:
        return None
    return best if posterior.prob_better(best, champion) >= confidence else None


def estimate_noise(sum_squares: float, dof: int, scale: float, floor_fraction: float = 1e-4) -> float:
    """Run-to-run noise, measured: the pooled standard deviation of every commit trained more than
    once, sqrt(sum of squared deviations from each commit's own mean / (runs - commits)).

    Never below `floor_fraction` of the metric's scale (the seed's mean), so identical runs do not
    make every tiny difference look real. With no degree of freedom there is nothing to measure,
    and no constant stands in for it: a ValueError.
    """
    if dof < 1:
        raise ValueError("estimate_noise needs a commit trained at least twice")
    return max(math.sqrt(max(sum_squares, 0.0) / dof), floor_fraction * (abs(scale) or 1.0))


def holdout_lags(val_gain: float, holdout_gain: float, noise_std: float | None) -> bool:
    """A champion that selection may have fitted to the validation rows: it gains clearly on them
    (more than two noise std over the seed) and less than half of that on the hidden holdout, which
    selection never sees. Gains are oriented: positive is better."""
    return noise_std is not None and val_gain > 2 * noise_std and holdout_gain < val_gain / 2


MIN_STEPS = 5          # first-run steps before their spread says anything; fewer: the endgame is on


def step_spread(steps: Sequence[float], noise_std: float) -> float | None:
    """How far apart the run's edits land, in noise standard deviations: 1.4826 x the median absolute
    deviation of each child's first run from its parent's mean (robust to the few large edits);
    None with fewer than MIN_STEPS. Near 1-2 most edits hide in the noise (the members are hard to
    tell apart); large, they stand out on one run."""
    if len(steps) < MIN_STEPS or not noise_std > 0:
        return None
    middle = statistics.median(steps)
    return 1.4826 * statistics.median(abs(step - middle) for step in steps) / noise_std
