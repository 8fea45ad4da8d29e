"Evaluation metrics checked against independent implementations, known properties and bad run folders."
import json, math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import optimize, stats
from scipy.special import expit, logit

from liver_pcr.core import LiverPcrError
from liver_pcr.testing import binormal
from liver_pcr.metrics import (
    auc,
    bootstrap_auc_ci,
    bootstrap_ci,
    brier,
    calibration_curve,
    calibration_intercept_slope,
    delong_test,
    delong_vs_chance,
    net_benefit,
    summarize_predictions,
    threshold_metrics,
    true_auc,
    wilson_ci,
    youden_threshold,
)
from liver_pcr.evaluate.compare import cmd_compare, compare_runs
from liver_pcr.train.runs import load_run
from liver_pcr.testing import write_toy_run


def _tied(seed, n=150, levels=7):
    "Random outcomes and scores with many ties (a few score levels), loosely related."
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    p = np.clip(np.round((rng.random(n) + 0.3 * y) * levels) / (levels + 3), 0, 1)
    return y, p


# --- AUC -------------------------------------------------------------------------------------------

@pytest.mark.parametrize('seed', range(5))
def test_auc_equals_sklearn_with_ties(seed):
    from sklearn.metrics import roc_auc_score
    y, p = _tied(seed)
    assert len(np.unique(p)) < 15                     # the case we mean: heavy ties
    assert auc(y, p) == pytest.approx(roc_auc_score(y, p), abs=1e-12)


def test_auc_refuses_one_outcome():
    with pytest.raises(LiverPcrError, match='both outcomes'): auc([1, 1, 1], [.1, .2, .3])


# --- bootstrap ------------------------------------------------------------------------------------

def test_bootstrap_auc_ci_is_seeded_and_brackets_the_estimate():
    y, p = binormal(60, 60, d=1.0, seed=1)
    ci = bootstrap_auc_ci(y, p, n_boot=2000, seed=0)
    assert ci == bootstrap_auc_ci(y, p, n_boot=2000, seed=0)
    assert ci != bootstrap_auc_ci(y, p, n_boot=2000, seed=1)
    assert ci[0] < auc(y, p) < ci[1]


def test_bootstrap_auc_ci_coverage_on_binormal_data():
    """The 95% percentile interval covers the true AUC Φ(d/√2) of binormal data about 95% of the time.
    200 replicates give a binomial SD of about 1.5 points around 0.95; the percentile bootstrap also
    under-covers slightly at n = 100, so we accept [0.88, 0.99] (more than 4 SD below, 2.5 SD above)."""
    d = 1.0
    hits = [lo <= true_auc(d) <= hi
            for s in range(200)
            for lo, hi in [bootstrap_auc_ci(*binormal(50, 50, d=d, seed=1000 + s), n_boot=500, seed=s)]]
    assert 0.88 <= np.mean(hits) <= 0.99, np.mean(hits)


def test_bootstrap_ci_of_a_vector_statistic_and_unstratified_resampling():
    y, p = binormal(30, 90, d=1.0, seed=2)
    lo, hi = bootstrap_ci(lambda yb, pb: np.stack([yb.mean(-1), pb.mean(-1)], -1), y, p, n_boot=300)
    assert lo.shape == (2,) and lo[0] == hi[0] == 0.25        # stratified: the prevalence never moves
    lo, hi = bootstrap_ci(lambda yb, pb: yb.mean(-1), y, p, n_boot=300, stratified=False)
    assert lo < 0.25 < hi


# --- DeLong ---------------------------------------------------------------------------------------

def _delong_reference(y, P):
    """DeLong, DeLong & Clarke-Pearson (1988), "Comparing the areas under two or more correlated receiver
    operating characteristic curves: a nonparametric approach", Biometrics 44:837–845, written directly from
    the paper's structural components: ψ(X, Y) = 1 if X > Y, 1/2 if X = Y, 0 otherwise (X a positive, Y a
    negative); θ̂ʳ = mean ψ; V10ʳ(Xᵢ) = (1/n) Σⱼ ψ(Xᵢ, Yⱼ); V01ʳ(Yⱼ) = (1/m) Σᵢ ψ(Xᵢ, Yⱼ);
    S10ʳˢ = Σᵢ (V10ʳ − θ̂ʳ)(V10ˢ − θ̂ˢ) / (m − 1), S01 likewise over the negatives; S = S10/m + S01/n.
    O(m·n) pairwise comparisons, no ranks: independent of the midrank algorithm under test."""
    k = len(P); theta = np.zeros(k); V10, V01 = [], []
    for r in range(k):
        X, Y = P[r][y == 1], P[r][y == 0]
        psi = (X[:, None] > Y[None, :]) + 0.5 * (X[:, None] == Y[None, :])
        theta[r] = psi.mean(); V10.append(psi.mean(1)); V01.append(psi.mean(0))
    m, n = len(V10[0]), len(V01[0])
    S10 = np.array([[np.sum((V10[r] - theta[r]) * (V10[s] - theta[s])) / (m - 1) for s in range(k)] for r in range(k)])
    S01 = np.array([[np.sum((V01[r] - theta[r]) * (V01[s] - theta[s])) / (n - 1) for s in range(k)] for r in range(k)])
    return theta, S10 / m + S01 / n


@pytest.mark.parametrize('seed', range(4))
def test_delong_test_equals_the_pairwise_definition(seed):
    y, p1 = _tied(seed)
    p2 = np.clip(p1 + np.random.default_rng(seed + 50).normal(0, 0.15, len(p1)).round(1), 0, 1)   # correlated, tied
    theta, S = _delong_reference(y, np.vstack([p1, p2]))
    se = math.sqrt(S[0, 0] + S[1, 1] - 2 * S[0, 1]); z = (theta[0] - theta[1]) / se
    r = delong_test(y, p1, p2)
    assert (r.auc1, r.auc2) == pytest.approx(tuple(theta), abs=1e-12)
    assert r.diff == pytest.approx(theta[0] - theta[1], abs=1e-12)
    assert r.se == pytest.approx(se, rel=1e-9) and r.z == pytest.approx(z, rel=1e-9)
    assert r.p == pytest.approx(math.erfc(abs(z) / math.sqrt(2)), rel=1e-9)
    one = delong_vs_chance(y, p1)
    assert one.se == pytest.approx(math.sqrt(S[0, 0]), rel=1e-9)
    assert one.z == pytest.approx((theta[0] - 0.5) / math.sqrt(S[0, 0]), rel=1e-9)


def test_delong_variance_matches_the_mann_whitney_null_variance():
    """Under no discrimination and continuous scores the AUC (Mann–Whitney U/mn) has exact variance
    (m + n + 1) / (12 m n) (Mann & Whitney 1947); DeLong's estimate is consistent for it, so its mean over
    300 null data sets must be close (5% allows the estimator's small-sample bias, ~1.5% at m = n = 30,
    and the Monte Carlo error, ~1%)."""
    rng, m, n = np.random.default_rng(7), 30, 30
    y = np.r_[np.ones(m, int), np.zeros(n, int)]
    var = np.mean([delong_vs_chance(y, rng.random(m + n)).se ** 2 for _ in range(300)])
    assert var == pytest.approx((m + n + 1) / (12 * m * n), rel=0.05)


def test_delong_variance_bounds():
    "Placement values lie in [0, 1], so var ≤ θ(1−θ)(1/(m−1) + 1/(n−1)); perfect separation has variance 0."
    for s in range(5):
        y, p = binormal(20, 40, d=0.8, seed=s)
        r = delong_vs_chance(y, p)
        assert 0 < r.se ** 2 <= r.auc1 * (1 - r.auc1) * (1 / 19 + 1 / 39)
    r = delong_vs_chance([0, 0, 0, 1, 1, 1], [.1, .2, .3, .7, .8, .9])
    assert r.se == 0 and r.auc1 == 1 and r.p == 0


def test_delong_p_values_strong_separation_and_chance():
    y, p = binormal(60, 60, d=2.0, seed=3)
    assert delong_vs_chance(y, p).p < 1e-6
    # random scores: the test should reject about 5% of the time (DeLong is slightly liberal at n = 60)
    rng, y = np.random.default_rng(11), np.r_[np.ones(30, int), np.zeros(30, int)]
    one = np.array([delong_vs_chance(y, rng.random(60)).p for _ in range(300)])
    two = np.array([delong_test(y, rng.random(60), rng.random(60)).p for _ in range(300)])
    for ps in (one, two):
        assert 0.02 <= np.mean(ps < 0.05) <= 0.10
        assert stats.kstest(ps, 'uniform').pvalue > 0.001        # roughly uniform, not only at 5%
    assert delong_test(y, p := rng.random(60), p).p == 1.0


# --- thresholds -----------------------------------------------------------------------------------

@pytest.mark.parametrize('seed', range(3))
def test_youden_threshold_reaches_the_best_j_of_the_roc_curve(seed):
    from sklearn.metrics import roc_curve
    y, p = _tied(seed)
    fpr, tpr, _ = roc_curve(y, p)
    t = youden_threshold(y, p)
    pred = p >= t
    j = pred[y == 1].mean() - pred[y == 0].mean()
    assert j == pytest.approx(np.max(tpr - fpr), abs=1e-12)
    assert not np.isin(t, p) or t == p.min()                  # a midpoint, not one of the scores


def test_threshold_metrics_with_per_patient_thresholds():
    y, p = binormal(40, 60, d=1.0, seed=4)
    t = np.array([.3, .5, .7])[np.arange(100) % 3]
    tm = threshold_metrics(y, p, t, n_boot=300)
    pred = p >= t
    assert tm.estimate['sensitivity'] == pred[y == 1].mean() and tm.estimate['specificity'] == (~pred[y == 0]).mean()
    assert tm.estimate['ppv'] == y[pred].mean() and tm.estimate['npv'] == (1 - y[~pred]).mean()
    assert (tm.ci_low <= tm.estimate).all() and (tm.estimate <= tm.ci_high).all()
    assert tm.estimate['sensitivity'] != threshold_metrics(y, p, 0.5, n_boot=10).estimate['sensitivity']
    with pytest.raises(LiverPcrError, match='one per patient'): threshold_metrics(y, p, t[:10])


def test_wilson_interval_reproduces_newcombe_1998():
    "Newcombe (1998) Stat Med 17:857–872, Table I, Wilson score method (method 3) examples."
    lo, hi = wilson_ci([81, 15, 0, 1], [263, 148, 20, 29])
    assert np.round(lo, 4).tolist() == [0.2553, 0.0624, 0.0, 0.0061]
    assert np.round(hi, 4).tolist() == [0.3662, 0.1605, 0.1611, 0.1718]


# --- calibration ----------------------------------------------------------------------------------

def test_calibration_of_calibrated_and_over_confident_predictions():
    y, p = binormal(1500, 1500, d=1.5, seed=5)             # p is the true posterior: perfectly calibrated
    c = calibration_intercept_slope(y, p)
    assert abs(c.slope - 1) < 0.1 and abs(c.intercept) < 0.1
    assert calibration_intercept_slope(y, expit(2 * logit(p))).slope < 0.7       # over-confident
    assert calibration_intercept_slope(y, expit(0.5 * logit(p))).slope > 1.5     # under-confident
    assert calibration_intercept_slope(y, expit(logit(p) - 1)).intercept == pytest.approx(1, abs=0.15)  # risks too low
    assert brier(y, p) < brier(y, expit(2 * logit(p)))


def test_calibration_fit_is_the_maximum_likelihood_fit():
    "Newton's answer against a general-purpose optimiser on the same log-likelihoods."
    y, p = binormal(80, 40, d=1.0, seed=6); p = expit(1.4 * logit(p) + 0.3)
    lp = logit(p)
    nll = lambda eta: np.sum(np.logaddexp(0, eta) - y * eta)
    a = optimize.minimize(lambda b: nll(b[0] + lp), [0.0], method='BFGS', options=dict(gtol=1e-10)).x[0]
    ab = optimize.minimize(lambda b: nll(b[0] + b[1] * lp), [0.0, 1.0], method='BFGS', options=dict(gtol=1e-10)).x
    c = calibration_intercept_slope(y, p)
    assert c.intercept == pytest.approx(a, abs=1e-5) and c.slope == pytest.approx(ab[1], abs=1e-5)


def test_calibration_slope_is_nan_when_p_separates_the_outcomes():
    "Perfect separation: the likelihood grows without bound, so there is no finite slope to report."
    with pytest.warns(UserWarning, match='did not converge'):
        c = calibration_intercept_slope([0, 0, 0, 1, 1, 1], [.1, .2, .3, .7, .8, .9])
    assert np.isnan(c.slope)


def test_calibration_curve_bins_every_patient():
    y, p = binormal(45, 75, d=1.0, seed=7)
    for strategy in ('quantile', 'uniform'):
        cc = calibration_curve(y, p, n_bins=5, strategy=strategy)
        assert cc.n.sum() == 120 and (cc.observed * cc.n).sum() == pytest.approx(45)
        assert ((cc.ci_low <= cc.observed) & (cc.observed <= cc.ci_high)).all()
    assert calibration_curve(y, p, strategy='quantile').n.max() - calibration_curve(y, p).n.min() <= 1


# --- decision curve -------------------------------------------------------------------------------

@pytest.mark.parametrize('seed', range(2))
def test_net_benefit_equals_dcurves(seed):
    from dcurves import dca
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 90)
    p = np.round(np.clip(rng.random(90) * 0.7 + 0.3 * y, 0, 1), 2)   # 2 decimals: scores fall on the thresholds
    t = np.arange(0.05, 0.96, 0.01)
    ours = net_benefit(y, p, t)
    ref = dca(data=pd.DataFrame(dict(y=y, model=p)), outcome='y', modelnames=['model'], thresholds=t)
    for col, name in [('net_benefit', 'model'), ('treat_all', 'all'), ('treat_none', 'none')]:
        r = ref[ref.model == name]
        np.testing.assert_allclose(r.threshold.to_numpy(float), t)
        np.testing.assert_allclose(ours[col].to_numpy(), r.net_benefit.to_numpy(float), rtol=0, atol=1e-9)


# --- run folders ----------------------------------------------------------------------------------

@pytest.fixture
def runs(tmp_path):
    y, p = binormal(40, 60, d=1.2, seed=8)
    weak = expit(logit(p) + np.random.default_rng(9).normal(0, 1.5, len(p)))
    return (y, p, weak,
            write_toy_run(tmp_path / 'ref', y, p, model='multi', thresholds=[.4, .45, .5, .55, .6]),
            write_toy_run(tmp_path / 'weak', y, weak))


def _edit(f: Path, old, new):
    s = f.read_text(); assert old in s; f.write_text(s.replace(old, new, 1))


def test_load_run_rejects_p_outside_0_1_naming_the_file(runs):
    d = runs[4]; f = d / 'predictions.csv'
    _set_cell(f, 4, 3, '1.5'); _set_cell(f, 9, 3, '-0.1')
    with pytest.raises(LiverPcrError) as e: load_run(d)
    assert f"{f}: column 'p': p outside [0, 1] at line 4 (P002: p = 1.5), line 9 (P007: p = -0.1)" in str(e.value)


def _set_cell(f: Path, line: int, col: int, value: str):
    "Overwrite one cell of a CSV file (line 1 is the header)."
    lines = f.read_text().splitlines(); cells = lines[line - 1].split(','); cells[col] = value
    lines[line - 1] = ','.join(cells); f.write_text('\n'.join(lines) + '\n')


@pytest.mark.parametrize('line,col,value,expect', [
    (1, 2, 'label', "missing column(s) 'y_true'"),
    (3, 0, 'P000', "column 'patient_id': duplicate patient_id P000"),
    (4, 2, '3', "column 'y_true': y_true not 0/1 at line 4 (P002: y_true = 3)"),
    (4, 3, 'abc', "column 'p': missing or non-numeric p at line 4 (P002: p = abc)"),
])
def test_load_run_rejects_malformed_predictions(runs, line, col, value, expect):
    f = runs[4] / 'predictions.csv'
    _set_cell(f, line, col, value)
    with pytest.raises(LiverPcrError) as e: load_run(runs[4])
    assert f'{f}: ' in str(e.value) and expect in str(e.value)


def test_load_run_checks_thresholds_and_the_folder(runs, tmp_path):
    f = runs[3] / 'thresholds.csv'
    _edit(f, '\n3,0.55', '')
    with pytest.raises(LiverPcrError, match=r'thresholds\.csv: no threshold for fold\(s\) 3'): load_run(runs[3])
    with pytest.raises(LiverPcrError, match='not a run folder'): load_run(tmp_path / 'nowhere')
    (tmp_path / 'empty').mkdir()
    with pytest.raises(LiverPcrError, match=r'predictions\.csv: no such file'): load_run(tmp_path / 'empty')
    (runs[4] / 'config.json').write_text('{not json')
    with pytest.raises(LiverPcrError, match=r'config\.json: invalid JSON'): load_run(runs[4])


def test_summarize_predictions_uses_fold_thresholds_or_says_default(runs):
    y, p, _, ref, weak = runs
    r = load_run(ref)
    s = summarize_predictions(r.predictions, r.thresholds, n_boot=200)
    t = np.array([.4, .45, .5, .55, .6])[np.arange(len(y)) % 5]
    assert s['thresholds'] == {'0': .4, '1': .45, '2': .5, '3': .55, '4': .6}
    assert s['threshold_source'] == 'per fold'
    assert s['sensitivity'] == (p >= t)[y == 1].mean() and s['specificity'] == (p < t)[y == 0].mean()
    assert s['auc'] == auc(y, p) and s['n'] == 100 and s['n_pos'] == 40
    assert s['auc_ci'][0] < s['auc'] < s['auc_ci'][1]
    s0 = summarize_predictions(load_run(weak).predictions, None, n_boot=200)
    assert s0['threshold_source'] == 'default 0.5' and set(s0['thresholds'].values()) == {0.5}
    json.dumps(s); json.dumps(s0)


def test_compare_runs_table_and_files(runs, tmp_path):
    y, p, weak, ref, wk = runs
    df = compare_runs([ref, wk], out_dir=tmp_path / 'out', n_boot=300)
    assert df.model.tolist() == ['multi', 'weak']               # config.json's model, else the folder name
    assert np.isnan(df.delong_p[0]) and df.delong_p[1] == pytest.approx(delong_test(y, p, weak).p, rel=1e-12)
    lo, hi = bootstrap_auc_ci(y, p, n_boot=300)
    assert df['AUC [95% CI]'][0] == f'{auc(y, p):.2f} [{lo:.2f}, {hi:.2f}]'
    files = {f.name: f for f in (tmp_path / 'out').iterdir()}
    assert sorted(files) == ['calibration.png', 'comparison.csv', 'comparison.md', 'decision_curve.png', 'roc.png']
    for png in ('roc.png', 'calibration.png', 'decision_curve.png'):
        assert files[png].read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    back = pd.read_csv(files['comparison.csv'])
    assert back.auc.tolist() == pytest.approx(df.auc.tolist()) and back.delong_p.isna()[0]
    md = files['comparison.md'].read_text().splitlines()
    assert md[0].startswith('| model |') and len(md) == 4 and '| multi |' in md[2]


def test_compare_refuses_runs_on_different_patients(runs, tmp_path):
    y, p = runs[0], runs[1]
    ids = [f'Q{i:03d}' for i in range(3)] + [f'P{i:03d}' for i in range(3, 100)]
    other = write_toy_run(tmp_path / 'other', y, p, patient_ids=ids)
    with pytest.raises(LiverPcrError) as e: compare_runs([runs[3], other], n_boot=10)
    msg = str(e.value)
    assert 'different patients' in msg and '3 only in ref (P000, P001, P002)' in msg and '3 only in other (Q000, Q001, Q002)' in msg
    flipped = write_toy_run(tmp_path / 'flipped', np.where(np.arange(100) == 7, 1 - y, y), p)
    with pytest.raises(LiverPcrError, match=r'disagree on y_true for 1 patient\(s\) \(P007\)'): compare_runs([runs[3], flipped], n_boot=10)


def test_compare_pairs_patients_by_id_not_by_row_order(runs, tmp_path):
    y, p, weak, ref, wk = runs
    f = wk / 'predictions.csv'
    df = pd.read_csv(f, dtype={'patient_id': str}); df.iloc[::-1].to_csv(f, index=False)   # same patients, reversed
    out = compare_runs([ref, wk], n_boot=100)
    assert out.delong_p[1] == pytest.approx(delong_test(y, p, weak).p, rel=1e-12)


def test_cmd_compare_prints_the_table_and_the_files(runs, tmp_path, capsys):
    import argparse
    rc = cmd_compare(argparse.Namespace(runs=[str(runs[3]), str(runs[4])], out=str(tmp_path / 'cmp')))
    out = capsys.readouterr().out
    assert rc == 0 and out.startswith('| model |') and 'comparison.csv' in out and str(tmp_path / 'cmp') in out
    assert (tmp_path / 'cmp' / 'roc.png').exists()


# --- figures ---------------------------------------------------------------------------------------
def _three_runs():
    rng = np.random.default_rng(3); y = rng.integers(0, 2, 80)
    return {f'm{i}': (y, expit(s*(y - .5) + rng.normal(0, 1, 80))) for i, s in enumerate((0.5, 1.5, 3.0))}

def test_calibration_figure_draws_the_recalibration_fit_for_many_runs():
    "With more than two runs the curve is expit(a + b·logit p) of the maximum-likelihood recalibration fit: its slope is the legend's."
    import matplotlib; matplotlib.use('Agg')
    from liver_pcr.evaluate.compare import plot_calibration
    runs = _three_runs()
    ax = plot_calibration(runs).axes[0]
    curves = [l for l in ax.get_lines() if len(l.get_xdata()) == 50]
    assert len(curves) == 3
    for (y, p), l in zip(runs.values(), curves):
        x, f = np.asarray(l.get_xdata()), np.asarray(l.get_ydata())
        b = np.polyfit(logit(x), logit(f), 1)[0]                      # a straight line on the logit scale ...
        assert b == pytest.approx(calibration_intercept_slope(y, p).slope, rel=1e-4)   # ... with the calibration slope
    from matplotlib.collections import LineCollection
    has_bars = lambda ax: any(isinstance(c, LineCollection) for c in ax.collections)
    assert not has_bars(ax)                                                # six sets of error bars hide each other
    assert has_bars(plot_calibration(dict(list(runs.items())[:2])).axes[0])   # two runs keep their Wilson CIs

def test_roc_figure_bands():
    "One band per run for up to two runs; beyond that only the first run's band."
    import matplotlib; matplotlib.use('Agg')
    from matplotlib.collections import PolyCollection
    from liver_pcr.evaluate.compare import plot_roc
    runs = _three_runs()
    bands = lambda fig: sum(isinstance(c, PolyCollection) for c in fig.axes[0].collections)
    assert bands(plot_roc(runs, n_boot=100)) == 1
    assert bands(plot_roc(dict(list(runs.items())[:2]), n_boot=100)) == 2
    assert bands(plot_roc(runs, ci=True, n_boot=100)) == 3
