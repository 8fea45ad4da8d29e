"Importers: DICOM checked against SimpleITK, de-identification, the original PNG layout, loose NIfTI, bad inputs and the CLI."
import gzip, json, shutil

import nibabel as nib
import numpy as np
import pandas as pd
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from liver_pcr.cli import main
from liver_pcr.cohort.reader import Cohort, axial, lesion_slice
from liver_pcr.importers.dicom import LPS
from liver_pcr.importers.dicom import import_dicom
from liver_pcr.importers.nifti import import_nifti
from liver_pcr.importers.deid import pseudonym
from liver_pcr.testing import mr_small_series, tree_digest


def run_cli(capsys, *args):
    "Run `liver-pcr ARGS`; return (exit code, stdout, stderr)."
    rc = main([str(a) for a in args])
    o = capsys.readouterr()
    return rc, o.out, o.err


# --- DICOM series built by hand from pydicom's MR_small.dcm -------------------------------------------

def sitk_ras(folder, uid):
    "Voxels (x, y, z) and RAS affine as SimpleITK's series reader gives them."
    import SimpleITK as sitk
    r = sitk.ImageSeriesReader()
    r.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid)); im = r.Execute()
    a = np.eye(4); a[:3, :3] = np.array(im.GetDirection()).reshape(3, 3)*np.array(im.GetSpacing()); a[:3, 3] = im.GetOrigin()
    return sitk.GetArrayFromImage(im).transpose(2, 1, 0), LPS @ a


def write_map(path, **kw):
    path.write_text(json.dumps(kw)); return path


c, s = np.cos(np.radians(20)), np.sin(np.radians(20))
ORIENTATIONS = {'axial': (1, 0, 0, 0, 1, 0), 'axial-flipped': (-1, 0, 0, 0, -1, 0), 'coronal': (1, 0, 0, 0, 0, -1),
                'sagittal': (0, 1, 0, 0, 0, -1), 'oblique': (c, s, 0, 0, 0, -1)}


@pytest.mark.parametrize('orient', list(ORIENTATIONS))
def test_dicom_matches_simpleitk(tmp_path, orient):
    slices, tags = mr_small_series(tmp_path/'src'/'ser', orientation=ORIENTATIONS[orient], PatientID='X1')
    mp = write_map(tmp_path/'map.json', patients={'X1': 'P1'}, timepoints=['pre'], sequences={'T2': 't2'})
    rep = import_dicom(tmp_path/'src', tmp_path/'out', mp)
    assert rep.exit_code == 0, rep.text()
    img = nib.load(tmp_path/'out/images/P1/pre/T2.nii.gz')
    data, aff = np.asanyarray(img.dataobj), img.affine
    ref, ref_aff = sitk_ras(tmp_path/'src'/'ser', tags['SeriesInstanceUID'])
    assert data.shape == ref.shape == (64, 64, 7)
    np.testing.assert_array_equal(data, ref)
    np.testing.assert_allclose(aff, ref_aff, atol=1e-3)
    np.testing.assert_allclose(np.sqrt((aff[:3, :3]**2).sum(0)), [0.3125, 0.3125, 3.0], atol=1e-4)   # spacing
    for k, sl in enumerate(slices): np.testing.assert_array_equal(data[:, :, k], sl.T)               # slice order
    c = Cohort.load(tmp_path/'out')
    assert c.validate(show_progress=False) == []
    v = c['P1'].volume('pre', 'T2')                                     # the reader's canonical view agrees too
    can = nib.as_closest_canonical(nib.Nifti1Image(ref.astype(np.float32), ref_aff))
    np.testing.assert_array_equal(v.data, np.asanyarray(can.dataobj))
    np.testing.assert_allclose(v.affine, can.affine, atol=1e-3)


def plant_truncated(dst, like):
    "pydicom's MR_truncated.dcm with its header moved into the series of the file `like`."
    bad, ref = pydicom.dcmread(get_testdata_file('MR_truncated.dcm')), pydicom.dcmread(like)
    for kw in ('PatientID', 'PatientName', 'StudyInstanceUID', 'StudyDate', 'SeriesInstanceUID', 'SeriesDescription', 'ImageOrientationPatient'):
        setattr(bad, kw, ref.get(kw))
    bad.ImagePositionPatient = [-40, 25, 500]
    bad.save_as(dst)


def test_dicom_truncated_and_broken_files_are_reported_by_name(tmp_path, capsys):
    src = tmp_path/'src'
    mr_small_series(src/'a', PatientID='X1', StudyDate='20240101')
    mr_small_series(src/'b', PatientID='X1', StudyDate='20240101', SeriesDescription='vibe arterial', seed=3)
    plant_truncated(src/'b'/'MR_truncated.dcm', next((src/'b').glob('*.dcm')))     # a truncated file inside a series
    shutil.copy(get_testdata_file('MR_truncated.dcm'), src/'raw_truncated.dcm')     # as shipped: its own series
    raw = next((src/'a').glob('*.dcm')).read_bytes(); (src/'cut.dcm').write_bytes(raw[:700])   # cut inside the header
    (src/'notes.txt').write_text('not DICOM')
    mp = write_map(tmp_path/'map.json', patients={'X1': 'P1', '4MR1': 'P2'}, timepoints=['pre'], sequences={'T2': 't2', 'AP': 'arterial'})
    before = tree_digest(src)
    rc, out, err = run_cli(capsys, 'import', 'dicom', src, tmp_path/'out', '--map', mp)
    assert rc == 1 and err == '', err
    lines = out.splitlines()
    assert any('b/MR_truncated.dcm' in l and 'unreadable or truncated DICOM' in l for l in lines), out
    assert any(l.strip().startswith('raw_truncated.dcm') and 'no sequence rule matches' in l for l in lines), out
    assert any(l.strip().startswith('cut.dcm') and 'truncated' in l for l in lines), out
    assert any(l.strip().startswith('notes.txt: not a DICOM file') for l in lines), out
    assert 'imported with 4 problem(s)' in out
    assert tree_digest(src) == before
    c = Cohort.load(tmp_path/'out')
    assert c.validate(show_progress=False) == [] and c.sequences == ['T2']
    assert (tmp_path/'out/import_report.txt').read_text().strip().endswith('imported with 4 problem(s)')


def test_dicom_unassigned_ambiguous_inconsistent_and_seg(tmp_path, capsys):
    src = tmp_path/'src'
    mr_small_series(src/'t2', PatientID='X1', StudyDate='20240101')
    mr_small_series(src/'amb', PatientID='X1', StudyDate='20240101', SeriesDescription='t2 arterial', seed=2)    # two rules match
    mr_small_series(src/'unk', PatientID='X1', StudyDate='20240101', SeriesDescription='perfusion', seed=3)      # no rule matches
    mr_small_series(src/'gap', PatientID='X1', StudyDate='20240301', seed=4)                                    # spacing gap
    sorted(src.joinpath('gap').glob('*.dcm'), key=lambda f: float(pydicom.dcmread(f).ImagePositionPatient[2]))[3].unlink()
    mr_small_series(src/'rot', PatientID='X1', StudyDate='20240301', SeriesDescription='vibe arterial', seed=5)  # one slice turned
    f = next((src/'rot').glob('*.dcm')); ds = pydicom.dcmread(f); ds.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]; ds.save_as(f)
    mr_small_series(src/'seg', n_slices=2, PatientID='X1', StudyDate='20240101', Modality='SEG', SeriesDescription='tumour seg', seed=6)
    mr_small_series(src/'later', PatientID='X1', StudyDate='20240601', seed=7)                                  # a third study date
    mr_small_series(src/'other', PatientID='NOT-IN-TABLE', StudyDate='20240101', seed=8)
    mp = write_map(tmp_path/'map.json', patients={'X1': 'P1'}, timepoints=['pre', 'post'], sequences={'T2': 't2', 'AP': 'arterial'})
    rc, out, _ = run_cli(capsys, 'import', 'dicom', src, tmp_path/'out', '--map', mp)
    assert rc == 1
    expect = {'amb/': 'matches several sequence rules (T2, AP)', 'unk/': "no sequence rule matches the description 'perfusion'",
              'gap/': 'slice spacing 6.000 mm', 'rot/': 'orientation', 'seg/': 'DICOM SEG is not supported',
              'later/': 'study date #3 of this patient', 'other/': 'not in the pseudonym table'}
    for where, what in expect.items():
        assert any(l.strip().startswith(where) and what in l for l in out.splitlines()), (where, out)
    c = Cohort.load(tmp_path/'out')
    assert c.validate(show_progress=False) == [] and [(tp, s) for tp, ex in c['P1'].exams.items() for s in ex] == [('pre', 'T2')]


def test_dicom_two_series_on_one_slot_are_not_guessed(tmp_path):
    src = tmp_path/'src'
    mr_small_series(src/'a', PatientID='X1', StudyDate='20240101', seed=1)
    mr_small_series(src/'b', PatientID='X1', StudyDate='20240101', seed=2)
    mr_small_series(src/'c', PatientID='X1', StudyDate='20240101', SeriesDescription='vibe arterial', seed=3)
    mp = write_map(tmp_path/'map.json', patients={'X1': 'P1'}, timepoints=['pre'], sequences={'T2': 't2', 'AP': 'arterial'})
    rep = import_dicom(src, tmp_path/'out', mp)
    assert sum('2 series are assigned to patient P1, pre/T2: none imported' in str(p) for p in rep.problems) == 2
    assert list(Cohort.load(tmp_path/'out')['P1'].exams['pre']) == ['AP']


PHI = ['Doe^Jane', '19610203', 'ACC123456', 'Mercy General Hospital', 'House^Gregory', 'MRN-8675309', '20230514']


@pytest.mark.parametrize('ids', ['table', 'salt'])
def test_dicom_deidentification(tmp_path, capsys, ids):
    src = tmp_path/'src'/'MRN-8675309'                                     # a folder named after the patient, too
    phi = dict(PatientName='Doe^Jane', PatientBirthDate='19610203', AccessionNumber='ACC123456', InstitutionName='Mercy General Hospital',
               ReferringPhysicianName='House^Gregory', PatientID='MRN-8675309', StudyDate='20230514', PatientSex='F')
    mr_small_series(src/'t2', **phi)
    mr_small_series(src/'ap', SeriesDescription='arterial', seed=2, **phi)
    mr_small_series(src/'dwi', SeriesDescription='ep2d_diff', seed=3, **phi)     # unassigned: its report line must not leak either
    (src/'t2'/'zz_cut.dcm').write_bytes(next((src/'t2').glob('*.dcm')).read_bytes()[:400])
    mp = {'timepoints': ['pre'], 'sequences': {'T2': 't2', 'AP': 'arterial'}, 'clinical': 'clinical.csv', 'labs': 'labs.csv'}
    if ids == 'table': mp['patients'] = {'MRN-8675309': 'P001'}
    pd.DataFrame({'patient_id': ['MRN-8675309'], 'pcr': [1], 'patient_name': ['Doe^Jane'], 'site': ['Mercy General Hospital'], 'age': [61]}).to_csv(tmp_path/'clinical.csv', index=False)
    pd.DataFrame({'patient_id': ['MRN-8675309'], 'timepoint': ['pre'], 'afp': [123.0]}).to_csv(tmp_path/'labs.csv', index=False)
    write_map(tmp_path/'map.json', **mp)
    args = ['import', 'dicom', tmp_path/'src', tmp_path/'out', '--map', tmp_path/'map.json'] + (['--salt', 'a-secret-salt'] if ids == 'salt' else [])
    rc, out, err = run_cli(capsys, *args)
    assert rc == 1                                                           # the unassigned series and the cut file
    pid = 'P001' if ids == 'table' else pseudonym('MRN-8675309', 'a-secret-salt')
    c = Cohort.load(tmp_path/'out')
    assert c.validate(show_progress=False) == [] and c.ids == [pid] and c[pid].label == 1.0 and c[pid].lab('pre', 'afp') == 123.0
    assert list(c.table.columns[:3]) == ['patient_id', 'pcr', 'age']       # identifying columns were not copied
    for f in (tmp_path/'out').rglob('*'):
        rel = str(f.relative_to(tmp_path/'out')).lower()
        assert not any(s.lower() in rel for s in PHI), rel
        if f.is_file():
            for b in (f.read_bytes(), gzip.decompress(f.read_bytes()) if f.name.endswith('.gz') else b''):
                found = [s for s in PHI if s.lower().encode() in b.lower()]
                assert not found, (f, found)
    for s in PHI: assert s.lower() not in (out + err).lower(), s
    hdr = nib.load(tmp_path/'out'/'images'/pid/'pre'/'T2.nii.gz').header
    assert hdr['descrip'].item() == b'' and hdr['aux_file'].item() == b'' and hdr['db_name'].item() == b''


def test_dicom_hash_needs_a_salt_and_is_reproducible(tmp_path, capsys):
    mr_small_series(tmp_path/'src'/'s', PatientID='H-1')
    mp = write_map(tmp_path/'map.json', timepoints=['pre'], sequences={'T2': 't2'})
    rc, _, err = run_cli(capsys, 'import', 'dicom', tmp_path/'src', tmp_path/'o1', '--map', mp)
    assert rc == 1 and 'no --salt' in err and 'Traceback' not in err and not (tmp_path/'o1').exists()
    rc, _, err = run_cli(capsys, 'import', 'dicom', tmp_path/'src', tmp_path/'o1', '--map', mp, '--salt', 'short')
    assert rc == 1 and 'at least 8 characters' in err
    for o in ('o1', 'o2'): assert run_cli(capsys, 'import', 'dicom', tmp_path/'src', tmp_path/o, '--map', mp, '--salt', 'hospital-secret')[0] == 0
    assert Cohort.load(tmp_path/'o1').ids == Cohort.load(tmp_path/'o2').ids == [pseudonym('H-1', 'hospital-secret')]
    mp2 = write_map(tmp_path/'map2.json', timepoints=['pre'], sequences={'T2': 't2'}, salt='hospital-secret')   # the salt may live in the map
    from liver_pcr.importers.dicom import read_dicom_map
    assert 'hospital-secret' not in repr(read_dicom_map(mp2))
    assert import_dicom(tmp_path/'src', tmp_path/'o3', mp2).exit_code == 0 and Cohort.load(tmp_path/'o3').ids == Cohort.load(tmp_path/'o1').ids
    assert not any('hospital-secret'.encode() in f.read_bytes() for f in (tmp_path/'o3').rglob('*') if f.is_file())


def test_dicom_timepoints_table_and_masks(tmp_path):
    src = tmp_path/'src'
    _, t1 = mr_small_series(src/'s1', PatientID='X1', StudyDate='20240101')
    _, t2 = mr_small_series(src/'s2', PatientID='X1', StudyDate='20240301', seed=2)
    # the mask: written on the grid of the first series by SimpleITK's geometry, in RAS+ voxel order (as some tools save it)
    _, aff = sitk_ras(src/'s1', t1['SeriesInstanceUID'])
    m = np.zeros((64, 64, 7), np.uint8); m[20:30, 25:35, 2:5] = 1
    nib.save(nib.as_closest_canonical(nib.Nifti1Image(m, aff)), tmp_path/'m_pre.nii.gz')
    nib.save(nib.Nifti1Image(m[:, :, :5], aff), tmp_path/'m_post.nii.gz')                   # not on the grid
    mp = write_map(tmp_path/'map.json', patients={'X1': 'P1'}, sequences={'T2': 't2'},
                   timepoints={t1['StudyInstanceUID']: 'baseline', '2024-03-01': 'w12'},
                   masks={'X1': {'baseline': 'm_pre.nii.gz'}, 'P1': {'w12': {'T2': 'm_post.nii.gz'}}})
    rep = import_dicom(src, tmp_path/'out', mp)
    assert [str(p) for p in rep.problems] == ['m_post.nii.gz: patient P1, w12/T2: mask grid (64, 64, 5) differs from the image grid (64, 64, 7): not used for T2']
    c = Cohort.load(tmp_path/'out')
    assert c.validate(show_progress=False) == [] and c.timepoints == ['baseline', 'w12']
    np.testing.assert_array_equal(np.asanyarray(nib.load(tmp_path/'out/images/P1/baseline/lesion.nii.gz').dataobj), m)
    assert c['P1'].mask('w12', 'T2') is None


def test_dicom_duplicate_files_and_seg_masks(tmp_path):
    src = tmp_path/'src'
    mr_small_series(src/'a', PatientID='X1')
    (src/'copy').mkdir(); shutil.copy(next((src/'a').glob('*.dcm')), src/'copy'/'dup.dcm')     # the same instance twice
    shutil.copy(next((src/'a').glob('*.dcm')), tmp_path/'seg.dcm')
    mp = write_map(tmp_path/'map.json', patients={'X1': 'P1'}, timepoints=['pre'], sequences={'T2': 't2'}, masks={'P1': {'pre': 'seg.dcm'}})
    rep = import_dicom(src, tmp_path/'out', mp)
    assert any('copy/dup.dcm: a copy of a/' in n for n in rep.notes)
    assert [str(p) for p in rep.problems] == ['seg.dcm: patient P1, pre: a DICOM mask (SEG) is not supported: export the segmentation as NIfTI (3D Slicer, ITK-SNAP)']
    assert Cohort.load(tmp_path/'out')['P1'].volume('pre', 'T2').shape == (64, 64, 7)


def test_dicom_csv_map(tmp_path):
    _, t = mr_small_series(tmp_path/'src'/'a', PatientID='X1', SeriesDescription='whatever')
    _, u = mr_small_series(tmp_path/'src'/'b', PatientID='X1', SeriesDescription='scout', seed=2)
    pd.DataFrame({'SeriesInstanceUID': [t['SeriesInstanceUID'], u['SeriesInstanceUID']], 'patient': ['P7', ''],
                  'timepoint': ['pre', ''], 'sequence': ['T2', 'skip']}).to_csv(tmp_path/'map.csv', index=False)
    rep = import_dicom(tmp_path/'src', tmp_path/'out', tmp_path/'map.csv')
    assert rep.exit_code == 0 and Cohort.load(tmp_path/'out').ids == ['P7']


# --- the original study's PNG layout ------------------------------------------------------------------

@pytest.fixture(scope='module')
def synth(tmp_path_factory):
    from liver_pcr.cohort.synth import SynthConfig, make_cohort
    root = tmp_path_factory.mktemp('synth')
    cfg = SynthConfig(n_patients=6, seed=5, shape=(40, 36, 9), spacing=(7., 7., 8.), sequences=('T1', 'T1V', 'T2'),
                      p_missing_sequence=0, p_missing_exam=0, id_prefix='A')
    make_cohort(root/'c', cfg, show_progress=False)
    return root/'c'


def png_layout(cohort, root, rgb=(), first=0):
    "The original layout: {PID}_{label}_{start|end}_{SEQ}_{slice}.png per sequence folder (slices numbered from `first`), clinic_data.json, data_fold.json."
    c, stacks = Cohort.load(cohort), {}
    for p in c:
        for tp, ex in p.exams.items():
            for s in ex:
                v = p.volume(tp, s).data; v = (255*(v - v.min())/np.ptp(v)).astype(np.uint8)
                z = int(np.clip(lesion_slice(p.mask(tp, s).data, v.shape[2]), 2, v.shape[2] - 3))
                stacks[(p.id, tp, s)] = [axial(v, k) for k in range(z - 2, z + 3)]
                d = root/'png'/s; d.mkdir(parents=True, exist_ok=True)
                for k, im in enumerate(stacks[(p.id, tp, s)]):
                    f = d/f"{p.id}_{int(p.label)}_{dict(pre='start', post='end')[tp]}_{s}_{k + first}.png"
                    Image.fromarray(np.stack([im]*3, -1) if p.id in rgb else im).save(f)
    clin = {p.id: {'bef_afp': p.lab('pre', 'afp'), 'bef_dcp': p.lab('pre', 'pivka_ii'), 'aft_afp': p.lab('post', 'afp'),
                   'aft_dcp': p.lab('post', 'pivka_ii'), 'label': int(p.label)} for p in c}
    clin = {k: {m: (None if isinstance(x, float) and np.isnan(x) else x) for m, x in v.items()} for k, v in clin.items()}
    ids = c.ids
    folds = {'train': {str(f): [i for i in ids if i not in ids[f::3]] for f in range(3)}, 'test': {str(f): ids[f::3] for f in range(3)}}
    (root/'clinic_data.json').write_text(json.dumps(clin)); (root/'data_fold.json').write_text(json.dumps(folds))
    return stacks, clin, folds


def test_png_layout_imports(tmp_path, synth, capsys):
    stacks, clin, folds = png_layout(synth, tmp_path, rgb=('A0002',))
    before = tree_digest(tmp_path/'png')
    rc, out, err = run_cli(capsys, 'import', 'png', tmp_path/'png', tmp_path/'out', '--clinical', tmp_path/'clinic_data.json',
                           '--folds', tmp_path/'data_fold.json', '--name', 'orig')
    assert rc == 0 and err == '', out + err
    assert 'imported with no problem' in out and '1 mm' in out
    assert tree_digest(tmp_path/'png') == before
    c = Cohort.load(tmp_path/'out')
    assert c.validate(show_progress=False) == [] and c.name == 'orig'
    assert c.timepoints == ['pre', 'post'] and c.sequences == ['T1', 'T1V', 'T2'] and len(c) == 6
    assert c.folds.to_dict() == {p: int(f) for f, ps in folds['test'].items() for p in ps}
    assert c.labels.to_dict() == {p: float(v['label']) for p, v in clin.items()}
    for p, v in clin.items():
        for key, (tp, m) in {'bef_afp': ('pre', 'afp'), 'aft_afp': ('post', 'afp'), 'bef_dcp': ('pre', 'pivka_ii'), 'aft_dcp': ('post', 'pivka_ii')}.items():
            got = c[p].lab(tp, m)
            assert (np.isnan(got) if v[key] is None else got == pytest.approx(v[key], rel=1e-9)), (p, key)
    for (p, tp, s), sl in stacks.items():
        data = np.asanyarray(nib.load(tmp_path/'out'/'images'/p/tp/f'{s}.nii.gz').dataobj)
        np.testing.assert_array_equal(data, np.stack([im.T for im in sl], axis=2))
    v = c['A0002'].volume('post', 'T2')                       # RGB files became grey; the slice shows as it was drawn
    assert v.spacing == (1.0, 1.0, 1.0)
    np.testing.assert_array_equal(axial(v.data, 4), stacks[('A0002', 'post', 'T2')][4])
    assert not list((tmp_path/'out').rglob('lesion*'))        # no masks: the whole slice is the ROI


def test_png_faults_are_reported(tmp_path, synth, capsys):
    stacks, clin, folds = png_layout(synth, tmp_path)
    png = tmp_path/'png'; y = {p: v['label'] for p, v in clin.items()}
    (png/'T2'/f"A0001_{y['A0001']}_end_T2_3.png").unlink()                                    # missing twin
    (png/'T1'/f"A0001_{y['A0001']}_start_T1_2.png").unlink(); (png/'T1'/f"A0001_{y['A0001']}_end_T1_2.png").unlink()  # a gap in both stacks
    f = png/'T1V'/f"A0002_{y['A0002']}_start_T1V_0.png"; f.rename(f.with_name(f"A0002_{1 - y['A0002']}_start_T1V_0.png"))  # label disagrees
    (png/'extra').mkdir(); shutil.copy(png/'T2'/f"A0003_{y['A0003']}_start_T2_0.png", png/'extra'/f"A0003_{y['A0003']}_start_FLAIR_0.png")
    raw = (png/'T2'/f"A0004_{y['A0004']}_start_T2_1.png").read_bytes(); (png/'T2'/f"A0004_{y['A0004']}_start_T2_1.png").write_bytes(raw[:60])
    shutil.copy(png/'T2'/f"A0003_{y['A0003']}_start_T2_0.png", png/'T2'/'B9_1_start_T2_0.png')   # not in the JSON
    (png/'readme_slice.png').write_bytes(raw)                                                   # not in the layout
    clin['Z77'] = {'label': 1}; (tmp_path/'clinic_data.json').write_text(json.dumps(clin))      # JSON patient without images
    folds['test']['1'].append('A0001'); (tmp_path/'data_fold.json').write_text(json.dumps(folds))   # in two test folds
    before = tree_digest(png)
    rc, out, err = run_cli(capsys, 'import', 'png', png, tmp_path/'out', '--clinical', tmp_path/'clinic_data.json', '--folds', tmp_path/'data_fold.json')
    assert rc == 1 and err == ''
    assert tree_digest(png) == before
    expect = [f"T2/A0001_{y['A0001']}_start_T2_3.png: patient A0001, T2 slice 3: no end twin",
              'patient A0001, pre/T1: slice(s) [2] missing', f"A0002_{1 - y['A0002']}_start_T1V_0.png: patient A0002: label {y['A0002']} in the clinical JSON but",
              "extra/A0003", "unknown sequence 'FLAIR'", f"T2/A0004_{y['A0004']}_start_T2_1.png: patient A0004, pre/T2: unreadable PNG",
              'clinic_data.json: patient B9: has slices but is not in the clinical JSON', 'clinic_data.json: patient Z77: in the clinical JSON but has no imported slice',
              'data_fold.json: patient A0001: in several test folds', 'data_fold.json: patient B9: in no test fold',
              'readme_slice.png: name is not', 'A0004, pre/T2: slice(s) [1] missing']
    for e in expect: assert e in out, (e, out)
    assert out.strip().endswith('problem(s)') and 'imported with' in out.splitlines()[-1]
    c = Cohort.load(tmp_path/'out')
    assert c.validate(show_progress=False) == []
    assert c['A0001'].fold is None and np.isnan(c['B9'].label) and c['A0002'].label == y['A0002']
    assert c['A0001'].volume('pre', 'T1').shape[2] == 4


def test_png_one_based_slices_import_cleanly_and_real_gaps_are_reported(tmp_path, synth, capsys):
    stacks, clin, folds = png_layout(synth, tmp_path, first=1)          # ..._T2_1.png to ..._T2_5.png
    png, cj, fj = tmp_path/'png', tmp_path/'clinic_data.json', tmp_path/'data_fold.json'
    assert sorted(int(f.stem.rsplit('_', 1)[1]) for f in png.glob('T2/A0001_*_start_T2_*.png')) == [1, 2, 3, 4, 5]
    rc, out, err = run_cli(capsys, 'import', 'png', png, tmp_path/'out', '--clinical', cj, '--folds', fj)
    assert rc == 0 and err == '', out + err
    assert 'imported with no problem' in out and 'missing' not in out, out
    assert f'note: {len(stacks)} of {len(stacks)} stack(s) number their slices from 1' in out
    for (p, tp, s), sl in stacks.items():
        data = np.asanyarray(nib.load(tmp_path/'out'/'images'/p/tp/f'{s}.nii.gz').dataobj)
        np.testing.assert_array_equal(data, np.stack([im.T for im in sl], axis=2))
    y = clin['A0001']['label']
    for tp in ('start', 'end'): (png/'T2'/f"A0001_{y}_{tp}_T2_3.png").unlink()    # slice 3 really missing, in both exams
    rc, out, err = run_cli(capsys, 'import', 'png', png, tmp_path/'out2', '--clinical', cj, '--folds', fj)
    assert rc == 1 and err == '', out + err
    probs = out.split('problem(s) (these inputs were skipped or are inconsistent):\n')[1].splitlines()[:-1]
    assert probs == [f'  T2/A0001_{y}_{e}_T2_1.png (+3 more files): patient A0001, {tp}/T2: slice(s) [3] missing (numbered from 1): '
                     'stacked the 4 present slices' for e, tp in (('end', 'post'), ('start', 'pre'))], out
    assert out.splitlines()[-1] == 'imported with 2 problem(s)'
    assert Cohort.load(tmp_path/'out2')['A0001'].volume('pre', 'T2').shape[2] == 4


def test_png_refuses_existing_out_and_out_inside_src(tmp_path, synth, capsys):
    png_layout(synth, tmp_path)
    png, clin = tmp_path/'png', tmp_path/'clinic_data.json'
    before = tree_digest(png)
    rc, out, err = run_cli(capsys, 'import', 'png', png, png/'out', '--clinical', clin)
    assert rc == 1 and err.startswith('error: ') and 'inside the source folder' in err and 'Traceback' not in err
    assert tree_digest(png) == before
    assert run_cli(capsys, 'import', 'png', png, tmp_path/'out', '--clinical', clin)[0] == 0
    (tmp_path/'out'/'marker').write_text('old')
    rc, out, err = run_cli(capsys, 'import', 'png', png, tmp_path/'out', '--clinical', clin)
    assert rc == 1 and 'already exists (use --overwrite' in err and (tmp_path/'out'/'marker').exists()
    rc, out, err = run_cli(capsys, 'import', 'png', png, tmp_path/'out', '--clinical', clin, '--overwrite')
    assert rc == 0 and not (tmp_path/'out'/'marker').exists()
    rc, out, err = run_cli(capsys, 'import', 'png', png, tmp_path, '--clinical', clin, '--overwrite')   # OUT around SRC
    assert rc == 1 and 'contains the source folder' in err and tree_digest(png) == before
    (tmp_path/'empty').mkdir()
    rc, out, err = run_cli(capsys, 'import', 'png', tmp_path/'empty', tmp_path/'new'/'out', '--clinical', clin)
    assert rc == 1 and 'no usable PNG slice' in err and not (tmp_path/'new').exists()
    rc, out, err = run_cli(capsys, 'import', 'png', png, tmp_path/'o2', '--clinical', tmp_path/'nope.json')
    assert rc == 1 and 'no such clinical file' in err and not (tmp_path/'o2').exists()


# --- loose NIfTI --------------------------------------------------------------------------------------

def loose_nifti(root, flat=True):
    rng = np.random.default_rng(0); aff = np.diag([-0.8, -0.8, 4.0, 1.0]); aff[:3, 3] = [50, 40, -20]
    for pid in ['K1', 'K2', 'K3']:
        for tp in ['pre', 'post']:
            name = (lambda s: root/f'{pid}_{tp}_{s}.nii.gz') if flat else (lambda s: root/pid/tp/f'{s}.nii')
            name('x').parent.mkdir(parents=True, exist_ok=True)
            for s in ['T2', 'AP']: nib.save(nib.Nifti1Image(rng.random((16, 14, 5)).astype(np.float32), aff), name(s))
            m = np.zeros((16, 14, 5), np.uint8); m[4:8, 4:8, 1:3] = 1; nib.save(nib.Nifti1Image(m, aff), name('lesion'))
    pd.DataFrame({'patient_id': ['K1', 'K2', 'K3'], 'pcr': ['1', '0', ''], 'fold': [0, 1, 0], 'bclc': ['A', 'B', 'C']}).to_csv(root.parent/'clin.csv', index=False)
    pd.DataFrame({'patient_id': ['K1', 'K1', 'K2'], 'timepoint': ['pre', 'post', 'pre'], 'afp': ['300', '12', ''], 'pivka_ii': ['40', '', '7']}).to_csv(root.parent/'labs.csv', index=False)
    return aff


@pytest.mark.parametrize('flat', [True, False])
def test_nifti_imports(tmp_path, capsys, flat):
    aff = loose_nifti(tmp_path/'src', flat)
    args = ['--pattern', '{patient}_{timepoint}_{sequence}.nii.gz'] if flat else []
    before = tree_digest(tmp_path/'src')
    rc, out, err = run_cli(capsys, 'import', 'nifti', tmp_path/'src', tmp_path/'out', *args, '--clinical', tmp_path/'clin.csv', '--labs', tmp_path/'labs.csv')
    assert rc == 0, out + err
    assert tree_digest(tmp_path/'src') == before
    c = Cohort.load(tmp_path/'out')
    assert c.validate(show_progress=False) == [] and c.ids == ['K1', 'K2', 'K3'] and c.timepoints == ['pre', 'post']
    assert c['K1'].label == 1.0 and np.isnan(c['K3'].label) and c['K2'].fold == 1 and c['K3'].covariates == {'bclc': 'C'}
    assert c['K1'].lab('pre', 'afp') == 300 and np.isnan(c['K1'].lab('post', 'pivka_ii'))
    img = nib.load(tmp_path/'out/images/K2/post/AP.nii.gz')
    np.testing.assert_allclose(img.affine, aff)
    assert c['K3'].mask('post', 'T2') is not None


def test_nifti_faults_are_reported(tmp_path, capsys):
    aff = loose_nifti(tmp_path/'src')
    src = tmp_path/'src'
    raw = (src/'K2_post_T2.nii.gz').read_bytes(); (src/'K2_post_T2.nii.gz').write_bytes(raw[:len(raw)//3])
    (src/'K1_pre.nii.gz').write_bytes(raw)                                                          # not the pattern
    nib.save(nib.Nifti1Image(np.ones((16, 14, 4), np.uint8), aff), src/'K1_post_AP_mask.nii.gz')   # off the grid
    nib.save(nib.Nifti1Image(np.zeros((16, 14, 5, 2), np.float32), aff), src/'K3_pre_DWI.nii.gz')  # 4-D
    nib.save(nib.Nifti1Image(np.ones((16, 14, 5), np.float32), aff), src/'K3_post_FLAIR.nii.gz')   # unknown sequence (API)
    nib.save(nib.Nifti1Image(np.ones((16, 14, 5), np.float32), aff), src/'K4_pre_T2.nii.gz')       # no clinical row
    pd.DataFrame({'patient_id': ['K1', 'K2', 'K3', 'K9'], 'pcr': ['1', 'yes', '', '0']}).to_csv(tmp_path/'clin.csv', index=False)
    before = tree_digest(src)
    rep = import_nifti(src, tmp_path/'out', '{patient}_{timepoint}_{sequence}.nii.gz', clinical=tmp_path/'clin.csv', sequences=['T2', 'AP', 'DWI'])
    msgs = '\n'.join(map(str, rep.problems))
    for e in ['K2_post_T2.nii.gz: patient K2, post/T2: unreadable or truncated NIfTI', "K1_pre.nii.gz: does not match the pattern",
              'K1_post_AP_mask.nii.gz: patient K1, post/AP: mask grid (16, 14, 4) differs', 'K3_pre_DWI.nii.gz: patient K3, pre/DWI: 4-D volume',
              "K3_post_FLAIR.nii.gz: patient K3, post: unknown sequence 'FLAIR'", "clin.csv: line 3 (patient K2): pcr 'yes' is not 1, 0 or empty",
              'clin.csv: line 5 (patient K9): patient has no imported image', 'clin.csv: patient K4: has images but no row']:
        assert e in msgs, (e, msgs)
    assert rep.exit_code == 1 and tree_digest(src) == before
    c = Cohort.load(tmp_path/'out')
    assert c.validate(show_progress=False) == []
    assert not c['K2'].has('post', 'T2') and c['K1'].mask('post', 'AP') is None and c['K1'].mask('post', 'T2') is not None
    rc, out, err = run_cli(capsys, 'import', 'nifti', src, tmp_path/'out', '--pattern', '{patient}_{timepoint}_{sequence}.nii.gz')
    assert rc == 1 and 'already exists' in err
    rc, out, err = run_cli(capsys, 'import', 'nifti', src, tmp_path/'o2')      # the default pattern matches nothing here
    assert rc == 1 and 'no NIfTI image matches the pattern' in err and not (tmp_path/'o2').exists()
    rc, out, err = run_cli(capsys, 'import', 'nifti', src, src/'sub', '--pattern', '{patient}_{timepoint}_{sequence}.nii.gz')
    assert rc == 1 and 'inside the source folder' in err and tree_digest(src) == before


def test_fatal_error_is_short_and_writes_nothing(tmp_path, capsys):
    (tmp_path/'src').mkdir()
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 2), np.float32), np.eye(4)), tmp_path/'src'/'x0.nii.gz')
    for i in range(1, 30): shutil.copy(tmp_path/'src'/'x0.nii.gz', tmp_path/'src'/f'x{i}.nii.gz')
    rc, out, err = run_cli(capsys, 'import', 'nifti', tmp_path/'src', tmp_path/'a'/'out')
    lines = err.strip().splitlines()
    assert rc == 1 and out == '' and len(lines) == 22 and all(l.startswith('error: ') for l in lines)
    assert '... and 10 more problem(s)' in lines[-2] and 'nothing imported' in lines[-1]
    assert not (tmp_path/'a').exists()
