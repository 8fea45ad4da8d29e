"""Learning curve: the cost of one subsample per model on the course cohort, and the estimated cost of tutorial 10's real setting.

Run: .venv/bin/python bench/learning_curve.py [--size 40] [--models relation clinical radiomics response]
Prints each model's seconds for one 5-fold cross-validation of one subsample (caches warm after the first
size), then the estimate for 5 sizes x 5 draws. Runs go to a temporary folder, removed at the end.
"""
import argparse, tempfile, time, warnings
from pathlib import Path
from liver_pcr.course import course_cohort
from liver_pcr.evaluate.learning_curve import learning_curve

p = argparse.ArgumentParser()
p.add_argument('--size', type=int, nargs='+', default=[40, 120], help='subsample sizes to time (default 40 120)')
p.add_argument('--models', nargs='+', default=['relation', 'clinical', 'radiomics', 'response'])
p.add_argument('--folds', type=int, default=5)
a = p.parse_args()
warnings.simplefilter('ignore')
c, _ = course_cohort()
print(c)
runs = Path(tempfile.mkdtemp(prefix='bench_lc-'))
per = {}
for n in a.size:
    t = time.perf_counter()
    df = learning_curve(c, a.models, [n], repeats=1, n_folds=a.folds, runs=runs, check=False, show_progress=False)
    print(f'n={n}: ' + ', '.join(f'{r.model} {r.seconds:.0f} s (AUC {r.auc:.3f}, {r.n_features:.0f} features)'
                                for r in df.itertuples()) + f'; {time.perf_counter() - t:.0f} s in all')
    per[n] = df.seconds.sum()
draws = 25  # tutorial 10: sizes 40 60 80 100 120, 5 draws each
mean = sum(per.values()) / len(per)
print(f'estimated real setting of tutorial 10: {draws} subsamples x {mean:.0f} s = {draws * mean / 60:.0f} min '
      f'(plus generating and cross-validating the 300-patient cohort)')
