"""Benchmark (not a test): wall time and peak memory of `liver-pcr explain` on a 120-patient cohort.

    python bench/explain.py [--patients 120] [--model relation] [--head neural [--epochs 3]] [--cohort DIR] [--max-rss-gb 4]

Builds the synthetic cohort once (`SynthConfig(n_patients=120, seed=0)`, into the cache folder, or
reuses it, or the course's identical one), runs `liver-pcr train --preset fast` on it (reused when the
run folder is there), then `liver-pcr explain --patient <first labelled patient>` as a subprocess, and
prints the explain's wall time and peak resident memory (`/usr/bin/time -v` where it exists, else
`getrusage(RUSAGE_CHILDREN)`). A watchdog kills the explain when its memory passes `--max-rss-gb`
(the 23 GB this once reached would take the machine down). Figures are printed, never asserted.
Targets (issue 20): <= 30 s and <= 1 GB.
"""
import argparse, os, shutil, sys, tempfile
from pathlib import Path

from liver_pcr.core import cache_dir

sys.path.insert(0, str(Path(__file__).parent))
from scale import cli, timed  # noqa: E402  (one subprocess runner, peak RSS and watchdog, for every benchmark)
from scale import cohort_for as cached_cohort  # noqa: E402


def cohort_for(n: int, seed: int, given: str | None) -> Path:
    "The benchmark's cohort: `given`, else a cached one, else generated (a few minutes) into the cache."
    return Path(given) if given else cached_cohort(n, seed)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--patients', type=int, default=120)
    ap.add_argument('--seed', type=int, default=0)
    ap.add_argument('--model', default='relation')
    ap.add_argument('--head', choices=['linear', 'neural'], help="the model's head (default: the stage's, linear)")
    ap.add_argument('--epochs', type=int, help="train's --epochs (neural head; the explain's cost does not depend on it)")
    ap.add_argument('--cohort', help='an existing cohort (default: the cached synthetic one)')
    ap.add_argument('--run', help='the train run folder (default: in the cache; reused if there)')
    ap.add_argument('--retrain', action='store_true', help='train again even if the run folder exists')
    ap.add_argument('--max-rss-gb', type=float, default=4.0, help='kill the explain above this memory')
    ap.add_argument('--repeats', type=int, default=1, help='times the explain is run')
    a = ap.parse_args(argv)
    cohort = cohort_for(a.patients, a.seed, a.cohort)
    tag = a.model + (f'-{a.head}' if a.head else '')
    run = Path(a.run) if a.run else cache_dir() / 'bench' / f'explain-run-{cohort.name}-{tag}'
    print(f'liver_pcr explain benchmark: cohort {cohort}, model {tag} (fast preset); {os.cpu_count()} CPUs; '
          f'load average {os.getloadavg()[0]:.2f}', flush=True)
    if a.retrain or not (run / 'config.json').exists():
        if run.exists():
            shutil.rmtree(run)
        r = timed([*cli(), 'train', str(cohort), '--model', a.model, '--out', str(run), '--preset', 'fast',
                   '--seed', str(a.seed), *(['--head', a.head] if a.head else []),
                   *(['--epochs', str(a.epochs)] if a.epochs else [])], 64.0)
        print(f'train: {r["wall_s"]:.1f} s, peak RSS {1024 * r["peak_rss_gb"]:.0f} MiB, exit {r["rc"]}', flush=True)
        if r['rc']:
            print(r['err'][-3000:])
            return 1
    else:
        print(f'train: reusing {run}')
    from liver_pcr.cohort.reader import Cohort

    pid = Cohort.load(cohort).labelled_ids[0]
    out = Path(tempfile.mkdtemp(prefix='bench_explain-'))
    try:
        for i in range(a.repeats):
            r = timed([*cli(), 'explain', str(run), str(cohort), '--patient', pid, '--out', str(out / str(i))],
                      a.max_rss_gb)
            state = f'KILLED above {a.max_rss_gb} GB' if r['killed'] else f'exit {r["rc"]}'
            print(f'explain --patient {pid}: {r["wall_s"]:.1f} s wall, peak RSS {1024 * r["peak_rss_gb"]:.0f} MiB, {state} '
                  f'(targets: <= 30 s, <= 1024 MiB)', flush=True)
            if r['rc'] and not r['killed']:
                print(r['err'][-3000:])
            else:
                print('  ' + r['out'].strip()[-400:])
    finally:
        shutil.rmtree(out, ignore_errors=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
