"""Benchmark (not a test): how long the synthetic generator takes, and the oracle AUC it leaves to find.

    python bench/synth.py [--patients 120] [--seeds 0 1 2 3 4]

Generates the default cohort (SynthConfig(): 96 x 96 x 16 voxels, 2 timepoints x 4 sequences) into a
temporary folder with one worker process and with two, prints the wall time and time per patient of
each, validates the result with the reader (which knows nothing of the generator), and prints the
oracle AUC (the AUC of the true pCR probabilities: the ceiling for any model) for several seeds,
from the truth alone, without rendering. Figures are printed, never asserted. Target: 120 patients
in under 30 s on a 2-core machine.
"""
import argparse, os, shutil, sys, tempfile, time
from dataclasses import replace
from pathlib import Path

import pandas as pd

from liver_pcr.cohort.reader import Cohort
from liver_pcr.cohort.synth import SynthConfig, make_cohort, oracle_auc, truth_table


def time_generation(cfg: SynthConfig, n_jobs: int, root: Path) -> tuple[float, Path]:
    "Generate `cfg` with `n_jobs` workers; return the wall time and the folder."
    out = root/f'cohort_jobs{n_jobs}'
    t0 = time.perf_counter()
    make_cohort(out, cfg, n_jobs=n_jobs, show_progress=False)
    return time.perf_counter() - t0, out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--patients', type=int, default=120)
    ap.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2, 3, 4])
    ap.add_argument('--jobs', type=int, nargs='+', default=[2, 1], help='worker counts to time (default: 2 1)')
    args = ap.parse_args(argv)
    cfg = SynthConfig(n_patients=args.patients)
    print(f'liver_pcr synth benchmark: {cfg.n_patients} patients, shape {cfg.shape}, {len(cfg.timepoints)} timepoints x '
          f'{len(cfg.sequences)} sequences; {os.cpu_count()} CPUs; python {sys.version.split()[0]}')
    if hasattr(os, 'getloadavg'): print(f'load average before: {os.getloadavg()[0]:.2f} (timings are noisy on a busy machine)')
    root = Path(tempfile.mkdtemp(prefix='liver_pcr_bench_'))
    try:
        rows, outs = [], {}
        for n_jobs in args.jobs:
            wall, outs[n_jobs] = time_generation(cfg, n_jobs, root)
            rows.append(dict(n_jobs=n_jobs, wall_s=round(wall, 2), per_patient_ms=round(1000*wall/cfg.n_patients, 1),
                             under_30s='yes' if wall < 30 else 'NO'))
            print(f'  n_jobs={n_jobs}: {wall:.2f} s ({1000*wall/cfg.n_patients:.0f} ms per patient)', flush=True)
        print('\ngeneration\n' + pd.DataFrame(rows).to_string(index=False))

        out = outs[args.jobs[0]]
        size = sum(f.stat().st_size for f in out.rglob('*') if f.is_file())
        t0 = time.perf_counter()
        probs = Cohort.load(out).validate(show_progress=False)
        print(f'\nvalidation of {out.name}: {len(probs)} problem(s) in {time.perf_counter() - t0:.2f} s; '
              f'{size/2**20:.1f} MiB on disk')
        for p in probs[:10]: print('  ', p)

        rows = []
        for seed in args.seeds:
            t0 = time.perf_counter()
            tt = truth_table(replace(cfg, seed=seed))
            dt = time.perf_counter() - t0
            rows.append(dict(seed=seed, patients=len(tt), pcr=int(tt.pcr.sum()), pcr_share=round(tt.pcr.mean(), 3),
                             afp_producers=round(tt.afp_producer.mean(), 3), oracle_auc=round(oracle_auc(tt), 3),
                             truth_s=round(dt, 2)))
        df = pd.DataFrame(rows)
        print('\noracle AUC (true p(pCR) vs drawn label), from the truth table alone\n' + df.to_string(index=False))
        print(f'mean oracle AUC {df.oracle_auc.mean():.3f} (sd {df.oracle_auc.std():.3f}) over seeds {args.seeds}')
        return 1 if probs else 0
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == '__main__':
    sys.exit(main())
