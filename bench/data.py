"""Data pipeline: preprocessing 120 synthetic patients into the cache, and iterating the cached dataset.

Run: .venv/bin/python bench/data.py [--patients 120] [--cohort DIR]
Targets: cache build under 60 s; cached iteration at least 20x faster than the training steps it feeds.
"""
import argparse, os, tempfile, time
from pathlib import Path
import torch
from liver_pcr.cohort.reader import Cohort
from liver_pcr.cohort.synth import SynthConfig, make_cohort
from liver_pcr.data.preprocess import PreprocessConfig, preprocess_cohort
from liver_pcr.data.dataset import cohort_splits, ClinicalTransformer, wide_labs, PatientDataset, Augment
from liver_pcr.models.nets import STAGES, PCRModel, make_loss

p = argparse.ArgumentParser()
p.add_argument('--patients', type=int, default=120); p.add_argument('--cohort', help='an existing cohort (default: generate one)')
p.add_argument('--batch', type=int, default=16); p.add_argument('--epochs', type=int, default=3, help='timed epochs of cached iteration')
a = p.parse_args()
tmp = Path(tempfile.mkdtemp(prefix='bench_data-'))
if a.cohort: c = Cohort.load(a.cohort)
else:
    t = time.perf_counter(); make_cohort(tmp/'cohort', SynthConfig(n_patients=a.patients, seed=0), n_jobs=2, show_progress=False)
    print(f'generated {a.patients} patients in {time.perf_counter() - t:.1f} s'); c = Cohort.load(tmp/'cohort')
cfg = PreprocessConfig()
for jobs in (1, 2):
    t = time.perf_counter(); pre = preprocess_cohort(c, cfg, cache=tmp/f'cache{jobs}', n_jobs=jobs, show_progress=False)
    print(f'cache build, {len(c)} patients, n_jobs={jobs}: {time.perf_counter() - t:.1f} s  (target < 60 s)')
t = time.perf_counter(); preprocess_cohort(c, cfg, cache=tmp/'cache1', show_progress=False)
print(f'cache reuse: {1000*(time.perf_counter() - t):.0f} ms')
s = cohort_splits(c, 5, 0)[0]
ct = ClinicalTransformer(c.markers, pre.timepoints).fit(wide_labs(c, s.train))
ds = PatientDataset(pre, c, s.train, ct, augment=Augment())
dl = torch.utils.data.DataLoader(ds, batch_size=a.batch, shuffle=True)
for _ in dl: pass                                          # warm-up epoch (first-call allocations), then a few timed ones
t, nb = time.perf_counter(), 0
for e in range(1, a.epochs + 1):
    ds.set_epoch(e); nb += sum(1 for _ in dl)
it = (time.perf_counter() - t)/nb
m = PCRModel(STAGES['relation'], pre.timepoints, pre.sequences, k=cfg.k, n_clinical=ds.clin.shape[1])
opt, loss = torch.optim.AdamW(m.parameters(), 1e-3), make_loss(STAGES['relation'], ds.y)
b = next(iter(dl)); steps = []
for i in range(4):
    t = time.perf_counter(); opt.zero_grad(); loss(m(b['images'], b['present'], b['clinical'], b['masks']), b['y']).backward(); opt.step()
    steps.append(time.perf_counter() - t)
step = sorted(steps)[1]
print(f'cached iteration with augmentation: {1000*it:.1f} ms per batch of {a.batch} patients; relation training step: {1000*step:.0f} ms; '
      f'ratio {step/it:.0f}x  (target >= 20x)')
