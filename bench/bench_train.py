"""Training throughput: ``squeezenet train``'s loop against a plain reference loop, on CIFAR-10.

Reference: torchvision ImageFolder + DataLoader (2 workers, JPEG decoding every epoch) + the
torchvision squeezenet1_1 with the same 32x32 stem, eager, fp32, contiguous memory. Ours: the
same model and batch through ``squeezenet.training`` (uint8 tensor cache decoded once,
batch-wise augmentation on tensors, channels_last, bf16 only where the CPU has it).
Both run the same number of optimizer steps after a warm-up; one table, with the ratio.

``--processes N`` adds a second table: the one-hour recipe's model (configs/cifar10_fast.yaml,
global batch 256) in one process using every thread, against ``torchrun --nproc_per_node=N``
(DDP over gloo, one thread a process: torchrun's default), alternating, fresh processes each time.

    python bench/bench_train.py [--shared ../shared/data] [--steps 30] [--batch 128] [--processes 2]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def reference_loop(data: Path, steps: int, batch: int) -> float:
    import torchvision
    import torchvision.transforms as T
    ds = torchvision.datasets.ImageFolder(str(data / "train"), T.Compose([
        T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
        T.Normalize((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))]))
    loader = torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=True, num_workers=2, drop_last=True)
    model = torchvision.models.squeezenet1_1(num_classes=10)
    model.features[0] = nn.Conv2d(3, 64, 3, 1, 1)   # the same 32x32 stem as ours
    model.features[2] = nn.Identity()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    it = iter(loader)
    for i in range(steps + 3):
        if i == 3:
            start = time.perf_counter()
        x, y = next(it)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return steps * batch / (time.perf_counter() - start)


def our_loop(data: Path, steps: int, batch: int, channels_last: bool = True) -> tuple[float, dict]:
    from squeezenet.models import create_model
    from squeezenet.training import Dist, build_data, load_config, train_one_epoch
    from squeezenet.training.loop import bf16_pays, make_scheduler
    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "cifar10.yaml", batch_size=batch,
                      channels_last=channels_last)
    d = Dist()
    tb, _, _ = build_data(data, cfg, d, batch, log=lambda *a: None)   # decoded once (cached after the first run)
    model = create_model("squeezenet1_1", num_classes=10, small_input=True)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    sched = make_scheduler(opt, cfg, 1000)
    train_one_epoch(model, tb, opt, sched, d=d, epoch=0, max_steps=3, autocast=bf16_pays(d.device))
    r = train_one_epoch(model, tb, opt, sched, d=d, epoch=1, max_steps=steps, autocast=bf16_pays(d.device))
    return r["images_per_s"], {"bf16": bf16_pays(d.device), "channels_last": channels_last}


def recipe_worker(data: Path, steps: int) -> None:
    """One measurement of the one-hour recipe's training step, in this process or as one torchrun rank."""
    from squeezenet.models import create_model
    from squeezenet.training import build_data, load_config, setup_distributed, train_one_epoch
    from squeezenet.training.loop import bf16_pays, make_optimizer, make_scheduler
    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "cifar10_fast.yaml")
    d = setup_distributed()
    tb, _, classes = build_data(data, cfg, d, cfg.batch_size // d.world, log=lambda *a: None)
    model = create_model(cfg.model, num_classes=len(classes), **cfg.model_kwargs).to(memory_format=torch.channels_last)
    opt = make_optimizer(model, cfg, cfg.lr)
    sched = make_scheduler(opt, cfg, 1000)
    net = nn.parallel.DistributedDataParallel(model) if d.world > 1 else model
    kw = {"d": d, "autocast": bf16_pays(d.device), "label_smoothing": cfg.label_smoothing}
    train_one_epoch(net, tb, opt, sched, epoch=0, max_steps=3, **kw)
    r = train_one_epoch(net, tb, opt, sched, epoch=1, max_steps=steps, **kw)
    if d.main:
        print(json.dumps({"images_per_s": r["images_per_s"], "processes": d.world, "threads": torch.get_num_threads()}))


def _recipe_run(data: Path, steps: int, processes: int) -> dict:
    script = [str(Path(__file__).resolve()), "--worker", "--shared", str(data.parent), "--steps", str(steps)]
    if processes > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}", *script]
    else:
        cmd = [sys.executable, *script]
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}  # torchrun sets 1 a rank itself
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--shared", type=Path, default=Path("../shared/data"))
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--processes", type=int, default=0,
                   help="also compare one process against torchrun with this many (0: skip)")
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds of that comparison")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    data = a.shared / "cifar10"
    if not data.is_dir():
        print(f"skipped: {data} not found")
        return
    if a.worker:
        recipe_worker(data, a.steps)
        return
    ours, info = our_loop(data, a.steps, a.batch)
    cache_only, _ = our_loop(data, a.steps, a.batch, channels_last=False)
    ref = reference_loop(data, a.steps, a.batch)
    print(f"{'loop':<58} {'images/s':>9} {'ratio':>6}")
    print(f"{'reference: ImageFolder + DataLoader + torchvision, fp32':<58} {ref:>9.1f} {1.0:>5.2f}x")
    print(f"{'squeezenet train, tensor cache only (contiguous NCHW)':<58} {cache_only:>9.1f} {cache_only / ref:>5.2f}x")
    ours_label = "squeezenet train (tensor cache, channels_last" + (", bf16" if info["bf16"] else "") + ")"
    print(f"{ours_label:<58} {ours:>9.1f} {ours / ref:>5.2f}x")
    from squeezenet.cpu import describe
    print(f"squeezenet1_1 32x32 stem, batch {a.batch}, {a.steps} steps, {torch.get_num_threads()} threads, "
          f"{describe()}")
    summary = {"reference_images_per_s": ref, "images_per_s": ours, "ratio": ours / ref,
               "tensor_cache_only_images_per_s": cache_only, **info}
    if a.processes > 1:
        one, many = [], []
        for _ in range(a.rounds):   # alternating, so a change in the host's speed hits both rows
            one.append(_recipe_run(data, a.steps, 1))
            many.append(_recipe_run(data, a.steps, a.processes))
        r1 = [r["images_per_s"] for r in one]
        rn = [r["images_per_s"] for r in many]
        m1, mn = sum(r1) / len(r1), sum(rn) / len(rn)
        print()
        print(f"{'configs/cifar10_fast.yaml model, global batch 256':<58} {'images/s':>9} {'ratio':>6}   rounds")
        print(f"{'one process, ' + str(one[0]['threads']) + ' threads':<58} {m1:>9.1f} {1.0:>5.2f}x   "
              + ", ".join(f"{v:.0f}" for v in r1))
        ddp_label = f"torchrun {a.processes} processes x {many[0]['threads']} thread (DDP, gloo)"
        print(f"{ddp_label:<58} "
              f"{mn:>9.1f} {mn / m1:>5.2f}x   " + ", ".join(f"{v:.0f}" for v in rn))
        summary.update({"recipe_one_process_images_per_s": m1, "recipe_ddp_images_per_s": mn,
                        "recipe_ddp_ratio": mn / m1, "processes": a.processes})
    if a.json:
        print(json.dumps(summary))


if __name__ == "__main__":
    main()
