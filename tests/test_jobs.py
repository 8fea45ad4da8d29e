"""Folds as units of work: processes sharing one run folder, local worker processes and Ray give the same
predictions.csv, byte for byte, as one sequential run."""
import os, subprocess, sys, textwrap
from pathlib import Path
import pytest
import liver_pcr
from liver_pcr.core import sample_cohort_path
from liver_pcr.cli import main
from liver_pcr.train.cv import run_cv
from liver_pcr.train.runs import OtherRunError
from liver_pcr import jobs
from liver_pcr.train import parallel

ROOT = Path(liver_pcr.__file__).resolve().parent.parent
SAMPLE = sample_cohort_path()
KW = dict(n_folds=4, seed=0, check=False, show_progress=False, n_boot=200)
LOOPS = 20

# each worker fits its folds of run0 … run19, meeting the other worker at a file barrier before each run,
# so that both start every run folder at the same moment (the race on config.json)
WORKER = textwrap.dedent('''
    import sys, time
    from pathlib import Path
    from liver_pcr.train.cv import run_cv
    base, me, loops, folds = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]
    for i in range(loops):
        (base / f'ready{i}.{me}').touch()
        while not (base / f'ready{i}.{1 - me}').exists():
            time.sleep(0.002)
        run = base / f'run{i}'
        run_cv(SAMPLE, 'clinical', run, n_folds=4, folds=[int(k) for k in folds], check=False, show_progress=False)
''')


def _env():
    env = dict(os.environ, PYTHONPATH=str(ROOT), LIVER_PCR_QUIET='1')
    return env


@pytest.fixture(scope='module')
def sequential(tmp_path_factory):
    "One sequential run of the clinical reference, 4 folds: the bytes every other way must give."
    out = tmp_path_factory.mktemp('seq') / 'run'
    run_cv(SAMPLE, 'clinical', out, **KW)
    return (out / 'predictions.csv').read_bytes()


def test_two_processes_share_one_run_folder(tmp_path, sequential):
    script = tmp_path / 'worker.py'
    script.write_text(WORKER.replace('SAMPLE', repr(str(SAMPLE))))
    procs = [
        subprocess.Popen([sys.executable, str(script), str(tmp_path), str(w), str(LOOPS), *folds],
                         env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for w, folds in ((0, ['0', '1']), (1, ['2', '3']))
    ]
    errs = [p.communicate(timeout=600)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs
    for i in range(LOOPS):
        run = tmp_path / f'run{i}'
        assert sorted(f.name for f in run.iterdir()) == ['config.json', 'fold0', 'fold1', 'fold2', 'fold3']
        assert not list(run.rglob('*.tmp')), f'{run}: a temporary file left behind'
        run_cv(SAMPLE, 'clinical', run, **KW)  # gathers
        assert (run / 'predictions.csv').read_bytes() == sequential, f'{run}: predictions differ'


def test_fold_subset_then_gather_refits_nothing(tmp_path, sequential):
    run = tmp_path / 'run'
    assert main(['cv', str(SAMPLE), '--model', 'clinical', '--out', str(run), '--folds', '4', '--fold', '3', '1']) == 0
    assert not (run / 'predictions.csv').exists() and not (run / 'metrics.json').exists()
    assert sorted(f.name for f in run.glob('fold*')) == ['fold1', 'fold3']
    done = {k: (run / f'fold{k}' / 'done.json').stat().st_mtime_ns for k in (1, 3)}
    run_cv(SAMPLE, 'clinical', run, folds=[0, 2], **KW)
    run_cv(SAMPLE, 'clinical', run, **KW)
    assert {k: (run / f'fold{k}' / 'done.json').stat().st_mtime_ns for k in (1, 3)} == done  # not refitted
    assert (run / 'predictions.csv').read_bytes() == sequential
    assert (run / 'metrics.json').exists()


def test_other_configuration_is_refused(tmp_path):
    run = tmp_path / 'run'
    run_cv(SAMPLE, 'clinical', run, folds=[0], **KW)
    with pytest.raises(OtherRunError, match='another configuration'):
        run_cv(SAMPLE, 'clinical', run, folds=[1], **{**KW, 'seed': 1})


def test_local_workers(tmp_path, sequential):
    parallel.run_cv_jobs(SAMPLE, 'clinical', tmp_path / 'two', jobs=2, **KW)
    assert (tmp_path / 'two' / 'predictions.csv').read_bytes() == sequential


def test_local_workers_deep_model(tmp_path, monkeypatch):
    """A deep stage (tiny, neural head) in two workers against one process with as many threads as each worker:
    torch's CPU kernels sum in an order that depends on the thread count, so that is the like-for-like comparison."""
    import torch

    kw = dict(KW, n_folds=3, head='neural', preset_name='tiny')
    n = torch.get_num_threads()
    torch.set_num_threads(parallel.worker_threads(2))
    try:
        run_cv(SAMPLE, 'multi', tmp_path / 'seq', **kw)
    finally:
        torch.set_num_threads(n)
    parallel.run_cv_jobs(SAMPLE, 'multi', tmp_path / 'two', jobs=2, **kw)
    assert (tmp_path / 'two' / 'predictions.csv').read_bytes() == (tmp_path / 'seq' / 'predictions.csv').read_bytes()


def test_worker_threads():
    before = os.environ.get('OMP_NUM_THREADS')
    assert parallel.worker_threads(1) == (os.cpu_count() or 1)
    assert parallel.worker_threads(10 ** 6) == 1
    with parallel.thread_env(3):
        assert os.environ['OMP_NUM_THREADS'] == '3' and os.environ['MKL_NUM_THREADS'] == '3'
    assert os.environ.get('OMP_NUM_THREADS') == before  # restored


@pytest.fixture(scope='module')
def ray_cluster():
    ray = pytest.importorskip('ray')
    os.environ['PYTHONPATH'] = str(ROOT) + os.pathsep + os.environ.get('PYTHONPATH', '')  # the workers import this liver_pcr
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.mark.parametrize('shared_fs', [True, False])
def test_ray_local(tmp_path, sequential, ray_cluster, shared_fs):
    out = tmp_path / 'run'
    parallel.run_cv_jobs(SAMPLE, 'clinical', out, ray='local', shared_fs=shared_fs, **KW)
    assert (out / 'predictions.csv').read_bytes() == sequential
    for k in range(4):  # the fold's files, written here by the workers or by the driver
        assert (out / f'fold{k}' / 'done.json').exists() and (out / f'fold{k}' / 'model.json').exists()


def test_plan_lines(tmp_path):
    lines = jobs.plan_lines('cv', [str(SAMPLE), '--model', 'clinical', '--out', str(tmp_path / 'r'), '--folds', '4'])
    assert [line.split()[-2:] for line in lines[:-1]] == [['--fold', str(k)] for k in range(4)]
    assert lines[-1] == f'liver-pcr cv {SAMPLE} --model clinical --out {tmp_path / "r"} --folds 4'
    demo = jobs.plan_lines('demo', ['--sample', '--out', str(tmp_path / 'd'), '--folds', '3'])
    assert len(demo) == 7 * 3 + 1 and demo[0].endswith('--unit=baseline:0')


def test_ablate_and_demo_without_unit_reach_their_commands(monkeypatch):
    "Without --unit, `ablate` and `demo` hand over to evaluate.ablation.cmd_ablate and report.cmd_demo."
    import argparse
    from liver_pcr.evaluate import ablation
    from liver_pcr import report
    monkeypatch.setattr(ablation, 'cmd_ablate', lambda args: 11)
    monkeypatch.setattr(report, 'cmd_demo', lambda args: 12)
    assert jobs.cmd_ablate(argparse.Namespace(unit=None)) == 11
    assert jobs.cmd_demo(argparse.Namespace(unit=None)) == 12


def test_engine_knows_no_command():
    "The engine (train.parallel) is imported by the commands above it, and imports none of them: no circle."
    import ast
    tree = ast.parse(Path(parallel.__file__).read_text())
    names = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    names |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    above = ('liver_pcr.jobs', 'liver_pcr.cli', 'liver_pcr.report', 'liver_pcr.evaluate')
    assert not [m for m in names if m.startswith(above)], names
