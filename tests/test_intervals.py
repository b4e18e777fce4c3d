"""The hierarchical bootstrap (seeds, then problems) on planted cases whose answer is known."""

import numpy as np

from sqft_ov.measure.intervals import hierarchical_means, interval, problem_draws, ratio_interval


def _seeds(accuracies, problems=300, seed=0):
    """seeds x problems correct/incorrect with each seed's planted accuracy."""
    rng = np.random.default_rng(seed)
    return np.stack([rng.random(problems) < a for a in accuracies]).astype(float)


def _problems_only(correct, draws):
    return correct[:, draws].mean(axis=(0, 2))


def test_seed_spread_widens_the_interval_beyond_the_problems_alone():
    correct = _seeds([0.30, 0.50, 0.70])  # training noise far larger than the test set's
    draws = problem_draws(correct.shape[1])
    wide, narrow = interval(hierarchical_means(correct, draws, "row")), interval(_problems_only(correct, draws))
    assert wide[1] - wide[0] > 2 * (narrow[1] - narrow[0])
    # the seeds' means lie 0.2 apart: an interval that resamples them reaches toward both ends
    seed_means = correct.mean(axis=1)
    assert wide[0] < seed_means.mean() - 0.08 and wide[1] > seed_means.mean() + 0.08


def test_identical_seeds_give_the_problem_interval():
    one = _seeds([0.6])
    correct = np.repeat(one, 3, axis=0)  # three seeds that answered alike: no training noise
    draws = problem_draws(correct.shape[1])
    np.testing.assert_allclose(hierarchical_means(correct, draws, "row"), _problems_only(correct, draws))
    np.testing.assert_allclose(hierarchical_means(one, draws, "row"), _problems_only(one, draws))


def test_paired_difference_and_ratio_cancel_the_test_set():
    ref = _seeds([0.6, 0.6, 0.6], seed=1)
    draws = problem_draws(ref.shape[1])
    same = hierarchical_means(ref.copy(), draws, "copy") - hierarchical_means(ref, draws, "LoRA")
    # one seed's answers repeated: the same row twice differs by exactly nothing on every draw
    single = ref[:1]
    zero = hierarchical_means(single, draws, "a") - hierarchical_means(single, draws, "b")
    assert np.all(zero == 0)
    assert abs(np.mean(same)) < 0.01
    # a row that fails a planted 5 % of the problems LoRA solves: ratio interval around 0.95 and below 1
    worse = single.copy()
    solved = np.flatnonzero(worse[0])
    worse[0, solved[: len(solved) // 20]] = 0
    low, high = ratio_interval(hierarchical_means(worse, draws, "w"), hierarchical_means(single, draws, "r"))
    planted = worse.mean() / single.mean()
    assert low <= planted <= high < 1.0


def test_rows_draw_their_seeds_independently_and_reproducibly():
    correct = _seeds([0.3, 0.5, 0.7])
    draws = problem_draws(correct.shape[1])
    a1, a2 = hierarchical_means(correct, draws, "A"), hierarchical_means(correct, draws, "A")
    b = hierarchical_means(correct, draws, "B")
    np.testing.assert_array_equal(a1, a2)
    assert not np.array_equal(a1, b)
