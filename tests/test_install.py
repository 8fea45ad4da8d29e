"The installed package: it imports, its command answers, and its version is the one pyproject declares."
import pytest
import subprocess, sys, shutil, re
from pathlib import Path
import importlib.metadata as md

ROOT = Path(__file__).resolve().parents[1]

def test_imports_and_version_matches_metadata():
    import liver_pcr
    # pyproject declares the version dynamically from liver_pcr.__version__: the installed metadata must agree
    assert md.version('liver_pcr') == liver_pcr.__version__
    assert re.fullmatch(r'\d+\.\d+\.\d+(\.\w+)?', liver_pcr.__version__)

def test_pyproject_names_the_package_and_the_version_source():
    import tomllib
    proj = tomllib.loads((ROOT/'pyproject.toml').read_text())
    assert proj['project']['name'] == 'liver_pcr'
    assert proj['tool']['setuptools']['dynamic']['version'] == {'attr': 'liver_pcr.__version__'}
    assert 'liver-pcr' in proj['project']['scripts']

def _cli(*args):
    exe = shutil.which('liver-pcr', path=str(Path(sys.executable).parent))
    assert exe, 'the liver-pcr console script is not installed next to this python'
    return subprocess.run([exe, *args], capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=300)

SUBCOMMANDS = ['demo', 'validate', 'synth', 'import', 'cv', 'train', 'predict', 'pretrain', 'ablate', 'explain', 'compare', 'course']

def test_cli_help_lists_subcommands():
    r = _cli('--help')
    assert r.returncode == 0, r.stderr
    for sub in SUBCOMMANDS: assert sub in r.stdout, sub

@pytest.mark.parametrize('sub', [[s] for s in SUBCOMMANDS] + [['import', f] for f in ('dicom', 'png', 'nifti')], ids=' '.join)
def test_every_subcommand_has_its_own_help(sub):
    r = _cli(*sub, '--help')
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith('usage: liver-pcr ' + ' '.join(sub)), r.stdout[:200]

def test_cli_version():
    import liver_pcr
    r = _cli('--version')
    assert r.returncode == 0 and liver_pcr.__version__ in r.stdout

def test_unknown_subcommand_fails():
    r = _cli('no-such-command')
    assert r.returncode == 1 and 'Traceback' not in r.stderr

# --- the wheel: built without setuptools warnings, and carrying its data

def _checkout_copy(dst: Path) -> Path:
    "The checkout's files (tracked, and untracked but not ignored) copied into `dst`: no stale build/ or egg-info."
    git = shutil.which('git')
    if not git or not (ROOT/'.git').exists():
        pytest.skip('not a git checkout')
    r = subprocess.run([git, 'ls-files', '-z', '-co', '--exclude-standard'], cwd=ROOT, capture_output=True, check=True)
    for rel in r.stdout.decode().split('\0'):
        if rel and (ROOT/rel).is_file():
            (dst/rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT/rel, dst/rel)
    return dst

@pytest.fixture(scope='module')
def wheel(tmp_path_factory):
    "The wheel of this checkout as `pip wheel . --no-deps` builds it (verbose: setuptools' messages shown), and its build log."
    import os
    src = _checkout_copy(tmp_path_factory.mktemp('src'))
    # a module moved into a subpackage without __init__.py (as nbdev exports `cohort.reader`): it must ship too
    (src/'liver_pcr'/'zz_planted').mkdir()
    (src/'liver_pcr'/'zz_planted'/'inner.py').write_text('x = 1\n')
    out = tmp_path_factory.mktemp('wheel')
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONDONTWRITEBYTECODE'}  # else distutils says 'byte-compiling is disabled'
    cmd = [sys.executable, '-m', 'pip', 'wheel', '.', '--no-deps', '--no-build-isolation', '--no-index', '-v', '-w', str(out)]
    r = subprocess.run(cmd, cwd=src, capture_output=True, text=True, env=env, timeout=600)
    log = r.stdout + r.stderr
    assert r.returncode == 0, log[-3000:]
    (whl,) = out.glob('*.whl')
    return whl, log, src

def test_wheel_builds_without_setuptools_warnings(wheel):
    _, log, _ = wheel
    assert 'Package would be ignored' not in log, log[-3000:]
    assert 'is absent from the `packages` configuration' not in log
    warns = [ln for ln in log.splitlines() if re.search(r'warning', ln, re.I)]
    assert not warns, warns[:10]

def test_wheel_carries_the_sample_the_tutorials_and_the_templates(wheel):
    import zipfile
    whl, _, src = wheel
    names = set(zipfile.ZipFile(whl).namelist())
    sample = sorted(p.relative_to(src/'data_samples').as_posix() for p in (src/'data_samples').rglob('*') if p.is_file())
    images = [f for f in sample if f.startswith('images/')]
    assert len(images) >= 24 and all(f.endswith('.nii.gz') for f in images)  # the 24-patient sample, every image
    assert {f'liver_pcr/data_samples/{f}' for f in sample} <= names, sorted(set(sample) - names)[:10]
    tut = sorted(p.relative_to(src/'nbs'/'tutorials').as_posix() for p in (src/'nbs'/'tutorials').rglob('*')
                 if p.is_file() and '.ipynb_checkpoints' not in p.parts)
    assert len([f for f in tut if f.endswith('.ipynb')]) == 10
    assert {f'liver_pcr/tutorials/{f}' for f in tut} <= names, sorted(set(tut) - names)[:10]
    templates = {f'liver_pcr/{p.relative_to(src/"liver_pcr").as_posix()}' for p in (src/'liver_pcr'/'templates').glob('*.j2')}
    assert 'liver_pcr/templates/report.html.j2' in templates and templates <= names
    # every module of the package, subpackages (with or without __init__.py) included
    mods = {f'liver_pcr/{p.relative_to(src/"liver_pcr").as_posix()}' for p in (src/'liver_pcr').rglob('*.py')}
    assert mods <= names, sorted(mods - names)[:10]
    assert not [n for n in names if '__pycache__' in n or n.endswith('.pyc')]

def test_packages_are_found_not_listed(wheel):
    "The package list is found (setup.py), not written in pyproject.toml: a new subpackage ships without editing it."
    import tomllib, zipfile
    proj = tomllib.loads((ROOT/'pyproject.toml').read_text())
    assert 'packages' not in proj['tool']['setuptools']
    assert 'liver_pcr/zz_planted/inner.py' in zipfile.ZipFile(wheel[0]).namelist()

def test_the_report_template_loads_from_the_unpacked_wheel(wheel, tmp_path):
    "The installed package, not the checkout, is where the report finds its template."
    import os, zipfile
    site = tmp_path/'site'
    zipfile.ZipFile(wheel[0]).extractall(site)
    code = ("import liver_pcr, jinja2; from liver_pcr.report import REPORT_TEMPLATE; "
            "t = jinja2.Environment(loader=jinja2.PackageLoader('liver_pcr', 'templates')).get_template(REPORT_TEMPLATE); "
            "print(liver_pcr.__file__); print(t.filename)")
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, cwd=tmp_path,
                       env={**os.environ, 'PYTHONPATH': str(site)}, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    pkg, tpl = r.stdout.split()
    assert Path(pkg).resolve().is_relative_to(site.resolve()), pkg
    assert Path(tpl).resolve() == (site/'liver_pcr'/'templates'/'report.html.j2').resolve()
