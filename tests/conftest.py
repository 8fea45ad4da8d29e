"Fixtures shared by the test files (helpers that are plain functions live in `liver_pcr.testing`)."
import shutil
from pathlib import Path

import pytest

from liver_pcr.core import sample_cohort_path


@pytest.fixture
def _cache(tmp_path, monkeypatch) -> Path:
    "An empty cache folder of the test's own (`LIVER_PCR_CACHE`), and quiet progress bars."
    monkeypatch.setenv('LIVER_PCR_CACHE', str(tmp_path/'cache'))
    monkeypatch.setenv('LIVER_PCR_QUIET', '1')
    return tmp_path/'cache'


@pytest.fixture
def _one_thread():
    "torch on one thread during the test (tiny tensors on a busy machine)."
    import torch
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def cohort_dir(tmp_path) -> Path:
    "A private copy of the packaged sample cohort, free to be changed."
    return Path(shutil.copytree(sample_cohort_path(), tmp_path/'cohort'))


@pytest.fixture(scope='module')
def _module_env(tmp_path_factory):
    "One cache for the whole module (its runs are shared), quiet bars, torch on one thread (tiny tensors, a busy machine)."
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv('LIVER_PCR_CACHE', str(tmp_path_factory.mktemp('cache')))
        mp.setenv('LIVER_PCR_QUIET', '1')
        yield
    torch.set_num_threads(threads)


@pytest.fixture(scope='module')
def sample(_module_env):
    "The packaged 24-patient sample cohort, loaded once per module."
    from liver_pcr.cohort.reader import Cohort
    return Cohort.load(sample_cohort_path())
