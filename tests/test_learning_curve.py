"Learning curves: the power-law fit on known curves, Riley et al.'s worked example, stratified seeded subsamples, the CLI."
import json, math, subprocess, sys

import numpy as np
import pandas as pd
import pytest

from liver_pcr.core import ConfigError, sample_cohort_path
from liver_pcr.cohort.reader import Cohort
from liver_pcr.evaluate.learning_curve import (cox_snell_r2, fit_learning_curve, fit_power_law, max_cox_snell_r2,
                                      power_law, riley_sample_size, subsample_cohort, subsample_ids)


# --- the inverse power law -------------------------------------------------------------------------

@pytest.mark.parametrize('true', [(0.85, 1.5, 0.6), (0.75, 0.8, 0.4), (0.95, 3.0, 0.9)])
def test_power_law_fit_recovers_known_parameters(true):
    rng = np.random.default_rng(0)
    ns = np.repeat([20, 40, 80, 160, 320], 5)
    df = pd.DataFrame(dict(model='m', n=ns, repeat=np.tile(range(5), 5),
                           auc=power_law(ns, *true) + rng.normal(0, 0.003, len(ns))))
    f = fit_learning_curve(df, n_boot=100)['m']
    assert f.params == pytest.approx(true, rel=0.1)
    e = f.at(300)
    assert e['auc'] == pytest.approx(power_law(300, *true), abs=0.005)
    assert e['ci'][0] <= power_law(300, *true) <= e['ci'][1]
    assert e['ci'][0] < e['auc'] < e['ci'][1] and len(f.boot) > 90


def test_power_law_fit_on_exact_points_and_bounds():
    ns = np.array([30, 50, 90, 150])
    assert fit_power_law(ns, power_law(ns, 0.8, 2.0, 0.7)) == pytest.approx((0.8, 2.0, 0.7), abs=1e-3)
    a, b, c = fit_power_law(ns, [0.9, 0.95, 0.98, 0.995])  # steep, still rising near 1
    assert a <= 1.0 and b >= 0 and 0.01 <= c <= 3
    with pytest.raises(ConfigError, match='at least 3 points at 2 or more sizes'):
        fit_power_law([40, 40, 40], [0.7, 0.71, 0.69])


def test_one_repeat_gives_no_band():
    ns = np.array([20, 40, 80, 160])
    df = pd.DataFrame(dict(model='m', n=ns, repeat=0, auc=power_law(ns, 0.8, 1.0, 0.5)))
    f = fit_learning_curve(df, n_boot=50)['m']
    assert len(f.boot) == 0 and all(math.isnan(x) for x in f.at(300)['ci'])


# --- Riley et al. ----------------------------------------------------------------------------------

def test_riley_worked_example():
    "pmsampsize's documented binary example (R, Stata, Python): 24 parameters, R2cs 0.288, prevalence 0.174."
    r = riley_sample_size(0.174, 24, r2_cs=0.288)
    assert (r['shrinkage'], r['optimism'], r['overall_risk'], r['minimum']) == (623, 662, 221, 662)
    assert r['epp'] == pytest.approx(4.8, abs=0.005)  # the EPP Riley et al. 2019 report for their Chagas example
    assert r['max_r2_cs'] == pytest.approx(0.6032, abs=1e-4)
    assert r['r2_nagelkerke'] == pytest.approx(0.288 / 0.6032, abs=1e-3)


def test_riley_criteria_move_the_right_way():
    base = riley_sample_size(0.3, 20, r2_cs=0.2)
    assert riley_sample_size(0.3, 40, r2_cs=0.2)['shrinkage'] > base['shrinkage']  # more parameters: more patients
    assert riley_sample_size(0.3, 20, r2_cs=0.2, shrinkage=0.95)['shrinkage'] > base['shrinkage']
    assert riley_sample_size(0.3, 20, r2_cs=0.2, margin=0.025)['overall_risk'] == math.ceil((1.96 / 0.025) ** 2 * 0.21)
    # criterion (i) at its own n gives the asked shrinkage: S = 1 + P / (n ln(1 - R2/S)) solved for n
    n = base['shrinkage']
    s = 0.9
    assert 20 / ((s - 1) * math.log(1 - 0.2 / s)) <= n < 20 / ((s - 1) * math.log(1 - 0.2 / s)) + 1


@pytest.mark.parametrize('c, prev', [(0.7, 0.174), (0.8, 0.3), (0.85, 0.1)])
def test_cox_snell_from_c_statistic_matches_a_simulation(c, prev):
    "Against scikit-learn's logistic regression fitted on 200 000 simulated binormal patients."
    from scipy.stats import norm
    from sklearn.linear_model import LogisticRegression
    rng = np.random.default_rng(3)
    y = (rng.random(200_000) < prev).astype(int)
    x = rng.normal(size=len(y)) + y * math.sqrt(2) * norm.ppf(c)
    q = LogisticRegression(C=1e8, max_iter=1000).fit(x[:, None], y).predict_proba(x[:, None])[:, 1]
    ll = np.mean(y * np.log(q) + (1 - y) * np.log(1 - q))
    ll0 = y.mean() * math.log(y.mean()) + (1 - y.mean()) * math.log(1 - y.mean())
    assert cox_snell_r2(c, prev) == pytest.approx(1 - math.exp(2 * (ll0 - ll)), abs=0.004)
    assert 0 < cox_snell_r2(c, prev) < max_cox_snell_r2(prev)


@pytest.mark.parametrize('kw, needle', [
    (dict(prevalence=0.0, parameters=10, r2_cs=0.1), 'prevalence must be strictly between 0 and 1'),
    (dict(prevalence=0.3, parameters=0, r2_cs=0.1), 'parameters must be a whole number'),
    (dict(prevalence=0.3, parameters=10), 'exactly one of c_statistic and r2_cs'),
    (dict(prevalence=0.3, parameters=10, c_statistic=0.8, r2_cs=0.1), 'exactly one'),
    (dict(prevalence=0.3, parameters=10, c_statistic=0.45), 'above 0.5'),
    (dict(prevalence=0.05, parameters=10, r2_cs=0.4), 'not below its maximum'),
])
def test_riley_bad_input(kw, needle):
    with pytest.raises(ConfigError, match=needle):
        riley_sample_size(**kw)


# --- subsamples ------------------------------------------------------------------------------------

def test_subsamples_are_stratified_and_seeded():
    y = pd.Series([1.0] * 35 + [0.0] * 85 + [np.nan] * 5, index=[f'P{i:03d}' for i in range(125)])
    for n in (40, 60, 80, 120):
        ids = subsample_ids(y, n, seed=7)
        assert len(ids) == len(set(ids)) == n
        assert abs(y[ids].sum() - n * 35 / 120) < 1  # the share of pCR, to one patient
        assert y[ids].notna().all()  # unlabelled patients are never drawn
        assert ids == subsample_ids(y, n, seed=7)
    assert subsample_ids(y, 40, seed=7) != subsample_ids(y, 40, seed=8)
    assert sorted(subsample_ids(y, 120, seed=1)) == sorted(y.dropna().index)
    draws = [set(subsample_ids(y, 40, seed=s)) for s in range(200)]  # every patient gets drawn sometimes
    assert set().union(*draws) == set(y.dropna().index)


def test_subsample_cohort_keeps_everyone_labels_only_the_drawn():
    c = Cohort.load(sample_cohort_path())
    ids = subsample_ids(c.labels, 12, seed=3)
    s = subsample_cohort(c, ids)
    assert s.labelled_ids == ids and s.ids == c.ids
    assert s.fingerprint() == c.fingerprint() and s.folds is None
    assert (s.labels[ids] == c.labels[ids]).all() and s.labels.drop(ids).isna().all()


# --- the command line ------------------------------------------------------------------------------

def _cli(*args):
    code = 'import sys; from liver_pcr.cli import main; sys.exit(main())'
    return subprocess.run([sys.executable, '-c', code, *args], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=600)


def test_cli_on_the_sample(tmp_path, _cache):
    out = tmp_path / 'lc'
    r = _cli('learning-curve', str(sample_cohort_path()), '--models', 'clinical', '--sizes', '12', '18',
             '--repeats', '2', '--folds', '3', '--out', str(out), '--target', '60', '--n-boot', '50')
    assert r.returncode == 0, r.stderr
    assert {'learning_curve.csv', 'fit.json', 'learning_curve.png', 'runs'} <= {p.name for p in out.iterdir()}
    df = pd.read_csv(out / 'learning_curve.csv')
    assert df[['n', 'repeat']].values.tolist() == [[12, 0], [12, 1], [18, 0], [18, 1]]
    fit = json.loads((out / 'fit.json').read_text())
    m = fit['models']['clinical']
    assert fit['target'] == 60 and m['at_target']['n'] == 60 and fit['prevalence'] == pytest.approx(7 / 24)
    assert m['parameters'] == 4  # the clinical reference: log markers and their changes
    riley = riley_sample_size(7 / 24, 4, c_statistic=df.auc[df.n == 18].mean())
    assert m['riley']['minimum'] == riley['minimum'] and f"{riley['minimum']} patients" in r.stdout
    assert 'clinical: mean AUC n=12' in r.stdout and 'Riley minimum' in r.stdout
    assert not [p for p in tmp_path.iterdir() if p.name.startswith('.')]  # no building folder left
    r = _cli('learning-curve', str(sample_cohort_path()), '--models', 'clinical', '--sizes', '12', '18',
             '--folds', '3', '--out', str(out))
    assert r.returncode == 1 and 'already exists' in r.stderr  # a new folder only


@pytest.mark.parametrize('args, needle', [
    (['/no/such/cohort', '--models', 'clinical', '--sizes', '12'], 'not a cohort folder'),
    (['SAMPLE', '--models', 'clinical', '--sizes', '12', '--folds', '5'], 'too few for 5 folds'),
    (['SAMPLE', '--models', 'clinical', '--sizes', '12', '--repeats', '1'], 'at least 2'),
    (['SAMPLE', '--models', 'resnet50', '--sizes', '12'], "invalid choice: 'resnet50'"),
])
def test_cli_bad_input_is_one_line_exit_1(tmp_path, args, needle):
    args = [str(sample_cohort_path()) if a == 'SAMPLE' else a for a in args]
    r = _cli('learning-curve', *args, '--out', str(tmp_path / 'lc'))
    assert r.returncode == 1 and needle in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and 'Traceback' not in r.stderr
    assert not (tmp_path / 'lc').exists()


# --- tutorial 10 -----------------------------------------------------------------------------------

def test_tutorial_exercises_are_tagged_and_empty():
    from pathlib import Path
    nb = json.loads((Path(__file__).resolve().parents[1] / 'nbs' / 'tutorials' / '10_how_many_patients.ipynb').read_text())
    cells = nb['cells']
    heads = [i for i, c in enumerate(cells) if c['cell_type'] == 'markdown' and ''.join(c['source']).startswith('## Exercises')]
    assert len(heads) == 1  # one section, the last
    after = cells[heads[0] + 1:]
    code = [c for c in after if c['cell_type'] == 'code']
    assert code and all('exercise' in c['metadata'].get('tags', []) and not c['outputs'] for c in code)
    assert not any('exercise' in c['metadata'].get('tags', []) for c in cells[:heads[0]])
    assert '<details>' in ''.join(''.join(c['source']) for c in after if c['cell_type'] == 'markdown')
    assert not any(''.join(c['source']).startswith('## ') for c in after if c['cell_type'] == 'markdown')
