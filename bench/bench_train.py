"""Training throughput: ``squeezenet train``'s loop against a plain reference loop, on CIFAR-10.

Reference: torchvision ImageFolder + DataLoader (2 workers, JPEG decoding every epoch) + the
torchvision squeezenet1_1 with the same 32x32 stem, eager, fp32, contiguous memory. Ours: the
same model and batch through ``squeezenet.training`` (uint8 tensor cache decoded once,
batch-wise augmentation on tensors, channels_last, bf16 only where the CPU has it).
Both run the same number of optimizer steps after a warm-up; one table, with the ratio.

    python bench/bench_train.py [--shared ../shared/data] [--steps 30] [--batch 128]
"""
from __future__ import annotations

import argparse
import json
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--shared", type=Path, default=Path("../shared/data"))
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    data = a.shared / "cifar10"
    if not data.is_dir():
        print(f"skipped: {data} not found")
        return
    ours, info = our_loop(data, a.steps, a.batch)
    cache_only, _ = our_loop(data, a.steps, a.batch, channels_last=False)
    ref = reference_loop(data, a.steps, a.batch)
    print(f"{'loop':<58} {'images/s':>9} {'ratio':>6}")
    print(f"{'reference: ImageFolder + DataLoader + torchvision, fp32':<58} {ref:>9.1f} {1.0:>5.2f}x")
    print(f"{'squeezenet train, tensor cache only (contiguous NCHW)':<58} {cache_only:>9.1f} {cache_only / ref:>5.2f}x")
    print(f"{'squeezenet train (tensor cache, channels_last' + (', bf16' if info['bf16'] else '') + ')':<58} {ours:>9.1f} {ours / ref:>5.2f}x")
    from squeezenet.cpu import describe
    print(f"squeezenet1_1 32x32 stem, batch {a.batch}, {a.steps} steps, {torch.get_num_threads()} threads, {describe()}")
    if a.json:
        print(json.dumps({"reference_images_per_s": ref, "images_per_s": ours, "ratio": ours / ref,
                          "tensor_cache_only_images_per_s": cache_only, **info}))


if __name__ == "__main__":
    main()
