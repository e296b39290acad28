"""``squeezenet export``: any weights file to ONNX, TorchScript, a torch.export program or an
OpenVINO IR (``.xml`` + ``.bin``; with ``--int8`` quantized by NNCF, the fastest CPU path here).

Every export is checked against PyTorch on the same input (max abs difference reported) and
carries the model name, preprocessing and class names as metadata, so a deployment tool can
prepare images without this package.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from torch.export import Dim

from ..errors import ConfigError, SqueezeNetError
from ..weights import LoadedWeights, load_weights
from .int8 import quantize_onnx_int8, quantize_openvino_int8
from .openvino_runtime import compile_openvino

FORMATS = ("onnx", "torchscript", "exported-program", "openvino")


class ExportError(SqueezeNetError):
    """An export failed or does not reproduce PyTorch's outputs."""


def metadata(lw: LoadedWeights) -> dict[str, str]:
    """String metadata stored in every exported file."""
    return {"squeezenet.model": lw.model_name, "squeezenet.model_kwargs": json.dumps(lw.model_kwargs),
            "squeezenet.num_classes": str(lw.num_classes),
            "squeezenet.preprocessing": json.dumps(lw.preprocessing.to_dict()),
            "squeezenet.class_names": json.dumps(lw.class_names_or_default())}


def _parse_batch(batch) -> int | None:
    if batch in (None, "dynamic"):
        return None
    try:
        n = int(batch)
    except (TypeError, ValueError):
        raise ConfigError(f"batch must be 'dynamic' or a positive integer, got {batch!r}") from None
    if n < 1:
        raise ConfigError(f"batch must be a positive integer, got {n}")
    return n


def export_onnx(model: torch.nn.Module, example: torch.Tensor, out: Path, dynamic: bool, meta: dict,
                opset: int = 17) -> None:
    import onnx
    kw = {"dynamic_axes": {"input": {0: "batch"}, "logits": {0: "batch"}}} if dynamic else {}
    tmp = out.with_name(f".{out.name}.tmp")
    torch.onnx.export(model, (example,), str(tmp), dynamo=False, input_names=["input"], output_names=["logits"],
                      opset_version=opset, **kw)
    proto = onnx.load(str(tmp))
    for k, v in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v
    onnx.checker.check_model(proto)
    onnx.save(proto, str(tmp))
    os.replace(tmp, out)


def onnx_outputs(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def export_compressed_onnx(lw: LoadedWeights, model: torch.nn.Module, example: torch.Tensor, out: Path,
                           dynamic: bool, meta: dict) -> dict:
    """An ONNX file whose coded layers keep their codes (``compressed_onnx``), beside the size
    of the fp32 export it was made from."""
    import onnx

    from .compressed_onnx import compress_initializers_
    if lw.kind != "compressed":
        raise ConfigError(f"{lw.path or 'these weights'}: --compressed-weights needs a compressed (.sqz) file, "
                          f"not a {lw.kind} file")
    fp32 = out.with_name(f".{out.name}.fp32.tmp")
    try:
        export_onnx(model, example, fp32, dynamic, meta)
        fp32_bytes = fp32.stat().st_size
        proto = onnx.load(str(fp32))
    finally:
        fp32.unlink(missing_ok=True)
    info = compress_initializers_(proto, lw.extra["header"], lw.extra["shared_state"], lw.state_dict)
    entry = proto.metadata_props.add()
    entry.key, entry.value = "squeezenet.compressed_weights", json.dumps(info["bits"])
    onnx.checker.check_model(proto)
    tmp = out.with_name(f".{out.name}.tmp")
    onnx.save(proto, str(tmp))
    os.replace(tmp, out)
    return {"fp32_onnx_bytes": fp32_bytes, "packed_layers": len(info["layers"]), "fp32_layers": info["fp32_layers"],
            "bits_per_weight": info["bits"]}


def export_weights(weights, fmt: str, out: str | os.PathLike, *, batch="dynamic", int8: bool = False,
                   calibration=None, calibration_images: int = 64, compressed_weights: bool = False) -> dict:
    """Export ``weights`` (any supported file or ``LoadedWeights``) and verify the result.

    Args:
        compressed_weights: ONNX only, from a ``.sqz`` file: keep each coded layer as its
            bit-packed codes and codebook, expanded by the graph when ONNX Runtime loads it.

    Returns a report with ``out``, ``bytes``, ``max_abs_diff`` (for int8 the top-1 agreement
    with fp32 on the check batch; for compressed weights ``fp32_onnx_bytes`` and ``ratio``).
    """
    if fmt not in FORMATS:
        raise ConfigError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if compressed_weights and (fmt != "onnx" or int8):
        raise ConfigError("--compressed-weights is for the onnx format without --int8")
    if int8 and fmt not in ("onnx", "openvino"):
        raise ConfigError("int8 export is available for the onnx and openvino formats")
    if fmt == "openvino" and Path(out).suffix != ".xml":
        raise ConfigError(f"the openvino format writes NAME.xml (+ NAME.bin); got {out}")
    if int8 and calibration is None:
        raise ConfigError("int8 export needs calibration images (other than those you evaluate on)")
    n = _parse_batch(batch)
    lw = weights if isinstance(weights, LoadedWeights) else load_weights(weights)
    model = lw.build_inference_model()
    out = Path(out)
    if not out.parent.is_dir():
        raise FileNotFoundError(f"{out.parent}: output folder does not exist")
    size = lw.preprocessing.crop
    g = torch.Generator().manual_seed(0)
    job = _Job(lw, model, torch.randn(n or 2, 3, size, size, generator=g), out, n, int8, calibration,
               calibration_images)
    start = time.perf_counter()
    report = {"format": fmt, "model": lw.model_name, "weights": str(lw.path), "batch": n or "dynamic"}
    if fmt == "onnx" and compressed_weights:
        report.update(export_compressed_onnx(lw, model, job.example, out, n is None, job.meta))
        report["max_abs_diff"] = job.diff(onnx_outputs(out, job.check.numpy()))
    else:
        report.update(_EXPORTERS[fmt](job))
    report["seconds"] = time.perf_counter() - start
    report["out"] = str(out)
    report["bytes"] = out.stat().st_size + (out.with_suffix(".bin").stat().st_size if fmt == "openvino" else 0)
    if compressed_weights:
        report["ratio"] = report["bytes"] / report["fp32_onnx_bytes"]
    if not int8:
        if report["max_abs_diff"] > 1e-4 * max(1.0, float(job.ref.abs().max())):
            raise ExportError(f"{out}: exported outputs differ from PyTorch by {report['max_abs_diff']:.3g}")
    return report


class _Job:
    """One export: the model, its check input and PyTorch's outputs on it, where it goes."""

    def __init__(self, lw: LoadedWeights, model, check: torch.Tensor, out: Path, n: int | None, int8: bool,
                 calibration, calibration_images: int) -> None:
        self.lw, self.model, self.check, self.out, self.n, self.int8 = lw, model, check, out, n, int8
        self.calibration, self.calibration_images = calibration, calibration_images
        self.example = check[:1] if n is None else check
        self.meta = metadata(lw)
        with torch.inference_mode():
            self.ref = model(check)

    def diff(self, got) -> float:
        return float(np.abs(np.asarray(got) - self.ref.numpy()).max())


def _onnx(job: _Job) -> dict:
    out = job.out
    fp32 = out if not job.int8 else out.with_name(out.stem + ".fp32.onnx")
    export_onnx(job.model, job.example, fp32, job.n is None, job.meta)
    report = {"max_abs_diff": job.diff(onnx_outputs(fp32, job.check.numpy()))}
    if job.int8:
        report.update(quantize_onnx_int8(fp32, out, job.calibration, job.lw.preprocessing, job.calibration_images))
        report["int8_max_abs_diff"] = job.diff(onnx_outputs(out, job.check.numpy()))
        report["fp32_onnx"] = str(fp32)
    return report


def _openvino(job: _Job) -> dict:
    import openvino as ov
    out = job.out
    fp32 = out.with_name(out.stem + ".fp32.onnx")
    export_onnx(job.model, job.example, fp32, job.n is None, job.meta)
    report = {"max_abs_diff": job.diff(onnx_outputs(fp32, job.check.numpy()))}
    if job.int8:
        report.update(quantize_openvino_int8(fp32, out, job.calibration, job.lw.preprocessing,
                                             job.calibration_images, job.meta))
    else:
        ir = ov.Core().read_model(str(fp32))
        for key, value in job.meta.items():
            ir.set_rt_info(value, key.split("."))
        ov.save_model(ir, str(out), compress_to_fp16=False)
    fp32.unlink()
    compiled = compile_openvino(out, {"INFERENCE_PRECISION_HINT": "f32"})
    got = np.array(next(iter(compiled({0: job.check.numpy()}).values())))
    report["int8_max_abs_diff" if job.int8 else "max_abs_diff"] = job.diff(got)
    return report


def _torchscript(job: _Job) -> dict:
    traced = torch.jit.trace(job.model, job.check[:1], check_trace=False)
    tmp = job.out.with_name(f".{job.out.name}.tmp")
    torch.jit.save(traced, str(tmp), _extra_files={k: v.encode() for k, v in job.meta.items()})
    os.replace(tmp, job.out)
    loaded = torch.jit.load(str(job.out))
    with torch.inference_mode():
        return {"max_abs_diff": job.diff(loaded(job.check))}


def _exported_program(job: _Job) -> dict:
    dyn = {"x": {0: Dim("batch", min=1, max=4096)}} if job.n is None else None
    ep = torch.export.export(job.model, (job.check,), dynamic_shapes=dyn)
    tmp = job.out.with_name(f".{job.out.name}.tmp")
    torch.export.save(ep, str(tmp), extra_files={k: v for k, v in job.meta.items()})
    os.replace(tmp, job.out)
    loaded = torch.export.load(str(job.out))
    with torch.inference_mode():
        return {"max_abs_diff": job.diff(loaded.module()(job.check))}


_EXPORTERS = {"onnx": _onnx, "openvino": _openvino, "torchscript": _torchscript, "exported-program": _exported_program}
