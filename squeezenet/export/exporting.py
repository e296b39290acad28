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


def export_weights(weights, fmt: str, out: str | os.PathLike, *, batch="dynamic", int8: bool = False,
                   calibration=None, calibration_images: int = 64) -> dict:
    """Export ``weights`` (any supported file or ``LoadedWeights``) and verify the result.

    Returns a report with ``out``, ``bytes``, ``max_abs_diff`` (and for int8 the top-1 agreement
    with fp32 on the check batch).
    """
    if fmt not in FORMATS:
        raise ConfigError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
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
    check = torch.randn(n or 2, 3, size, size, generator=g)
    with torch.inference_mode():
        ref = model(check)
    meta = metadata(lw)
    start = time.perf_counter()
    report = {"format": fmt, "model": lw.model_name, "weights": str(lw.path), "batch": n or "dynamic"}
    if fmt == "onnx":
        fp32 = out if not int8 else out.with_name(out.stem + ".fp32.onnx")
        export_onnx(model, check[:1] if n is None else check, fp32, n is None, meta)
        got = onnx_outputs(fp32, check.numpy())
        report["max_abs_diff"] = float(np.abs(got - ref.numpy()).max())
        if int8:
            q = quantize_onnx_int8(fp32, out, calibration, lw.preprocessing, calibration_images)
            report.update(q)
            got8 = onnx_outputs(out, check.numpy())
            report["int8_max_abs_diff"] = float(np.abs(got8 - ref.numpy()).max())
            report["fp32_onnx"] = str(fp32)
    elif fmt == "openvino":
        import openvino as ov
        fp32 = out.with_name(out.stem + ".fp32.onnx")
        export_onnx(model, check[:1] if n is None else check, fp32, n is None, meta)
        report["max_abs_diff"] = float(np.abs(onnx_outputs(fp32, check.numpy()) - ref.numpy()).max())
        if int8:
            report.update(quantize_openvino_int8(fp32, out, calibration, lw.preprocessing, calibration_images, meta))
        else:
            ir = ov.Core().read_model(str(fp32))
            for key, value in meta.items():
                ir.set_rt_info(value, key.split("."))
            ov.save_model(ir, str(out), compress_to_fp16=False)
        fp32.unlink()
        compiled = compile_openvino(out, {"INFERENCE_PRECISION_HINT": "f32"})
        got = np.array(next(iter(compiled({0: check.numpy()}).values())))
        report["int8_max_abs_diff" if int8 else "max_abs_diff"] = float(np.abs(got - ref.numpy()).max())
    elif fmt == "torchscript":
        traced = torch.jit.trace(model, check[:1], check_trace=False)
        tmp = out.with_name(f".{out.name}.tmp")
        torch.jit.save(traced, str(tmp), _extra_files={k: v.encode() for k, v in meta.items()})
        os.replace(tmp, out)
        loaded = torch.jit.load(str(out))
        with torch.inference_mode():
            report["max_abs_diff"] = float((loaded(check) - ref).abs().max())
    else:
        dyn = {"x": {0: Dim("batch", min=1, max=4096)}} if n is None else None
        ep = torch.export.export(model, (check,), dynamic_shapes=dyn)
        tmp = out.with_name(f".{out.name}.tmp")
        torch.export.save(ep, str(tmp), extra_files={k: v for k, v in meta.items()})
        os.replace(tmp, out)
        loaded = torch.export.load(str(out))
        with torch.inference_mode():
            report["max_abs_diff"] = float((loaded.module()(check) - ref).abs().max())
    report["seconds"] = time.perf_counter() - start
    report["out"] = str(out)
    report["bytes"] = out.stat().st_size + (out.with_suffix(".bin").stat().st_size if fmt == "openvino" else 0)
    if not int8:
        if report["max_abs_diff"] > 1e-4 * max(1.0, float(ref.abs().max())):
            raise ExportError(f"{out}: exported outputs differ from PyTorch by {report['max_abs_diff']:.3g}")
    return report
