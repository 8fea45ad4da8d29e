"Delta-radiomics features: known answers, scale invariance, missing exams, determinism, the disk cache and the cohort folder."
import math, os

import numpy as np
import pandas as pd
import pytest

import liver_pcr.data.radiomics as rad
from liver_pcr.cohort.reader import Cohort, Volume, save_nifti
from liver_pcr.core import CohortError, ConfigError
from liver_pcr.testing import tree_digest
from liver_pcr.data.radiomics import (EXAM_FEATURES, RadiomicsConfig, exam_features, glcm, glcm_features, patient_features,
                                 quantise, radiomics_cache_path, radiomics_table)


pytestmark = pytest.mark.usefixtures('_cache')    # each test: its own empty cache folder (tests/conftest.py; also `cohort_dir`)


def ball(shape=(40, 40, 16), sp=(1.5, 1.5, 2.5), r=10.0):
    X, Y, Z = np.meshgrid(*[(np.arange(n) - (n - 1)/2)*s for n, s in zip(shape, sp)], indexing='ij')
    return np.sqrt(X**2 + Y**2 + Z**2) <= r


# --- known answers -----------------------------------------------------------------------------------

def test_volume_is_voxel_count_times_voxel_volume():
    sp, m = (1.5, 1.5, 2.5), ball()
    img = np.where(m, 300., 100.) + np.random.default_rng(0).normal(0, 3, m.shape)
    aff = np.diag([-sp[0], -sp[1], sp[2], 1.0])                     # an LPS-like affine: spacing from the column norms
    f = exam_features(Volume(img.astype(np.float32), aff), Volume(m.astype(np.float32), aff))
    n = int(m.sum())
    assert f['volume_ml'] == pytest.approx(n*1.5*1.5*2.5/1000, rel=1e-12)
    assert f['volume_ml'] == pytest.approx(4/3*math.pi*10**3/1000, rel=0.03)
    assert f['diameter_mm'] == pytest.approx((6*n*1.5*1.5*2.5/math.pi)**(1/3), rel=1e-12)
    assert f['mean'] == pytest.approx(3.0, rel=0.02) and f['low_frac'] == 0 and f['high_frac'] == 1


def test_glcm_matches_haralick_example_by_hand():
    img = np.array([[0, 0, 1, 1], [0, 0, 1, 1], [0, 2, 2, 2], [2, 2, 3, 3]])
    h = glcm(img, levels=4, offsets=((0, 1),))[0]
    np.testing.assert_array_equal(h, [[4, 2, 1, 0], [2, 4, 0, 0], [1, 0, 6, 1], [0, 0, 1, 2]])
    np.testing.assert_array_equal(glcm(img, levels=4, offsets=((1, 0),))[0], [[6, 0, 2, 0], [0, 4, 2, 0], [2, 2, 2, 2], [0, 0, 2, 0]])
    f = glcm_features(h)
    assert f['glcm_contrast'] == pytest.approx(14/24) and f['glcm_energy'] == pytest.approx(84/576)
    p = h/24
    assert f['glcm_entropy'] == pytest.approx(-(p[p > 0]*np.log2(p[p > 0])).sum())


@pytest.mark.parametrize('seed', range(3))
def test_glcm_equals_a_loop_over_voxels(seed):
    rng = np.random.default_rng(seed)
    q, roi = rng.integers(0, 5, (9, 7, 3)), rng.random((9, 7, 3)) < 0.7
    want = np.zeros((4, 5, 5), int)
    for k, (dx, dy) in enumerate(rad.OFFSETS):
        for x, y, z in np.ndindex(q.shape):
            u, v = x + dx, y + dy
            if 0 <= u < 9 and 0 <= v < 7 and roi[x, y, z] and roi[u, v, z]:
                want[k, q[x, y, z], q[u, v, z]] += 1; want[k, q[u, v, z], q[x, y, z]] += 1
    np.testing.assert_array_equal(glcm(q, roi, levels=5), want)


def test_constant_region_has_no_contrast_and_full_energy():
    f = glcm_features(glcm(quantise(np.full((8, 8, 2), 5.0)), levels=16))
    assert f == {'glcm_contrast': 0, 'glcm_homogeneity': 1, 'glcm_energy': 1, 'glcm_correlation': 1, 'glcm_entropy': 0}


# --- invariance and robustness ---------------------------------------------------------------------

@pytest.mark.parametrize('k', [1e-3, 3.7, 2e4])
def test_features_do_not_depend_on_the_exam_intensity_scale(k):
    p = Cohort.load()[0]
    for seq in ('AP', 'DWI'):
        v, m = p.volume('pre', seq), p.mask('pre', seq)
        a, b = exam_features(v, m), exam_features(Volume(v.data.astype(np.float64)*k, v.affine), m)
        assert all(np.isfinite(a[f]) for f in EXAM_FEATURES)
        for f in EXAM_FEATURES: assert b[f] == pytest.approx(a[f], rel=1e-9, abs=1e-9), (seq, f)


def test_no_mask_uses_a_central_box_and_stays_defined():
    v = Cohort.load()[0].volume('pre', 'T2')
    f = exam_features(v, None)
    assert math.isnan(f['volume_ml']) and math.isnan(f['diameter_mm'])
    assert all(np.isfinite(f[k]) for k in EXAM_FEATURES[2:])
    assert exam_features(v, None, sequence='T2').keys() == {f'T2_{k}' for k in EXAM_FEATURES}


def test_mask_on_another_grid_names_the_patient(cohort_dir):
    f = cohort_dir/'images'/'SYN0002'/'pre'/'lesion.nii.gz'
    save_nifti(f, np.ones((10, 10, 3), np.uint8), np.eye(4))
    with pytest.raises(CohortError, match='patient SYN0002, pre/T2'):
        patient_features(Cohort.load(cohort_dir)['SYN0002'], ['pre', 'post'], ['T2'])


# --- missing exams -----------------------------------------------------------------------------------

@pytest.mark.parametrize('tp', ['post', 'pre'])
def test_missing_exam_gives_nan_features_and_deltas(cohort_dir, tp):
    full = Cohort.load(cohort_dir); seqs = full.sequences
    before = patient_features(full['SYN0001'], full.timepoints, seqs)
    (cohort_dir/'images'/'SYN0001'/tp/'PVP.nii.gz').unlink()
    c = Cohort.load(cohort_dir)
    after = patient_features(c['SYN0001'], c.timepoints, seqs)
    assert before.keys() == after.keys()
    for k in EXAM_FEATURES:
        assert math.isnan(after[f'{tp}_PVP_{k}']) and math.isnan(after[f'delta_post_PVP_{k}'])
    assert math.isnan(after['logratio_post_PVP_volume_ml'])
    for key, v in before.items():                                   # everything else is untouched, nothing borrowed
        if '_PVP_' not in key: assert after[key] == v or (math.isnan(v) and math.isnan(after[key])), key
    other = 'pre' if tp == 'post' else 'post'
    assert np.isfinite(after[f'{other}_PVP_mean'])


def test_table_is_nan_only_where_exams_are_missing():
    c = Cohort.load()
    t = radiomics_table(c, show_progress=False)
    for col in t.columns:
        parts = col.split('_')
        tps, s = ((['pre', parts[1]], parts[2]) if parts[0] in ('delta', 'logratio') else ([parts[0]], parts[1]))
        missing = pd.Series({p.id: not all(p.has(tp, s) for tp in tps) for p in c})
        pd.testing.assert_series_equal(t[col].isna(), missing.loc[t.index], check_names=False)
    assert t.isna().any().any()                                      # the sample cohort does have missing exams


# --- determinism and the cache -------------------------------------------------------------------------

def test_same_input_same_table(cohort_dir):
    c = Cohort.load(cohort_dir)
    a = radiomics_table(c, cache=False, show_progress=False)
    b = radiomics_table(c, cache=False, show_progress=False, n_jobs=2)
    pd.testing.assert_frame_equal(a, b, check_exact=True)
    assert list(a.columns) == sorted(a.columns) and list(a.index) == c.ids and a.index.name == 'patient_id'
    assert a.shape[1] == 2*4*len(EXAM_FEATURES) + 4*len(EXAM_FEATURES) + 4


def test_cache_is_reused_then_invalidated_when_a_file_changes(cohort_dir, _cache, monkeypatch):
    c = Cohort.load(cohort_dir)
    first = radiomics_table(c, show_progress=False)
    path = radiomics_cache_path(c, c.timepoints, c.sequences, RadiomicsConfig())
    assert path.exists() and path.parent == _cache/'radiomics'

    def boom(*a, **k): raise AssertionError('recomputed')
    monkeypatch.setattr(rad, 'patient_features', boom)
    again = radiomics_table(Cohort.load(cohort_dir), show_progress=False)
    pd.testing.assert_frame_equal(first, again, check_exact=True)   # from the cache, bit for bit

    with pytest.raises(AssertionError, match='recomputed'):         # other parameters: another cache entry
        radiomics_table(c, sequences=['AP'], show_progress=False)
    with pytest.raises(AssertionError, match='recomputed'):
        radiomics_table(c, cfg=RadiomicsConfig(ring_mm=12), show_progress=False)

    f = cohort_dir/'images'/'SYN0003'/'post'/'AP.nii.gz'
    v = Cohort.load(cohort_dir)['SYN0003'].volume('post', 'AP')
    save_nifti(f, v.data[::-1], v.affine, np.int16)                 # a changed image
    with pytest.raises(AssertionError, match='recomputed'):
        radiomics_table(Cohort.load(cohort_dir), show_progress=False)
    monkeypatch.undo(); monkeypatch.setenv('LIVER_PCR_CACHE', str(_cache))
    new = radiomics_table(Cohort.load(cohort_dir), show_progress=False)
    assert not new['post_AP_glcm_correlation'].equals(first['post_AP_glcm_correlation'])
    assert len(list((_cache/'radiomics').glob('*.csv'))) == 2


def test_nothing_is_written_into_the_cohort_folder(cohort_dir, tmp_path, monkeypatch):
    before = tree_digest(cohort_dir)
    c = Cohort.load(cohort_dir)
    radiomics_table(c, show_progress=False); radiomics_table(c, show_progress=False)
    assert tree_digest(cohort_dir) == before
    monkeypatch.setenv('LIVER_PCR_CACHE', str(cohort_dir/'cache'))   # a cache inside the cohort is refused
    with pytest.raises(ConfigError, match='cohort folder'): radiomics_table(c, show_progress=False)


def test_unknown_sequence_is_a_config_error():
    with pytest.raises(ConfigError, match="'FLAIR'"): radiomics_table(Cohort.load(), sequences=['FLAIR'], show_progress=False)
