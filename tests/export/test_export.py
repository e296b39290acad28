import json

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

from squeezenet.export import export_weights
from squeezenet.export.engine import make_engine
from squeezenet.models import create_model
from squeezenet.preprocessing import CIFAR10
from squeezenet.weights import LoadedWeights


def small(name="squeezenet1_1"):
    m = create_model(name, num_classes=10, small_input=True)
    return LoadedWeights(name, m.state_dict(), CIFAR10, num_classes=10, model_kwargs={"small_input": True},
                         class_names=[f"c{i}" for i in range(10)])


@pytest.mark.parametrize("fmt,suffix", [("onnx", "onnx"), ("torchscript", "pt"), ("exported-program", "pt2")])
def test_export_round_trip_matches_pytorch(tmp_path, fmt, suffix):
    weights = small()
    path = tmp_path / f"m.{suffix}"
    report = export_weights(weights, fmt, path)
    assert report["bytes"] == path.stat().st_size > 0
    # reload the file with its own runtime and compare with the PyTorch model ourselves
    model = weights.build_model().eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        expected = model(x).numpy()
    if fmt == "onnx":
        import onnxruntime as ort
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    elif fmt == "torchscript":
        got = torch.jit.load(str(path)).eval()(x).detach().numpy()
    else:
        got = torch.export.load(str(path)).module()(x).detach().numpy()
    assert got.shape == expected.shape and np.abs(got - expected).max() < 1e-4


def test_onnx_carries_metadata_and_dynamic_batch(tmp_path):
    out = tmp_path / "m.onnx"
    export_weights(small("squeezenet1_0_complex_bypass"), "onnx", out)
    proto = onnx.load(str(out))
    onnx.checker.check_model(proto)
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["squeezenet.preprocessing"])["crop"] == 32
    assert json.loads(meta["squeezenet.class_names"])[3] == "c3"
    import onnxruntime as ort
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert sess.run(None, {"input": np.zeros((5, 3, 32, 32), np.float32)})[0].shape == (5, 10)


def test_fixed_batch_and_bad_batch(tmp_path):
    assert export_weights(small(), "onnx", tmp_path / "b4.onnx", batch=4)["batch"] == 4
    with pytest.raises(ValueError, match="batch"):
        export_weights(small(), "onnx", tmp_path / "x.onnx", batch="zero")


def test_int8_export_loads_and_predicts_sanely(tmp_path):
    calib = tmp_path / "calib"
    calib.mkdir()
    rng = np.random.default_rng(0)
    for i in range(8):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(calib / f"{i}.png")
    lw = small()
    report = export_weights(lw, "onnx", tmp_path / "q.onnx", int8=True, calibration=calib)
    assert report["calibration_images"] == 8
    eng = make_engine(lw, "onnxruntime-int8", calibration=calib)
    x = torch.randn(4, 3, 32, 32)
    out = eng(x)
    ref = lw.build_model()(x)
    assert out.shape == (4, 10) and torch.isfinite(out).all()
    assert (out - ref).abs().max() < 0.5 * ref.abs().max() + 0.1  # int8 stays near fp32
    with pytest.raises(ValueError, match="calibration"):
        export_weights(lw, "onnx", tmp_path / "q2.onnx", int8=True)


@pytest.mark.parametrize("engine", ["torch", "torch-channels-last", "onnxruntime", "openvino"])
def test_engine_choice_is_honoured(engine):
    lw = small()
    eng = make_engine(lw, engine)
    assert eng.name == engine
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(eng(x), lw.build_model()(x), atol=1e-4, rtol=1e-4)


def test_openvino_bf16_is_its_own_engine():
    from squeezenet.cpu import has_native_bf16
    lw = small()
    eng = make_engine(lw, "openvino-bf16")
    assert eng.name == "openvino-bf16"
    # bf16 where the CPU has it (OpenVINO's default there), fp32 elsewhere; never the plain engine's
    assert eng.precision == ("bf16" if has_native_bf16() else "f32")
    assert make_engine(lw, "openvino").precision == "f32"
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(eng(x), lw.build_model()(x), atol=5e-2, rtol=5e-2)


def random_images(folder, n, size=32):
    folder.mkdir()
    rng = np.random.default_rng(1)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


def test_onnx_int8_uses_7bit_weights_without_vnni(tmp_path):
    from squeezenet.export.int8 import cpu_has_vnni
    calib = random_images(tmp_path / "calib", 8)
    report = export_weights(small(), "onnx", tmp_path / "q.onnx", int8=True, calibration=calib)
    # u8 x s8 pairs overflow int16 on CPUs without VNNI: 7-bit weights there.
    assert report["reduce_range"] is (not cpu_has_vnni())


@pytest.mark.openvino_int8
def test_openvino_int8_engine_is_nncf_quantized_and_near_fp32(tmp_path):
    calib = random_images(tmp_path / "calib", 8)
    lw = small()
    eng = make_engine(lw, "openvino-int8", calibration=calib)
    assert eng.name == "openvino-int8"
    x = torch.randn(4, 3, 32, 32)
    ref = lw.build_model()(x)
    out = eng(x)
    assert out.shape == (4, 10) and torch.isfinite(out).all()
    assert (out - ref).abs().max() < 0.5 * ref.abs().max() + 0.1
    import openvino as ov
    ops = {op.get_type_name() for op in ov.Core().read_model(str(eng.path)).get_ops()}
    assert "FakeQuantize" in ops  # really quantized, not an fp32 model under an int8 name


@pytest.mark.openvino_int8
def test_auto_admits_int8_only_after_its_agreement_check(tmp_path):
    calib = random_images(tmp_path / "calib", 16)
    msgs = []
    admitted = make_engine(small(), "auto", calibration=calib, min_agreement=0.0, log=msgs.append)
    agreement = admitted.choice["int8_agreement"]
    assert set(agreement) and all(0.0 <= a <= 1.0 for a in agreement.values())
    assert any("held-out calibration images" in m for m in msgs)
    assert any(name in admitted.choice["images_per_s"] for name in agreement)  # timed with the fp32 paths
    rejected = make_engine(small(), "auto", calibration=calib, min_agreement=1.01)
    assert "int8" not in rejected.name and not any("int8" in k for k in rejected.choice["images_per_s"])
    with pytest.raises(ValueError, match="at least 8"):
        make_engine(small(), "auto", calibration=random_images(tmp_path / "few", 3))


def test_auto_engine_reports_its_choice():
    msgs = []
    eng = make_engine(small(), "auto", log=msgs.append)
    assert eng.name in ("torch", "torch-channels-last", "onnxruntime", "openvino")
    assert "->" in msgs[0] and eng.name in msgs[0]
    with pytest.raises(ValueError, match="unknown engine"):
        make_engine(small(), "tensorrt")


@pytest.mark.openvino_int8
@pytest.mark.parametrize("int8", [False, True])
def test_openvino_ir_export_matches_and_carries_metadata(tmp_path, int8):
    import openvino as ov
    calib = random_images(tmp_path / "calib", 8) if int8 else None
    out = tmp_path / "m.xml"
    report = export_weights(small(), "openvino", out, int8=int8, calibration=calib)
    assert out.with_suffix(".bin").stat().st_size > 0 and report["bytes"] > out.stat().st_size
    if int8:
        assert report["int8_max_abs_diff"] < 1.0
    else:
        assert report["max_abs_diff"] < 1e-4
    model = ov.Core().read_model(str(out))
    assert json.loads(model.get_rt_info(["squeezenet", "preprocessing"]).astype(str))["crop"] == 32
    assert not (tmp_path / "m.fp32.onnx").exists()
    with pytest.raises(ValueError, match="xml"):
        export_weights(small(), "openvino", tmp_path / "m.onnx")


def test_after_openvino_compiles_the_main_thread_keeps_a_signal_stack_we_own(tmp_path):
    # OpenVINO's CPU plugin left its own, later unmapped, alternate stack on the main thread:
    # a child's SIGCHLD then killed the process with SIGSEGV (docs/robustness.md)
    import sys
    if sys.platform != "linux":
        pytest.skip("sigaltstack check is Linux-only")
    pytest.importorskip("openvino")
    import ctypes

    from squeezenet.export import openvino_runtime as engine_mod
    from squeezenet.export.engine import OpenVinoEngine
    from squeezenet.export.openvino_runtime import current_alt_stack
    from squeezenet.preprocessing import TORCHVISION_IMAGENET
    lw = LoadedWeights("squeezenet1_1", create_model("squeezenet1_1", num_classes=4).state_dict(),
                       TORCHVISION_IMAGENET, num_classes=4)
    onnx_path = tmp_path / "m.onnx"
    export_weights(lw, "onnx", onnx_path)
    for _ in range(3):
        e = OpenVinoEngine(onnx_path, threads=1)
        e(torch.zeros(1, 3, 224, 224))
        assert current_alt_stack() == ctypes.addressof(engine_mod._ALT_STACK)
