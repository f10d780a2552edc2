import random
import statistics

import pytest

from population.selection import (Candidate, choose_culls, clears_margin, estimate_noise, noise_margin,
                                  promotion_decision, tournament_select)


def population(scores):
    return [Candidate(f"m{i}", score, born=i) for i, score in enumerate(scores)]


def test_tournament_picks_the_best_of_its_sample():
    cands = population([5.0, 1.0, 3.0, 4.0, 2.0, 6.0])
    for seed in range(50):
        rng = random.Random(seed)
        drawn = random.Random(seed).sample(cands, 3)  # the same draw the function makes
        winner = tournament_select(cands, 3, rng)
        assert winner == min(drawn, key=lambda c: c.score)


def test_tournament_of_everyone_returns_the_global_best():
    cands = population([0.9, 0.7, 0.8])
    assert tournament_select(cands, 10, random.Random(0)).member == "m1"


def test_tournament_size_one_is_uniform_random():
    cands = population([1.0, 2.0, 3.0, 4.0])
    rng = random.Random(1)
    picks = {tournament_select(cands, 1, rng).member for _ in range(200)}
    assert picks == {"m0", "m1", "m2", "m3"}


def test_tournament_larger_k_favours_better_members():
    cands = population(list(range(20)))
    rng = random.Random(2)
    mean_k2 = statistics.fmean(tournament_select(cands, 2, rng).score for _ in range(2000))
    mean_k8 = statistics.fmean(tournament_select(cands, 8, rng).score for _ in range(2000))
    assert mean_k8 < mean_k2 < 9.5


def test_tournament_rejects_empty_and_bad_k():
    with pytest.raises(ValueError):
        tournament_select([], 2, random.Random(0))
    with pytest.raises(ValueError):
        tournament_select(population([1.0]), 0, random.Random(0))


def test_aging_culls_the_oldest_whatever_their_score():
    cands = population([0.1, 0.2, 9.0, 9.0, 9.0])  # the oldest two are the best
    assert choose_culls(cands, 3, policy="age") == ["m0", "m1"]


def test_no_culls_within_the_population_size():
    assert choose_culls(population([1.0, 2.0]), 2) == []
    assert choose_culls(population([1.0, 2.0]), 5, policy="tournament", rng=random.Random(0)) == []


def test_culls_never_hit_the_champion():
    cands = population([0.1, 5.0, 6.0, 7.0])
    assert "m0" not in choose_culls(cands, 2, policy="age", protect=frozenset({"m0"}))
    assert choose_culls(cands, 2, policy="age", protect=frozenset({"m0"})) == ["m1", "m2"]
    for seed in range(30):
        culled = choose_culls(cands, 1, policy="tournament", k=4, rng=random.Random(seed),
                              protect=frozenset({"m3"}))
        assert "m3" not in culled and len(culled) == 3


def test_only_protected_left_means_no_cull():
    assert choose_culls(population([1.0, 2.0]), 1, protect=frozenset({"m0", "m1"})) == []


def test_tournament_cull_removes_the_worst_of_the_sample():
    cands = population([1.0, 2.0, 3.0, 4.0, 5.0])
    culled = choose_culls(cands, 4, policy="tournament", k=5, rng=random.Random(0))
    assert culled == ["m4"]


def test_unknown_cull_policy_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown cull policy"):
        choose_culls(population([1.0, 2.0]), 1, policy="random")


def test_noise_margin_shrinks_with_more_runs():
    one = noise_margin(0.001, 1, 1)
    assert one == pytest.approx(2 * 0.001 * 2 ** 0.5)
    assert noise_margin(0.001, 3, 3) < one
    assert noise_margin(0.001, 1, 1, z=3.0) > one


def test_noise_margin_blocks_a_lucky_promotion():
    # champion at 1.0000 over 3 runs, noise 0.0004: a child 0.0006 lower is inside the one-run
    # margin (0.00092) but could clear the three-run one (0.00065): re-run, not promoted
    champion = [1.0, 1.0, 1.0]
    assert promotion_decision([0.9994], champion, 0.0004, max_runs=3) == "rerun"
    # after its re-runs it regressed to the mean: not promoted
    assert promotion_decision([0.9994, 1.0002, 1.0001], champion, 0.0004, max_runs=3) == "keep"


def test_a_gain_far_inside_the_noise_is_not_rerun():
    # 0.0001 better: even one standard error of luck (0.0004) leaves it short of the 3-run margin
    champion = [1.0, 1.0, 1.0]
    assert promotion_decision([0.9999], champion, 0.0004, max_runs=3) == "keep"
    # the first rule (rerun_optimism=None) re-ran every positive gain
    assert promotion_decision([0.9999], champion, 0.0004, max_runs=3, rerun_optimism=None) == "rerun"
    # more optimism re-runs smaller gains; a worse child is never re-run
    assert promotion_decision([0.9999], champion, 0.0004, rerun_optimism=2.0) == "rerun"
    assert promotion_decision([1.0001], champion, 0.0004, rerun_optimism=10.0) == "keep"


def test_a_rerun_needs_the_margin_it_will_face_after_its_last_run():
    # the champion's own run count sets that margin: with one champion run it is 0.00092
    assert promotion_decision([0.9995], [1.0], 0.0004, max_runs=3) == "keep"
    assert promotion_decision([0.9995], [1.0] * 6, 0.0004, max_runs=3) == "rerun"
    # a second run with the same mean is less uncertain, so it reaches less far
    assert promotion_decision([0.9997], [1.0] * 3, 0.0004, max_runs=3) == "rerun"
    assert promotion_decision([0.9997, 0.9997], [1.0] * 3, 0.0004, max_runs=3) == "keep"


def test_rerun_respects_higher_is_better():
    assert promotion_decision([0.8006], [0.80] * 3, 0.0004, lower_is_better=False) == "rerun"
    assert promotion_decision([0.7994], [0.80] * 3, 0.0004, lower_is_better=False) == "keep"


def test_a_small_gain_is_not_promoted_once_its_reruns_are_spent():
    assert promotion_decision([0.9995, 0.9996, 0.9995], [1.0], 0.0004, max_runs=3) == "keep"


def test_a_clear_gain_promotes_at_once():
    assert promotion_decision([0.990], [1.0], 0.0004) == "promote"


def test_a_confirmed_gain_promotes_after_reruns():
    runs = [0.9992, 0.9993, 0.9991]
    assert promotion_decision(runs[:1], [1.0, 1.0001], 0.0004) == "rerun"
    assert promotion_decision(runs, [1.0, 1.0001], 0.0004) == "promote"


def test_min_runs_confirms_a_first_run_past_the_margin_before_promoting():
    # 0.0020 better on one run clears any margin here, but one run may be luck: re-run it first
    champion = [1.0, 1.0, 1.0]
    assert promotion_decision([0.998], champion, 0.0004, min_runs=2, max_runs=2) == "rerun"
    # the confirming run kept the mean past the margin: promoted; it regressed: kept, not promoted
    assert promotion_decision([0.998, 0.9985], champion, 0.0004, min_runs=2, max_runs=2) == "promote"
    assert promotion_decision([0.998, 1.0018], champion, 0.0004, min_runs=2, max_runs=2) == "keep"
    # min_runs above max_runs is capped, so a member is never re-run past max_runs
    assert promotion_decision([0.998], champion, 0.0004, min_runs=5, max_runs=1) == "promote"
    assert promotion_decision([0.998], champion, 0.0004, min_runs=1) == "promote"


def test_min_runs_respects_higher_is_better():
    assert promotion_decision([0.81], [0.80] * 3, 0.0004, min_runs=2, lower_is_better=False) == "rerun"
    assert promotion_decision([0.79], [0.80] * 3, 0.0004, min_runs=2, lower_is_better=False) == "keep"


def test_a_worse_child_is_kept_without_rerun():
    assert promotion_decision([1.01], [1.0], 0.0004) == "keep"


def test_promotion_respects_higher_is_better():
    assert promotion_decision([0.90], [0.80], 0.001, lower_is_better=False) == "promote"
    assert promotion_decision([0.70], [0.80], 0.001, lower_is_better=False) == "keep"


def test_no_champion_promotes_and_no_runs_keeps():
    assert promotion_decision([1.0], [], 0.001) == "promote"
    assert promotion_decision([], [1.0], 0.001) == "keep"


def test_estimate_noise_is_the_pooled_std_of_repeated_commits_with_a_floor():
    runs = [0.4381, 0.4367, 0.4365, 0.4363, 0.4358]
    mean = statistics.fmean(runs)
    squares = sum((r - mean) ** 2 for r in runs)
    assert estimate_noise(squares, len(runs) - 1, mean) == pytest.approx(statistics.stdev(runs))
    # two commits, each its own mean: the spread within them, pooled (the difference between them is no noise)
    a, b = [1.0, 1.002], [0.9, 0.901, 0.902]
    pooled = (statistics.variance(a) * 1 + statistics.variance(b) * 2) / 3
    ss = sum((x - statistics.fmean(a)) ** 2 for x in a) + sum((x - statistics.fmean(b)) ** 2 for x in b)
    assert estimate_noise(ss, 3, 1.0) == pytest.approx(pooled ** 0.5)
    assert estimate_noise(0.0, 2, 1.0) == pytest.approx(1e-4)          # identical runs: the floor
    with pytest.raises(ValueError, match="trained at least twice"):   # one run: nothing measured, no constant
        estimate_noise(0.0, 0, 2.0)


def test_clears_margin_says_whether_a_rerun_confirms_or_hopes():
    champion = [1.0, 1.0002, 0.9998]
    # margin at z 1 with 1 and 3 runs of std 0.0004: 0.0004 * sqrt(1 + 1/3) = 0.00046
    assert clears_margin([0.9995], champion, 0.0004, z=1.0)
    assert not clears_margin([0.9996], champion, 0.0004, z=1.0)
    assert clears_margin([1.0005], champion, 0.0004, z=1.0, lower_is_better=False)
    assert promotion_decision([0.9995], champion, 0.0004, z=1.0, min_runs=2, max_runs=2) == "rerun"


# ---- posterior selection ----------------------------------------------------------------------

def _lineage(values: dict[str, list[float]], parents: dict[str, str | None]):
    from population.posterior import LineagePosterior
    posterior = LineagePosterior()
    for name, parent in parents.items():
        posterior.add(name, parent)
        for value in values.get(name, []):
            posterior.observe(name, value)
    posterior.set_noise(0.0004)
    return posterior


def _scored(posterior, names):
    return [Candidate(name, posterior.mean(name), born) for born, name in enumerate(names)]


def test_posterior_choice_promotes_the_best_backed_member_when_it_is_probably_better():
    from population.selection import posterior_choice
    parents = {"seed": None, "good": "seed", "grandchild": "good", "lucky": "seed"}
    values = {"seed": [1.0, 1.0003, 0.9997], "good": [0.997], "grandchild": [0.9968], "lucky": [0.9955]}
    posterior = _lineage(values, parents)
    candidates = _scored(posterior, list(parents))

    def choose(**settings):
        return posterior_choice(candidates, "seed", posterior, **({"confidence": 0.99, "min_evidence": 2} | settings))

    # "lucky" scores best but one run backs it; "good" is backed by its child's run too
    assert min(candidates, key=lambda c: c.score).member == "lucky"
    assert choose() == "good"
    assert choose(min_evidence=1) == "lucky"
    assert choose(min_evidence=3) is None
    assert posterior_choice(candidates, "good", posterior, confidence=0.99, min_evidence=2) is None
    assert posterior_choice(candidates, None, posterior, confidence=0.99, min_evidence=2) == "lucky"
    assert posterior_choice([], "seed", posterior, confidence=0.99, min_evidence=2) is None


def test_posterior_choice_needs_the_confidence():
    from population.selection import posterior_choice
    parents = {"seed": None, "child": "seed", "grandchild": "child"}
    posterior = _lineage({"seed": [1.0], "child": [0.9996], "grandchild": [0.9996]}, parents)
    candidates = _scored(posterior, list(parents))
    probability = posterior.prob_better("child", "seed")
    assert 0.5 < probability < 0.99
    assert posterior_choice(candidates, "seed", posterior, confidence=0.99, min_evidence=2) is None
    assert posterior_choice(candidates, "seed", posterior, confidence=probability - 1e-3,
                            min_evidence=2) in ("child", "grandchild")


def test_a_champion_is_flagged_when_its_holdout_gain_is_under_half_its_clear_validation_gain():
    from population.selection import holdout_lags
    assert holdout_lags(val_gain=0.01, holdout_gain=0.004, noise_std=0.001)
    assert not holdout_lags(val_gain=0.01, holdout_gain=0.006, noise_std=0.001)      # half of it is there
    assert not holdout_lags(val_gain=0.0015, holdout_gain=0.0, noise_std=0.001)      # inside the noise
    assert not holdout_lags(val_gain=0.01, holdout_gain=0.0, noise_std=None)         # noise not yet measured
