"""The model evolution on several cohorts: per model the mean ± SD AUC over cohorts, the paired gap to the reachable
ceiling and to the oracle (mean and SD), the counterfactual drop (baseline exam and markers swapped between test
patients) and the CV wall time. Every model: 5-fold patient-level CV, fast preset, on this machine's CPU threads.
The `ceiling` row is the same penalised regression on the generator's true per-exam quantities (same folds), the
`markers ceiling` row the same on the true markers alone; the measurement extraction is timed on its own line.

Run: .venv/bin/python bench/evolution.py --set report2    # seeds 200-204, made after the measurement design was frozen
     .venv/bin/python bench/evolution.py --set report     # seeds 100-104, made after the first design was frozen
     .venv/bin/python bench/evolution.py --set tuning     # seeds 0-4, the cohorts the design was chosen on
     .venv/bin/python bench/evolution.py --cohort DIR --truth TRUTH.csv [--cohort DIR --truth TRUTH.csv ...]
     options: --models baseline relation ...  --weights trunk.pt  --head neural  --out DIR (tables as CSV/Markdown)
              --jobs N (each CV's folds in N local worker processes)  --ray auto|ADDRESS|local
Cohorts of a --set are generated once into the cache (LIVER_PCR_CACHE or ~/.cache/liver_pcr)/bench.
"""
import argparse, json, os, sys, tempfile, time
from pathlib import Path
import numpy as np, pandas as pd
import torch

from liver_pcr.cohort.reader import Cohort
from liver_pcr.core import cache_dir
from dataclasses import replace
from liver_pcr.cohort.synth import SynthConfig, make_cohort, oracle_auc
from liver_pcr.evaluate.ceiling import ceiling_features, table_cv_auc
from liver_pcr.data.dataset import cohort_splits
from liver_pcr.data.measure import measure_table
from liver_pcr.models.nets import STAGES
from liver_pcr.train.cv import run_cv
from liver_pcr.interpret.attribution import counterfactual_swap
from liver_pcr.train.parallel import run_cv_jobs

SETS = {   # seed → how the cohort differs from the generator's default (120 patients, pre/post, T2 DWI AP PVP, 96×96×16)
    'tuning': {0: {}, 1: {}, 2: {}, 3: dict(timepoints=('pre', 'mid', 'post')),
               4: dict(shape=(80, 80, 12), spacing=(4.0, 4.0, 7.0), p_missing_sequence=0.1)},
    'report': {100: {}, 101: dict(timepoints=('pre', 'mid', 'post')),
               102: dict(shape=(64, 64, 10), spacing=(5.0, 5.0, 8.0), p_missing_sequence=0.15),
               103: dict(sequences=('T2', 'DWI', 'ADC', 'AP', 'PVP'), noise=0.05),
               104: dict(timepoints=('baseline', 'followup'), misregistration_mm=6.0)},
    'report2': {200: {}, 201: dict(timepoints=('pre', 'mid', 'post')),
                202: dict(shape=(64, 64, 10), spacing=(5.0, 5.0, 8.0), p_missing_sequence=0.15),
                203: dict(sequences=('T2', 'DWI', 'ADC', 'AP', 'PVP'), noise=0.05),
                204: dict(timepoints=('baseline', 'followup'), misregistration_mm=6.0)},
}
SETS['fine'] = {202: dict(p_missing_sequence=0.15, noise=0.01)}  # seed 202's patients on the default 3.5 mm grid, low noise
BLOCKS = {  # the relation stage read through the deep blocks, the measurements, or both
    'relation-deep': dict(measure=False, deep=True),
    'relation-measure': dict(measure=True, deep=False),
    'relation-both': dict(measure=True, deep=True),
}
MODELS = ('baseline', 'single', 'multi', 'relation', 'clinical', 'radiomics', 'response')
REFERENCES = ('clinical', 'radiomics', 'response')

p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument('--set', choices=list(SETS), help='a named set of generated cohorts')
p.add_argument('--cohort', action='append', default=[], help='a cohort folder (repeatable)')
p.add_argument('--truth', action='append', default=[], help="its generator truth CSV (p_true, pcr), for the oracle")
p.add_argument('--models', nargs='+', default=list(MODELS), help=f'any of {list(MODELS)} and {list(BLOCKS)}')
p.add_argument('--weights', help='trunk weights file for the deep stages')
p.add_argument('--head', choices=['linear', 'neural'])
p.add_argument('--patients', type=int, default=120)
p.add_argument('--out', help='folder for per_cohort.csv, summary.csv and summary.md')
p.add_argument('--jobs', type=int, default=1, help='local worker processes per CV (default 1)')
p.add_argument('--ray', help="a Ray cluster for the folds: 'auto', its address, or 'local'")
a = p.parse_args()
if not a.set and not a.cohort:
    p.error('give --set or --cohort')
torch.set_num_threads(os.cpu_count() or 1)
os.environ.setdefault('LIVER_PCR_QUIET', '1')

cohorts = []                                          # (name, folder, truth csv or None)
if a.set:
    root = cache_dir()/'bench'
    for seed, spec in SETS[a.set].items():
        prefix = 'report' if a.set == 'report2' else a.set
        d, t = root/f'{prefix}-seed{seed}-n{a.patients}', root/f'{prefix}-seed{seed}-n{a.patients}-truth.csv'
        if not (d/'patients.csv').exists() or not t.exists():
            print(f'generating {d.name} ...', flush=True)
            make_cohort(d, SynthConfig(n_patients=a.patients, seed=seed, **spec), truth=t, overwrite=True, n_jobs=2,
                        show_progress=False)
        cohorts.append((d.name, d, t))
for i, d in enumerate(a.cohort):
    cohorts.append((Path(d).name, Path(d), Path(a.truth[i]) if i < len(a.truth) else None))

rows, work = [], Path(tempfile.mkdtemp(prefix='liver_pcr_bench-'))
for name, d, truth in cohorts:
    c = Cohort.load(d)
    tt = pd.read_csv(truth, dtype={'patient_id': str}) if truth else None
    oracle = oracle_auc(tt) if tt is not None else np.nan
    print(f'== {name}: {len(c)} patients, {int(c.labels.sum())} pCR, timepoints {c.timepoints}, '
          f'sequences {c.sequences}, oracle {oracle:.3f}', flush=True)
    ceiling = mk_ceiling = np.nan
    if tt is not None and f'radius_{c.timepoints[0]}' in tt:
        splits, lab = cohort_splits(c, 5, 0), c.labels.dropna()
        ceiling = table_cv_auc(ceiling_features(tt, c.timepoints).loc[lab.index], splits, lab)[0]
        mk_ceiling = table_cv_auc(ceiling_features(tt, c.timepoints, markers_only=True).loc[lab.index], splits, lab)[0]
        for m, v in (('ceiling', ceiling), ('markers ceiling', mk_ceiling), ('oracle', oracle)):
            rows.append(dict(cohort=name, model=m, auc=v, oracle=oracle, ceiling=ceiling, gap=oracle - v, gap_ceiling=ceiling - v))
        print(f'  ceiling {ceiling:.3f}  markers ceiling {mk_ceiling:.3f}', flush=True)
    t0 = time.time()
    measure_table(c, n_jobs=os.cpu_count() or 1, show_progress=False)
    print(f'  measurement extraction: {time.time() - t0:.1f} s (cached after the first call)', flush=True)
    for m in a.models:
        deep = m not in REFERENCES
        spec = replace(STAGES['relation'], name=m, **BLOCKS[m]) if m in BLOCKS else m
        t0 = time.time()
        r = run_cv_jobs(c, spec, work/name/m, jobs=a.jobs, ray=a.ray, show_progress=False, n_boot=1000, weights=a.weights if deep else None,
                   head=a.head if deep else None)
        wall = time.time() - t0
        cf = counterfactual_swap(work/name/m, c)['drop'] if deep and m != 'baseline' else np.nan
        rows.append(dict(cohort=name, model=m, auc=r['auc'], lo=r['auc_ci'][0], hi=r['auc_ci'][1], oracle=oracle,
                         ceiling=ceiling, gap=oracle - r['auc'], gap_ceiling=ceiling - r['auc'], counterfactual_drop=cf,
                         cv_seconds=wall))
        print(f'  {m:16s} AUC {r["auc"]:.3f} [{r["auc_ci"][0]:.3f}, {r["auc_ci"][1]:.3f}]  gap to ceiling {ceiling - r["auc"]:+.3f}  '
              f'to oracle {oracle - r["auc"]:+.3f}  swap drop {cf:+.3f}  {wall:.0f} s', flush=True)

per = pd.DataFrame(rows)
g = per.groupby('model', sort=False)
summary = pd.DataFrame({'AUC mean': g.auc.mean(), 'AUC SD': g.auc.std(ddof=1),
                        'gap to ceiling': g.gap_ceiling.mean(), 'gap to ceiling SD': g.gap_ceiling.std(ddof=1),
                        'gap to oracle': g.gap.mean(), 'gap SD': g.gap.std(ddof=1),
                        'counterfactual drop': g.counterfactual_drop.mean() if 'counterfactual_drop' in per else np.nan,
                        'CV seconds': g.cv_seconds.mean() if 'cv_seconds' in per else np.nan}).reset_index()
print(f'\n{len(cohorts)} cohorts; threads {torch.get_num_threads()}; weights {a.weights or "none (random trunk)"}; '
      f'head {a.head or "the default"}')
print(summary.to_string(index=False, float_format=lambda v: f'{v:.3f}'))
if a.out:
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    per.to_csv(out/'per_cohort.csv', index=False)
    summary.to_csv(out/'summary.csv', index=False)
    cells = [[f'{v:.3f}' if isinstance(v, float) else str(v) for v in r] for r in summary.itertuples(index=False)]
    md = ['| ' + ' | '.join(summary.columns) + ' |', '|' + '---|'*summary.shape[1]] + ['| ' + ' | '.join(r) + ' |' for r in cells]
    (out/'summary.md').write_text('\n'.join(md) + '\n')
    print(f'wrote {out}/per_cohort.csv, summary.csv, summary.md')
