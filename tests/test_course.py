"The course: the committed tutorials' outputs, `liver-pcr course DIR`, the tutorials in the wheel."
import json, os, shutil, subprocess, sys, tarfile, zipfile
from pathlib import Path
import pytest
from liver_pcr.course import check_outputs, course_files

ROOT = Path(__file__).resolve().parents[1]
TUTORIALS = sorted((ROOT/'nbs'/'tutorials').glob('*.ipynb'))

def test_there_are_ten_tutorials():
    assert [p.name[:3] for p in TUTORIALS] == [f'{i:02d}_' for i in range(1, 11)], TUTORIALS

@pytest.mark.parametrize('nb', TUTORIALS, ids=lambda p: p.stem)
def test_committed_tutorial_has_pictures_and_no_errors(nb):
    probs = check_outputs(nb)
    assert not probs, '\n'.join(probs)

# --- the check itself, on planted notebooks

FIG = '<Figure size 640x480 with 1 Axes>'

def _code(o):  # a code cell with the output o (None: no output)
    return {'cell_type': 'code', 'metadata': {}, 'source': ['x'], 'execution_count': None,
            'outputs': [] if o is None else [o]}

def _plant(path, *outputs):  # a notebook: a markdown cell, then one code cell per output
    cells = [{'cell_type': 'markdown', 'metadata': {}, 'source': ['# planted']}]
    nb = {'cells': cells + [_code(o) for o in outputs], 'metadata': {},
          'nbformat': 4, 'nbformat_minor': 5}
    path.write_text(json.dumps(nb))
    return path

def _figure(png=False):  # a matplotlib figure's display output, with or without its picture
    data = {'text/plain': [FIG], **({'image/png': 'iVBORw0KGgo='} if png else {})}
    return {'output_type': 'display_data', 'data': data, 'metadata': {}}

def test_check_reports_each_planted_problem(tmp_path):
    err = {'output_type': 'error', 'ename': 'ZeroDivisionError', 'evalue': 'division by zero',
           'traceback': []}
    tb = {'output_type': 'stream', 'name': 'stderr',
          'text': 'Traceback (most recent call last):\nKeyError: 7\n'}
    res = {'output_type': 'execute_result', 'data': {'text/plain': FIG}, 'metadata': {},
           'execution_count': 1}
    nb = _plant(tmp_path/'bad.ipynb', _figure(), None, err, tb, res)
    probs = check_outputs(nb)
    assert len(probs) == 5, probs
    expected = [(1, FIG), (3, 'ZeroDivisionError: division by zero'), (4, 'KeyError: 7'), (5, FIG)]
    for (i, what), p in zip(expected, probs):
        assert p.startswith(f'{nb}: cell {i}: ') and what in p, (i, probs)
    assert probs[-1] == f'{nb}: no image/png output at all (run it in a kernel that shows figures)'

def test_check_accepts_a_figure_with_its_picture_and_harmless_stderr(tmp_path):
    warn = {'output_type': 'stream', 'name': 'stderr', 'text': 'UserWarning: something\n'}
    nb = _plant(tmp_path/'good.ipynb', _figure(png=True), warn)
    assert check_outputs(nb) == []

def test_check_catches_a_broken_copy_of_a_real_tutorial(tmp_path):
    "Tutorial 01 as if run where figures do not render: every figure loses its picture."
    nb = json.loads(TUTORIALS[0].read_text())
    figs = [(i, o) for i, c in enumerate(nb['cells']) for o in c.get('outputs', [])
            if 'image/png' in o.get('data', {})]
    assert figs, 'tutorial 01 shows no figure'
    for _, o in figs:
        del o['data']['image/png']
        o['data']['text/plain'] = FIG
    bad = tmp_path/TUTORIALS[0].name
    bad.write_text(json.dumps(nb))
    probs = check_outputs(bad)
    assert [p.split(': ')[1] for p in probs[:-1]] == [f'cell {i}' for i, _ in figs], probs
    assert 'no image/png output at all' in probs[-1]

# --- `liver-pcr course DIR`, end to end

def _run(*args, env=None, cwd=None):
    return subprocess.run(list(args), capture_output=True, text=True, stdin=subprocess.DEVNULL,
                          timeout=300, env=env, cwd=cwd)

def _cli(*args):
    exe = shutil.which('liver-pcr', path=str(Path(sys.executable).parent))
    assert exe, 'the liver-pcr console script is not installed next to this python'
    return _run(exe, *args)

def test_course_command_writes_the_tutorials_and_refuses_an_existing_folder(tmp_path):
    d = tmp_path/'my course'
    r = _cli('course', str(d))
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in d.glob('*.ipynb')) == [p.name for p in TUTORIALS]
    for p in d.glob('*.ipynb'):
        assert json.loads(p.read_text())['cells'], p.name
    assert 'jupyter lab ' in r.stdout and str(d) in r.stdout, r.stdout
    (d/'01_tour_of_the_data.ipynb').write_text('my edits')
    r = _cli('course', str(d))
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert r.stderr.startswith('error: ') and 'already exists' in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and 'Traceback' not in r.stderr, r.stderr
    assert (d/'01_tour_of_the_data.ipynb').read_text() == 'my edits'
    assert sorted(p.name for p in tmp_path.iterdir()) == ['my course']  # no partial copy left

def test_course_command_help():
    r = _cli('course', '--help')
    assert r.returncode == 0 and r.stdout.startswith('usage: liver-pcr course'), r.stdout + r.stderr

# --- the course inside the built distributions

@pytest.fixture(scope='module')
def dists(tmp_path_factory):
    "The sdist of this checkout, and the wheel built from it (as `pip install` of the sdist would)."
    out = tmp_path_factory.mktemp('dist')
    r = _run(sys.executable, '-m', 'build', '--no-isolation', '--outdir', str(out), str(ROOT))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    (whl,), (sdist,) = out.glob('*.whl'), out.glob('*.tar.gz')
    return whl, sdist

def test_wheel_and_sdist_carry_the_tutorials(dists):
    whl, sdist = dists
    files = [f.as_posix() for f in course_files(ROOT/'nbs'/'tutorials')]
    assert len([f for f in files if f.endswith('.ipynb')]) == 10
    names = set(zipfile.ZipFile(whl).namelist())
    shipped = sorted(n for n in names if 'tutorials' in n)
    assert {f'liver_pcr/tutorials/{f}' for f in files} <= names, shipped
    with tarfile.open(sdist) as t:
        top = t.getnames()[0].split('/')[0]
        assert {f'{top}/nbs/tutorials/{f}' for f in files} <= set(t.getnames())

def test_course_command_from_the_unpacked_wheel(dists, tmp_path):
    "The installed package (not the checkout) is where `liver-pcr course` finds its notebooks."
    site = tmp_path/'site'
    zipfile.ZipFile(dists[0]).extractall(site)
    code = ("import sys, liver_pcr.course as c; from liver_pcr.cli import main; "
            "print(c.course_source()); sys.exit(main(['course', sys.argv[1]]))")
    env = {**os.environ, 'PYTHONPATH': str(site)}
    r = _run(sys.executable, '-c', code, str(tmp_path/'c'), env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert Path(r.stdout.splitlines()[0]).resolve() == (site/'liver_pcr'/'tutorials').resolve()
    assert sorted(p.name for p in (tmp_path/'c').glob('*.ipynb')) == [p.name for p in TUTORIALS]


def test_tutorials_use_the_public_api_only():
    "A tutorial teaches what a user can call: no private `liver_pcr` names."
    import re
    for nb in TUTORIALS:
        code = '\n'.join(''.join(c['source']) for c in json.loads(nb.read_text())['cells'] if c['cell_type'] == 'code')
        code = re.sub(r'\(\s*([^)]*?)\)', lambda m: m.group(1).replace('\n', ' '), code)
        for m in re.finditer(r'^\s*from liver_pcr(?:\.\w+)* import ([^\n#]+)', code, re.M):
            private = [n.strip() for n in m.group(1).split(',') if n.strip().startswith('_')]
            assert not private, f'{nb.name}: imports private {private}'
        assert not re.search(r'liver_pcr(?:\.\w+)*\._\w', code), f'{nb.name}: uses a private liver_pcr name'


# --- exercises: one section per tutorial, tagged cells committed without their outputs

def _cells(nb):
    return json.loads(Path(nb).read_text())['cells']

@pytest.mark.parametrize('nb', TUTORIALS, ids=lambda p: p.stem)
def test_one_exercises_section_and_silent_exercise_cells(nb):
    cells = _cells(nb)
    heads = [c for c in cells if c['cell_type'] == 'markdown'
             and any(l.strip() == '## Exercises' for l in ''.join(c['source']).splitlines())]
    assert len(heads) == 1, f'{nb.name}: {len(heads)} "## Exercises" sections'
    ex = [c for c in cells if 'exercise' in c.get('metadata', {}).get('tags', [])]
    assert ex and all(c['cell_type'] == 'code' for c in ex), nb.name
    assert all(not c['outputs'] for c in ex), f'{nb.name}: an exercise cell has outputs (a spoiler)'
    start = cells.index(heads[0])
    assert all(cells.index(c) > start for c in ex), f'{nb.name}: an exercise before its section'

def test_at_most_five_code_cells_print_markdown():
    "Prose lives in Markdown cells; code that prints Markdown is kept for tables."
    n = sum(any('text/markdown' in o.get('data', {}) for o in c.get('outputs', []))
            for nb in TUTORIALS for c in _cells(nb) if c['cell_type'] == 'code')
    assert n <= 5, n

def test_check_flags_an_exercise_committed_with_its_output(tmp_path):
    res = {'output_type': 'execute_result', 'data': {'text/plain': '0.8'}, 'metadata': {},
           'execution_count': 1}
    nb = _plant(tmp_path/'ex.ipynb', _figure(png=True), res)
    d = json.loads(nb.read_text())
    d['cells'][2]['metadata']['tags'] = ['exercise']
    nb.write_text(json.dumps(d))
    probs = check_outputs(nb)
    assert probs == [f'{nb}: cell 2: an exercise committed with its output (commit it without: the student runs it)']
    d['cells'][2]['outputs'] = []
    nb.write_text(json.dumps(d))
    assert check_outputs(nb) == []
