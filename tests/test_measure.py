"Measurements of response: phantoms with known answers, real files, the cache, the changes, and the models that read them."
import math
import numpy as np
import pandas as pd
import pytest
from dataclasses import replace

from liver_pcr.cohort.reader import Cohort
from liver_pcr.data.measure import (MeasureConfig, ellipsoid_phantom, exam_measures, longest_diameter, measure_table,
                               measure_changes, measure_block, marker_response, AFP_PRODUCER)


@pytest.mark.parametrize('spacing', [(1.0, 1.0, 2.0), (2.0, 2.0, 4.0), (3.0, 2.5, 5.0)])
@pytest.mark.parametrize('share', [0.1, 0.4, 0.7])
def test_phantom_volume_diameter_and_necrosis(spacing, share):
    imgs, m, sp, t = ellipsoid_phantom(spacing, radii=(18.0, 14.0, 12.0), core_share=share, noise=0.03, seed=1)
    f = exam_measures(imgs, m, sp)
    assert abs(f['volume_ml'] / t['volume_ml'] - 1) < 0.06
    assert abs(f['diameter_mm'] - t['diameter_mm']) <= max(sp[:2])
    assert abs(f['necrotic_share'] - t['necrotic_share']) < 0.06
    assert abs(f['AP_viable_rel'] / t['AP_viable_rel'] - 1) < 0.06


def test_measurements_are_relative_to_the_exam_and_ignore_its_scale():
    imgs, m, sp, _ = ellipsoid_phantom((2.0, 2.0, 4.0), noise=0.02)
    a = exam_measures(imgs, m, sp)
    b = exam_measures({k: v * 13.0 for k, v in imgs.items()}, m, sp)
    for k in a:
        assert a[k] == pytest.approx(b[k], rel=1e-9, nan_ok=True)


def test_a_darker_liver_reads_as_a_brighter_lesion():
    imgs, m, sp, t = ellipsoid_phantom((2.0, 2.0, 4.0), noise=0.0, levels={'AP': (0.35, 0.8, 0.08), 'DWI': (0.14, 0.7, 0.12)})
    f = exam_measures(imgs, m, sp)
    assert f['DWI_viable_rel'] == pytest.approx(0.7 / 0.14, rel=0.02)


def test_diameter_is_the_longest_in_plane_chord_not_through_plane():
    m = np.zeros((40, 40, 40), np.uint8)
    m[10:30, 18:22, 5:35] = 1  # 20 voxels along x, 30 along z
    assert longest_diameter(m, (1.0, 1.0, 1.0)) == pytest.approx(math.hypot(20, 4), abs=1.0)
    assert longest_diameter(m, (2.0, 1.0, 1.0)) == pytest.approx(math.hypot(40, 4), abs=2.0)


def test_real_nifti_in_mm_whatever_the_orientation():
    import nibabel as nib
    from pathlib import Path
    from liver_pcr.cohort.reader import load_volume
    vol = load_volume(Path(nib.__file__).parent/'tests'/'data'/'anatomical.nii')
    ijk = np.indices(vol.shape).reshape(3, -1)
    xyz = (vol.affine @ np.vstack([ijk, np.ones(ijk.shape[1])]))[:3].reshape(3, *vol.shape)
    c = xyz.reshape(3, -1).mean(1)
    ball = (((xyz - c[:, None, None, None])**2).sum(0) <= 10.0**2).astype(np.uint8)
    f = exam_measures({'T1': vol.data}, ball, vol.spacing)
    assert f['volume_ml'] == pytest.approx(4/3*math.pi*1.0, rel=0.12)
    flipped = exam_measures({'T1': vol.data[::-1]}, ball[::-1], vol.spacing)
    assert flipped['volume_ml'] == f['volume_ml'] and flipped['diameter_mm'] == pytest.approx(f['diameter_mm'])


def test_table_cache_is_reused_and_a_damaged_entry_heals(cohort_dir, tmp_path, capsys):
    c = Cohort.load(cohort_dir)
    cache = tmp_path/'mcache'
    a = measure_table(c, cache=cache, show_progress=False)
    entry = next(p for p in cache.iterdir() if not p.name.startswith('.'))
    (entry/'table.csv').write_bytes((entry/'table.csv').read_bytes()[:50])
    b = measure_table(c, cache=cache, show_progress=False)
    assert 'rebuilding' in capsys.readouterr().err
    pd.testing.assert_frame_equal(a, b)
    assert not any(p.name.startswith('.') for p in cohort_dir.rglob('*') if 'cache' in p.name)


def test_measurements_track_the_generator_truth(tmp_path):
    from liver_pcr.cohort.synth import SynthConfig, make_cohort, truth_table
    cfg = SynthConfig(n_patients=12, seed=5, shape=(64, 64, 12), spacing=(4.0, 4.0, 6.0), p_missing_sequence=0, p_missing_exam=0)
    make_cohort(tmp_path/'c', cfg, show_progress=False)
    c, tt = Cohort.load(tmp_path/'c'), truth_table(cfg).set_index('patient_id')
    tab = measure_table(c, cache=False, show_progress=False)
    for tp in cfg.timepoints:
        assert np.corrcoef(tab[f'{tp}_necrotic_share'], tt[f'necrosis_{tp}'].reindex(tab.index))[0, 1] > 0.8
        assert np.corrcoef(np.log(tab[f'{tp}_volume_ml']), np.log(tt[f'radius_{tp}'].reindex(tab.index)))[0, 1] > 0.9
    ch = measure_changes(tab, c.timepoints, c.sequences)
    true = 3*np.log(tt.radius_post/tt.radius_pre).reindex(tab.index)
    assert np.corrcoef(ch.post_log_volume_ratio, true)[0, 1] > 0.9


def test_afp_is_read_only_for_producers(cohort_dir):
    c = Cohort.load(cohort_dir)
    mr = marker_response(c, c.ids)
    lab = c.labs.set_index(['patient_id', 'timepoint'])
    base = lab.xs(c.timepoints[0], level='timepoint').afp.reindex(mr.index)
    non = base <= AFP_PRODUCER
    assert (mr.loc[non, f'{c.timepoints[-1]}_dlog_afp'].dropna() == 0).all()
    assert (mr.loc[non, f'{c.timepoints[-1]}_afp_response'].dropna() == 0).all()
    assert set(mr.afp_producer.dropna()) <= {0.0, 1.0}


def test_swapping_the_baseline_changes_only_what_depends_on_it(cohort_dir):
    c = Cohort.load(cohort_dir)
    ids = c.ids
    donors = ids[3:] + ids[:3]
    a = measure_block(c, ids, c.timepoints, c.sequences)
    b = measure_block(c, ids, c.timepoints, c.sequences, donors=donors)
    later = [k for k in a.columns if k.startswith(f'{c.timepoints[-1]}_') and k.endswith('_viable_rel') and 'dlog' not in k]
    pd.testing.assert_frame_equal(a[later], b[later])
    assert not np.allclose(a.filter(like='log_volume_ratio').fillna(0), b.filter(like='log_volume_ratio').fillna(0))


def test_measure_only_model_trains_predicts_and_saves_as_data(cohort_dir, _cache, tmp_path):
    from liver_pcr.models.nets import STAGES, ModelConfig
    from liver_pcr.train.cv import run_cv, run_train, predict
    from liver_pcr.core import ConfigError
    with pytest.raises(ConfigError):
        ModelConfig(deep=False)
    cfg = replace(STAGES['relation'], measure=True, deep=False)
    r = run_cv(cohort_dir, cfg, tmp_path/'cv', n_folds=3, show_progress=False, n_boot=50)
    assert 0 <= r['auc'] <= 1
    run_train(cohort_dir, cfg, tmp_path/'final', show_progress=False)
    p = predict(tmp_path/'final', cohort_dir, show_progress=False)
    assert len(p) == len(Cohort.load(cohort_dir)) and np.std(p['p']) > 1e-4


def test_response_reference_reads_the_criteria(cohort_dir, _cache, tmp_path):
    from liver_pcr.train.cv import run_cv
    from liver_pcr.train.runs import RunFolder
    r = run_cv(cohort_dir, 'response', tmp_path/'resp', n_folds=3, show_progress=False, n_boot=50)
    meta, _ = RunFolder(tmp_path/'resp').load_model(0)
    assert any('recist' in c for c in meta['columns']) and any('afp' in c for c in meta['columns'])
    assert 0 <= r['auc'] <= 1
