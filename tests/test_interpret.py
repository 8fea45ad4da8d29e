"Interpretability: maps of the model passed in, row bookkeeping, lesion share against a random map, SHAP additivity, `explain`."
import copy, io, json, shutil

import numpy as np
import pandas as pd
import pytest
import torch

from liver_pcr.cohort.reader import Cohort
from liver_pcr.core import LiverPcrError, ConfigError, run_main, sample_cohort_path
from liver_pcr.interpret.attribution import METHODS, occlusion, attribute, attribution_in_lesion, fold_batch, fold_of, fusion_weights, gradcam_layer, lesion_summary
from liver_pcr.train.modelfile import load_fold
from liver_pcr.train.runs import RunFolder
from liver_pcr.train.learner import forward
from liver_pcr.interpret.explain import cmd_explain, explain_to
from liver_pcr.interpret.shap import (
    load_reference,
    reference_features,
    shap_clinical_branch,
    shap_reference,
    plot_waterfall,
    plot_beeswarm,
)
from liver_pcr.models.nets import ModelConfig, PCRModel, STAGES, neural
from liver_pcr.data.preprocess import PreprocessConfig
from liver_pcr.train.config import TrainConfig
from liver_pcr.train.cv import run_cv

TINY = dict(pre_cfg=PreprocessConfig(roi_px=16, roi_mm=96), train_cfg=TrainConfig(epochs=2, min_epochs=1, patience=1), n_folds=3,
            show_progress=False, n_boot=50, check=False)


pytestmark = pytest.mark.usefixtures('_module_env')  # one cache, quiet bars, one thread (tests/conftest.py)


@pytest.fixture(scope='module')
def runs(sample, tmp_path_factory):
    "A relation run and a clinical-reference run on the sample cohort, same folds."
    d = tmp_path_factory.mktemp('runs')
    run_cv(sample, neural(STAGES['relation']), d/'relation', **TINY)
    run_cv(sample, 'clinical', d/'clinical', **TINY)
    return d


@pytest.fixture(scope='module')
def fold0(runs, sample):
    fm = load_fold(runs/'relation', 0)
    return fm, fold_batch(fm, sample)


def _reinit(module):
    for m in module.modules():
        if hasattr(m, 'reset_parameters'): m.reset_parameters()


# --- the maps are those of the model passed in -------------------------------------------------------

@pytest.mark.parametrize('method', METHODS)
@pytest.mark.parametrize('part', ['layer4', 'head'])
def test_changing_the_weights_changes_the_map(fold0, method, part):
    fm, b = fold0
    before = attribute(fm.model, b, method, n_steps=8)
    other = copy.deepcopy(fm.model)
    torch.manual_seed(1)
    _reinit(gradcam_layer(other, layer='layer4')[0] if part == 'layer4' else other.head)
    after = attribute(other, b, method, n_steps=8)
    assert not torch.allclose(before, after, atol=1e-6)
    assert torch.equal(before, attribute(fm.model, b, method, n_steps=8))   # and the same model gives the same map


@pytest.mark.parametrize('encoder,mask_input', [('shared', False), ('per_sequence', False), ('shared', True)])
def test_gradcam_rows_go_back_to_their_image(fold0, encoder, mask_input):
    "With an image missing before them, each patient's maps computed in a batch equal his maps computed alone."
    fm, b = fold0
    torch.manual_seed(0)
    cfg = ModelConfig(encoder=encoder, mask_input=mask_input)
    model = PCRModel(cfg, b['timepoints'], b['sequences'], k=b['images'].shape[3], n_clinical=b['clinical'].shape[1]).eval()
    b = {k: v[:4].clone() if torch.is_tensor(v) else v for k, v in b.items()}
    b['present'][0, 0, 1] = False; b['images'][0, 0, 1] = 0                 # the rows of the flattened batch shift after this one
    cam = attribute(model, b, 'gradcam', target='pcr')
    for i in range(4):
        one = {k: v[i:i + 1] if torch.is_tensor(v) else v for k, v in b.items()}
        torch.testing.assert_close(attribute(model, one, 'gradcam', target='pcr')[0], cam[i], atol=1e-5, rtol=1e-4)
    assert (cam[~b['present']] == 0).all() and (cam[b['present']].flatten(1).sum(1) > 0).any()


def test_integrated_gradients_are_complete(fold0):
    "The attributions of a patient sum to the change of the explained logit from the zero images to his images."
    fm, b = fold0
    one = {k: v[:1] if torch.is_tensor(v) else v for k, v in b.items()}
    with torch.no_grad():
        gap = float(forward(fm.model, one) - forward(fm.model, {**one, 'images': torch.zeros_like(one['images'])}))
    total = float(attribute(fm.model, one, 'ig', target='pcr', n_steps=128).sum())
    assert total == pytest.approx(gap, rel=0.05, abs=1e-4)


def test_unknown_method_layer_and_target_are_refused(fold0):
    fm, b = fold0
    with pytest.raises(ConfigError, match='attribution method'): attribute(fm.model, b, 'occlusion')
    with pytest.raises(ConfigError, match='Grad-CAM layer'): attribute(fm.model, b, 'gradcam', layer='layer9')
    with pytest.raises(ConfigError, match='target'): attribute(fm.model, b, 'gradcam', target='both')


# --- the lesion against a random map ------------------------------------------------------------------

@pytest.fixture(scope='module')
def synth_run(tmp_path_factory):
    "A relation model cross-validated on a 40-patient synthetic cohort (3 folds, a few epochs)."
    from liver_pcr.cohort.synth import make_cohort, SynthConfig
    d = tmp_path_factory.mktemp('synth')
    make_cohort(d/'cohort', SynthConfig(n_patients=40, shape=(48, 48, 8), spacing=(6., 6., 8.)), show_progress=False)
    c = Cohort.load(d/'cohort')
    run_cv(c, neural(STAGES['relation']), d/'run', **{**TINY, 'train_cfg': TrainConfig(epochs=4, min_epochs=4, patience=4)})
    return c, d/'run'


def test_attribution_mass_in_the_lesion_exceeds_a_random_map(synth_run):
    c, run = synth_run
    df = attribution_in_lesion(run, c, n_steps=16)
    assert set(df.patient_id) == set(c.labelled_ids)                        # every patient, from the fold that tested him
    s = lesion_summary(df).loc['relation']
    ig = s.loc['ig']
    assert ig.share_lesion > ig.area_lesion                                 # more than a uniform random map puts there
    assert ig.share_rim > ig.area_rim
    assert (s.n_images > 0).all() and s[['area_lesion', 'shuffled_lesion']].notna().all().all()


# --- SHAP --------------------------------------------------------------------------------------------

def test_shap_of_the_clinical_reference_adds_up_to_its_log_odds(runs, sample):
    ex = shap_reference(runs/'clinical', sample)
    logit = {}
    for s in RunFolder(runs/'clinical').splits():
        st = load_reference(runs/'clinical', s['fold'])
        logit |= dict(zip(s['test'], st.decision(reference_features(st, sample, s['test']))))
    want = np.array([logit[i] for i in ex.instance_names])
    np.testing.assert_allclose(ex.base_values + ex.values.sum(1), want, atol=1e-6, rtol=0)
    assert sorted(ex.instance_names) == sorted(sample.labelled_ids)
    st = load_reference(runs/'clinical', 0)                                 # the base value: the mean log-odds over the training patients
    tr = RunFolder(runs/'clinical').splits()[0]['train']
    assert ex.base_values[list(ex.instance_names).index(RunFolder(runs/'clinical').splits()[0]['test'][0])] == pytest.approx(
        st.decision(reference_features(st, sample, tr)).mean(), abs=1e-6)


def test_shap_plots_survive_a_stale_ipython_hook(runs, sample, monkeypatch):
    "shap calls `plt.ioff()`, which raises when matplotlib's REPL hook points at a shell that is gone (nbdev-test runs notebooks one after another in one process)."
    import matplotlib.pyplot as plt
    def stale(): raise ValueError('Function _draw_all_if_interactive is not registered as a post_execute callback')
    monkeypatch.setattr(plt, 'ioff', stale)
    ex = shap_reference(runs/'clinical', sample)
    for fig in (plot_waterfall(ex, ex.instance_names[0], title='w'), plot_beeswarm(ex)):
        assert fig.axes and fig.axes[0].has_data()
    assert plt.ioff is stale                                                # the patch is undone afterwards


def test_shap_of_the_deep_clinical_branch_adds_up(fold0, sample):
    fm, b = fold0
    ex = shap_clinical_branch(fm, sample, b, 1, nsamples=200)
    with torch.no_grad(): lg = float(forward(fm.model, {k: v[1:2] if torch.is_tensor(v) else v for k, v in b.items()}))
    assert ex.base_values[0] + ex.values.sum() == pytest.approx(lg, abs=1e-4)
    assert list(ex.feature_names) == b['clinical_names'] and ex.values.shape == (1, len(b['clinical_names']))


# --- contributions and fusion weights -----------------------------------------------------------------

def test_ablation_and_fusion_weights(fold0):
    fm, b = fold0
    d = occlusion(fm.model, b)
    T, S = len(b['timepoints']), len(b['sequences'])
    assert len(d) == len(b['patient_id'])*T*(S + 1)
    assert d.delta.notna().sum() == int(b['present'].sum()) + int(b['present'].any(-1).sum())
    r, a = fusion_weights(fm.model, b)
    assert list(r.columns) == list(fm.model.cfg.relation_parts) and np.allclose(r.sum(1), 1)
    assert np.allclose(a.groupby(['patient_id', 'timepoint']).weight.sum(), 1)


# --- liver-pcr explain --------------------------------------------------------------------------------

def _args(run, cohort, patient, out, methods=None):
    import argparse
    return argparse.Namespace(run=str(run), cohort=str(cohort), patient=patient, out=str(out), methods=methods)


def test_explain_writes_one_patients_figures(runs, sample, tmp_path):
    pid = RunFolder(runs/'relation').splits()[2]['test'][0]
    assert fold_of(runs/'relation', pid) == 2
    out = tmp_path/'explain'
    assert cmd_explain(_args(runs/'relation', sample.root, pid, out)) == 0
    names = sorted(f.name for f in out.iterdir())
    assert names == sorted(f'{pid}_{x}' for x in ('gradcam.png', 'ig.png', 'contributions.png', 'clinical_shap.png', 'explanation.json'))
    for f in out.glob('*.png'): assert f.read_bytes()[:4] == b'\x89PNG'
    summary = json.loads((out/f'{pid}_explanation.json').read_text())
    assert summary['fold'] == 2 and summary['patient'] == pid and 0 <= summary['p'] <= 1
    preds = pd.read_csv(runs/'relation'/'predictions.csv').set_index('patient_id')
    assert summary['p'] == pytest.approx(preds.p[pid], abs=1e-2)              # the out-of-fold model (weights saved in half precision)
    assert cmd_explain(_args(runs/'clinical', sample.root, pid, out)) == 0    # a clinical-reference run: the marker SHAP waterfall
    assert (out/f'{pid}_marker_shap.png').exists()
    assert not [f for f in out.iterdir() if f.name.startswith('.')]         # no temporary file left behind


def test_explain_a_single_timepoint_model_without_labs(sample, tmp_path):
    "The baseline stage (one sequence, one timepoint, no labs, no relation module): maps and contributions, no clinical SHAP."
    run_cv(sample, 'baseline', tmp_path/'baseline', **TINY)
    pid = RunFolder(tmp_path/'baseline').splits()[0]['test'][0]
    files = explain_to(tmp_path/'baseline', sample, pid, tmp_path/'out', methods=('gradcam',))
    assert sorted(f.name for f in files) == sorted([f'{pid}_gradcam.png', f'{pid}_contributions.png', f'{pid}_explanation.json'])
    s = json.loads((tmp_path/'out'/f'{pid}_explanation.json').read_text())
    assert s['relation_weights'] is None and set(s['delta_p']) == {f'{t}/{q}' for t in ['post'] for q in ['AP', 'all']}


def test_explain_refuses_unknown_patients(runs, sample, tmp_path):
    err = io.StringIO()
    assert run_main(lambda: cmd_explain(_args(runs/'relation', sample.root, 'NOBODY', tmp_path/'o')), stderr=err) == 1
    assert "patient 'NOBODY' is not in cohort" in err.getvalue() and 'Traceback' not in err.getvalue()
    pid = RunFolder(runs/'relation').splits()[0]['test'][0]                         # in the cohort, but in no test fold of this run
    other = shutil.copytree(runs/'relation', tmp_path/'run')
    cfg = json.loads((other/'config.json').read_text())
    for s in cfg['splits']: s['test'] = [i for i in s['test'] if i != pid]
    (other/'config.json').write_text(json.dumps(cfg))
    err = io.StringIO()
    assert run_main(lambda: cmd_explain(_args(other, sample.root, pid, tmp_path/'o')), stderr=err) == 1
    assert f"patient {pid!r} is not a test patient of any fold" in err.getvalue()
    assert not (tmp_path/'o').exists() or not any((tmp_path/'o').iterdir())


def test_explain_never_writes_into_the_cohort(runs, tmp_path):
    c = Cohort.load(shutil.copytree(sample_cohort_path(), tmp_path/'cohort'))
    pid = RunFolder(runs/'relation').splits()[0]['test'][0]
    with pytest.raises(LiverPcrError, match='cohort folder'):
        explain_to(runs/'relation', c, pid, c.root/'explain')
    assert not (c.root/'explain').exists()
