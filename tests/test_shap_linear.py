"Exact SHAP of the linear head and of the clinical reference against `shap.LinearExplainer`; the neural branch's KernelSHAP runs the trunk once; waterfall labels in real units."
import numpy as np
import pytest
import torch

from liver_pcr.interpret.attribution import fold_batch
from liver_pcr.train.modelfile import load_fold
from liver_pcr.train.runs import RunFolder
from liver_pcr.train.learner import forward
from liver_pcr.core import LiverPcrError
from liver_pcr.data.dataset import wide_labs
from liver_pcr.interpret.explain import explain_patient
from liver_pcr.models.nets import STAGES, neural
from liver_pcr.data.preprocess import PreprocessConfig
from liver_pcr.interpret.shap import (clinical_fn, feature_display, linear_shap, load_reference, reference_features,
                                    shap_clinical_branch, shap_linear_head, shap_reference_fold, waterfall_labels)
from liver_pcr.train.config import TrainConfig
from liver_pcr.train.cv import run_cv

TINY = dict(pre_cfg=PreprocessConfig(roi_px=16, roi_mm=96), train_cfg=TrainConfig(epochs=2, min_epochs=1, patience=1), n_folds=3,
            show_progress=False, n_boot=50, check=False)


pytestmark = pytest.mark.usefixtures('_module_env')  # one cache, quiet bars, one thread (tests/conftest.py)


@pytest.fixture(scope='module')
def linear(sample, tmp_path_factory):
    "Fold 0 of the relation stage with its default linear head (measurements, deep=False), a batch of its test patients and of its fitting patients."
    d = tmp_path_factory.mktemp('runs')
    run_cv(sample, STAGES['relation'], d/'relation', **TINY)
    fm = load_fold(d/'relation', 0)
    fit_ids = list(fm.split['train']) + list(fm.split['val'])
    return d/'relation', fm, fold_batch(fm, sample), fold_batch(fm, sample, fit_ids)


def _standardised(fm, b):
    "The linear head's standardised inputs (n, P), as it computes them."
    with torch.no_grad():
        v, miss = fm.model.linear_inputs(b['images'], b['present'], b['clinical'], b['masks'])
    h = fm.model.head
    mean, scale = h.mean.double().numpy(), h.scale.double().numpy()
    return (np.where(miss.numpy(), mean, v.double().numpy()) - mean)/scale


def test_linear_head_shap_equals_linear_explainer(linear, sample):
    import shap
    _, fm, b, fb = linear
    assert fm.model.cfg.head == 'linear' and not fm.model.cfg.deep and fm.model.blocks   # the default stage
    h = fm.model.head
    coef, bias = h.coef.double().numpy(), float(h.bias)
    Z, Zb = _standardised(fm, b), _standardised(fm, fb)
    ref = shap.LinearExplainer((coef, bias), shap.maskers.Independent(Zb, max_samples=len(Zb)))(Z)
    for i in range(len(b['patient_id'])):
        ex = shap_linear_head(fm, sample, b, i)
        np.testing.assert_allclose(ex.values[0], ref.values[i], atol=1e-6, rtol=0)
        assert ex.base_values[0] == pytest.approx(float(np.ravel(ref.base_values)[i]), abs=1e-6)
    with torch.no_grad():
        f, fbg = forward(fm.model, b).double().numpy(), forward(fm.model, fb).double().numpy()
    ex0 = shap_linear_head(fm, sample, b, 0)
    assert ex0.values.sum() == pytest.approx(f[0] - fbg.mean(), abs=1e-5)             # f(x) − E f(background), log-odds
    assert np.abs(ex0.values).sum() > 0
    assert list(ex0.feature_names) == list(fm.bundle['measure_columns'])


def test_linear_shap_is_the_closed_form_of_linear_explainer():
    import shap
    rng = np.random.default_rng(0)
    Zb, Z, coef = rng.normal(1.0, 2.0, (50, 6)), rng.normal(size=(4, 6)), rng.normal(size=6)
    sv, base = linear_shap(coef, 0.3, Z, Zb)
    ref = shap.LinearExplainer((coef, 0.3), shap.maskers.Independent(Zb, max_samples=len(Zb)))(Z)
    np.testing.assert_allclose(sv, ref.values, atol=1e-9, rtol=0)
    assert base == pytest.approx(float(np.ravel(ref.base_values)[0]), abs=1e-9)
    np.testing.assert_allclose(base + sv.sum(1), Z @ coef + 0.3, atol=1e-9)


def test_reference_shap_equals_linear_explainer(sample, tmp_path):
    import shap
    run_cv(sample, 'clinical', tmp_path/'clinical', **TINY)
    s = RunFolder(tmp_path/'clinical').splits()[1]
    st = load_reference(tmp_path/'clinical', s['fold'])
    ex = shap_reference_fold(st, sample, s['train'], s['test'])
    Z, Zb = (st.scaled(reference_features(st, sample, ids)) for ids in (s['test'], s['train']))
    ref = shap.LinearExplainer((np.asarray(st.coef), st.intercept), shap.maskers.Independent(Zb, max_samples=len(Zb)))(Z)
    np.testing.assert_allclose(ex.values, ref.values, atol=1e-6, rtol=0)
    np.testing.assert_allclose(ex.values.sum(1), st.decision(reference_features(st, sample, s['test']))
                               - st.decision(reference_features(st, sample, s['train'])).mean(), atol=1e-6)


def test_waterfall_labels_are_real_units(sample, tmp_path):
    run_cv(sample, 'clinical', tmp_path/'clinical', **TINY)
    s = RunFolder(tmp_path/'clinical').splits()[0]
    st = load_reference(tmp_path/'clinical', 0)
    m, t0, t1 = sample.markers[0], sample.timepoints[0], sample.timepoints[1]
    wide = wide_labs(sample, list(s['test']), sample.timepoints, sample.markers).astype(float)
    pid = next(i for i in s['test'] if np.isfinite(wide.loc[i, (m, t1)]/wide.loc[i, (m, t0)]))
    ex = shap_reference_fold(st, sample, s['train'], [pid])
    labels = dict(zip(ex.feature_names, waterfall_labels(ex, 0)))
    w = wide.loc[[pid]]
    ratio = w[(m, t1)].iloc[0]/w[(m, t0)].iloc[0]
    assert labels[f'{t1}_dlog_{m}'] == f'{ratio:.4g} = {m} {t1}/{t0} (ratio)'  # the ratio, not its log, and named a ratio
    assert not any(l.split(' = ', 1)[-1].startswith(('log_', 'dlog_')) for l in labels.values())
    names, shown = feature_display([f'log_{m}_{t0}', f'dlog_{m}_{t1}', f'{t1}_log_volume', 'other'],
                                   [[0.5, 0.1, np.log(12.5), 3.0]], sample, [pid], sample.timepoints)
    unit = {'afp': ' (ng/mL)', 'pivka_ii': ' (mAU/mL)'}.get(m, '')
    assert names == [f'{m} at {t0}{unit}', f'{m} {t1}/{t0} (ratio)', f'{t1} tumour volume (mL)', 'other']
    np.testing.assert_allclose(shown[0], [w[(m, t0)].iloc[0], ratio, 12.5, 3.0])   # raw marker, raw ratio, mL, as is


def test_neural_branch_runs_the_trunk_once(sample, tmp_path, monkeypatch):
    run_cv(sample, neural(STAGES['relation']), tmp_path/'rel', **TINY)
    fm = load_fold(tmp_path/'rel', 0)
    b = fold_batch(fm, sample)
    calls = []
    real = fm.model.encoder.forward
    monkeypatch.setattr(fm.model.encoder, 'forward', lambda *a, **k: calls.append(len(a[0])) or real(*a, **k))
    ex = shap_clinical_branch(fm, sample, b, 0, nsamples=100)
    assert calls == [1]                                                     # one trunk pass, one patient, whatever the samples
    with torch.no_grad():
        lg = float(forward(fm.model, {k: v[:1] if torch.is_tensor(v) else v for k, v in b.items()}))
    assert ex.base_values[0] + ex.values.sum() == pytest.approx(lg, abs=1e-4)


def test_linear_head_explain_has_no_maps_and_exact_shap(linear, sample):
    run, fm, b, _ = linear
    pid = fm.split['test'][0]
    px = explain_patient(run, sample, pid)
    assert px.maps == {} and px.head == 'linear'
    assert px.shap.base_values[0] + px.shap.values.sum() == pytest.approx(float(np.log(px.p/(1 - px.p))), abs=1e-4)
    with pytest.raises(LiverPcrError, match='exact'):
        clinical_fn(fm.model, b)


def test_explaining_a_linear_model_never_imports_shap(linear, sample, tmp_path):
    "shap pulls in numba and sklearn (about 100 MB): `liver-pcr explain` of a linear model and of the clinical reference does without."
    import os, subprocess, sys
    run, fm, _, _ = linear
    pid = fm.split['test'][0]
    code = (f"import sys; from liver_pcr.cohort.reader import Cohort; from liver_pcr.interpret.explain import explain_to; "
            f"fs = explain_to({str(run)!r}, Cohort.load({str(sample.root)!r}), {pid!r}, {str(tmp_path/'o')!r}); "
            f"print(sorted(f.name for f in fs)); print('shap' in sys.modules, 'numba' in sys.modules)")
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, env=os.environ.copy(), check=True).stdout.split('\n')
    assert out[0] == str(sorted(f'{pid}_{x}' for x in ('contributions.png', 'shap.png', 'explanation.json')))
    assert out[1] == 'False False'
