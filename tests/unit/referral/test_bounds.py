"""The referral guarantees, proved by simulation: many calibration draws from known distributions,
each split's true rate computed from the distribution, the violation rate compared with δ."""
import itertools

import numpy as np
import pytest
from scipy import stats

from alle_dist.referral import bounds

SPLITS = 2000

# In-distribution score models: (draw, P(score > t)). chi² with 20 d.o.f. is what a squared
# Mahalanobis distance of 20 Gaussian image statistics follows; Poisson has ties.
SCORES = {
    "chi2_20": (lambda rng, size: rng.chisquare(20, size), lambda t: stats.chi2.sf(t, 20)),
    "exponential": (lambda rng, size: rng.exponential(1.0, size), lambda t: stats.expon.sf(t)),
    "lognormal": (lambda rng, size: rng.lognormal(0.0, 1.5, size), lambda t: stats.lognorm.sf(t, 1.5)),
    "poisson_3": (lambda rng, size: rng.poisson(3, size).astype(float), lambda t: stats.poisson.sf(t, 3)),
}
FEASIBLE = [(50, 0.05, 0.1), (180, 0.02, 0.1), (180, 0.02, 0.05), (180, 0.05, 0.05)]


def allowance(splits: int, delta: float) -> int:
    """The most violations a rule with P(violation) ≤ δ shows in `splits` draws, at 99.9 %."""
    return int(stats.binom.ppf(0.999, splits, delta))


def draw(name: str, n: int, seed: int) -> tuple[np.ndarray, callable]:
    sample, sf = SCORES[name]
    return sample(np.random.default_rng(seed), (SPLITS, n)), sf


# ---------------------------------------------------------------- conformal_threshold

@pytest.mark.parametrize("name", sorted(SCORES))
@pytest.mark.parametrize("n,alpha,delta", FEASIBLE)
def test_conformal_threshold_holds_at_delta(name, n, alpha, delta):
    cal, sf = draw(name, n, seed=n + int(1000 * alpha) + int(100 * delta))
    fits = [bounds.conformal_threshold(c, alpha, delta) for c in cal]
    assert all(f["feasible"] for f in fits)
    true_rate = sf(np.array([f["threshold"] for f in fits]))
    violations = int((true_rate > alpha).sum())
    assert violations <= allowance(SPLITS, delta)
    if name != "poisson_3":
        # Continuous scores: the violation probability is exactly delta_achieved, not just below δ.
        lo, hi = stats.binom.interval(0.999, SPLITS, fits[0]["delta_achieved"])
        assert lo <= violations <= hi


@pytest.mark.parametrize("name", ["chi2_20", "lognormal"])
@pytest.mark.parametrize("n,alpha,delta", [(50, 0.05, 0.1), (180, 0.02, 0.05), (180, 0.05, 0.1)])
def test_naive_empirical_quantile_fails_the_same_check(name, n, alpha, delta):
    cal, sf = draw(name, n, seed=7 + n)
    naive = np.quantile(cal, 1 - alpha, axis=1, method="higher")
    assert int((sf(naive) > alpha).sum()) > allowance(SPLITS, delta)


def test_conformal_threshold_on_a_large_test_draw():
    # Without the CDF: each split's exceedance measured on 20 000 fresh images.
    rng = np.random.default_rng(3)
    fits = [bounds.conformal_threshold(rng.gamma(2.0, size=180), 0.05, 0.1) for _ in range(300)]
    test = rng.gamma(2.0, size=20_000)
    rates = np.array([np.mean(test > f["threshold"]) for f in fits])
    assert np.mean(rates > 0.05) <= 0.1 + 3 * np.sqrt(0.1 * 0.9 / 300)


def test_rank_is_the_binomial_form_and_the_bound_is_tight():
    for n, alpha, delta in itertools.product((60, 180, 1800), (0.01, 0.02, 0.05), (0.05, 0.1)):
        k = bounds.conformal_rank(n, alpha, delta)
        if k is None:
            assert (1 - alpha) ** n > delta
            continue
        assert k == int(stats.binom.ppf(1 - delta, n, 1 - alpha)) + 1
        assert stats.binom.sf(k - 1, n, 1 - alpha) <= delta < stats.binom.sf(k - 2, n, 1 - alpha)
        fit = bounds.conformal_threshold(np.arange(n, dtype=float), alpha, delta)
        assert fit["threshold"] == k - 1 and fit["alpha_bound"] <= alpha
        assert stats.beta.cdf(1 - fit["alpha_bound"], k, n + 1 - k) == pytest.approx(delta)


def test_too_few_images_is_reported_not_hidden():
    fit = bounds.conformal_threshold(np.linspace(0, 1, 180), 0.01, 0.05)
    assert not fit["feasible"] and fit["threshold"] is None and fit["reason"] == "n_too_small"
    assert fit["n_required"] == 299 and 0.99 ** 299 <= 0.05 < 0.99 ** 298
    assert fit["alpha_bound"] == pytest.approx(1 - 0.05 ** (1 / 180))   # what the maximum would give


def test_nan_scores_count_as_referred_and_as_infinite():
    s = np.r_[np.arange(58, dtype=float), np.nan, np.nan]          # n = 60, k = 60 at (0.05, 0.1)
    fit = bounds.conformal_threshold(s, 0.05, 0.1)
    assert not fit["feasible"] and fit["reason"] == "too_many_nan_scores" and fit["n_nan"] == 2
    s = np.r_[np.arange(199, dtype=float), np.nan]
    fit = bounds.conformal_threshold(s, 0.05, 0.1)
    k = bounds.conformal_rank(200, 0.05, 0.1)
    assert fit["feasible"] and fit["threshold"] == k - 1
    assert fit["calibration_referral_rate"] == pytest.approx((200 - k) / 200)   # the NaN included


def test_ties_at_the_threshold_are_not_referred():
    fit = bounds.conformal_threshold(np.r_[np.zeros(160), np.ones(20)], 0.1, 0.1)
    assert fit["threshold"] == 1.0 and fit["calibration_referral_rate"] == 0.0


@pytest.mark.parametrize("args,match", [
    ((np.ones((3, 2)), 0.05, 0.1), "1-D"), ((np.array([]), 0.05, 0.1), "empty"),
    ((np.ones(10), 0.0, 0.1), "alpha"), ((np.ones(10), 0.05, 1.0), "delta"),
    ((np.array(["a", "b"]), 0.05, 0.1), "real-valued")])
def test_conformal_threshold_rejects_bad_input(args, match):
    with pytest.raises(ValueError, match=match):
        bounds.conformal_threshold(*args)


# ---------------------------------------------------------------- Clopper-Pearson

@pytest.mark.parametrize("k,n,delta", [(0, 10, 0.05), (3, 100, 0.05), (6, 180, 0.1), (17, 971, 0.05), (9, 9, 0.1)])
def test_binomial_upper_matches_scipy(k, n, delta):
    ci = stats.binomtest(k, n, alternative="less").proportion_ci(confidence_level=1 - delta, method="exact")
    assert bounds.binomial_upper(k, n, delta) == pytest.approx(ci.high, rel=1e-9)


def test_binomial_upper_known_values_and_broadcast():
    assert bounds.binomial_upper(0, 180, 0.05) == pytest.approx(1 - 0.05 ** (1 / 180))
    assert bounds.binomial_upper(3, 100, 0.05) == pytest.approx(stats.beta.ppf(0.95, 4, 97))
    ub = bounds.binomial_upper(np.array([0, 5, 10]), 10, 0.05)
    assert ub.shape == (3,) and ub[-1] == 1.0 and np.all(np.diff(ub) > 0)
    with pytest.raises(ValueError, match="0 ≤ k ≤ n"):
        bounds.binomial_upper(11, 10, 0.05)
    with pytest.raises(ValueError, match="integer"):
        bounds.binomial_upper(0.5, 10, 0.05)


@pytest.mark.parametrize("k,n,bound", [(0, 10, 0.05), (1, 10, 0.05), (3, 40, 0.05), (9, 40, 0.05),
                                      (60, 500, 0.02), (10, 10, 0.5), (4, 20, 0.0), (4, 20, 1.0)])
def test_binomial_p_above_is_binomtests_greater(k, n, bound):
    """One p-value for drift, audit and evaluate's verdicts: scipy's exact one-sided test, and the
    verdict is that p-value below δ."""
    p = stats.binomtest(k, n, bound, alternative="greater").pvalue
    assert bounds.binomial_p_above(k, n, bound) == pytest.approx(p, rel=1e-9, abs=1e-15)
    assert bounds.binomial_exceeds(k, n, bound, 0.05) == (p < 0.05)
    with pytest.raises(ValueError, match="0 ≤ k ≤ n"):
        bounds.binomial_p_above(n + 1, n, bound)


def test_rate_upper_bound_covers_the_true_rate():
    rng = np.random.default_rng(5)
    refer = rng.uniform(size=(SPLITS, 180)) < 0.03
    ub = bounds.binomial_upper(refer.sum(1), 180, 0.1)
    assert int((ub < 0.03).sum()) <= allowance(SPLITS, 0.1)
    one = bounds.rate_upper_bound(refer[0], 0.1)
    assert one["n"] == 180 and one["referred"] == int(refer[0].sum()) and one["upper"] == ub[0]


def test_selective_risk_upper_counts_errors_among_accepted_only():
    errors = np.array([1, 0, 0, 1, 0, 1], bool)
    accepted = np.array([1, 1, 1, 1, 0, 0], bool)
    r = bounds.selective_risk_upper(errors, accepted, 0.05)
    assert (r["accepted"], r["errors"], r["risk"], r["coverage"]) == (4, 2, 0.5, 4 / 6)
    assert r["upper"] == bounds.binomial_upper(2, 4, 0.05)
    assert bounds.selective_risk_upper(errors, np.zeros(6, bool), 0.05)["upper"] is None
    with pytest.raises(ValueError, match="expected 6"):
        bounds.selective_risk_upper(errors[:5], accepted, 0.05)


# ---------------------------------------------------------------- SGR

def error_model(grid: bool):
    """Confidence uniform on [0, 1] (or on 20 tied levels); P(error | c) = 0.3 (1-c)², 10 % errors
    overall; the true selective risk of accepting c ≥ θ, from the model."""
    levels = np.linspace(0.05, 1.0, 20)
    def sample(rng, shape):
        c = rng.choice(levels, shape) if grid else rng.uniform(size=shape)
        return c, rng.uniform(size=shape) >= 0.3 * (1 - c) ** 2
    def risk(theta):
        if grid:
            return np.array([np.mean(0.3 * (1 - levels[levels >= t]) ** 2) for t in theta])
        return 0.3 * (1 - theta) ** 2 / 3
    return sample, risk


@pytest.mark.parametrize("n,target,delta,grid", [(180, 0.08, 0.1, False), (180, 0.08, 0.1, True),
                                                 (1000, 0.05, 0.05, False), (1000, 0.03, 0.1, True)])
def test_sgr_holds_at_delta_and_the_naive_choice_does_not(n, target, delta, grid):
    sample, risk = error_model(grid)
    splits = 500
    conf, correct = sample(np.random.default_rng(n + int(100 * target)), (splits, n))
    fits = [bounds.selective_risk_bound(c, ok, target, delta) for c, ok in zip(conf, correct)]
    chosen = np.array([f["threshold"] for f in fits if f["feasible"]])
    assert len(chosen) > 0.25 * splits                 # not met by refusing to answer (infeasible = no claim)
    assert int((risk(chosen) > target).sum()) <= allowance(splits, delta)
    # Naive: the lowest threshold whose empirical risk among accepted is ≤ target.
    order = np.argsort(-conf, axis=1, kind="stable")
    c_sorted = np.take_along_axis(conf, order, 1)
    emp = np.cumsum(~np.take_along_axis(correct, order, 1), 1) / np.arange(1, n + 1)
    last_ok = n - 1 - np.argmax((emp <= target)[:, ::-1], axis=1)
    naive = c_sorted[np.arange(splits), last_ok]
    assert int((risk(naive) > target).sum()) > allowance(splits, delta)


def test_sgr_output_is_consistent():
    sample, risk = error_model(False)
    conf, correct = sample(np.random.default_rng(11), 1000)
    fit = bounds.selective_risk_bound(conf, correct, 0.05, 0.1)
    accepted = conf >= fit["threshold"]
    assert fit["feasible"] and fit["steps"] == 10 and fit["accepted"] == int(accepted.sum())
    assert fit["risk"] == pytest.approx(np.mean(~correct[accepted]))
    assert fit["risk"] <= fit["risk_bound"] < 0.05
    assert fit["risk_bound"] == bounds.binomial_upper(int((~correct[accepted]).sum()), fit["accepted"], 0.01)


def test_sgr_infeasible_target_is_reported():
    rng = np.random.default_rng(2)
    fit = bounds.selective_risk_bound(rng.uniform(size=180), rng.uniform(size=180) > 0.3, 0.01, 0.05)
    assert not fit["feasible"] and fit["threshold"] is None and fit["risk_bound"] > 0.01


# ---------------------------------------------------------------- AUGRC / AURC

def test_areas_by_hand_with_ties():
    # Points: coverage 0.5 (the tied 0.9s, one wrong) and 1.0; generalized risk 1/4 at both.
    conf, correct = np.array([0.9, 0.9, 0.5, 0.5]), np.array([1, 0, 1, 1], bool)
    assert bounds.augrc(conf, correct) == pytest.approx(0.5 * 0.25 / 2 + 0.5 * 0.25)
    assert bounds.aurc(conf, correct) == pytest.approx(0.5 * 0.5 + 0.5 * (0.5 + 0.25) / 2)


def test_augrc_of_a_tie_group_is_the_mean_over_its_orders():
    conf, correct = np.array([0.8, 0.8, 0.8, 0.3]), np.array([1, 0, 1, 0], bool)
    untied = [bounds.augrc(conf + np.r_[np.array(p) * 1e-3, 0], correct)
              for p in itertools.permutations(range(3))]
    assert bounds.augrc(conf, correct) == pytest.approx(np.mean(untied))


def test_areas_of_perfect_random_and_ranked_classifiers():
    rng = np.random.default_rng(4)
    correct = rng.uniform(size=20_000) > 0.2
    e = np.mean(~correct)
    assert bounds.augrc(rng.uniform(size=20_000), np.ones(20_000, bool)) == 0.0
    assert bounds.aurc(rng.uniform(size=20_000), np.ones(20_000, bool)) == 0.0
    assert bounds.augrc(rng.uniform(size=20_000), correct) == pytest.approx(e / 2, abs=0.005)
    assert bounds.aurc(rng.uniform(size=20_000), correct) == pytest.approx(e, abs=0.01)
    ranked = correct + rng.uniform(0, 0.5, 20_000)         # every correct image above every error
    assert bounds.augrc(ranked, correct) == pytest.approx(e ** 2 / 2)
    assert bounds.aurc(ranked, correct) == pytest.approx(e + (1 - e) * np.log(1 - e), abs=1e-3)


def test_aurc_without_ties_is_the_mean_over_ranks_plus_an_end_term():
    rng = np.random.default_rng(6)
    conf, correct = rng.uniform(size=300), rng.uniform(size=300) > 0.3
    risk = np.cumsum(~correct[np.argsort(-conf)]) / np.arange(1, 301)
    assert bounds.aurc(conf, correct) == pytest.approx(risk.mean() + (risk[0] - risk[-1]) / 600)


@pytest.mark.parametrize("conf,correct,match", [
    (np.array([0.5, np.nan]), np.array([1, 1]), "NaN"), (np.array([0.5, 0.6]), np.array([1, 2]), "boolean"),
    (np.array([0.5, 0.6]), np.array([1]), "expected 2")])
def test_areas_reject_bad_input(conf, correct, match):
    with pytest.raises(ValueError, match=match):
        bounds.augrc(conf, correct)
