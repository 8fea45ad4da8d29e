"""GPU throughput: label-free pretraining (one GPU, or every GPU under torchrun) and the end-to-end neural head.

Run by bench/gpu.sh; by hand:
  .venv/bin/python bench/gpu.py pretrain [--batch 256] [--px 32] [--layer layer2] [--steps 20]
  .venv/bin/torchrun --standalone --nproc_per_node N bench/gpu.py pretrain ...     # DDP, --batch is the global batch
  .venv/bin/python bench/gpu.py head [--batch 32] [--px 32] [--steps 20]
Prints images/s (pretraining: images of the global batch per second, two views each; the head: patient images per second).
Random images of the model's shape: the cost of the steps, not of reading a cohort. The pretraining step is liver_pcr's
own (`_step_loss` on `_Embedder`, SyncBatchNorm, DDP, embeddings gathered across processes) with AdamW; the timings exclude
`--warmup` steps and end on torch.cuda.synchronize().
"""
import argparse, sys, time
import torch

from liver_pcr.models import pretrain as P
from liver_pcr.models.nets import CHANNELS, STAGES, PCRModel, ResNetTrunk, make_loss, neural

p = argparse.ArgumentParser()
p.add_argument('what', choices=['pretrain', 'head'])
p.add_argument('--batch', type=int, help='pretrain: global batch of images (default 256); head: patients (default 32)')
p.add_argument('--px', type=int, default=32, help='ROI side in pixels (default 32)')
p.add_argument('--k', type=int, default=3, help='slices per image (default 3)')
p.add_argument('--layer', default='layer2', help='pretrain: the deepest block trained (default layer2)')
p.add_argument('--method', default='vicreg', choices=['vicreg', 'simclr'])
p.add_argument('--steps', type=int, default=20, help='timed steps (default 20)')
p.add_argument('--warmup', type=int, default=5, help='untimed steps first (default 5)')
p.add_argument('--amp', action='store_true', help='bfloat16 autocast (pretrain itself runs float32)')
a = p.parse_args()

if not torch.cuda.is_available():
    sys.exit('bench/gpu.py: no CUDA GPU visible to torch; nothing to measure')
torch.backends.cudnn.benchmark = True


def timed(step, n, warmup):
    "Seconds per step, after `warmup` steps."
    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(n):
        step()
    torch.cuda.synchronize()
    return (time.perf_counter() - t) / n


def autocast():
    return torch.autocast('cuda', dtype=torch.bfloat16, enabled=a.amp)


def bench_pretrain():
    ddp = P.torchrun_env()
    rank, local, world = ddp or (0, 0, 1)
    B = a.batch or 256
    if B % world:
        sys.exit(f'--batch {B}: not divisible by the {world} processes')
    dev = P._process_device('cuda', local) if ddp else torch.device('cuda')
    with P._process_group(ddp, dev):
        torch.manual_seed(0)
        trunk = ResNetTrunk(a.k, stem='small').to(dev, memory_format=torch.channels_last).train()
        head = P.projector(CHANNELS[a.layer]).to(dev).train()
        for k, q in trunk.net.named_parameters():
            q.requires_grad_(k.startswith(P._blocks(a.layer)))
        model = P._Embedder(trunk, head, a.layer)
        if ddp:
            model = torch.nn.parallel.DistributedDataParallel(P.sync_batchnorm(model, dev), device_ids=[local])
        params = [q for q in model.parameters() if q.requires_grad]
        opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=1e-4)
        x = torch.randn(B // world, a.k, a.px, a.px, device=dev)
        g = torch.Generator().manual_seed(rank)
        per_image = [i * world + rank for i in range(B // world)]    # the views drawn per image, as under torchrun
        step_no = [0]

        def step():
            gi = P._image_generators(0, step_no[0], per_image) if ddp else g
            step_no[0] += 1
            with autocast():
                loss = P._step_loss(model, x, a.method, gi)
            opt.zero_grad()
            loss.backward()
            opt.step()

        dt = timed(step, a.steps, a.warmup)
        if rank == 0:
            name = torch.cuda.get_device_name(dev)
            how = f'DDP, {world} process(es), {B // world} images each' if ddp else 'one process'
            print(f'pretrain {a.method} to {a.layer}, {a.k}x{a.px}x{a.px}, global batch {B} ({how}) on {name}: '
                  f'{dt * 1000:.1f} ms/step, {B / dt:.0f} images/s ({2 * B / dt:.0f} views/s)'
                  f'{", bf16" if a.amp else ""}')


def bench_head():
    B, k, H = a.batch or 32, a.k, a.px
    cfg = neural(STAGES['relation'])
    tps, seqs = ['pre', 'post'], ['T2', 'DWI', 'AP', 'PVP']
    dev = torch.device('cuda')
    m = PCRModel(cfg, tps, seqs, k=k, n_clinical=12).to(dev).train()
    T, S = len(m.timepoints), len(m.sequences)
    x = torch.randn(B, len(tps), len(seqs), k, H, H, device=dev)
    pr = torch.ones(B, len(tps), len(seqs), dtype=torch.bool, device=dev)
    c, masks = torch.randn(B, 12, device=dev), torch.zeros(B, len(tps), k, H, H, device=dev)
    y = torch.rand(B, device=dev).round()
    opt, loss = torch.optim.AdamW(m.parameters(), 1e-3), make_loss(cfg, y.cpu()).to(dev)

    def step():
        with autocast():
            out = m(x, pr, c, masks)
        opt.zero_grad()
        loss(out.float(), y).backward()
        opt.step()

    dt = timed(step, a.steps, a.warmup)
    print(f'neural head ({cfg.name}, end to end), {B} patients x {T * S} images of {k}x{H}x{H} on '
          f'{torch.cuda.get_device_name(dev)}: {dt * 1000:.1f} ms/step, {B / dt:.0f} patients/s, '
          f'{B * T * S / dt:.0f} images/s{", bf16" if a.amp else ""}')


bench_pretrain() if a.what == 'pretrain' else bench_head()
