"""Training throughput of each model stage against a bare torchvision ResNet18 loop on the same images.

Run: .venv/bin/python bench/train.py [--px 32] [--batch 16] [--steps 8]
Prints patients/s and images/s per stage, and the ratio to the bare loop (target: relation >= 0.9);
stage and bare loop are timed in turn `--repeats` times and the medians compared (CPU timings are noisy).
"""
import argparse, time
import torch, torch.nn as nn, torchvision
from liver_pcr.models.nets import STAGES, PCRModel, make_loss

p = argparse.ArgumentParser()
p.add_argument('--px', type=int, default=32); p.add_argument('--k', type=int, default=3)
p.add_argument('--batch', type=int, default=16, help='patients per step')
p.add_argument('--steps', type=int, default=8); p.add_argument('--repeats', type=int, default=5, help='interleaved (stage, bare) timings; the median is printed'); p.add_argument('--threads', type=int, default=0)
a = p.parse_args()
if a.threads: torch.set_num_threads(a.threads)
T, S, B, k, H = 2, 4, a.batch, a.k, a.px
tps, seqs = ['pre', 'post'], ['T2', 'DWI', 'AP', 'PVP']

def timed(step, n_warm=2):
    "Seconds per step (after a warm-up); returns a function that times it again."
    for _ in range(n_warm): step()
    def once():
        t = time.perf_counter()
        for _ in range(a.steps): step()
        return (time.perf_counter() - t)/a.steps
    return once

def bare(n_images):
    m = torchvision.models.resnet18(num_classes=1); m.conv1 = nn.Conv2d(k, 64, 7, 2, 3, bias=False)
    opt = torch.optim.AdamW(m.parameters(), 1e-3); x = torch.randn(n_images, k, H, H); y = torch.rand(n_images).round()
    def step():
        opt.zero_grad(); nn.functional.binary_cross_entropy_with_logits(m(x).squeeze(-1), y).backward(); opt.step()
    return timed(step)

def stage(name):
    cfg = STAGES[name]; m = PCRModel(cfg, tps, seqs, k=k, n_clinical=12)
    n_img = len(m.timepoints)*len(m.sequences)
    x, pr = torch.randn(B, T, S, k, H, H), torch.ones(B, T, S, dtype=torch.bool)
    c, masks, y = torch.randn(B, 12), torch.zeros(B, T, k, H, H), torch.rand(B).round()
    opt, loss = torch.optim.AdamW(m.parameters(), 1e-3), make_loss(cfg, y)
    def step():
        opt.zero_grad(); loss(m(x, pr, c, masks), y).backward(); opt.step()
    return timed(step), n_img

print(f'torch {torch.__version__}, {torch.get_num_threads()} threads; batch {B} patients, {k}x{H}x{H} images, {a.steps} timed steps')
print(f"{'stage':10s} {'img/patient':>11s} {'patients/s':>10s} {'images/s':>9s} {'bare img/s':>10s} {'ratio':>6s}")
import statistics
for name in STAGES:
    t_stage, n_img = stage(name); t_bare = bare(B*n_img)
    pairs = [(t_stage(), t_bare()) for _ in range(a.repeats)]       # interleaved, so a busy moment hits both
    dt, db = statistics.median(p[0] for p in pairs), statistics.median(p[1] for p in pairs)
    print(f'{name:10s} {n_img:11d} {B/dt:10.1f} {B*n_img/dt:9.1f} {B*n_img/db:10.1f} {db/dt:6.2f}')
