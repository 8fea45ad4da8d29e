"""From cohort to batches: present masks, stratified folds, the leak check, the fold-fitted clinical transformer, determinism."""
import shutil
from pathlib import Path
import numpy as np, pandas as pd, pytest, torch

from liver_pcr.cohort.reader import Cohort
from liver_pcr.core import LiverPcrError, ConfigError, sample_cohort_path
from liver_pcr.data.preprocess import PreprocessConfig, preprocess_cohort
from liver_pcr.data.dataset import make_splits, cohort_splits, check_no_leak, ClinicalTransformer, wide_labs, PatientDataset, Split

CFG = PreprocessConfig(roi_px=16, roi_mm=64)


pytestmark = pytest.mark.usefixtures('_cache')    # each test: its own cache folder (tests/conftest.py)


@pytest.fixture
def gappy(cohort_dir):
    "The sample with SYN0002 missing its post-therapy DWI, and SYN0003 missing its whole post-therapy exam."
    d = cohort_dir
    (d/'images/SYN0002/post/DWI.nii.gz').unlink()
    shutil.rmtree(d/'images/SYN0003/post')
    return Cohort.load(d)


def test_present_mask_for_missing_sequence_and_timepoint(gappy):
    pre = preprocess_cohort(gappy, CFG, show_progress=False)
    T, S = pre.timepoints, pre.sequences
    pr = {pid: np.asarray(pre.present[i]) for i, pid in enumerate(pre.ids)}
    assert pr['SYN0002'][T.index('post'), S.index('DWI')] == False and pr['SYN0002'].sum() == pr['SYN0002'].size - 1
    assert not pr['SYN0003'][T.index('post')].any() and pr['SYN0003'][T.index('pre')].all()
    img = {pid: np.asarray(pre.images[i]) for i, pid in enumerate(pre.ids)}
    assert np.abs(img['SYN0002'][T.index('post'), S.index('DWI')]).sum() == 0      # zeros, not another image
    assert np.abs(img['SYN0003'][T.index('post')]).sum() == 0
    item = PatientDataset(pre, gappy, ['SYN0003'])[0]
    assert item['present'].tolist() == pr['SYN0003'].tolist()


def test_folds_are_stratified_and_disjoint():
    rng = np.random.default_rng(0)
    ids = [f'P{i:03d}' for i in range(103)]; y = (rng.random(103) < 0.3).astype(int)
    splits = make_splits(ids, y, n_folds=5, seed=3)
    lab = dict(zip(ids, y))
    pos = [sum(lab[i] for i in s.test) for s in splits]
    assert max(pos) - min(pos) <= 1
    assert sorted(i for s in splits for i in s.test) == sorted(ids)
    for s in splits:
        check_no_leak(s.train, s.val, s.test)
        assert set(s.train) | set(s.val) | set(s.test) == set(ids)
        assert 0 < sum(lab[i] for i in s.val) < len(s.val)          # both classes in the inner validation split


def test_predefined_folds_are_used(tmp_path):
    d = tmp_path/'c'; shutil.copytree(sample_cohort_path(), d)
    t = pd.read_csv(d/'patients.csv', dtype=str); t['fold'] = [str(i % 3) for i in range(len(t))]; t.to_csv(d/'patients.csv', index=False)
    splits = cohort_splits(Cohort.load(d), n_folds=5)
    assert len(splits) == 3 and all(set(s.test) == set(t.patient_id[t.fold == str(s.fold)]) for s in splits)


def test_leak_check_raises_on_overlap():
    with pytest.raises(LiverPcrError, match="in both train and test"): check_no_leak(['a', 'b'], ['c'], ['b'])
    with pytest.raises(LiverPcrError, match="in both train and val"): check_no_leak(['a'], ['a'], [])


def test_too_few_positives():
    with pytest.raises(ConfigError, match='too few patients for 5 folds'): make_splits(list('abcdefghij'), [1, 1, 0, 0, 0, 0, 0, 0, 0, 0])


def test_clinical_transformer_statistics_from_training_patients_only():
    c = Cohort.load()
    s = cohort_splits(c, 3, 0)[0]
    ct = ClinicalTransformer(c.markers, c.timepoints).fit(wide_labs(c, s.train))
    for m in c.markers:
        for tp in c.timepoints:
            v = np.log1p(np.array([c[i].lab(tp, m) for i in s.train])); v = v[~np.isnan(v)]
            assert abs(ct.mean_[f'log_{m}_{tp}'] - v.mean()) < 1e-9 and abs(ct.std_[f'log_{m}_{tp}'] - v.std()) < 1e-9
        d = np.array([np.log1p(c[i].lab('post', m)) - np.log1p(c[i].lab('pre', m)) for i in s.train]); d = d[~np.isnan(d)]
        assert abs(ct.mean_[f'dlog_{m}_post'] - d.mean()) < 1e-9
    # changing a TEST patient's markers cannot change the fitted statistics
    wide = wide_labs(c, s.train)
    assert ct.mean_.equals(ClinicalTransformer(c.markers, c.timepoints).fit(wide).mean_)
    X = ct.transform(wide_labs(c, s.test))
    assert not X.isna().any().any() and {f'miss_{m}_{tp}' for m in c.markers for tp in c.timepoints} <= set(X.columns)


def test_same_cohort_config_seed_gives_identical_tensors_and_splits(tmp_path):
    c = Cohort.load()
    a = preprocess_cohort(c, CFG, cache=tmp_path/'a', show_progress=False)
    b = preprocess_cohort(c, CFG, cache=tmp_path/'b', show_progress=False)
    np.testing.assert_array_equal(np.asarray(a.images), np.asarray(b.images))
    assert [(s.train, s.val, s.test) for s in cohort_splits(c, 5, 7)] == [(s.train, s.val, s.test) for s in cohort_splits(c, 5, 7)]
    assert [s.test for s in cohort_splits(c, 5, 7)] != [s.test for s in cohort_splits(c, 5, 8)]


def test_cache_outside_cohort_and_invalidated(tmp_path):
    c = Cohort.load()
    with pytest.raises(ConfigError, match='cohort folder'): preprocess_cohort(c, CFG, cache=c.root/'x')
    d = tmp_path/'c'; shutil.copytree(c.root, d)
    p1 = preprocess_cohort(Cohort.load(d), CFG, cache=tmp_path/'cache', show_progress=False).path
    (d/'patients.csv').write_text((d/'patients.csv').read_text())            # same bytes, new mtime: tables are hashed by content
    assert preprocess_cohort(Cohort.load(d), CFG, cache=tmp_path/'cache', show_progress=False).path == p1
    f = d/'images/SYN0001/pre/AP.nii.gz'; f.write_bytes(f.read_bytes())      # an image rewritten: mtime changes -> new cache
    assert preprocess_cohort(Cohort.load(d), CFG, cache=tmp_path/'cache', show_progress=False).path != p1


def test_augmenting_all_exams_at_once_equals_exam_by_exam():
    "The batched transform draws the stream exam by exam, so it is the per-exam transform, bit for bit; the mask moves with its image."
    from liver_pcr.data.dataset import Augment, augment_exam, augment_exams
    x = torch.zeros(3, 2, 3, 24, 24); x[:, :, :, 4:9, 14:20] = 1.0     # an off-centre square, every sequence
    m = x[:, 0].clone()
    aug = Augment(rotate_deg=20, shift_px=3)
    xb, mb = augment_exams(x, aug, torch.Generator().manual_seed(5), m)
    g = torch.Generator().manual_seed(5)
    one = [augment_exam(x[t], aug, g, m[t]) for t in range(3)]
    assert torch.equal(xb, torch.stack([a for a, _ in one])) and torch.equal(mb, torch.stack([b for _, b in one]))
    assert not torch.equal(mb[0], m[0])                                    # it did move
    for t in range(3):                                                     # and the mask follows the (un-jittered) square
        inside = xb[t, 0, 0][mb[t, 0] > 0.5]
        outside = xb[t, 0, 0][mb[t, 0] < 0.5]
        assert inside.mean() - outside.mean() > 0.5
