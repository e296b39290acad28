"""Inference on a CUDA GPU (issue #8, item 5): one prepared script for a lent GPU machine.

Paths, side by side at each batch size: eager fp32 (contiguous, as torchvision runs it), eager
fp32 / fp16 / bf16 in channels_last, fp16 channels_last replayed from a CUDA graph (batch 1 is
bound by kernel launches: squeezenet1_0 has 26 convolutions), torch.compile
(``--compile-mode``) in fp16. (TensorRT and a GPU build of ONNX Runtime are not in the lent
machine's image, so they are not timed.)
With ``--data`` (an ImageNet validation folder) each precision's top-1 / top-5 is measured too,
so a faster path's accuracy is shown beside its speed.

    PYTHONPATH=. python3 bench/bench_cuda.py [--weights FILE] [--data DIR] [--batch 1,32,256] [--json]

On a CPU-only machine it refuses, unless ``--device cpu`` (a dry run of the fp32/bf16 paths,
to check the script itself before spending GPU time). The lent machine has PyTorch but not
``bitarray``: give ``--weights`` a plain checkpoint made here (``squeezenet decompress
compressed_SqueezeNet.net --out pub.pt``), carried with the ImageNet folder in a path that
``.git/info/exclude`` ignores (see /work/.library/device/README.md).
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from squeezenet.export.timing import time_interleaved  # noqa: E402
from squeezenet.models import create_model  # noqa: E402


def build_paths(net: torch.nn.Module, batch: int, size: int, device: torch.device, compile_mode: str) -> dict:
    """name -> callable(x) returning logits on ``device`` and waiting for the GPU to finish."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    cl = torch.channels_last
    fp32 = net.to(device).eval()
    fp32_cl = copy.deepcopy(net).to(device, memory_format=cl).eval()
    paths = {"eager fp32": fp32, "eager fp32 channels_last": fp32_cl}
    if device.type == "cuda":
        paths["eager fp16 channels_last"] = copy.deepcopy(net).to(device, torch.float16, memory_format=cl).eval()
    paths["eager bf16 channels_last"] = copy.deepcopy(net).to(device, torch.bfloat16, memory_format=cl).eval()

    def runner(m, dtype, fmt):
        def run(x):
            out = m(x.to(device, dtype, memory_format=fmt, non_blocking=True))
            sync()
            return out.float()
        return run
    fns = {name: runner(m, next(m.parameters()).dtype, cl if "channels_last" in name else torch.contiguous_format)
           for name, m in paths.items()}
    if device.type == "cuda":
        fns["cuda graph fp16 channels_last"] = _cuda_graph(paths["eager fp16 channels_last"], batch, size, device)
        if compile_mode != "none":
            compiled = torch.compile(copy.deepcopy(net).to(device, torch.float16, memory_format=cl).eval(),
                                     mode=compile_mode)
            fns[f"torch.compile {compile_mode} fp16"] = runner(compiled, torch.float16, cl)
    return fns


def _cuda_graph(model, batch: int, size: int, device) -> callable:
    static_in = torch.zeros(batch, 3, size, size, device=device, dtype=torch.float16)
    static_in = static_in.to(memory_format=torch.channels_last)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s), torch.inference_mode():
        for _ in range(3):  # warm-up on a side stream before capture, as the CUDA graphs docs ask
            model(static_in)
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph), torch.inference_mode():
        static_out = model(static_in)

    def run(x):
        static_in.copy_(x, non_blocking=True)
        graph.replay()
        torch.cuda.synchronize()
        return static_out.float()
    return run


def accuracy(lw, data: str, device, dtype, batch: int = 100) -> dict:
    from squeezenet.evaluation.evaluate import evaluate_loader as evaluate, make_loader
    m = lw.build_model().to(device, dtype, memory_format=torch.channels_last).eval()

    def run(x):
        with torch.inference_mode():
            return m(x.to(device, dtype, memory_format=torch.channels_last)).float().cpu()
    r = evaluate(run, make_loader(data, lw, batch), progress=False)
    return {"top1": r["top1"], "top5": r["top5"], "images": r["images"]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="squeezenet1_0")
    p.add_argument("--weights", help="weights file (any supported kind); random weights if absent")
    p.add_argument("--data", help="ImageNet validation folder for top-1/top-5 per precision")
    p.add_argument("--batch", default="1,32,256")
    p.add_argument("--seconds", type=float, default=2.0, help="timing seconds per path and batch")
    p.add_argument("--device", default="cuda")
    p.add_argument("--compile-mode", default="default",
                   help="torch.compile mode ('max-autotune' tunes for minutes per batch size; 'none' skips it)")
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    if a.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device here; run on a GPU machine (or --device cpu for a dry run)", file=sys.stderr)
        return 2
    device = torch.device(a.device)
    torch.backends.cudnn.benchmark = True
    if a.weights:
        from squeezenet.weights import load_weights
        lw = load_weights(a.weights)
    else:
        from squeezenet.preprocessing import CAFFE_IMAGENET
        from squeezenet.weights import LoadedWeights
        lw = LoadedWeights(a.model, create_model(a.model).state_dict(), CAFFE_IMAGENET)
    net, preprocessing = lw.build_model(), lw.preprocessing
    size = preprocessing.crop
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (dry run)"
    rows = []
    for b in [int(v) for v in a.batch.split(",")]:
        fns = build_paths(net, b, size, device, a.compile_mode)
        x = torch.randn(b, 3, size, size).pin_memory() if device.type == "cuda" else torch.randn(b, 3, size, size)
        with torch.inference_mode():
            res = time_interleaved(fns, x, a.seconds)
        eager = res["eager fp32"]["images_per_s"]
        fastest = max(r["images_per_s"] for r in res.values())
        for path, r in res.items():
            rows.append({"path": path, "batch": b, **r, "vs_eager_fp32": r["images_per_s"] / eager,
                         "vs_fastest": r["images_per_s"] / fastest})
    acc = {}
    if a.data:
        dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
        if device.type == "cuda":
            dtypes["fp16"] = torch.float16
        acc = {k: accuracy(lw, a.data, device, dt) for k, dt in dtypes.items()}
    out = sys.stderr if a.json else sys.stdout
    print(f"{lw.model_name} at {size}x{size} on {name}, torch {torch.__version__} (timings include copying the batch "
          "from pinned host memory and waiting for the GPU)", file=out)
    print(f"{'path':<36} {'batch':>5} {'images/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'vs eager fp32':>13} "
          f"{'vs fastest':>10}", file=out)
    for r in rows:
        print(f"{r['path']:<36} {r['batch']:>5} {r['images_per_s']:>10.1f} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} "
              f"{r['vs_eager_fp32']:>12.2f}x {r['vs_fastest']:>9.2f}x", file=out)
    for k, v in acc.items():
        print(f"accuracy {k}: top-1 {v['top1']:.4f}, top-5 {v['top5']:.4f} on {v['images']} images", file=out)
    if a.json:
        print(json.dumps({"device": name, "model": lw.model_name, "rows": rows, "accuracy": acc,
                          "images_per_s": max(r["images_per_s"] for r in rows)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
