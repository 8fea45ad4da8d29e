"""Label-free pretraining of the trunk: the weights file, determinism, no labels needed, refusals, several cohorts, the CLI.

Every run uses the packaged 24-patient sample at 16 px for one epoch of at most two steps: mechanics, not quality.
"""
import shutil
from types import SimpleNamespace
import numpy as np, pandas as pd, pytest, torch

from liver_pcr.cohort.reader import Cohort
from liver_pcr.core import ConfigError, data_root
from liver_pcr.models.nets import ResNetTrunk, load_weights
from liver_pcr.data.preprocess import PreprocessConfig, preprocess_cohort
from liver_pcr.models.pretrain import pretrain, cmd_pretrain

PRE = PreprocessConfig(roi_mm=64, roi_px=16, k=3)
FAST = dict(epochs=1, batch_size=32, steps=2, show_progress=False)


pytestmark = pytest.mark.usefixtures('_cache', '_one_thread')    # tests/conftest.py


def _copy(tmp_path, name='copy', blank_labels=False):
    "A copy of the packaged sample cohort, optionally with the pcr column emptied."
    root = shutil.copytree(data_root(), tmp_path/name)
    if blank_labels:
        df = pd.read_csv(root/'patients.csv', dtype=str)
        df['pcr'] = ''
        df.to_csv(root/'patients.csv', index=False)
    return root


def _n_images(cohort):
    return int(np.asarray(preprocess_cohort(cohort, PRE, show_progress=False).present).sum())


def _saved(path):
    return torch.load(path, map_location='cpu', weights_only=True)


def test_writes_a_weights_file_that_loads_safely(tmp_path):
    sample = Cohort.load()
    out = tmp_path/'w'/'trunk.pt'
    rec = pretrain(sample, out, PRE, **FAST)
    assert out.is_file() and not list(out.parent.glob('.*.tmp'))
    obj = _saved(out)
    assert obj['format'] == 'liver_pcr-trunk' and obj['stem'] == 'small' and obj['layer'] == 'layer2'
    assert obj['in_ch'] == 3 and obj['method'] == 'vicreg' and obj['cohorts'] == [sample.name]
    assert obj['n_images'] == rec['n_images'] == _n_images(sample)
    assert {k.split('.')[0] for k in obj['state_dict']} == {'conv1', 'bn1', 'layer1', 'layer2'}
    trunk = load_weights(ResNetTrunk(3, stem='small'), out)
    own = trunk.net.state_dict()
    for k, v in obj['state_dict'].items():
        assert torch.equal(own[k], v), k
    assert len(rec['loss']) == 1 and np.isfinite(rec['loss']).all()


def test_same_seed_same_weights(tmp_path):
    sample = Cohort.load()
    a = _saved(pretrain(sample, tmp_path/'a.pt', PRE, seed=0, **FAST)['out'])['state_dict']
    b = _saved(pretrain(sample, tmp_path/'b.pt', PRE, seed=0, **FAST)['out'])['state_dict']
    c = _saved(pretrain(sample, tmp_path/'c.pt', PRE, seed=1, **FAST)['out'])['state_dict']
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a['layer1.0.conv1.weight'], c['layer1.0.conv1.weight'])


def test_labels_are_never_needed(tmp_path, monkeypatch):
    "A cohort without a single label pretrains to the same weights as the labelled original."
    blank = _copy(tmp_path, 'blank', blank_labels=True)
    assert Cohort.load(blank).labels.isna().all()
    with_labels = _saved(pretrain(Cohort.load(), tmp_path/'a.pt', PRE, **FAST)['out'])['state_dict']
    monkeypatch.setattr(Cohort, 'labels', property(lambda self: pytest.fail('labels were read')))
    monkeypatch.setattr(Cohort, 'labelled_ids', property(lambda self: pytest.fail('labels were read')))
    without = _saved(pretrain(blank, tmp_path/'b.pt', PRE, **FAST)['out'])['state_dict']
    assert all(torch.equal(with_labels[k], without[k]) for k in with_labels)


@pytest.mark.parametrize('where', ['trunk.pt', 'images/trunk.pt', '.'])
def test_writing_inside_a_cohort_is_refused(tmp_path, where):
    root = _copy(tmp_path)
    before = sorted(p.relative_to(root) for p in root.rglob('*'))
    with pytest.raises(ConfigError, match='refusing to write inside'):
        pretrain(root, root/where, PRE, **FAST)
    with pytest.raises(ConfigError, match='refusing to write inside'):   # the second of two cohorts too
        pretrain([Cohort.load(), root], root/where, PRE, **FAST)
    assert sorted(p.relative_to(root) for p in root.rglob('*')) == before


def test_two_cohorts_add_their_images(tmp_path):
    sample, other = Cohort.load(), Cohort.load(_copy(tmp_path))
    rec = pretrain([sample.root, other.root], tmp_path/'two.pt', PRE, **FAST)
    assert rec['n_images'] == _n_images(sample) + _n_images(other)
    assert _saved(tmp_path/'two.pt')['cohorts'] == [sample.name, other.name]


def test_a_cohort_without_images_is_a_config_error(tmp_path):
    root = _copy(tmp_path)
    shutil.rmtree(root/'images')
    (root/'images').mkdir()
    with pytest.raises(ConfigError, match='no images to pretrain on'):
        pretrain([Cohort.load(), root], tmp_path/'t.pt', PRE, **FAST)
    assert not (tmp_path/'t.pt').exists()


def test_bad_choices_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="method='byol'"):
        pretrain(Cohort.load(), tmp_path/'t.pt', PRE, method='byol', **FAST)
    with pytest.raises(ConfigError, match="layer='layer5'"):
        pretrain(Cohort.load(), tmp_path/'t.pt', PRE, layer='layer5', **FAST)
    with pytest.raises(ConfigError, match='is a folder'):
        pretrain(Cohort.load(), tmp_path, PRE, **FAST)
    with pytest.raises(ConfigError, match='at least 1 epoch'):
        pretrain(Cohort.load(), tmp_path/'t.pt', PRE, **{**FAST, 'epochs': 0})


def test_simclr_runs(tmp_path):
    rec = pretrain(Cohort.load(), tmp_path/'s.pt', PRE, method='simclr', layer='layer1', **FAST)
    assert _saved(tmp_path/'s.pt')['method'] == 'simclr' and np.isfinite(rec['loss']).all()
    assert {k.split('.')[0] for k in _saved(tmp_path/'s.pt')['state_dict']} == {'conv1', 'bn1', 'layer1'}


def test_cli_prints_one_line(tmp_path, monkeypatch, capsys):
    out = tmp_path/'cli.pt'
    args = SimpleNamespace(cohorts=[str(data_root())], out=str(out), epochs=1, roi_px=16, batch=64, seed=0,
                           layer='layer2', method='vicreg', device='cpu')
    assert cmd_pretrain(args) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 and f'use it with --weights {out}' in lines[0] and 'images' in lines[0]
    assert _saved(out)['epochs'] == 1
