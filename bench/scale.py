"""Benchmark (not a test): wall time and peak memory of each `liver-pcr` command against the cohort's size.

    python bench/scale.py [--sizes 120 480 1920] [--commands validate cv train predict explain compare ablate demo]
                          [--preset fast] [--folds 5] [--model relation] [--ablate-unit=-AP:0] [--demo-unit relation:0]
                          [--max-rss-gb 6] [--csv bench/results/scale.csv]

Builds each synthetic cohort once (`SynthConfig(n_patients=n, seed=0)`, into the cache folder's `bench/`;
for 120 the course's identical `course/cohort120-seed0` is reused when it is there), then runs every chosen
command as a subprocess under `/usr/bin/time -v` (where it exists, else `getrusage(RUSAGE_CHILDREN)`), with a
watchdog that kills it when the resident memory of its process tree passes `--max-rss-gb`:

    validate COHORT                                   (opens every volume)
    cv COHORT --model M --preset P --folds K          (the run that explain and compare read)
    train COHORT --model M --preset P
    predict TRAIN_RUN COHORT
    explain CV_RUN COHORT --patient <first labelled>
    compare CV_RUN CLINICAL_CV_RUN                    (the clinical reference's cv is a setup step, not timed)
    ablate COHORT --preset P --folds K [--unit NAME:FOLD]
    demo --preset P --folds K [--patients n] [--unit MODEL:FOLD]

A command another one needs (train for predict, cv for explain and compare) runs as an untimed setup step when
it is not chosen. `demo` has no cohort argument: at 120 it reads the cached course cohort; at other sizes it
generates its cohort itself (`--patients n`), and that generation is part of its time, unless `--demo-unit` is
given (then the bench cohort is linked into its folder, which the demo reuses for units). `ablate` and `demo` fit
many models; `--ablate-unit` / `--demo-unit` time one fold of one variant instead (the CLI's `--unit`).

Prints a table command x size -> seconds and peak RSS (GB: the larger of time's figure for the biggest process
and the watchdog's sampled total of the process tree), then per command the exponent b of time ~ a*n^b (least
squares on log-log over the sizes that ran) and whether each target holds. Rows are merged into `--csv` (a row
measured now replaces the one for the same command, size and settings); the fits use every row there with the
same settings. Figures are printed, never asserted.
Targets (issue 20): time exponent <= 1.1; peak RSS <= 2 GB at 1,920 patients for each command; `explain` <= 30 s
and <= 1 GB at 120 patients.
"""
import argparse, csv, datetime, math, os, re, resource, shutil, subprocess, sys, tempfile, threading, time
from pathlib import Path

from liver_pcr.core import cache_dir

COMMANDS = ['validate', 'cv', 'train', 'predict', 'explain', 'compare', 'ablate', 'demo']
FIELDS = ['command', 'patients', 'wall_s', 'peak_rss_gb', 'time_rss_gb', 'tree_rss_gb', 'rc', 'killed',
          'model', 'preset', 'folds', 'unit', 'load_avg', 'cpus', 'when']
TIME_EXPONENT, RSS_GB_1920, EXPLAIN_S_120, EXPLAIN_GB_120 = 1.1, 2.0, 30.0, 1.0


def cli() -> list[str]:
    "The command that runs `liver-pcr` with this interpreter (so the package on its path is the one measured)."
    return [sys.executable, '-c', 'import sys; from liver_pcr.cli import main; sys.exit(main())']


def cohort_for(n: int, seed: int = 0) -> Path:
    "The benchmark's cohort of `n` patients: a cached one, else generated (minutes) into the cache."
    own = cache_dir() / 'bench' / f'cohort{n}-seed{seed}'
    course = cache_dir() / 'course' / f'cohort{n}-seed{seed}'  # liver_pcr.course_cohort: the same SynthConfig
    for d in (own, course):
        if (d / 'patients.csv').exists():
            return d
    from liver_pcr.cohort.synth import SynthConfig, make_cohort

    t = time.perf_counter()
    make_cohort(own, SynthConfig(n_patients=n, seed=seed), n_jobs=2, overwrite=own.exists(), show_progress=False)
    print(f'generated {n} patients in {time.perf_counter() - t:.0f} s into {own}', flush=True)
    return own


def tree_rss_kb(pid: int) -> int:
    "Resident memory (KiB) of process `pid` and all its descendants."
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            total += int(re.search(r'VmRSS:\s+(\d+)', Path(f'/proc/{p}/status').read_text()).group(1))
            todo += [int(c) for c in Path(f'/proc/{p}/task/{p}/children').read_text().split()]
        except (OSError, AttributeError):
            pass
    return total


def rss_watchdog(proc: subprocess.Popen, limit_kb: float, state: dict) -> None:
    "Record the peak tree RSS of `proc`; kill it (and its children) when it passes `limit_kb`."
    while proc.poll() is None:
        kb = tree_rss_kb(proc.pid)
        state['peak_kb'] = max(state['peak_kb'], kb)
        if kb > limit_kb:
            state['killed'] = True
            subprocess.run(['pkill', '-KILL', '-P', str(proc.pid)], check=False)  # children of this one process
            proc.kill()
            return
        time.sleep(0.2)


def timed(cmd: list[str], max_rss_gb: float) -> dict:
    "Run `cmd`; its wall time, peak RSS (GB, both measures), exit status and output."
    use_time = Path('/usr/bin/time').exists()
    full = ['/usr/bin/time', '-v', *cmd] if use_time else cmd
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t = time.perf_counter()
    proc = subprocess.Popen(full, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    state = dict(peak_kb=0, killed=False)
    w = threading.Thread(target=rss_watchdog, args=(proc, max_rss_gb * 2**20, state), daemon=True)
    w.start()
    out, err = proc.communicate()
    wall = time.perf_counter() - t
    w.join(1)
    m = re.search(r'Maximum resident set size \(kbytes\): (\d+)', err) if use_time else None
    time_kb = int(m.group(1)) if m else resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if not m and time_kb <= before:
        time_kb = float('nan')  # an earlier child was bigger: getrusage keeps the maximum over all children
    gb = 2**20
    peak = max(x for x in (time_kb / gb, state['peak_kb'] / gb, 0.0) if not math.isnan(x))
    return dict(wall_s=wall, peak_rss_gb=peak, time_rss_gb=time_kb / gb, tree_rss_gb=state['peak_kb'] / gb,
                rc=proc.returncode, killed=state['killed'], out=out, err=err)


def first_labelled(cohort: Path) -> str:
    "The id of the cohort's first labelled patient (read from its tables, without opening a volume)."
    from liver_pcr.cohort.reader import Cohort

    return Cohort.load(cohort).labelled_ids[0]


def command_lines(name: str, n: int, cohort: Path, work: Path, a) -> list[str]:
    "The `liver-pcr` arguments of command `name` at `n` patients."
    train_opts = ['--preset', a.preset, '--seed', str(a.seed)]
    cv_opts = [*train_opts, '--folds', str(a.folds)]
    if name == 'validate':
        return ['validate', str(cohort)]
    if name == 'cv':
        return ['cv', str(cohort), '--model', a.model, '--out', str(work / 'cv'), *cv_opts]
    if name == 'cv-clinical':
        return ['cv', str(cohort), '--model', 'clinical', '--out', str(work / 'cv-clinical'), *cv_opts]
    if name == 'train':
        return ['train', str(cohort), '--model', a.model, '--out', str(work / 'train'), *train_opts]
    if name == 'predict':
        return ['predict', str(work / 'train'), str(cohort), '--out', str(work / 'predict.csv')]
    if name == 'explain':
        return ['explain', str(work / 'cv'), str(cohort), '--patient', first_labelled(cohort),
                '--out', str(work / 'explain')]
    if name == 'compare':
        return ['compare', str(work / 'cv'), str(work / 'cv-clinical'), '--out', str(work / 'compare')]
    if name == 'ablate':
        return ['ablate', str(cohort), '--out', str(work / 'ablate'), *cv_opts,
                *([f'--unit={a.ablate_unit}'] if a.ablate_unit else [])]
    if name == 'demo':
        out = work / 'demo'
        if n != 120 and a.demo_unit:  # the demo reuses a cohort in its folder for units
            out.mkdir(parents=True, exist_ok=True)
            (out / 'cohort').symlink_to(cohort.resolve(), target_is_directory=True)
        return ['demo', '--out', str(out), *cv_opts, *([] if n == 120 else ['--patients', str(n)]),
                *([f'--unit={a.demo_unit}'] if a.demo_unit else [])]
    raise ValueError(name)


NEEDS = {'predict': ['train'], 'explain': ['cv'], 'compare': ['cv', 'cv-clinical']}


def unit_of(name: str, a) -> str:
    return (a.ablate_unit if name == 'ablate' else a.demo_unit if name == 'demo' else None) or ''


def run_size(n: int, a, rows: list[dict]) -> None:
    "Run the chosen commands (and their untimed setup steps) on the cohort of `n` patients."
    cohort = cohort_for(n, a.seed)
    work = Path(tempfile.mkdtemp(prefix=f'liver_pcr_bench_scale-{n}-', dir=a.tmp))
    done = set()
    print(f'\n{n} patients: cohort {cohort}, work {work}; load average {os.getloadavg()[0]:.2f}', flush=True)
    try:
        for name in [c for c in COMMANDS if c in a.commands]:
            for dep in NEEDS.get(name, []):
                if dep in done:
                    continue
                r = timed([*cli(), *command_lines(dep, n, cohort, work, a)], 64.0)
                print(f'  setup {dep}: {r["wall_s"]:.1f} s, {r["peak_rss_gb"]:.2f} GB, exit {r["rc"]}', flush=True)
                if r['rc']:
                    print(r['err'][-2000:])
                done.add(dep)
            load = os.getloadavg()[0]
            r = timed([*cli(), *command_lines(name, n, cohort, work, a)], a.max_rss_gb)
            done.add(name)
            state = f'KILLED above {a.max_rss_gb} GB' if r['killed'] else f'exit {r["rc"]}'
            print(f'  {name:9s} {r["wall_s"]:8.1f} s  {r["peak_rss_gb"]:6.2f} GB  {state}  (load {load:.1f})',
                  flush=True)
            if r['rc'] and not r['killed']:
                print(r['err'][-2000:])
            rows.append(dict(command=name, patients=n, wall_s=f'{r["wall_s"]:.2f}',
                             peak_rss_gb=f'{r["peak_rss_gb"]:.3f}', time_rss_gb=f'{r["time_rss_gb"]:.3f}',
                             tree_rss_gb=f'{r["tree_rss_gb"]:.3f}', rc=r['rc'], killed=int(r['killed']),
                             model=a.model, preset=a.preset, folds=a.folds, unit=unit_of(name, a),
                             load_avg=f'{load:.2f}', cpus=os.cpu_count(),
                             when=datetime.datetime.now(datetime.UTC).strftime('%Y-%m-%dT%H:%M:%SZ')))
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)


def settings(r: dict) -> tuple:
    return (r['model'], r['preset'], str(r['folds']), r['unit'])


def merged(path: Path, new: list[dict]) -> list[dict]:
    "The rows in `path`, with those measured now replacing the ones for the same command, size and settings."
    old = list(csv.DictReader(path.open())) if path.exists() else []
    key = lambda r: (r['command'], str(r['patients']), *settings(r))  # noqa: E731
    fresh = {key(r) for r in new}
    rows = [r for r in old if key(r) not in fresh] + new
    return sorted(rows, key=lambda r: (COMMANDS.index(r['command']), int(r['patients']), settings(r)))


def exponent(ns: list[float], ts: list[float]) -> float:
    "b of t ~ a*n^b, least squares on log-log."
    if len(set(ns)) < 2:
        return float('nan')
    x, y = [math.log(v) for v in ns], [math.log(v) for v in ts]
    mx, my = sum(x) / len(x), sum(y) / len(y)
    return sum((u - mx) * (v - my) for u, v in zip(x, y)) / sum((u - mx) ** 2 for u in x)


def verdict(ok) -> str:
    return 'n/a' if ok is None else 'yes' if ok else 'NO'


def report(rows: list[dict], a) -> None:
    "Print the table and, per command, the fitted exponents and the targets."
    rows = [r for r in rows if r['command'] in a.commands and r['model'] == a.model and r['preset'] == a.preset
            and str(r['folds']) == str(a.folds) and r['unit'] == unit_of(r['command'], a)]
    sizes = sorted({int(r['patients']) for r in rows})
    cell = {(r['command'], int(r['patients'])): r for r in rows}
    print(f'\nmodel {a.model}, preset {a.preset}, {a.folds} folds; seconds / peak RSS GB '
          f'(* failed or killed)')
    print(f'{"command":10s}' + ''.join(f'{n:>20d}' for n in sizes))
    for c in [c for c in COMMANDS if c in a.commands]:
        line = f'{c:10s}'
        for n in sizes:
            r = cell.get((c, n))
            bad = r is not None and (int(r['rc']) or int(r['killed']))
            line += f'{"-":>20s}' if r is None else f'{float(r["wall_s"]):9.1f} s {float(r["peak_rss_gb"]):5.2f} GB' \
                                                      + ('*' if bad else ' ')
        print(line)
    print(f'\n{"command":10s} {"time b":>7s} {"rss b":>7s} {"b<=1.1":>7s} {"<=2GB@1920":>11s}  other')
    for c in [c for c in COMMANDS if c in a.commands]:
        ok = [r for r in rows if r['command'] == c and not int(r['rc']) and not int(r['killed'])]
        ns = [int(r['patients']) for r in ok]
        bt = exponent(ns, [float(r['wall_s']) for r in ok])
        bm = exponent(ns, [float(r['peak_rss_gb']) for r in ok])
        r1920 = cell.get((c, 1920))
        mem = None if r1920 is None else not int(r1920['killed']) and float(r1920['peak_rss_gb']) <= RSS_GB_1920
        other = ''
        if r1920 is None and len(set(ns)) > 1:  # memory is a constant plus a part per patient: a straight line
            gbs = [float(r['peak_rss_gb']) for r in ok]
            mn, mg = sum(ns) / len(ns), sum(gbs) / len(gbs)
            slope = sum((u - mn) * (v - mg) for u, v in zip(ns, gbs)) / sum((u - mn) ** 2 for u in ns)
            other = f'RSS at 1920 extrapolated (linear in n) {mg + slope * (1920 - mn):.2f} GB'
        if c == 'explain':
            r120 = cell.get(('explain', 120))
            if r120 is None:
                other = 'explain at 120 not run; ' + other
            else:
                ok = not int(r120['rc']) and not int(r120['killed'])
                s, gb = float(r120['wall_s']), float(r120['peak_rss_gb'])
                other = (f'at 120: {s:.1f} s <= 30: {verdict(ok and s <= EXPLAIN_S_120)}, '
                         f'{gb:.2f} GB <= 1: {verdict(ok and gb <= EXPLAIN_GB_120)}; ' + other)
        print(f'{c:10s} {bt:7.2f} {bm:7.2f} {verdict(None if math.isnan(bt) else bt <= TIME_EXPONENT):>7s} '
              f'{verdict(mem):>11s}  {other}')


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--sizes', type=int, nargs='+', default=[120, 480, 1920], help='cohort sizes (patients)')
    ap.add_argument('--commands', nargs='+', choices=COMMANDS, default=COMMANDS, help='the commands to time')
    ap.add_argument('--preset', default='fast', choices=['fast', 'full', 'tiny'])
    ap.add_argument('--folds', type=int, default=5)
    ap.add_argument('--model', default='relation', help='the model of cv, train, predict, explain, compare')
    ap.add_argument('--seed', type=int, default=0)
    ap.add_argument('--ablate-unit', help="time ablate's one fold of one variant, e.g. --ablate-unit=-AP:0")
    ap.add_argument('--demo-unit', help="time demo's one fold of one model, e.g. --demo-unit relation:0")
    ap.add_argument('--max-rss-gb', type=float, default=6.0, help='kill a command above this memory')
    ap.add_argument('--csv', default=str(Path(__file__).parent / 'results' / 'scale.csv'))
    ap.add_argument('--tmp', help='folder for the run folders (default: the system temporary folder)')
    ap.add_argument('--keep', action='store_true', help='keep the run folders')
    ap.add_argument('--report-only', action='store_true', help='print the table from --csv, run nothing')
    a = ap.parse_args(argv)
    os.environ.setdefault('LIVER_PCR_QUIET', '1')
    os.environ.setdefault('MPLBACKEND', 'Agg')
    print(f'liver_pcr scale benchmark: {os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.2f}', flush=True)
    path = Path(a.csv)
    rows = []
    if not a.report_only:
        for n in a.sizes:
            run_size(n, a, rows)
            path.parent.mkdir(parents=True, exist_ok=True)
            all_rows = merged(path, rows)
            with path.open('w', newline='') as f:
                w = csv.DictWriter(f, FIELDS)
                w.writeheader()
                w.writerows(all_rows)
    report(merged(path, rows), a)
    return 0


if __name__ == '__main__':
    sys.exit(main())
