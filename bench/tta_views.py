"""Which test-time views pay on a trained CIFAR-10 model: top-1 over the test set per set of views.

Every view (a shift of the reflect-padded image, and its mirror) is computed once and the sets
of views below are weighted sums of them, so all sets are scored on the same logits::

    python bench/tta_views.py runs/hour          # a folder written by `squeezenet train`

The sets are picked on the test set itself: a difference of a tenth of a point between them is
selection noise, not a lever. Needs ``../shared/data/cifar10`` (or ``--data``).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from squeezenet.cpu import cpu_name
from squeezenet.training import Dist, build_data, load_config
from squeezenet.training.loop import bf16_pays, shifted_view
from squeezenet.weights.loading import load_weights

ROOT = Path(__file__).resolve().parents[1]
DIAGONAL = [(-2, -2), (2, 2), (-2, 2), (2, -2)]
AXIS = [(-2, 0), (2, 0), (0, -2), (0, 2)]
SETS: dict[str, dict[tuple[int, int], float] | None] = {  # name: {(dy, dx) shift: weight}, each with its mirror
    "no flip": None,
    "flips": {(0, 0): 1},
    "flips + 2 diagonal 2 px shifts (the recipe)": {(0, 0): 2, (-2, -2): 1, (2, 2): 1},
    "flips + 2 diagonal 1 px shifts": {(0, 0): 2, (-1, -1): 1, (1, 1): 1},
    "flips + 4 diagonal 2 px shifts": {(0, 0): 4, **{s: 1 for s in DIAGONAL}},
    "flips + 4 axis 2 px shifts": {(0, 0): 4, **{s: 1 for s in AXIS}},
    "flips + 8 neighbours, uniform": {(0, 0): 1, **{s: 1 for s in DIAGONAL + AXIS}},
    "flips + 8 neighbours, centre x8": {(0, 0): 4, **{s: 0.5 for s in DIAGONAL + AXIS}},
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run", help="a training output folder (config.yaml and last.pt)")
    p.add_argument("--weights", default="last.pt", help="checkpoint inside RUN (default last.pt)")
    p.add_argument("--data", default=str(ROOT.parent / "shared/data/cifar10"))
    a = p.parse_args()
    run = Path(a.run)
    if not Path(a.data).is_dir():
        raise SystemExit(f"CIFAR-10 folders not found at {a.data} (pass --data)")
    if not (run / "config.yaml").is_file() or not (run / a.weights).is_file():
        raise SystemExit(f"{run}: needs config.yaml and {a.weights} from `squeezenet train`")
    torch.set_num_threads(2)
    cfg = load_config(run / "config.yaml")
    model = load_weights(run / a.weights).build_model()
    _, test, _ = build_data(a.data, cfg, Dist(), 256, log=lambda *_: None)
    shifts = sorted({s for views in SETS.values() if views for s in views})
    hits = dict.fromkeys(SETS, 0)
    seen = 0
    with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=bf16_pays(torch.device("cpu"))):
        for x, y in test:
            plain, logits = {}, {}
            for dy, dx in shifts:
                v = shifted_view(x, dy, dx)
                plain[dy, dx] = model(v).float()
                logits[dy, dx] = plain[dy, dx] + model(v.flip(-1)).float()
            for name, views in SETS.items():
                out = plain[0, 0] if views is None else sum(wt * logits[s] for s, wt in views.items())
                hits[name] += (out.argmax(1) == y).sum().item()
            seen += len(y)
    print(f"{run / a.weights} on {seen:,} test images ({cpu_name()}); one accuracy has a standard error "
          f"of about {100 * (0.9 * 0.1 / seen) ** 0.5:.1f} points")
    print("| views | top-1 |\n|---|---:|")
    for name in SETS:
        print(f"| {name} | {hits[name] / seen:.4f} |")


if __name__ == "__main__":
    main()
