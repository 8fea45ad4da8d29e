"""The cohort reader and `liver-pcr validate`, end to end, on cohorts the notebooks cannot show.

Each broken cohort is a valid one with ONE defect. For every defect the command line must exit 1,
print a line that names both the defect and the file or patient it concerns, show no traceback,
and leave every byte of the cohort as it was.
"""
import gzip, json, os, shutil, subprocess, sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from liver_pcr.cohort.reader import Cohort
from liver_pcr.cohort.synth import SynthConfig, make_cohort
from liver_pcr.testing import tree_digest

CFG = SynthConfig(n_patients=4, seed=0, shape=(32, 32, 6), spacing=(8., 8., 10.))
PID = 'SYN0002'  # the patient each defect is put on


def _exe() -> str:
    exe = shutil.which('liver-pcr', path=str(Path(sys.executable).parent))
    assert exe, 'the liver-pcr console script is not installed next to this python'
    return exe


def cli(*args, env=None, cwd=None) -> subprocess.CompletedProcess:
    "Run `liver-pcr ARGS` with stdin closed."
    return subprocess.run([_exe(), *map(str, args)], capture_output=True, text=True, stdin=subprocess.DEVNULL,
                          timeout=300, env=env, cwd=cwd)


@pytest.fixture(scope='module')
def base(tmp_path_factory) -> Path:
    "A small valid synthetic cohort, made once for the module (copied, never modified)."
    out = tmp_path_factory.mktemp('base')/'cohort'
    make_cohort(out, CFG, show_progress=False)
    return out


@pytest.fixture
def cohort(base, tmp_path) -> Path:
    "A fresh copy of the base cohort to break."
    dst = tmp_path/'cohort'
    shutil.copytree(base, dst)
    return dst


# ---------------------------------------------------------------- helpers that edit a copy

def read(root, name) -> pd.DataFrame: return pd.read_csv(root/name, dtype=str, keep_default_na=False, index_col=False)
def write(root, name, df): df.to_csv(root/name, index=False)

def set_cell(root, name, pid, col, value, timepoint=None):
    df = read(root, name)
    sel = df.patient_id == pid
    if timepoint is not None: sel &= df.timepoint == timepoint
    df.loc[sel, col] = value; write(root, name, df)

def add_row(root, name, **row):
    df = read(root, name); write(root, name, pd.concat([df, pd.DataFrame([row])], ignore_index=True).fillna(''))

def img(root, tp='pre', seq='AP', pid=PID) -> Path: return root/'images'/pid/tp/f'{seq}.nii.gz'

def save(path, data, affine):
    nib.save(nib.Nifti1Image(np.asarray(data), affine), str(path))

def with_manifest(root) -> pd.DataFrame:
    "Describe the cohort's images/ tree by an images.csv manifest (a valid cohort still); return it."
    rows = []
    for f in sorted((root/'images').glob('*/*/*.nii.gz')):
        if f.name == 'lesion.nii.gz': continue
        pid, tp = f.parent.parent.name, f.parent.name
        rows.append(dict(patient_id=pid, timepoint=tp, sequence=f.name[:-7], image=str(f.relative_to(root)),
                         mask=str((f.parent/'lesion.nii.gz').relative_to(root))))
    df = pd.DataFrame(rows); write(root, 'images.csv', df)
    return df

def set_manifest(root, col, value, tp='pre', seq='AP', pid=PID):
    df = with_manifest(root)
    df.loc[(df.patient_id == pid) & (df.timepoint == tp) & (df.sequence == seq), col] = value
    write(root, 'images.csv', df)

def rename_patient(root, new):
    "Rename patient PID everywhere: patients.csv, labs.csv and its images folder."
    for name in ('patients.csv', 'labs.csv'):
        df = read(root, name); df.loc[df.patient_id == PID, 'patient_id'] = new; write(root, name, df)
    os.rename(root/'images'/PID, root/'images'/new)


# ---------------------------------------------------------------- the defects
# name → (how to break a copy of the base cohort, substrings that one stderr line must contain)

def _missing_patients(r): (r/'patients.csv').unlink()
def _no_id_col(r): write(r, 'patients.csv', read(r, 'patients.csv').rename(columns={'patient_id': 'pid'}))
def _no_label_col(r): write(r, 'patients.csv', read(r, 'patients.csv').drop(columns='pcr'))
def _dup_id(r):
    df = read(r, 'patients.csv'); write(r, 'patients.csv', pd.concat([df, df[df.patient_id == PID]]))
def _truncated(r):
    raw = img(r).read_bytes(); img(r).write_bytes(raw[:len(raw)//2])
def _not_nifti_named(r):
    (r/'images'/PID/'pre'/'AP.png').write_bytes(b'\x89PNG\r\n\x1a\n' + bytes(64))
    set_manifest(r, 'image', f'images/{PID}/pre/AP.png')
def _not_nifti_content(r): img(r).write_bytes(gzip.compress(b'this is a text file, not a NIfTI volume\n' * 20))
def _four_d(r):
    v = nib.load(str(img(r))); save(img(r), np.stack([np.asanyarray(v.dataobj)]*2, -1), v.affine)
def _zero_size(r):
    v = nib.load(str(img(r))); save(img(r), np.zeros((0, *v.shape[1:]), np.int16), v.affine)
def _mask_shape(r):
    m = img(r, seq='lesion'); v = nib.load(str(m)); save(m, np.pad(np.asanyarray(v.dataobj), ((0, 8), (0, 0), (0, 0))), v.affine)
def _rgb_mask(r):
    m = img(r, seq='lesion'); v = nib.load(str(m))
    rgb = np.zeros(v.shape, [('R', 'u1'), ('G', 'u1'), ('B', 'u1')]); rgb['R'] = np.asanyarray(v.dataobj)
    save(m, rgb, v.affine)
def _extra_values(r, row=1):
    lines = (r/'patients.csv').read_text().splitlines(); lines[row] += ',surplus'
    (r/'patients.csv').write_text('\n'.join(lines) + '\n')
def _mask_affine(r):
    m = img(r, seq='lesion'); v = nib.load(str(m)); aff = v.affine.copy(); aff[0, 3] += 5.0
    save(m, np.asanyarray(v.dataobj), aff)
def _empty_mask(r):
    m = img(r, seq='lesion'); v = nib.load(str(m)); save(m, np.zeros(v.shape, np.uint8), v.affine)
def _undeclared_tp(r): shutil.copytree(r/'images'/PID/'post', r/'images'/PID/'mid')
def _undeclared_tp_labs(r): add_row(r, 'labs.csv', patient_id=PID, timepoint='mid', afp='10', pivka_ii='20')
def _undeclared_seq(r): os.rename(img(r, seq='T2'), img(r, seq='T1'))
def _unlisted_images(r): shutil.copytree(r/'images'/'SYN0001', r/'images'/'SYN0099')
def _absolute_path(r):
    outside = r.parent/'outside.nii.gz'; shutil.copy(img(r), outside)
    set_manifest(r, 'image', str(outside.resolve()))

DEFECTS = {
    'missing patients.csv':       (_missing_patients, ['patients.csv', 'missing']),
    'missing patient_id column':  (_no_id_col, ['patients.csv', "column 'patient_id'", 'missing']),
    'missing label column':       (_no_label_col, ['patients.csv', "column 'pcr'", 'missing']),
    'duplicate patient id':       (_dup_id, ['patients.csv', f"duplicate patient_id '{PID}'"]),
    'malformed id (space)':       (lambda r: rename_patient(r, 'a b'), ['patients.csv', "malformed patient_id 'a b'"]),
    'malformed id (non-ascii)':   (lambda r: rename_patient(r, 'ü'), ['patients.csv', "malformed patient_id 'ü'"]),
    'label yes':                  (lambda r: set_cell(r, 'patients.csv', PID, 'pcr', 'yes'), ['patients.csv', PID, "pcr 'yes' is not 1, 0 or empty"]),
    'label 2':                    (lambda r: set_cell(r, 'patients.csv', PID, 'pcr', '2'), ['patients.csv', PID, "pcr '2' is not 1, 0 or empty"]),
    'labs patient unknown':       (lambda r: add_row(r, 'labs.csv', patient_id='ZZZ9', timepoint='pre', afp='5', pivka_ii='7'),
                                   ['labs.csv', "'ZZZ9' is not in patients.csv"]),
    'images patient unknown':     (_unlisted_images, ['images', 'SYN0099', 'not in patients.csv']),
    'patient without images':     (lambda r: add_row(r, 'patients.csv', patient_id='SYN0099', pcr='1', age='50', sex='F', bclc='A'),
                                   ['patients.csv', 'SYN0099', 'has no images']),
    'truncated NIfTI':            (_truncated, [f'images/{PID}/pre/AP.nii.gz', 'truncated']),
    'non-NIfTI file in images.csv': (_not_nifti_named, ['images.csv', PID, f'images/{PID}/pre/AP.png', 'not a NIfTI']),
    'non-NIfTI bytes in .nii.gz': (_not_nifti_content, [f'images/{PID}/pre/AP.nii.gz', 'unreadable']),
    '4-D volume':                 (_four_d, [f'images/{PID}/pre/AP.nii.gz', '4-D']),
    '0-size volume':              (_zero_size, [f'images/{PID}/pre/AP.nii.gz', 'empty volume']),
    'no patients':                (lambda r: (r/'patients.csv').write_text('patient_id,pcr\n'), ['patients.csv', 'no patients']),
    'more values than columns':   (_extra_values, ['patients.csv', 'more values than the header']),
    'more values (later row)':    (lambda r: _extra_values(r, 2), ['patients.csv', 'cannot be parsed', 'line 3']),
    'mask shape':                 (_mask_shape, [f'images/{PID}/pre/lesion.nii.gz', PID, 'mask grid (40, 32, 6) differs from the image grid (32, 32, 6)']),
    'RGB mask':                   (_rgb_mask, [f'images/{PID}/pre/lesion.nii.gz', 'voxels of type']),
    'mask affine':                (_mask_affine, [f'images/{PID}/pre/lesion.nii.gz', PID, 'mask affine differs']),
    'empty mask':                 (_empty_mask, [f'images/{PID}/pre/lesion.nii.gz', PID, 'empty mask']),
    'non-numeric lab':            (lambda r: set_cell(r, 'labs.csv', PID, 'afp', 'abc', 'post'), ['labs.csv', PID, "afp 'abc' is not a number"]),
    'path with ..':               (lambda r: set_manifest(r, 'image', '../x.nii.gz'), ['images.csv', PID, "'../x.nii.gz' leaves the cohort folder"]),
    'absolute path':              (_absolute_path, ['images.csv', PID, 'outside.nii.gz', 'leaves the cohort folder']),
    'undeclared timepoint':       (_undeclared_tp, ['images', "timepoint 'mid'", PID, 'not declared in cohort.json']),
    'undeclared timepoint (labs)': (_undeclared_tp_labs, ['labs.csv', PID, "timepoint 'mid' is not declared in cohort.json"]),
    'undeclared sequence':        (_undeclared_seq, ['images', "sequence 'T1'", PID, 'not declared in cohort.json']),
    'invalid cohort.json':        (lambda r: (r/'cohort.json').write_text('{"name": "x", "timepoints": ["pre", "post"'), ['cohort.json', 'invalid JSON']),
    'listed file missing':        (lambda r: set_manifest(r, 'image', f'images/{PID}/pre/XX.nii.gz'), [f'images/{PID}/pre/XX.nii.gz', 'missing', 'images.csv']),
}


@pytest.mark.parametrize('name', list(DEFECTS))
def test_broken_cohort_is_reported(name, cohort):
    breaker, needles = DEFECTS[name]
    breaker(cohort)
    before = tree_digest(cohort)
    r = cli('validate', cohort)
    assert r.returncode == 1, f'{name}: exit {r.returncode}\n{r.stdout}\n{r.stderr}'
    assert 'Traceback' not in r.stderr and 'bug in liver_pcr' not in r.stderr, r.stderr
    lines = r.stderr.splitlines()
    assert any(all(n in line for n in needles) for line in lines), f'{name}: no line with {needles} in\n{r.stderr}'
    assert tree_digest(cohort) == before, f'{name}: validate changed the cohort folder'


def test_valid_cohort_prints_a_summary(cohort):
    before = tree_digest(cohort)
    r = cli('validate', cohort)
    assert r.returncode == 0, r.stderr
    pts = read(cohort, 'patients.csv')
    n, npos = len(pts), int((pts.pcr == '1').sum())
    assert f'patients: {n}; labelled: {n}; pCR: {npos}' in r.stdout
    assert 'coverage' in r.stdout and 'T2  DWI  AP  PVP' in r.stdout
    cov = r.stdout.split('coverage')[1].split('\n\n')[0].splitlines()
    rows = {l.split()[0]: l.split()[1:] for l in cov if l.split()[:1] in (['pre'], ['post'])}
    assert rows['pre'] == [str(n)]*4 and len(rows['post']) == 4   # every patient has every baseline sequence
    assert 'OK' in r.stdout and r.stderr.strip() == ''
    assert tree_digest(cohort) == before


def test_synth_then_validate(tmp_path):
    out = tmp_path/'syn'
    r = cli('synth', out, '--patients', 3, '--seed', 5, '--shape', 24, 24, 4, '--spacing', 10, 10, 12, '--jobs', 1,
            '--truth', tmp_path/'truth.csv')
    assert r.returncode == 0, r.stderr
    assert (tmp_path/'truth.csv').exists() and not (out/'truth.csv').exists()
    r = cli('validate', out)
    assert r.returncode == 0, r.stderr
    assert 'patients: 3' in r.stdout


def test_synth_refuses_an_existing_folder(cohort):
    before = tree_digest(cohort)
    r = cli('synth', cohort, '--patients', 2)
    assert r.returncode == 1 and 'already exists' in r.stderr and 'Traceback' not in r.stderr
    assert tree_digest(cohort) == before


def test_trailing_commas_are_read_as_meant(cohort):
    "A spreadsheet export that ends every row with a comma is a valid cohort, its columns in place."
    for name in ('patients.csv', 'labs.csv'):
        lines = (cohort/name).read_text().splitlines()
        (cohort/name).write_text('\n'.join([lines[0]] + [l + ',' for l in lines[1:]]) + '\n')
    r = cli('validate', cohort)
    assert r.returncode == 0, r.stderr
    c = Cohort.load(cohort)
    assert c.ids == read(cohort, 'patients.csv').patient_id.tolist() and c.markers == ['afp', 'pivka_ii']


def test_not_a_folder(tmp_path):
    r = cli('validate', tmp_path/'nowhere')
    assert r.returncode == 1 and 'nowhere' in r.stderr and 'Traceback' not in r.stderr


# ---------------------------------------------------------------- a cohort written by hand

LPS = np.diag([-0.8, -0.8, 5.0, 1.0])

def hand_cohort(root: Path) -> Path:
    """A cohort written with pandas and nibabel only: an images.csv manifest with paths of its own,
    uncompressed .nii, an LPS affine, numeric-looking ids, one 2-D single-slice exam, timepoints t0/t1/t10
    (no cohort.json), a missing exam and a missing lab value."""
    (root/'nifti').mkdir(parents=True)
    pd.DataFrame({'patient_id': ['007', '010', 'X.1'], 'pcr': ['1', '0', ''], 'age': [61, 55, 70]}).to_csv(root/'patients.csv', index=False)
    pd.DataFrame({'patient_id': ['007'] * 3 + ['010'] * 2, 'timepoint': ['t10', 't0', 't1', 't1', 't0'],
                  'afp': [3.5, 1200.0, 80.0, None, 20.0], 'pivka_ii': [40, 900, 150, 70, 60]}).to_csv(root/'labs.csv', index=False)
    rng, rows = np.random.default_rng(0), []
    for pid in ['007', '010', 'X.1']:
        for tp in ['t10', 't0', 't1']:
            if (pid, tp) == ('X.1', 't10'): continue
            shape = (24, 20) if (pid, tp) == ('010', 't1') else (24, 20, 5)
            m = np.zeros(shape, np.uint8); m[8:14, 6:12, ...] = 1
            for seq in ['T2', 'AP']:
                f = f'nifti/{pid}-{tp}-{seq}.nii'
                nib.save(nib.Nifti1Image(rng.random(shape).astype(np.float32), LPS), str(root/f))
                rows.append((pid, tp, seq, f, f'nifti/{pid}-{tp}-mask.nii'))
            nib.save(nib.Nifti1Image(m, LPS), str(root/f'nifti/{pid}-{tp}-mask.nii'))
    pd.DataFrame(rows, columns=['patient_id', 'timepoint', 'sequence', 'image', 'mask']).to_csv(root/'images.csv', index=False)
    return root


def test_hand_written_cohort_loads_and_validates(tmp_path):
    root = hand_cohort(tmp_path/'hand')
    before = tree_digest(root)
    c = Cohort.load(root)
    assert c.validate(show_progress=False) == []
    assert c.ids == ['007', '010', 'X.1']                   # ids stay strings: '007' is not 7
    assert c.timepoints == ['t0', 't1', 't10']               # natural order, not file order nor 't1' < 't10' < 't0'
    assert list(c['007'].exams) == ['t0', 't1', 't10']
    assert c.sequences == ['AP', 'T2'] and c.markers == ['afp', 'pivka_ii']
    assert c['007'].label == 1 and c['010'].label == 0 and not c['X.1'].labelled
    assert c['007'].lab('t10', 'afp') == 3.5 and np.isnan(c['010'].lab('t1', 'afp'))
    assert not c['X.1'].has('t10', 'T2') and c.coverage().loc['t10', 'T2'] == 2
    v = c['007'].volume('t0', 'T2')
    raw = np.asanyarray(nib.load(str(root/'nifti/007-t0-T2.nii')).dataobj)
    assert v.orientation == 'RAS' and np.array_equal(v.data, raw[::-1, ::-1, :])   # LPS read as RAS, same voxels in space
    assert c['010'].volume('t1', 'AP').shape == (24, 20, 1)                       # a 2-D image is one slice
    assert c['010'].mask('t1', 'AP').data.sum() == 36
    r = cli('validate', root)
    assert r.returncode == 0, r.stderr
    assert 'patients: 3; labelled: 2; pCR: 1' in r.stdout
    assert tree_digest(root) == before


def test_hand_written_cohort_defect_is_found(tmp_path):
    "The same reader finds a defect in a hand-made cohort: a mask written on another grid."
    root = hand_cohort(tmp_path/'hand')
    nib.save(nib.Nifti1Image(np.ones((24, 20, 4), np.uint8), LPS), str(root/'nifti/007-t1-mask.nii'))
    r = cli('validate', root)
    assert r.returncode == 1
    assert any('nifti/007-t1-mask.nii' in l and 'mask grid' in l and '007' in l for l in r.stderr.splitlines()), r.stderr


# ---------------------------------------------------------------- the packaged sample

def test_packaged_sample_loads_from_the_installed_package(tmp_path):
    "`Cohort.load()` without a path nor LIVER_PCR_DATA reads the sample shipped with the package, from any folder."
    env = {k: v for k, v in os.environ.items() if k != 'LIVER_PCR_DATA'}
    code = ("import json; from liver_pcr.core import sample_cohort_path; from liver_pcr.cohort.reader import Cohort\n"
            "c = Cohort.load(); assert c.root == sample_cohort_path()\n"
            "print(json.dumps(dict(root=str(c.root), n=len(c), tps=c.timepoints, seqs=c.sequences, markers=c.markers,\n"
            "  problems=[str(p) for p in c.validate(show_progress=False)])))")
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, cwd=tmp_path, env=env,
                       stdin=subprocess.DEVNULL, timeout=300)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out['n'] == 24 and out['tps'] == ['pre', 'post'] and out['seqs'] == ['T2', 'DWI', 'AP', 'PVP']
    assert out['markers'] == ['afp', 'pivka_ii'] and out['problems'] == []
    assert (Path(out['root'])/'patients.csv').exists()
