"""Why a SqueezeNet stalls at loss ln(10) on CIFAR-10: log the share of conv10's outputs above zero.

The paper's head is conv10 -> ReLU -> average pool. If early steps push every class score below
zero, that ReLU passes no gradient and the network stays dead. This runs a few steps at a
constant learning rate with the small-image recipe's data and optimizer and prints, per step,
the loss, the share of conv10 outputs alive and the mean magnitude of conv10's input::

    python bench/diag_dead_logits.py --model squeezenet1_0_simple_bypass --lr 0.1
    python bench/diag_dead_logits.py --model squeezenet1_0_simple_bypass --lr 0.02 --no-final-relu

Needs ``../shared/data/cifar10`` (or ``--data``).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from squeezenet.models import create_model
from squeezenet.training import Dist, build_data, load_config
from squeezenet.training.loop import bf16_pays, make_optimizer

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="squeezenet1_0_simple_bypass")
    p.add_argument("--lr", type=float, default=0.1, help="constant learning rate")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--no-final-relu", action="store_true", help="drop the ReLU after conv10 (not the paper's head)")
    p.add_argument("--data", default=str(ROOT.parent / "shared/data/cifar10"))
    a = p.parse_args()
    if not Path(a.data).is_dir():
        raise SystemExit(f"CIFAR-10 folders not found at {a.data} (pass --data)")
    torch.set_num_threads(2)
    cfg = load_config(ROOT / "configs/cifar10_fast.yaml")
    train, _, _ = build_data(a.data, cfg, Dist(), cfg.batch_size, print)
    torch.manual_seed(0)
    model = create_model(a.model, num_classes=10, small_input=True, batch_norm=True, stem_pool=True)
    model = model.to(memory_format=torch.channels_last).train()
    if a.no_final_relu:
        model.classifier[2] = torch.nn.Identity()
    stats: dict[str, float] = {}
    model.classifier[1].register_forward_hook(lambda mod, inp, out: stats.update(
        alive=(out > 0).float().mean().item(), input=inp[0].float().abs().mean().item()))
    opt = make_optimizer(model, cfg, a.lr)
    bf16 = bf16_pays(torch.device("cpu"))  # as the trainer decides
    train.set_epoch(0)
    t0 = time.time()
    for i, (x, y) in enumerate(train):
        if i == a.steps:
            break
        with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(model(x).float(), y, label_smoothing=cfg.label_smoothing)
        opt.zero_grad()
        loss.backward()
        opt.step()
        print(f"step {i:3d}: loss {loss.item():.4f}, conv10 outputs > 0: {stats['alive']:.3f}, "
              f"mean |conv10 input| {stats['input']:.3g}", flush=True)
    print(f"{a.model}, lr {a.lr}, final ReLU {'off' if a.no_final_relu else 'on'}: {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
