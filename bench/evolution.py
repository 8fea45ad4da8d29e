"""The model evolution on several cohorts: per model the mean ± SD AUC over cohorts, the mean gap to the oracle
(and its SD), the counterfactual drop (baseline exam and markers swapped between test patients) and the CV wall time.
Every model: 5-fold patient-level CV, fast preset, on this machine's CPU threads.

Run: .venv/bin/python bench/evolution.py --set report     # seeds 100-104, made after the design was frozen
     .venv/bin/python bench/evolution.py --set tuning     # seeds 0-4, the cohorts the design was chosen on
     .venv/bin/python bench/evolution.py --cohort DIR --truth TRUTH.csv [--cohort DIR --truth TRUTH.csv ...]
     options: --models baseline relation ...  --weights trunk.pt  --head neural  --out DIR (tables as CSV/Markdown)
Cohorts of a --set are generated once into the cache (LIVER_PCR_CACHE or ~/.cache/liver_pcr)/bench.
"""
import argparse, json, os, sys, tempfile, time
from pathlib import Path
import numpy as np, pandas as pd
import torch

from liver_pcr.cohort import Cohort
from liver_pcr.core import cache_dir
from liver_pcr.synth import SynthConfig, make_cohort, oracle_auc
from liver_pcr.train import run_cv
from liver_pcr.interpret import counterfactual_swap

SETS = {   # seed → how the cohort differs from the generator's default (120 patients, pre/post, T2 DWI AP PVP, 96×96×16)
    'tuning': {0: {}, 1: {}, 2: {}, 3: dict(timepoints=('pre', 'mid', 'post')),
               4: dict(shape=(80, 80, 12), spacing=(4.0, 4.0, 7.0), p_missing_sequence=0.1)},
    'report': {100: {}, 101: dict(timepoints=('pre', 'mid', 'post')),
               102: dict(shape=(64, 64, 10), spacing=(5.0, 5.0, 8.0), p_missing_sequence=0.15),
               103: dict(sequences=('T2', 'DWI', 'ADC', 'AP', 'PVP'), noise=0.05),
               104: dict(timepoints=('baseline', 'followup'), misregistration_mm=6.0)},
}
MODELS = ('baseline', 'single', 'multi', 'relation', 'clinical', 'radiomics')

p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument('--set', choices=list(SETS), help='a named set of generated cohorts')
p.add_argument('--cohort', action='append', default=[], help='a cohort folder (repeatable)')
p.add_argument('--truth', action='append', default=[], help="its generator truth CSV (p_true, pcr), for the oracle")
p.add_argument('--models', nargs='+', default=list(MODELS))
p.add_argument('--weights', help='trunk weights file for the deep stages')
p.add_argument('--head', choices=['linear', 'neural'])
p.add_argument('--patients', type=int, default=120)
p.add_argument('--out', help='folder for per_cohort.csv, summary.csv and summary.md')
a = p.parse_args()
if not a.set and not a.cohort:
    p.error('give --set or --cohort')
torch.set_num_threads(os.cpu_count() or 1)
os.environ.setdefault('LIVER_PCR_QUIET', '1')

cohorts = []                                          # (name, folder, truth csv or None)
if a.set:
    root = cache_dir()/'bench'
    for seed, spec in SETS[a.set].items():
        d, t = root/f'{a.set}-seed{seed}-n{a.patients}', root/f'{a.set}-seed{seed}-n{a.patients}-truth.csv'
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
    oracle = oracle_auc(pd.read_csv(truth)) if truth else np.nan
    print(f'== {name}: {len(c)} patients, {int(c.labels.sum())} pCR, timepoints {c.timepoints}, '
          f'sequences {c.sequences}, oracle {oracle:.3f}', flush=True)
    for m in a.models:
        deep = m not in ('clinical', 'radiomics')
        t0 = time.time()
        r = run_cv(c, m, work/name/m, show_progress=False, n_boot=1000, weights=a.weights if deep else None,
                   head=a.head if deep else None)
        wall = time.time() - t0
        cf = counterfactual_swap(work/name/m, c)['drop'] if deep and m != 'baseline' else np.nan
        rows.append(dict(cohort=name, model=m, auc=r['auc'], lo=r['auc_ci'][0], hi=r['auc_ci'][1], oracle=oracle,
                         gap=oracle - r['auc'], counterfactual_drop=cf, cv_seconds=wall))
        print(f'  {m:10s} AUC {r["auc"]:.3f} [{r["auc_ci"][0]:.3f}, {r["auc_ci"][1]:.3f}]  gap {oracle - r["auc"]:+.3f}  '
              f'swap drop {cf:+.3f}  {wall:.0f} s', flush=True)

per = pd.DataFrame(rows)
g = per.groupby('model', sort=False)
summary = pd.DataFrame({'AUC mean': g.auc.mean(), 'AUC SD': g.auc.std(ddof=1), 'gap to oracle': g.gap.mean(),
                        'gap SD': g.gap.std(ddof=1), 'counterfactual drop': g.counterfactual_drop.mean(),
                        'CV seconds': g.cv_seconds.mean()}).reset_index()
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
