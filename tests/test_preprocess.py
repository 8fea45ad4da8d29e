"""The preprocessing cache heals itself: a damaged entry is reported in one line, removed and
rebuilt; a whole one is reused as it is; nothing outside the cache root is ever removed."""
import json
import numpy as np, pytest

import liver_pcr.data.preprocess as pp
from liver_pcr.cohort.reader import Cohort
from liver_pcr.core import LiverPcrError, sample_cohort_path
from liver_pcr.data.preprocess import CACHE_FORMAT, PreprocessConfig, preprocess_cohort

CFG = PreprocessConfig(roi_px=16, roi_mm=64)
ARRAYS = ('images', 'masks', 'present')


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    "Nothing here may touch the user's real cache."
    monkeypatch.setenv('LIVER_PCR_CACHE', str(tmp_path/'user-cache'))


@pytest.fixture(scope='module')
def cohort(): return Cohort.load(sample_cohort_path())


@pytest.fixture(scope='module')
def fresh(cohort, tmp_path_factory):
    "The arrays of a fresh computation, in a cache of their own."
    root = tmp_path_factory.mktemp('fresh')
    pre = preprocess_cohort(cohort, CFG, cache=root, show_progress=False)
    return {k: np.array(getattr(pre, k)) for k in ARRAYS}


@pytest.fixture
def entry(cohort, tmp_path):
    "A whole entry in a tmp cache root (no memory map of it is kept open)."
    return preprocess_cohort(cohort, CFG, cache=tmp_path/'cache', show_progress=False).path


def again(cohort, entry, capsys):
    "Preprocess once more into the same cache root: the result, and what went to stderr."
    capsys.readouterr()
    pre = preprocess_cohort(cohort, CFG, cache=entry.parent, show_progress=False)
    return pre, capsys.readouterr().err


def check_healed(pre, err, entry, fresh, problem):
    "One warning line naming the entry and its problem, a fresh computation's data, nothing else."
    assert err.count('\n') == 1 and err.endswith('; rebuilding it\n'), err
    assert err.startswith(f'warning: preprocessing cache entry {entry} is damaged ({problem}'), err
    assert pre.path == entry
    for k in ARRAYS:
        np.testing.assert_array_equal(np.asarray(getattr(pre, k)), fresh[k])
    assert [p.name for p in entry.parent.iterdir()] == [entry.name]    # no .damaged-, .building-
    assert json.loads((entry/'meta.json').read_text())['format'] == CACHE_FORMAT


def test_meta_records_each_array(entry):
    meta = json.loads((entry/'meta.json').read_text())
    assert meta['format'] == CACHE_FORMAT
    for k in ARRAYS:
        a = np.load(entry/f'{k}.npy', mmap_mode='r')
        rec = meta['arrays'][k]
        size = (entry/f'{k}.npy').stat().st_size
        assert rec == dict(shape=list(a.shape), dtype=a.dtype.str, bytes=size)


@pytest.mark.parametrize('name', ['images', 'present'])
def test_truncated_array_is_rebuilt(cohort, entry, fresh, capsys, name):
    f = entry/f'{name}.npy'
    size = f.stat().st_size
    with open(f, 'r+b') as fh:
        fh.truncate(size//2)
    pre, err = again(cohort, entry, capsys)
    check_healed(pre, err, entry, fresh, f'{name}.npy: {size//2} bytes, expected {size}')


def test_missing_array_is_rebuilt(cohort, entry, fresh, capsys):
    (entry/'masks.npy').unlink()
    pre, err = again(cohort, entry, capsys)
    check_healed(pre, err, entry, fresh, 'masks.npy is missing')


@pytest.mark.parametrize('text, problem', [
    ('\x00garbage{', 'meta.json is unreadable: JSONDecodeError'),
    ('', 'meta.json is unreadable: JSONDecodeError'),
    ('[1, 2]', 'meta.json holds a list'),
])
def test_corrupt_meta_is_rebuilt(cohort, entry, fresh, capsys, text, problem):
    (entry/'meta.json').write_text(text)
    pre, err = again(cohort, entry, capsys)
    check_healed(pre, err, entry, fresh, problem)


def test_missing_meta_is_rebuilt(cohort, entry, fresh, capsys):
    (entry/'meta.json').unlink()
    pre, err = again(cohort, entry, capsys)
    check_healed(pre, err, entry, fresh, 'meta.json is missing')


def test_entry_of_the_old_code_is_rebuilt(cohort, entry, fresh, capsys):
    "An entry written before meta.json recorded the arrays and a format version."
    meta = json.loads((entry/'meta.json').read_text())
    old = {k: v for k, v in meta.items() if k not in ('format', 'arrays')}
    (entry/'meta.json').write_text(json.dumps(old))
    pre, err = again(cohort, entry, capsys)
    check_healed(pre, err, entry, fresh, 'meta.json has no format version')


def test_wrong_recorded_shape_is_rebuilt(cohort, entry, fresh, capsys):
    "Right size on disk, but not the array meta.json describes."
    meta = json.loads((entry/'meta.json').read_text())
    meta['arrays']['images']['shape'][0] -= 1
    (entry/'meta.json').write_text(json.dumps(meta))
    pre, err = again(cohort, entry, capsys)
    check_healed(pre, err, entry, fresh, 'images.npy: float32')


def test_whole_entry_is_reused_not_rebuilt(cohort, entry, fresh, capsys, monkeypatch):
    before = {p.name: p.stat().st_mtime_ns for p in entry.iterdir()}
    def boom(*a, **k):
        raise AssertionError('rebuilt')
    monkeypatch.setattr(pp, '_build_entry', boom)
    pre, err = again(cohort, entry, capsys)
    assert err == '' and pre.path == entry and isinstance(pre.images, np.memmap)
    assert {p.name: p.stat().st_mtime_ns for p in entry.iterdir()} == before
    for k in ARRAYS:
        np.testing.assert_array_equal(np.asarray(getattr(pre, k)), fresh[k])


def test_another_process_finishing_first_wins(cohort, entry, fresh, capsys, monkeypatch):
    "Our build finds the entry already there when it renames: that one stays, no temporary left."
    good = entry.parent/'good'
    entry.rename(good)
    write = pp._write_entry
    def other_first(d, arrays, **meta):
        good.rename(d)                       # the other process renames its entry in just before us
        return write(d, {k: a + 1 for k, a in arrays.items()}, **meta)
    monkeypatch.setattr(pp, '_write_entry', other_first)
    pre, err = again(cohort, entry, capsys)
    assert err == '' and pre.path == entry
    np.testing.assert_array_equal(np.asarray(pre.images), fresh['images'])  # theirs, not our +1
    assert [p.name for p in entry.parent.iterdir()] == [entry.name]


def test_damaged_link_entry_loses_the_link_not_its_target(cohort, entry, fresh, capsys, tmp_path):
    "An entry that is a link to a folder elsewhere: only the link goes."
    outside = tmp_path/'outside'
    entry.rename(outside)
    (outside/'meta.json').write_text('garbage')
    entry.symlink_to(outside, target_is_directory=True)
    pre, err = again(cohort, entry, capsys)
    check_healed(pre, err, entry, fresh, 'meta.json is unreadable')
    assert not entry.is_symlink()
    want = ['images.npy', 'masks.npy', 'meta.json', 'present.npy']
    assert sorted(p.name for p in outside.iterdir()) == want


def test_discard_refuses_anything_but_an_entry_of_the_root(tmp_path):
    root = tmp_path/'cache'
    (root/'entry').mkdir(parents=True)
    (tmp_path/'precious').mkdir()
    (tmp_path/'precious'/'f').write_text('keep')
    not_entries = [tmp_path/'precious', root/'..'/'precious', root, root/'entry'/'sub', root/'.tmp']
    for d in not_entries:
        with pytest.raises(LiverPcrError, match='refusing to remove'):
            pp._discard_entry(d, root)
    assert (tmp_path/'precious'/'f').read_text() == 'keep' and (root/'entry').is_dir()
    pp._discard_entry(root/'entry', root)
    assert list(root.iterdir()) == []
