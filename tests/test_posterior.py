"""The lineage posterior (population/posterior.py) against a dense Gaussian solve of the same model."""
import math
import random

import numpy as np
import pytest

from population.posterior import LineagePosterior

NOISE = 0.0004


def random_lineage(rng: random.Random, size: int, runs: int = 1):
    """(names, parents, observations): a random tree, each member with `runs` noisy runs."""
    names, parents, values, observations = ["m0"], [None], {"m0": 1.0}, []
    for i in range(1, size):
        parent = rng.choice(names)
        names.append(f"m{i}")
        parents.append(parent)
        step = rng.choice((0.0, 0.0, rng.gauss(0.0, 0.002)))   # neutral edits and real ones
        values[names[-1]] = values[parent] + step
    for name in names:
        for _ in range(runs):
            observations.append((name, values[name] + rng.gauss(0.0, NOISE)))
    return names, parents, observations


def build(names, parents, observations, dof=2.0, retire=()):
    posterior = LineagePosterior(dof=dof)
    for name, parent in zip(names, parents):
        posterior.add(name, parent)
    for name, value in observations:
        posterior.observe(name, value)
    posterior.set_noise(NOISE)
    for name in retire:
        posterior.retire(name)
    return posterior


def dense(names, parents, observations, edge_variances):
    """Posterior mean and covariance of every member, from the joint precision matrix."""
    index = {name: i for i, name in enumerate(names)}
    n = len(names)
    precision, information = np.zeros((n, n)), np.zeros(n)
    for name, value in observations:
        precision[index[name], index[name]] += 1 / NOISE ** 2
        information[index[name]] += value / NOISE ** 2
    for name, parent in zip(names, parents):
        if parent is None:
            continue
        c, p, q = index[name], index[parent], 1 / edge_variances[name]
        precision[c, c] += q
        precision[p, p] += q
        precision[c, p] -= q
        precision[p, c] -= q
    covariance = np.linalg.inv(precision)
    return covariance @ information, covariance, index


def test_belief_propagation_is_the_exact_gaussian_posterior():
    """Means, variances and the variance of any difference (the path formula), for the edge
    variances the last EM step settled on, equal the dense solve's."""
    rng = random.Random(1)
    names, parents, observations = random_lineage(rng, 25)
    posterior = build(names, parents, observations)
    posterior.mean("m0")   # solve
    edge_variances = {name: posterior._edge_variance(posterior._nodes[name]) for name in names[1:]}
    assert len(set(round(v, 14) for v in edge_variances.values())) > 5   # EM gave edges their own widths
    mean, covariance, index = dense(names, parents, observations, edge_variances)
    for name in names:
        assert posterior.mean(name) == pytest.approx(mean[index[name]], abs=1e-9)
        assert posterior.variance(name) == pytest.approx(covariance[index[name], index[name]], rel=1e-6)
    for a, b in [("m3", "m17"), ("m24", "m0"), ("m5", "m6"), ("m11", "m2")]:
        i, j = index[a], index[b]
        spread = covariance[i, i] + covariance[j, j] - 2 * covariance[i, j]
        assert posterior._difference_variance(a, b) == pytest.approx(spread, rel=1e-5)
        expected = 0.5 * math.erfc((mean[i] - mean[j]) / math.sqrt(2 * spread))
        assert posterior.prob_better(a, b) == pytest.approx(expected, abs=1e-6)


def test_folding_dead_members_changes_no_living_estimate():
    """With Gaussian steps (no EM to refit), folding culled members into fixed messages is exact."""
    rng = random.Random(2)
    names, parents, observations = random_lineage(rng, 30, runs=2)
    living = {"m29", "m27", "m20", "m13"}
    retire = [n for n in names if n not in living and not any(
        p == n for p in parents)] + ["m0"]          # leaves first, then the root
    full = build(names, parents, observations, dof=1e12)
    folded = build(names, parents, observations, dof=1e12, retire=retire)
    assert len(folded) < len(full)
    for name in living:
        assert folded.mean(name) == pytest.approx(full.mean(name), abs=1e-10)
        assert folded.variance(name) == pytest.approx(full.variance(name), rel=1e-6)
        assert folded.evidence(name) == full.evidence(name)
    assert folded.prob_better("m29", "m13") == pytest.approx(full.prob_better("m29", "m13"), abs=1e-6)


def test_a_dead_line_of_descent_folds_down_to_the_living():
    posterior = LineagePosterior()
    posterior.add("a", None)
    posterior.add("b", "a")
    posterior.add("c", "b")
    posterior.add("d", "a")
    for name, value in [("a", 1.0), ("b", 1.0001), ("c", 0.999), ("d", 1.01)]:
        posterior.observe(name, value)
    for name in ("a", "b", "d"):
        posterior.retire(name)          # before the noise: kept until it can be folded
    assert len(posterior) == 4
    posterior.set_noise(NOISE)
    assert len(posterior) == 1 and "c" in posterior
    assert posterior.mean("c") < 1.0    # the dead relatives' runs still count...
    assert posterior.mean("c") > 0.999  # ...and pull c's one good run back toward them


def test_a_neutral_child_shares_its_parents_evidence():
    """A lucky run is pulled back by the runs of relatives that look like it; a real change keeps
    its own."""
    posterior = LineagePosterior()
    posterior.add("parent", None)
    posterior.add("lucky", "parent")
    posterior.add("far", "parent")
    for value in (1.0000, 1.0002, 0.9998):
        posterior.observe("parent", value)
    posterior.observe("lucky", 1.0000 - 1.5 * NOISE)
    posterior.observe("far", 1.0 - 10 * NOISE)
    posterior.set_noise(NOISE)
    assert 1.0 - 1.5 * NOISE < posterior.mean("lucky") < 1.0 - 0.5 * NOISE
    assert posterior.mean("far") == pytest.approx(1.0 - 10 * NOISE, abs=0.5 * NOISE)
    assert posterior.prob_better("far", "parent") > 0.99
    assert posterior.prob_better("lucky", "parent") < 0.95
    assert posterior.evidence("parent") == 5 and posterior.evidence("lucky") == 1


def test_children_confirm_or_refute_their_parent():
    """Children a step away from their parent move its estimate: its descendants are its re-runs."""
    def parent_after(children_values):
        posterior = LineagePosterior()
        posterior.add("root", None)
        posterior.observe("root", 1.0)
        posterior.add("p", "root")
        posterior.observe("p", 1.0 - 3 * NOISE)
        for i, value in enumerate(children_values):
            posterior.add(f"c{i}", "p")
            posterior.observe(f"c{i}", value)
        posterior.set_noise(NOISE)
        return posterior.mean("p")

    alone = parent_after([])
    confirmed = parent_after([1.0 - 3 * NOISE, 1.0 - 3.2 * NOISE])
    refuted = parent_after([1.0, 1.0 + 0.2 * NOISE])
    assert confirmed < alone < refuted


def test_bad_use_is_one_clear_error():
    posterior = LineagePosterior()
    posterior.add("a", None)
    with pytest.raises(ValueError, match="already in the lineage"):
        posterior.add("a", None)
    with pytest.raises(ValueError, match="not in the lineage"):
        posterior.add("b", "nobody")
    with pytest.raises(ValueError, match="already the root"):
        posterior.add("c", None)
    with pytest.raises(ValueError, match="noise std must be > 0"):
        posterior.set_noise(0.0)
    assert posterior.mean("a") == math.inf      # no noise, no runs: nothing to say
    assert posterior.prob_better("a", "a") == 0.0
