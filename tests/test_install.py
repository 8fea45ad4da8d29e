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
