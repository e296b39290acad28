"""Scale: a 100M-parameter transformer language model compressed to a size budget on this CPU.

    python bench/bench_scale.py [--layers 12] [--width 768] [--vocab 16384] [--budget-ratio 16] [--json]

The model is built here (12 layers of width 768, GPT-2 style with the output projection tied to
the embedding; random weights: this measures time and memory, never accuracy). The compression
runs in a child process so that its peak resident memory is its own; the file is then decoded,
loaded with ``strict=True`` into a freshly built model and its outputs compared. The target: peak
memory at most twice the model's fp32 size plus 1.5 GB.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn as nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from squeezenet.cpu import describe  # noqa: E402

MEMORY_SLACK = 1.5e9  # bytes over twice the fp32 size that the target allows


class LanguageModel(nn.Module):
    """A GPT-2-sized encoder stack over token ids; the head is the embedding table (tied)."""

    def __init__(self, vocab: int = 16384, width: int = 768, layers: int = 12, context: int = 64):
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.position = nn.Parameter(torch.randn(context, width) * 0.02)
        layer = nn.TransformerEncoderLayer(width, width // 64, 4 * width, dropout=0.0, batch_first=True,
                                           norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens) + self.position[:tokens.shape[1]]
        return self.head(self.norm(self.encoder(x)))


def build(args) -> LanguageModel:
    torch.manual_seed(0)
    return LanguageModel(args.vocab, args.width, args.layers, args.context)


def tokens(args, n: int, seed: int) -> torch.Tensor:
    return torch.randint(args.vocab, (n, args.context), generator=torch.Generator().manual_seed(seed))


CHILD = """
import json, resource, sys, time, torch
sys.path[:0] = {paths!r}
import bench_scale as s
from squeezenet.compression import CompressionConfig, compress_
from squeezenet.weights import save_compressed
torch.set_num_threads({threads})
args = s.parse({argv!r})
model = s.build(args)
x = s.tokens(args, args.calibration, seed=1)
t = time.perf_counter()
report = compress_(model, CompressionConfig(size_budget={budget}), calibration=x,
                   log=lambda *a: print(*a, file=sys.stderr, flush=True))
size = save_compressed(model, {out!r})
sec = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({{"bytes": size, "seconds": sec, "peak_bytes": peak, "quantizer": report.get("quantizer")}}))
"""


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shared", default=None, help="unused (the model is built here)")
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--width", type=int, default=768)
    p.add_argument("--vocab", type=int, default=16384)
    p.add_argument("--context", type=int, default=64, help="tokens an input")
    p.add_argument("--calibration", type=int, default=384, help="calibration inputs (token sequences)")
    p.add_argument("--budget-ratio", type=float, default=16.0, help="budget = fp32 bytes / this")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", action="store_true")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse(argv)
    torch.set_num_threads(args.threads)
    model = build(args)
    params = sum(p.numel() for p in model.parameters())  # the tied table once
    fp32 = 4 * params
    budget = int(fp32 / args.budget_ratio)
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "lm.sqz")
        code = CHILD.format(paths=[str(HERE.parent), str(HERE)], threads=args.threads, budget=budget, out=out,
                            argv=[a for a in (argv if argv is not None else sys.argv[1:]) if a != "--json"])
        res = subprocess.run([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        if res.returncode != 0:
            print(f"compression failed (exit {res.returncode})", file=sys.stderr)
            return 1
        info = json.loads(res.stdout.strip().splitlines()[-1])
        from squeezenet.weights.sqz import decode
        t = time.perf_counter()
        _, state, _ = decode(Path(out).read_bytes())
        decode_s = time.perf_counter() - t
    fresh = build(args)
    fresh.load_state_dict(state, strict=True)  # the round-trip contract, at scale
    x = tokens(args, 8, seed=2)
    with torch.no_grad():
        ref, got = model(x), fresh(x)
    rel = float((got - ref).norm() / ref.norm())
    limit = 2 * fp32 + MEMORY_SLACK
    print(f"\nScale: {args.layers}-layer transformer LM, width {args.width}, vocab {args.vocab} (tied), "
          f"{params:,} parameters, fp32 {fp32 / 1e6:,.1f} MB; {describe()}, {args.threads} threads; "
          f"random weights (time and memory only)\n")
    print("| budget | bytes | bits/weight | seconds | peak memory GB | limit GB (2x fp32 + 1.5) | peak / limit "
          "| decode s | output rel. error |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    print(f"| {budget:,} | {info['bytes']:,} | {8 * info['bytes'] / params:.2f} | {info['seconds']:.0f} "
          f"| {info['peak_bytes'] / 1e9:.2f} | {limit / 1e9:.2f} | {info['peak_bytes'] / limit:.2f} "
          f"| {decode_s:.1f} | {rel:.3f} |")
    if args.json:
        print(json.dumps({"params": params, "fp32_bytes": fp32, "budget": budget, "bytes": info["bytes"],
                          "seconds": info["seconds"], "peak_bytes": info["peak_bytes"], "limit_bytes": limit,
                          "decode_s": decode_s, "output_rel_error": rel, "quantizer": info["quantizer"],
                          "cpu": describe()}))
    return 0 if info["peak_bytes"] <= limit else 2


if __name__ == "__main__":
    raise SystemExit(main())
