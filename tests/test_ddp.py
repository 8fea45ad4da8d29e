"""Pretraining in several processes (torchrun, gloo on the CPU) computes what one process computes on the same global batches.

Two processes are started with `python -m torch.distributed.run --standalone --nproc_per_node 2` (torchrun) on the packaged
24-patient sample at 16 px; the reference is `pretrain(..., views='image')` in this process (the views drawn per image, the
order by a DistributedSampler of one process: the setting torchrun uses). In float64 the two agree to round-off, step after
step (BatchNorm synchronised, embeddings gathered with gradients); in float32 to a few parts in 10^4 after some steps (Adam
amplifies round-off). Each torchrun start costs a few seconds.
"""
import json, os, subprocess, sys
from pathlib import Path
import numpy as np, pytest, torch

import liver_pcr

from liver_pcr.core import ConfigError, data_root
from liver_pcr.models.nets import ResNetTrunk, load_weights
from liver_pcr.data.preprocess import PreprocessConfig
from liver_pcr.models.pretrain import pretrain, torchrun_env

PRE = PreprocessConfig(roi_mm=64, roi_px=16, k=3)
RUN = dict(epochs=2, batch_size=16, steps=2, show_progress=False, device='cpu')   # 4 steps, two shuffles, 8 images a process

pytestmark = pytest.mark.usefixtures('_cache', '_one_thread')    # tests/conftest.py

WORKER = '''
import json, sys, torch, torch.distributed as dist
from liver_pcr.core import data_root
from liver_pcr.data.preprocess import PreprocessConfig
from liver_pcr.models.pretrain import pretrain
torch.set_default_dtype(torch.float64)
out, run = sys.argv[1], json.loads(sys.argv[2])
dist.init_process_group('gloo')   # one group for both runs: pretrain uses it and leaves it to us
for method in ('vicreg', 'simclr'):
    r = pretrain(data_root(), f'{out}/{method}.pt', PreprocessConfig(roi_mm=64, roi_px=16, k=3), method=method, **run)
    if r['rank'] == 0:
        print('RESULT', json.dumps(dict(method=method, step_loss=r['step_loss'], world_size=r['world_size'])))
assert dist.is_initialized()
dist.destroy_process_group()
'''


def _torchrun(tmp_path, *args, n=2, **env_vars):
    "Run `torchrun --standalone --nproc_per_node n ARGS` (with `env_vars`, without torchrun's own); the finished process."
    env = {k: v for k, v in os.environ.items() if k not in ('RANK', 'LOCAL_RANK', 'WORLD_SIZE')}
    src = str(Path(liver_pcr.__file__).parent.parent)    # the processes import this very liver_pcr
    env.update(env_vars, OMP_NUM_THREADS='1', PYTHONPATH=os.pathsep.join([src, env.get('PYTHONPATH', '')]))
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', str(n), *args]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=240)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r


def _weights(path):
    return torch.load(path, map_location='cpu', weights_only=True)


def _max_diff(a, b):
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a if a[k].is_floating_point())


def test_two_processes_equal_one_on_the_same_global_batch(tmp_path):
    "VICReg and SimCLR, float64: step losses and every saved tensor (running statistics included) equal."
    (tmp_path/'worker.py').write_text(WORKER)
    r = _torchrun(tmp_path, 'worker.py', str(tmp_path), json.dumps(RUN))
    got = {d['method']: d for d in (json.loads(l.split(' ', 1)[1]) for l in r.stdout.splitlines() if l.startswith('RESULT'))}
    assert sorted(got) == ['simclr', 'vicreg'] and {d['world_size'] for d in got.values()} == {2}
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        for method in ('vicreg', 'simclr'):
            one = pretrain(data_root(), tmp_path/f'one_{method}.pt', PRE, method=method, views='image', **RUN)
            np.testing.assert_allclose(got[method]['step_loss'], one['step_loss'], rtol=1e-9)
            ddp, ref = _weights(tmp_path/f'{method}.pt'), _weights(tmp_path/f'one_{method}.pt')
            assert ddp['processes'] == 2 and ddp['views'] == 'image' and ref['processes'] == 1
            assert ddp['state_dict'].keys() == ref['state_dict'].keys()
            assert _max_diff(ddp['state_dict'], ref['state_dict']) < 1e-8, method
            with torch.random.fork_rng():
                torch.manual_seed(0)
                init = ResNetTrunk(3, stem='small').net.state_dict()
            assert _max_diff(ref['state_dict'], {k: init[k] for k in ref['state_dict']}) > 1e-3   # it did learn
            assert len(one['step_loss']) == 4
    finally:
        torch.set_default_dtype(before)
    assert sorted(p.name for p in tmp_path.glob('*.pt')) == sorted(
        ['vicreg.pt', 'simclr.pt', 'one_vicreg.pt', 'one_simclr.pt'])    # process 1 wrote nothing, no temporary left


def test_torchrun_cli_writes_weights_that_cv_loads(tmp_path):
    "`torchrun -m liver_pcr pretrain ... --out W` (16 px, one epoch): one line from process 0, a file `--weights` reads."
    out = tmp_path/'w'/'trunk.pt'
    r = _torchrun(tmp_path, '-m', 'liver_pcr', 'pretrain', str(data_root()), '--out', str(out),
                  '--epochs', '1', '--batch', '32', '--roi-px', '16', '--device', 'cpu')
    lines = [l for l in r.stdout.splitlines() if l.strip()]
    assert len(lines) == 1 and 'in 2 processes' in lines[0] and f'--weights {out}' in lines[0], r.stdout
    assert 'Traceback' not in r.stderr and 'deprecated' not in r.stderr, r.stderr[-2000:]
    trunk = load_weights(ResNetTrunk(3, stem='small'), out)
    assert trunk.loaded_ == ['bn1', 'conv1', 'layer1', 'layer2']
    saved = _weights(out)
    assert saved['processes'] == 2 and saved['roi_px'] == 16 and not list(out.parent.glob('.*.tmp'))
    one = pretrain(data_root(), tmp_path/'one.pt', PRE, epochs=1, batch_size=32, views='image', device='cpu',
                   show_progress=False)    # float32: the same run within round-off amplified by Adam
    np.testing.assert_allclose(saved['loss'], one['loss'], rtol=1e-3)
    assert _max_diff(saved['state_dict'], _weights(tmp_path/'one.pt')['state_dict']) < 0.05


@pytest.mark.parametrize('env, kw, match', [
    (dict(RANK='0', LOCAL_RANK='0', WORLD_SIZE='2'), dict(batch_size=33), 'split evenly over the 2 processes'),
    (dict(RANK='0', LOCAL_RANK='0', WORLD_SIZE='2'), dict(views='batch'), "views='batch'"),
    (dict(RANK='3', LOCAL_RANK='0', WORLD_SIZE='2'), {}, 'not a valid process'),
    (dict(RANK='0', WORLD_SIZE='2'), {}, 'torchrun sets'),
    ({}, dict(views='pixel'), "views='pixel'"),
])
def test_settings_processes_cannot_share_are_config_errors(tmp_path, monkeypatch, env, kw, match):
    "Refused before any process group is joined or any image read."
    for k in ('RANK', 'LOCAL_RANK', 'WORLD_SIZE'):
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ConfigError, match=match):
        pretrain(data_root(), tmp_path/'t.pt', PRE, **{**RUN, **kw})
    assert not torch.distributed.is_initialized() and not (tmp_path/'t.pt').exists()


def test_one_process_is_not_torchrun(monkeypatch):
    for k in ('RANK', 'LOCAL_RANK', 'WORLD_SIZE'):
        monkeypatch.delenv(k, raising=False)
    assert torchrun_env() is None
