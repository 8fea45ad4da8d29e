"""Folds as units of work: 5-fold CV of the relation stage on a 120-patient synthetic cohort, in this process
(--jobs 1) and in two local worker processes (--jobs 2), side by side: wall times, the speed-up, and whether the
two predictions.csv are the same bytes.

Run: .venv/bin/python bench/jobs.py [--patients 120] [--model relation] [--jobs 2] [--folds 5] [--head neural --epochs 4]
The cohort is generated once into the cache (LIVER_PCR_CACHE or ~/.cache/liver_pcr)/bench. One warm-up fold fills
the preprocessing cache first, so that neither timed run pays for it.
"""
import argparse, os, shutil, tempfile, time
from pathlib import Path
import torch

from liver_pcr.cohort.reader import Cohort
from liver_pcr.core import cache_dir
from liver_pcr.train.parallel import run_cv_jobs, worker_threads
from liver_pcr.cohort.synth import SynthConfig, make_cohort
from liver_pcr.train.cv import run_cv

p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
p.add_argument('--patients', type=int, default=120)
p.add_argument('--model', default='relation')
p.add_argument('--jobs', type=int, default=2, help='worker processes of the parallel run')
p.add_argument('--folds', type=int, default=5)
p.add_argument('--head', choices=['linear', 'neural'], help="the stage's head (default: its own, linear)")
p.add_argument('--epochs', type=int, help='epochs of the neural head (default: the fast preset)')
a = p.parse_args()
os.environ.setdefault('LIVER_PCR_QUIET', '1')

d = cache_dir() / 'bench' / f'jobs-seed0-n{a.patients}'
if not (d / 'patients.csv').exists():
    print(f'generating {d} ...', flush=True)
    make_cohort(d, SynthConfig(n_patients=a.patients, seed=0), overwrite=True, n_jobs=2, show_progress=False)
c = Cohort.load(d)
work = Path(tempfile.mkdtemp(prefix='liver_pcr_bench_jobs-'))
kw = dict(n_folds=a.folds, seed=0, check=False, show_progress=False, n_boot=200, head=a.head, epochs=a.epochs)
t0 = time.time()
run_cv(c, a.model, work / 'warm', folds=[0], **kw)
print(f'{a.model} ({a.head or "its own"} head) on {len(c)} patients, {a.folds} folds, {os.cpu_count()} CPUs; warm-up fold {time.time() - t0:.1f} s',
      flush=True)
times = {}
for n in (1, a.jobs):
    t0 = time.time()
    run_cv_jobs(c.root, a.model, work / f'jobs{n}', jobs=n, **kw)
    times[n] = time.time() - t0
    threads = torch.get_num_threads() if n == 1 else worker_threads(n)
    print(f'  --jobs {n}: {times[n]:6.1f} s  ({threads} thread(s) per fold)', flush=True)
same = (work / 'jobs1' / 'predictions.csv').read_bytes() == (work / f'jobs{a.jobs}' / 'predictions.csv').read_bytes()
print(f'speed-up --jobs {a.jobs} / --jobs 1: {times[1] / times[a.jobs]:.2f}x; '
      f'predictions.csv {"byte-identical" if same else "differ (torch sums in thread-count order)"}')
shutil.rmtree(work)
