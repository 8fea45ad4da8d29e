"""Property-based fuzzing of the cohort reader and `liver-pcr validate` (hypothesis).

Each example starts from a small valid cohort (4 patients of the packaged sample, with an `images.csv`
manifest and a `fold` column) and damages `patients.csv`, `labs.csv`, `images.csv` and `cohort.json`:
wrong types, other encodings, duplicated / missing / renamed columns, NaN and empty cells, huge values,
a BOM, CRLF or CR line ends, truncation, binary garbage, empty or deleted files, duplicated rows.

The property, for every damaged cohort:

- `Cohort.read` never raises, and its cohort can be summarised and its labs looked up;
- `Cohort.load` succeeds or raises a `LiverPcrError` whose every problem is ONE line, and some
  problem names a damaged file;
- every `Problem` that `validate` returns prints as one line, short but for the file it names;
- `liver-pcr validate --shallow` (the CLI's `main`, in-process) exits 0 or 1, prints only `error: ...`
  lines on stderr, no traceback and no "bug in liver_pcr", and leaves every byte of the cohort as it was;
- when the reader accepts `patients.csv`, it has as many patients as Python's `csv` module finds rows.

The images themselves are never damaged: each example links `images/` to the base cohort's copy and
validates shallowly, so an example costs a few tens of milliseconds.
"""
import contextlib, copy, csv, io, json, math, os, shutil, tempfile
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from liver_pcr import cli
from liver_pcr.cohort.reader import MANIFEST_COLS, Cohort, _one_line
from liver_pcr.core import LiverPcrError, read_table, sample_cohort_path

N_PATIENTS = 4  # patients kept from the packaged sample
TABLES = ('patients.csv', 'labs.csv', 'images.csv')
FILES = TABLES + ('cohort.json',)


# ---------------------------------------------------------------- the valid base cohort

@pytest.fixture(scope='module')
def base(tmp_path_factory) -> Path:
    "The first patients of the sample, a `fold` column and an images.csv manifest: a valid cohort (never modified)."
    src = sample_cohort_path()
    out = tmp_path_factory.mktemp('fuzzbase')/'cohort'
    out.mkdir()
    pts = pd.read_csv(src/'patients.csv', dtype=str, keep_default_na=False).head(N_PATIENTS)
    pts['fold'] = [str(i % 2) for i in range(len(pts))]
    pts.to_csv(out/'patients.csv', index=False)
    ids = set(pts.patient_id)
    labs = pd.read_csv(src/'labs.csv', dtype=str, keep_default_na=False)
    labs[labs.patient_id.isin(ids)].to_csv(out/'labs.csv', index=False)
    shutil.copy(src/'cohort.json', out/'cohort.json')
    rows = []
    for pid in sorted(ids):
        shutil.copytree(src/'images'/pid, out/'images'/pid)
        for f in sorted((out/'images'/pid).glob('*/*.nii.gz')):
            if f.name != 'lesion.nii.gz':
                rows.append(dict(patient_id=pid, timepoint=f.parent.name, sequence=f.name[:-7],
                                 image=str(f.relative_to(out)),
                                 mask=str((f.parent/'lesion.nii.gz').relative_to(out))))
    pd.DataFrame(rows).to_csv(out/'images.csv', index=False)
    c = Cohort.load(out)
    assert len(c) == N_PATIENTS and c.validate(deep=True, show_progress=False) == []
    return out


def _rows(path: Path) -> list[list[str]]:
    return list(csv.reader(io.StringIO(path.read_text())))


# ---------------------------------------------------------------- the damage

VALUES = st.one_of(
    st.sampled_from([
        '', ' ', 'NaN', 'nan', 'NA', 'null', 'None', 'inf', '-inf', '1e308', '-1e308', '1e309', '9' * 400,
        '0.5', '1.5', '-3', '2', '1.0', '0x10', 'True', 'yes', '[1]', '{}', '1,2', 'a b', 'a"b', 'a\nb', 'é',
        '患者', '\u202e', '\ufeff', '\x0c', '\x00', '../x.nii.gz', '/etc/passwd', 'C:\\x.nii.gz',
        'images/../images/x.nii.gz', 'images', 'x' * 300 + '.nii.gz', 'pre', 'post', 'T2', 'SYN0001',
        'patient_id', 'pcr', 'fold', 'timepoint', 'x' * 20000,
    ]),
    st.text(max_size=12),
    st.floats().map(repr),
    st.integers(min_value=-2**70, max_value=2**70).map(str),
)

JSON_VALUES = st.one_of(
    st.sampled_from([
        None, True, 0, -1, 1e308, float('nan'), float('inf'), '', ' ', 'x' * 20000, 'age', 'sex', 'fold',
        'patient_id', 'pcr', 'nosuchcolumn', 'é', [], ['pre'], ['post', 'pre'], ['pre', 'pre'],
        ['pre', 'post', 'mid'], ['T2'], ['T2', 'T2'], ['a b'], ['../x'], [1, 2], [None], [['pre']], {},
        {'pre': 1},
    ]),
    st.recursive(st.none() | st.booleans() | st.floats() | st.text(max_size=8),
                 lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=5), kids, max_size=3),
                 max_leaves=6),
)

_pos = st.floats(0, 1, exclude_max=True)  # a position in a list or a file, as a fraction of its length

CSV_OPS = st.one_of(
    st.tuples(st.just('cell'), _pos, _pos, VALUES),  # a wrong type, a NaN, a huge value, ...
    st.tuples(st.just('dup_col'), _pos, _pos),
    st.tuples(st.just('drop_col'), _pos),
    st.tuples(st.just('rename_col'), _pos, VALUES),
    st.tuples(st.just('dup_row'), _pos, _pos),
    st.tuples(st.just('drop_row'), _pos),  # the header too
    st.tuples(st.just('short_row'), _pos),
    st.tuples(st.just('long_row'), _pos, VALUES),
    st.tuples(st.just('blank_row'), _pos),
)

_NAMES = st.sampled_from(['pre', 'post', 'mid', 'T2', 'DWI', 'AP', 'PVP', 'T1', 'a b', '', 'x' * 300])
META_VALUES = {  # values that are plausible for one key of cohort.json (and so reach the checks behind the type checks)
    'label': st.sampled_from(['pcr', 'age', 'sex', 'bclc', 'fold', 'patient_id', 'nosuchcolumn', 'PCR', ' pcr']),
    'timepoints': st.lists(_NAMES, max_size=4),
    'sequences': st.lists(_NAMES, max_size=5),
    'name': st.text(max_size=20),
    'other': JSON_VALUES,
}

JSON_OPS = st.one_of(
    st.sampled_from(list(META_VALUES)).flatmap(lambda k: st.tuples(st.just('set'), st.just(k), META_VALUES[k])),
    st.tuples(st.just('set'), st.sampled_from(['name', 'timepoints', 'sequences', 'label', 'other']), JSON_VALUES),
    st.tuples(st.just('del'), st.sampled_from(['name', 'timepoints', 'sequences', 'label'])),
    st.tuples(st.just('whole'), JSON_VALUES),  # not an object (a list, a number, ...)
)

BYTE_OPS = st.one_of(
    st.tuples(st.just('encode'), st.sampled_from(['latin-1', 'cp1252', 'utf-16', 'utf-16-le', 'utf-16-be',
                                                  'utf-32', 'utf-8']), _pos, st.sampled_from(['', 'é', 'ü€', '患者'])),
    st.tuples(st.just('bom'), st.integers(1, 2)),
    st.tuples(st.just('line_ends'), st.sampled_from([b'\r\n', b'\r', b'\n\n', b'\r\r\n'])),
    st.tuples(st.just('truncate'), _pos),
    st.tuples(st.just('garbage'), _pos, st.binary(min_size=1, max_size=64), st.booleans()),
    st.tuples(st.just('binary'), st.sampled_from([b'\x1f\x8b\x08\x00' + bytes(60), b'\x89PNG\r\n\x1a\n' + bytes(32),
                                                  bytes(range(256)), b'\xff' * 10])),
    st.tuples(st.just('empty'), st.sampled_from([b'', b'\n', b'   \n\n', b'\r\n', b'\xef\xbb\xbf', b','])),
    st.tuples(st.just('delete')),
)


@st.composite
def damages(draw) -> list:
    "1 to 3 damaged files: (file, structural changes, byte-level changes)."
    files = draw(st.lists(st.sampled_from(FILES), min_size=1, max_size=3, unique=True))
    out = []
    for f in files:
        struct = draw(st.lists(JSON_OPS if f == 'cohort.json' else CSV_OPS, max_size=3))
        raw = draw(st.lists(BYTE_OPS, max_size=2))
        if not struct and not raw:
            struct = [draw(JSON_OPS if f == 'cohort.json' else CSV_OPS)]
        out.append((f, struct, raw))
    return out


def _at(n: int, u: float) -> int:
    return min(int(u * n), n - 1) if n else 0


def _csv_op(rows: list, op: tuple) -> list:
    "One structural change of a table (a list of rows, the header first)."
    kind, *a = op
    if not rows:
        return rows
    r = _at(len(rows), a[0])
    width = max(len(x) for x in rows)
    if kind == 'cell' and rows[r]:
        rows[r][_at(len(rows[r]), a[1])] = a[2]
    elif kind == 'dup_col' and width:
        c, to = _at(width, a[0]), _at(width + 1, a[1])
        for x in rows:
            if c < len(x):
                x.insert(min(to, len(x)), x[c])
    elif kind == 'drop_col' and width:
        c = _at(width, a[0])
        for x in rows:
            if c < len(x):
                del x[c]
    elif kind == 'rename_col' and rows[0]:
        rows[0][_at(len(rows[0]), a[0])] = a[1]
    elif kind == 'dup_row':
        rows.insert(_at(len(rows) + 1, a[1]), list(rows[r]))
    elif kind == 'drop_row':
        del rows[r]
    elif kind == 'short_row' and rows[r]:
        rows[r].pop()
    elif kind == 'long_row':
        rows[r].append(a[1])
    elif kind == 'blank_row':
        rows.insert(r, [])
    return rows


def _json_op(meta, op: tuple):
    "One structural change of cohort.json's object."
    kind, *a = copy.deepcopy(op)  # the sampled values are shared between examples
    if kind == 'whole':
        return a[0]
    if not isinstance(meta, dict):
        return meta
    if kind == 'set':
        meta[a[0]] = a[1]
    else:
        meta.pop(a[0], None)
    return meta


def _byte_op(raw: bytes | None, op: tuple) -> bytes | None:
    "One byte-level change of a file (None: the file is deleted)."
    kind, *a = op
    if kind == 'delete':
        return None
    raw = raw or b''
    if kind == 'encode':
        text = raw.decode('utf-8', 'replace')
        i = _at(len(text) + 1, a[1])
        return (text[:i] + a[2] + text[i:]).encode(a[0], 'replace')
    if kind == 'bom':
        return b'\xef\xbb\xbf' * a[0] + raw
    if kind == 'line_ends':
        return raw.replace(b'\n', a[0])
    if kind == 'truncate':
        return raw[:_at(len(raw) + 1, a[0])]
    if kind == 'garbage':
        i = _at(len(raw) + 1, a[0])
        return raw[:i] + a[1] + raw[i + (len(a[1]) if a[2] else 0):]
    return a[0]  # 'binary', 'empty'


def _damage(base: Path, root: Path, plan: list):
    "Make `root` a copy of `base` (images linked, not copied) with the damage of `plan`."
    for f in FILES:
        shutil.copy(base/f, root/f)
    os.symlink(base/'images', root/'images', target_is_directory=True)
    for f, struct, raw_ops in plan:
        if f == 'cohort.json':
            meta = json.loads((base/f).read_text())
            for op in struct:
                meta = _json_op(meta, op)
            raw = json.dumps(meta).encode()
        else:
            rows = _rows(base/f)
            for op in struct:
                rows = _csv_op(rows, op)
            buf = io.StringIO()
            csv.writer(buf, lineterminator='\n').writerows(rows)
            raw = buf.getvalue().encode()
        for op in raw_ops:
            raw = _byte_op(raw, op)
        if raw is None:
            (root/f).unlink()
        else:
            (root/f).write_bytes(raw)


def _snapshot(root: Path) -> dict:
    return {f: (root/f).read_bytes() for f in FILES if (root/f).exists()}


def _csv_module_patients(root: Path) -> int:
    "How many patient rows Python's csv module finds in patients.csv (blank lines skipped)."
    text = (root/'patients.csv').read_bytes().decode('utf-8-sig')
    rows = [r for r in csv.reader(io.StringIO(text, newline='')) if any(c.strip() for c in r)]
    return len(rows) - 1


def _unusable(path: Path, need: list) -> bool:
    "Is the table missing, unreadable, or without one of the columns `need`?"
    try:
        return not all(c in read_table(path, warn=lambda why: None).columns for c in need)
    except LiverPcrError:
        return True


# ---------------------------------------------------------------- the property

@settings(max_examples=500, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(plan=damages())
def test_damaged_cohort_is_reported_not_crashed(base, tmp_path_factory, plan):
    damaged = {f for f, *_ in plan}
    with tempfile.TemporaryDirectory(dir=tmp_path_factory.getbasetemp(), prefix='ex') as d:
        root = Path(d)/'cohort'
        root.mkdir()
        _damage(base, root, plan)
        before = _snapshot(root)

        c = Cohort.read(root)  # collects problems, never raises for a folder that exists
        if c.problems:  # what is read can be shown, problems or not (the CLI shows the valid ones)
            c.summary()
            [p.lab(tp, m) for p in c for tp in c.timepoints for m in c.markers]
        probs = c.validate(deep=False, show_progress=False)
        for p in probs:
            assert '\n' not in str(p) and '\r' not in str(p), repr(str(p))
            rest = len(str(p)) - len(_one_line(p.file))  # the file is named in full; the rest is kept short
            assert rest <= 700, f'a line of {len(str(p))} characters: {str(p)[:200]}...'
        unusable = {f for f, need in (('patients.csv', ['patient_id']), ('images.csv', MANIFEST_COLS[:4]))
                    if _unusable(root/f, need) and (f == 'patients.csv' or (root/f).exists())}  # else: a scan
        if 'patients.csv' in unusable:  # then nobody is "not in patients.csv": the ids are unknown, not absent
            assert not any('is not in patients.csv' in str(p) for p in probs), [str(p) for p in probs]
        if 'images.csv' in unusable:  # then nobody "has no images": the manifest is unknown, not empty
            assert not any(p.what == 'has no images' for p in probs), [str(p) for p in probs]
        try:
            c = Cohort.load(root)
        except LiverPcrError as e:
            assert str(e) == '\n'.join(e.problems)
            assert all('\n' not in p and '\r' not in p for p in e.problems), e.problems
            lines = [p.replace(str(root), '<root>') for p in e.problems[1:]]
            assert lines and any(f in p for p in lines for f in damaged), (damaged, lines)
        else:
            assert len(c) == _csv_module_patients(root)

        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = cli.main(['validate', str(root), '--shallow'])
        err = err.getvalue()
        assert rc in (0, 1), (rc, err)
        assert 'Traceback' not in err and 'bug in liver_pcr' not in err, err
        assert all(line.startswith('error: ') for line in err.splitlines()), err
        assert (rc == 0) == ('OK:' in out.getvalue())
        assert _snapshot(root) == before, 'validate changed the cohort folder'


@settings(max_examples=300, deadline=None, database=None)
@given(v=st.one_of(st.from_regex(r'\A[+-]?(\d{0,3}[._]?\d{0,3})([eE][+-]?\d{1,3})?\Z'),
                   st.text(alphabet='0123456789.eE+-_ x\u0661\uff11', max_size=8)))
def test_numbers_parse_like_pandas(v):
    "A lab value or label is a number exactly when pandas reads it as a finite number, and then the same one."
    from liver_pcr.cohort.reader import _MISSING, _number
    v = v.strip()
    if v.lower() in _MISSING:
        return
    try:
        ref = float(pd.to_numeric(pd.Series([v]), errors='raise').iloc[0])
    except (ValueError, TypeError):
        ref = None
    if ref is not None and not math.isfinite(ref):
        ref = None
    got = _number(v)
    assert (got is None) == (ref is None), (v, got, ref)
    if ref is not None:
        assert math.isclose(got, ref, rel_tol=1e-15, abs_tol=0.0), (v, got, ref)
