"""Model family and training: forward passes with missing inputs, gradients, order sensitivity, resume, determinism, the CLI.

Trainings here run on the packaged 24-patient sample with tiny settings (16 px ROI, 1-2 epochs): they test mechanics, not accuracy.
"""
import json, os, shutil, subprocess, sys
from dataclasses import replace
from pathlib import Path
import numpy as np, pandas as pd, pytest, torch

from liver_pcr.cohort.reader import Cohort
from liver_pcr.core import ConfigError, LiverPcrError
from liver_pcr.models.nets import STAGES, PCRModel, select_inputs, neural
from liver_pcr.data.preprocess import PreprocessConfig, preprocess_cohort
from liver_pcr.data.dataset import cohort_splits, ClinicalTransformer, wide_labs, PatientDataset, Augment, check_no_leak
from liver_pcr.train.config import TrainConfig
from liver_pcr.train.learner import Learner
from liver_pcr.train.cv import run_cv, run_train, predict
from liver_pcr.models.nets import make_loss

TPS, SEQS = ['pre', 'post'], ['T2', 'DWI', 'AP', 'PVP']
PRE = PreprocessConfig(roi_px=16, roi_mm=64)
TINY = TrainConfig(epochs=2, min_epochs=1, patience=1, batch_size=8)


pytestmark = pytest.mark.usefixtures('_cache', '_one_thread')    # tests/conftest.py


def _batch(B=3, k=3, H=16):
    x, pr = torch.randn(B, 2, 4, k, H, H), torch.ones(B, 2, 4, dtype=torch.bool)
    pr[0, 1] = False                      # patient 0: no post-therapy exam
    pr[1, 0, 2] = False                   # patient 1: no AP before therapy
    x[~pr] = 0
    return x, pr, torch.randn(B, 12), torch.zeros(B, 2, k, H, H)


HEADS = ['linear', 'neural']


def _cfg(stage, head):
    "The stage reading the images through the trunk (its measurement block is tested in test_measure.py)."
    return replace(STAGES[stage], deep=True, measure=False) if head == 'linear' else neural(STAGES[stage])


@pytest.mark.parametrize('head', HEADS)
@pytest.mark.parametrize('stage', list(STAGES))
def test_every_stage_forward_with_missing_inputs(stage, head):
    x, pr, c, m = _batch()
    model = PCRModel(_cfg(stage, head), TPS, SEQS, k=3, n_clinical=12)
    out = model(x, pr, c, m)
    assert out.shape == (3,) and torch.isfinite(out).all()


@pytest.mark.parametrize('head', HEADS)
@pytest.mark.parametrize('stage', list(STAGES))
def test_missing_image_content_cannot_leak(stage, head):
    "What is in a missing image's slot must not change the prediction."
    torch.manual_seed(0)
    x, pr, c, m = _batch()
    model = PCRModel(_cfg(stage, head), TPS, SEQS, k=3, n_clinical=12).eval()
    x2 = x.clone(); x2[~pr] = 100.0
    with torch.no_grad(): assert torch.allclose(model(x, pr, c, m), model(x2, pr, c, m), atol=1e-6)


@pytest.mark.parametrize('encoder', ['shared', 'per_sequence'])
def test_gradients_reach_every_encoder(encoder):
    x, pr, c, m = _batch()
    model = PCRModel(replace(neural(STAGES['relation']), encoder=encoder), TPS, SEQS, k=3, n_clinical=12)
    model(x, pr, c, m).sum().backward()
    for trunk in model.encoder.trunks:
        assert trunk.net.conv1.weight.grad is not None and trunk.net.conv1.weight.grad.abs().sum() > 0
    assert model.clinical[0].weight.grad.abs().sum() > 0


@pytest.mark.parametrize('head', HEADS)
def test_relation_is_not_order_blind(head):
    torch.manual_seed(0)
    x, _, c, m = _batch()
    pr = torch.ones(3, 2, 4, dtype=torch.bool)
    model = PCRModel(_cfg('relation', head), TPS, SEQS, k=3, n_clinical=12).eval()
    with torch.no_grad(): a, b = model(x, pr, c, m), model(x.flip(1), pr, c, m.flip(1))
    assert (a - b).abs().max() > 1e-5


def test_missing_sequence_is_a_clear_error():
    with pytest.raises(ConfigError, match="needs sequence 'AP'"): select_inputs(STAGES['baseline'], ['start', 'end'], ['T1', 'T2'])


def _fold_setup():
    c = Cohort.load()
    pre = preprocess_cohort(c, PRE, show_progress=False)
    s = cohort_splits(c, 3, 0)[0]
    ct = ClinicalTransformer(c.markers, pre.timepoints).fit(wide_labs(c, s.train, pre.timepoints))
    return c, pre, s, ct


def _learner(c, pre, s, ct, workdir=None, epochs=3, ema=0.5):
    torch.manual_seed(0)
    tr = PatientDataset(pre, c, s.train, ct, augment=Augment(drop_input=0.1), seed=0)
    va = PatientDataset(pre, c, s.val, ct)
    mcfg = neural(STAGES['relation'])
    model = PCRModel(mcfg, pre.timepoints, pre.sequences, k=PRE.k, n_clinical=tr.clin.shape[1])
    cfg = replace(TINY, epochs=epochs, min_epochs=epochs, patience=epochs, ema=ema)
    return Learner(model, tr, va, make_loss(mcfg, tr.y), cfg, seed=0, workdir=workdir), va


@pytest.mark.parametrize('ema', [0.0, 0.5])
def test_resumed_run_gives_the_same_predictions(tmp_path, ema):
    "Resumed = uninterrupted, with and without EMA (the LR schedule is restored either way)."
    c, pre, s, ct = _fold_setup()
    L, va = _learner(c, pre, s, ct, ema=ema)
    full = L.fit(show_progress=False).predict(va)
    L1, _ = _learner(c, pre, s, ct, tmp_path/'run', ema=ema)
    L1.fit(until_epoch=1, show_progress=False)                     # killed after one epoch
    assert (tmp_path/'run'/'last.pt').exists()
    L2, _ = _learner(c, pre, s, ct, tmp_path/'run', ema=ema)
    resumed = L2.fit(show_progress=False)
    assert len(L2.log) == 3
    assert L2.sched.last_epoch == L.sched.last_epoch               # the schedule went on, not back to warm-up
    np.testing.assert_array_equal(resumed.predict(va), full)


def test_same_seed_same_predictions(tmp_path):
    a = run_cv(None, 'relation', tmp_path/'a', n_folds=3, pre_cfg=PRE, train_cfg=TINY, show_progress=False, n_boot=100)
    b = run_cv(None, 'relation', tmp_path/'b', n_folds=3, pre_cfg=PRE, train_cfg=TINY, show_progress=False, n_boot=100)
    pa, pb = (pd.read_csv(tmp_path/k/'predictions.csv') for k in 'ab')
    pd.testing.assert_frame_equal(pa, pb)
    assert a['auc'] == b['auc']


def test_cv_outputs_and_threshold_ignores_test_labels(tmp_path):
    m = run_cv(None, 'multi', tmp_path/'r', n_folds=3, pre_cfg=PRE, train_cfg=TINY, show_progress=False, n_boot=100)
    c = Cohort.load()
    p = pd.read_csv(tmp_path/'r'/'predictions.csv')
    assert list(p.columns) == ['patient_id', 'fold', 'y_true', 'p'] and sorted(p.patient_id) == sorted(c.labelled_ids)
    assert {'auc', 'auc_ci', 'n', 'n_pos'} <= set(m) and m['n'] == len(c.labelled_ids)
    for f in ('metrics.json', 'config.json', 'log.csv', 'thresholds.csv', 'fold0/model.json', 'fold0/model.pt'): assert (tmp_path/'r'/f).exists(), f
    cfg = json.loads((tmp_path/'r'/'config.json').read_text())
    for s in cfg['splits']: check_no_leak(s['train'], s['val'], s['test'])
    # the threshold of each fold is a function of its inner-validation predictions only: permuting the test fold's labels
    # cannot change it, because the runner never reads them (they are not an input of _threshold)
    from liver_pcr.train.cv import _threshold
    thr = pd.read_csv(tmp_path/'r'/'thresholds.csv').set_index('fold').threshold
    for s in cfg['splits']:
        done = json.loads((tmp_path/'r'/f"fold{s['fold']}"/'done.json').read_text())
        yv = [c[i].label for i in s['val']]
        assert abs(thr[s['fold']] - _threshold(yv, [done['val'][i] for i in s['val']])) < 1e-12   # CSV round trip


def test_permuting_test_labels_leaves_thresholds_unchanged(tmp_path):
    "Rerun cv on a copy of the cohort whose test-fold labels are permuted within fold 0: every threshold is unchanged."
    c = Cohort.load()
    run_cv(c, 'clinical', tmp_path/'a', n_folds=3, show_progress=False, n_boot=100)
    cfg = json.loads((tmp_path/'a'/'config.json').read_text())
    copy = tmp_path/'copy'; shutil.copytree(c.root, copy)
    t = pd.read_csv(copy/'patients.csv', dtype=str)
    test0 = cfg['splits'][0]['test']
    rows = t.patient_id.isin(test0)
    before = t.loc[rows, 'pcr'].tolist()
    t.loc[rows, 'pcr'] = np.roll(before, 1)
    assert t.loc[rows, 'pcr'].tolist() != before                   # the test labels really changed
    t['fold'] = t.patient_id.map({i: s['fold'] for s in cfg['splits'] for i in s['test']})   # the same folds
    t.to_csv(copy/'patients.csv', index=False)
    run_cv(copy, 'clinical', tmp_path/'b', n_folds=3, show_progress=False, n_boot=100)
    a, b = (pd.read_csv(tmp_path/k/'thresholds.csv').set_index('fold').threshold for k in 'ab')
    # fold 0's own threshold cannot see its test labels; the other folds train on them, so only fold 0 is guaranteed
    assert a[0] == b[0]


def test_train_then_predict_on_unlabelled_cohort(tmp_path):
    run_train(None, 'single', tmp_path/'m', pre_cfg=PRE, train_cfg=TINY, show_progress=False)
    ext = tmp_path/'ext'; shutil.copytree(Cohort.load().root, ext)
    t = pd.read_csv(ext/'patients.csv', dtype=str); t['pcr'] = ''; t.to_csv(ext/'patients.csv', index=False)
    p = predict(tmp_path/'m', ext, show_progress=False)
    assert list(p.columns) == ['patient_id', 'p'] and len(p) == 24 and p.p.between(0, 1).all()
    assert p.p.std() > 1e-4                                        # not a constant: the images and markers are read


def _cli(*args):
    exe = Path(sys.executable).parent/'liver-pcr'
    return subprocess.run([str(exe), *args], capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=600)


@pytest.mark.parametrize('args, needle', [
    (['--model', 'resnet50'], "invalid choice: 'resnet50'"),
    (['--model', 'baseline', '--sequences', 'T1'], "needs sequence 'T1'"),
    (['--model', 'relation', '--folds', '12'], 'too few patients for 12 folds'),
])
def test_cv_bad_input_exit_1(tmp_path, args, needle):
    from liver_pcr.core import sample_cohort_path
    r = _cli('cv', str(sample_cohort_path()), '--out', str(tmp_path/'run'), '--preset', 'tiny', *args)
    assert r.returncode == 1, r.stderr
    assert needle in r.stderr and 'Traceback' not in r.stderr


def test_cv_on_invalid_cohort_exit_1(tmp_path):
    from liver_pcr.core import sample_cohort_path
    bad = tmp_path/'bad'; shutil.copytree(sample_cohort_path(), bad)
    (bad/'labs.csv').write_text((bad/'labs.csv').read_text().replace('SYN0001,pre,', 'SYN0001,pre,abc', 1))
    r = _cli('cv', str(bad), '--model', 'relation', '--out', str(tmp_path/'run'), '--preset', 'tiny')
    assert r.returncode == 1 and 'is not a number' in r.stderr and 'Traceback' not in r.stderr
    assert not (tmp_path/'run'/'predictions.csv').exists()


def test_ensemble_members_are_averaged_and_saved(tmp_path):
    "Each fold keeps every member; the run's test probabilities and `predict` are the members' means."
    from liver_pcr.train.runs import RunFolder
    from liver_pcr.train.modelfile import load_models
    run_cv(None, neural(STAGES['single']), tmp_path/'e', n_folds=3, pre_cfg=PRE, train_cfg=replace(TINY, ensemble=2), show_progress=False, n_boot=100)
    rf, c = RunFolder(tmp_path/'e'), Cohort.load()
    assert rf.members(0) == [0, 1] and (tmp_path/'e'/'fold0'/'model-1.pt').exists()
    log = pd.read_csv(tmp_path/'e'/'log.csv')
    assert set(log.member) == {0, 1}
    preds = pd.read_csv(tmp_path/'e'/'predictions.csv').set_index('patient_id').p
    each = {}
    for s in rf.splits():
        members = load_models(rf, s['fold'])
        assert len(members) == 2
        ps = [pd.Series(m.predict(c, show_progress=False), c.ids) for m in members]
        assert (ps[0] - ps[1]).abs().max() > 1e-4                    # two different models
        mean = (ps[0] + ps[1])/2
        np.testing.assert_allclose(mean[s['test']].values, preds[s['test']].values, atol=2e-3)  # half-precision weights
        each[s['fold']] = mean
    p = predict(tmp_path/'e', c, show_progress=False).set_index('patient_id').p      # 3 folds x 2 members, averaged
    np.testing.assert_allclose(p.values, pd.concat(each, axis=1).mean(1)[p.index].values, atol=1e-6)


def test_linear_head_saved_and_loaded_predicts_the_same(tmp_path):
    "A cv run's test probabilities are what its saved fold models give on reload (the fitted head is kept exactly)."
    run_cv(None, 'relation', tmp_path/'r', n_folds=3, pre_cfg=PRE, show_progress=False, n_boot=50)
    cfg = json.loads((tmp_path/'r'/'config.json').read_text())
    preds = pd.read_csv(tmp_path/'r'/'predictions.csv').set_index('patient_id')
    from liver_pcr.train.modelfile import load_bundle
    from liver_pcr.models.linear import predict_linear
    c = Cohort.load()
    pre = preprocess_cohort(c, PRE, show_progress=False)
    s = cfg['splits'][0]
    model, b = load_bundle(tmp_path/'r'/'fold0'/'model.pt')
    from liver_pcr.data.dataset import transformer_from
    from liver_pcr.models.linear import measure_inputs
    meas = measure_inputs(c, model.cfg, model.timepoints, model.sequences, s['test'], b['measure_columns'])
    ds = PatientDataset(pre, c, s['test'], transformer_from(b['clinical']), radiomics=meas)
    np.testing.assert_allclose(predict_linear(model, ds), preds.loc[s['test'], 'p'].to_numpy(), atol=1e-6)
    assert preds.p.std() > 1e-4


def test_linear_head_uses_the_inner_cv_not_the_test_fold(tmp_path):
    "Changing a test patient's images cannot change the fitted head of that fold (it is fitted on train + val only)."
    from liver_pcr.models.linear import fit_linear_fold
    from liver_pcr.train.config import Context, TrainConfig
    c = Cohort.load()
    pre = preprocess_cohort(c, PRE, show_progress=False)
    s = cohort_splits(c, 3, 0)[0]
    ctx = Context(c, STAGES['multi'], PRE, TrainConfig(), 0, pre=pre, show_progress=False)
    a = fit_linear_fold(ctx, s, tmp_path).models[0].head.coef.clone()
    import copy
    pre2 = copy.copy(pre)
    pre2.images = np.array(pre.images)
    pre2.images[pre.index(s.test)] = 5.0                           # the test patients' images replaced
    ctx2 = Context(c, STAGES['multi'], PRE, TrainConfig(), 0, pre=pre2, show_progress=False)
    b = fit_linear_fold(ctx2, s, tmp_path).models[0].head.coef
    assert torch.equal(a, b)


def test_weights_file_is_used_and_a_wrong_file_is_one_line(tmp_path):
    from torchvision.models import resnet18
    torch.manual_seed(3)
    torch.save(resnet18().state_dict(), tmp_path/'w.pth')
    r = run_cv(None, 'baseline', tmp_path/'a', n_folds=3, pre_cfg=PRE, show_progress=False, n_boot=50, weights=tmp_path/'w.pth')
    b = run_cv(None, 'baseline', tmp_path/'b', n_folds=3, pre_cfg=PRE, show_progress=False, n_boot=50)
    pa, pb = (pd.read_csv(tmp_path/k/'predictions.csv') for k in 'ab')
    assert not np.allclose(pa.p, pb.p)                             # another trunk, other features
    assert json.loads((tmp_path/'a'/'config.json').read_text())['model_config']['weights'].endswith('w.pth')
    (tmp_path/'bad.pt').write_bytes(b'\x00' * 64)
    from liver_pcr.core import sample_cohort_path
    out = _cli('cv', str(sample_cohort_path()), '--model', 'baseline', '--out', str(tmp_path/'c'), '--weights', str(tmp_path/'bad.pt'))
    assert out.returncode == 1 and 'bad.pt' in out.stderr and 'Traceback' not in out.stderr


class _Planted:
    "A pickle that would create a file when unpickled."
    def __init__(self, path): self.path = str(path)
    def __reduce__(self): return (open, (self.path, 'w'))


@pytest.fixture(scope='module')
def linear_run(tmp_path_factory):
    out = tmp_path_factory.mktemp('safe')/'run'
    run_cv(None, 'multi', out, n_folds=3, pre_cfg=PRE, show_progress=False, n_boot=50)
    return out


def _copy_run(run, tmp_path):
    d = tmp_path/'run'
    shutil.copytree(run, d)
    return d


def test_planted_pickle_in_a_run_folder_is_refused_not_executed(linear_run, tmp_path):
    "A run folder from elsewhere with a pickle that runs code: `predict` refuses it in one line, and the code never runs."
    from liver_pcr.core import sample_cohort_path
    run, flag = _copy_run(linear_run, tmp_path), tmp_path/'pwned'
    torch.save({'trunk.w': _Planted(flag)}, run/'fold1'/'model.pt')
    r = _cli('predict', str(run), str(sample_cohort_path()), '--out', str(tmp_path/'p.csv'))
    assert r.returncode == 1 and 'Traceback' not in r.stderr
    assert 'refused' in r.stderr and str(run/'fold1'/'model.pt') in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not flag.exists() and not (tmp_path/'p.csv').exists()


def test_truncated_model_file_is_one_line_naming_it(linear_run, tmp_path):
    from liver_pcr.core import sample_cohort_path
    run = _copy_run(linear_run, tmp_path)
    f = run/'fold2'/'model.pt'
    f.write_bytes(f.read_bytes()[:len(f.read_bytes())//2])
    r = _cli('predict', str(run), str(sample_cohort_path()), '--out', str(tmp_path/'p.csv'))
    assert r.returncode == 1 and 'Traceback' not in r.stderr and 'bug in liver_pcr' not in r.stderr
    assert f'{f}: damaged or truncated model file' in r.stderr


def test_run_folder_of_the_older_pickled_format_asks_for_a_rerun(linear_run, tmp_path):
    run = _copy_run(linear_run, tmp_path)
    for fold in (0, 1, 2):
        (run/f'fold{fold}'/'model.json').unlink()
        (run/f'fold{fold}'/'model.pkl').write_bytes(b'not read')
    with pytest.raises(LiverPcrError, match='older liver_pcr .* re-run with this version'):
        predict(run, Cohort.load(), show_progress=False)


def test_damaged_checkpoint_restarts_the_fold(tmp_path):
    "An unreadable resume checkpoint is reported in one line and the fold trains from the start."
    out = tmp_path/'r'
    (out/'fold0').mkdir(parents=True)
    (out/'fold0'/'last.pt').write_bytes(b'garbage')
    with pytest.warns(UserWarning, match='unreadable checkpoint'):
        run_cv(None, neural(STAGES['baseline']), out, n_folds=3, pre_cfg=PRE, train_cfg=TINY, show_progress=False, n_boot=50)
    assert (out/'predictions.csv').exists() and not (out/'fold0'/'last.pt').exists()


def test_no_unpickling_anywhere_in_the_package():
    "No pickle/joblib load, and every torch.load with weights_only=True, in liver_pcr/."
    import re, liver_pcr
    src = {f.name: f.read_text() for f in Path(liver_pcr.__file__).parent.glob('*.py')}
    for name, text in src.items():
        assert not re.search(r'\b(pickle|joblib|dill|cloudpickle)\.loads?\(', text), name
        for call in re.findall(r'torch\.load\([^)]*\)', text):
            assert 'weights_only=True' in call, (name, call)


def test_resuming_into_a_run_of_the_older_format_is_refused(linear_run, tmp_path):
    "Finished folds of the pickling release would be reused with models this version cannot read: refuse, naming the format."
    run = _copy_run(linear_run, tmp_path)
    cfg = json.loads((run/'config.json').read_text())
    del cfg['format']
    (run/'config.json').write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match=r'older liver_pcr \(run format 1\)'):
        run_cv(None, 'multi', run, n_folds=3, pre_cfg=PRE, show_progress=False, n_boot=50)


def test_a_command_owned_folder_of_the_older_format_is_remade(linear_run, tmp_path):
    "The demo's and the course's runs (folders those commands own) are started over instead of refused."
    from liver_pcr.train.cv import run_cv_afresh
    from liver_pcr.train.runs import RunFolder, RUN_FORMAT
    run = _copy_run(linear_run, tmp_path)
    cfg = json.loads((run/'config.json').read_text())
    del cfg['format']
    (run/'config.json').write_text(json.dumps(cfg))
    (run/'fold0'/'model.pkl').write_bytes(b'old')
    run_cv_afresh(None, 'multi', run, n_folds=3, pre_cfg=PRE, show_progress=False, n_boot=50)
    assert RunFolder(run).config()['format'] == RUN_FORMAT and not (run/'fold0'/'model.pkl').exists()
    assert (pd.read_csv(run/'predictions.csv').p.values == pd.read_csv(linear_run/'predictions.csv').p.values).all()
