"""ONNX exports that keep the compressed weights: bit-packed codes expanded by the graph at load,
a fraction of the fp32 export's bytes, the decoded model's outputs; ONNX files as --weights."""
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from PIL import Image

from squeezenet.cli.main import main
from squeezenet.compression import CompressionConfig, compress_weights
from squeezenet.errors import ConfigError, FormatError
from squeezenet.evaluation import evaluate_weights
from squeezenet.evaluation.evaluate import predict
from squeezenet.export import export_weights
from squeezenet.export.compressed_onnx import packed_planes, unpacked_symbols
from squeezenet.models import create_model
from squeezenet.preprocessing import CIFAR10
from squeezenet.weights import LoadedWeights, load_weights

NAMES = [f"class{i}" for i in range(10)]


@pytest.fixture(scope="module")
def sqz(tmp_path_factory):
    torch.manual_seed(0)
    m = create_model("squeezenet1_1", num_classes=10, small_input=True)
    lw = LoadedWeights("squeezenet1_1", m.state_dict(), CIFAR10, num_classes=10, model_kwargs={"small_input": True},
                       class_names=NAMES)
    path = tmp_path_factory.mktemp("sqz") / "m.sqz"
    compress_weights(lw, CompressionConfig(bits=4), out=path)
    return path


@pytest.fixture(scope="module")
def exported(sqz, tmp_path_factory):
    folder = tmp_path_factory.mktemp("onnx")
    fp32, packed = folder / "fp32.onnx", folder / "packed.onnx"
    return export_weights(sqz, "onnx", fp32), export_weights(sqz, "onnx", packed, compressed_weights=True)


@pytest.mark.parametrize("bits", [1, 2, 3, 5, 8, 13])
def test_bit_planes_round_trip_exactly(bits):
    rng = np.random.default_rng(bits)
    symbols = rng.integers(0, 2 ** bits, 1001)
    planes = packed_planes(symbols, bits)
    assert planes.shape == (bits, 126) and planes.dtype == np.uint8
    assert np.array_equal(unpacked_symbols(planes, symbols.size), symbols)


def test_compressed_export_is_a_quarter_of_fp32_and_passes_the_checker(exported):
    fp32, packed = exported
    assert packed["bytes"] <= fp32["bytes"] / 4
    assert packed["fp32_onnx_bytes"] == fp32["bytes"] and packed["ratio"] == packed["bytes"] / fp32["bytes"]
    assert packed["fp32_layers"] == [] and packed["packed_layers"] == 26
    proto = onnx.load(packed["out"])
    onnx.checker.check_model(proto, full_check=True)
    float_weights = [i for i in proto.graph.initializer if i.data_type == onnx.TensorProto.FLOAT and len(i.dims) == 4]
    assert not float_weights  # every conv weight is codes now
    meta = {p.key: p.value for p in proto.metadata_props}
    assert set(json.loads(meta["squeezenet.compressed_weights"]).values()) <= {1, 2, 3, 4, 5}


def test_onnx_runtime_on_the_compressed_file_computes_the_decoded_model(sqz, exported):
    fp32, packed = exported
    model = load_weights(sqz).build_model()
    x = torch.randn(16, 3, 32, 32)
    with torch.no_grad():
        expected = model(x).numpy()
    outs = {}
    for report in exported:
        sess = ort.InferenceSession(report["out"], providers=["CPUExecutionProvider"])
        outs[report["out"]] = sess.run(None, {"input": x.numpy()})[0]
    a, b = outs[fp32["out"]], outs[packed["out"]]
    assert np.abs(b - expected).max() <= 1e-4 * max(1.0, np.abs(expected).max())
    assert np.abs(a - b).max() <= 1e-5 * max(1.0, np.abs(a).max())
    assert (a.argmax(1) == b.argmax(1)).all()


def _folder(root, per_class=3):
    (root / "val").mkdir(parents=True)
    (root / "LOC_synset_mapping.txt").write_text("".join(f"n{i:08d} class{i}\n" for i in range(10)))
    rng = np.random.default_rng(0)
    for c in (1, 4, 7):
        folder = root / "val" / f"n{c:08d}"
        folder.mkdir()
        for j in range(per_class):
            Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(folder / f"{j}.JPEG")
    return root


def test_eval_and_predict_run_an_onnx_file_with_its_metadata(sqz, exported, tmp_path):
    _, packed = exported
    lw = load_weights(packed["out"])
    assert lw.kind == "onnx" and lw.num_classes == 10 and lw.class_names == NAMES and lw.preprocessing.crop == 32
    root = _folder(tmp_path / "d")
    on_onnx = evaluate_weights(packed["out"], root, batch_size=4, workers=0, progress=False)
    on_torch = evaluate_weights(sqz, root, batch_size=4, workers=0, progress=False)
    assert on_onnx["engine"] == "onnxruntime" and on_onnx["weights_kind"] == "onnx"
    assert on_onnx["images"] == on_torch["images"] == 9
    assert (on_onnx["top1"], on_onnx["top5"]) == (on_torch["top1"], on_torch["top5"])
    image = next((root / "val").rglob("*.JPEG"))
    got = predict(packed["out"], [image], top=3)[0]["predictions"]
    want = predict(sqz, [image], top=3)[0]["predictions"]
    assert [p["class_name"] for p in got] == [p["class_name"] for p in want]
    assert all(p["class_name"] in NAMES for p in got)
    assert np.allclose([p["probability"] for p in got], [p["probability"] for p in want], atol=1e-5)


def test_onnx_files_refuse_what_needs_pytorch_weights(sqz, exported, tmp_path):
    _, packed = exported
    lw = load_weights(packed["out"])
    with pytest.raises(ConfigError, match="ONNX file runs with"):
        predict(lw, [], engine="torch")
    with pytest.raises(FormatError, match="no state dict"):
        lw.build_model()
    checkpoint = tmp_path / "m.pt"
    assert main(["decompress", str(sqz), "--out", str(checkpoint), "--format", "checkpoint"]) == 0
    with pytest.raises(ConfigError, match="compressed"):
        export_weights(checkpoint, "onnx", tmp_path / "x.onnx", compressed_weights=True)
    with pytest.raises(ConfigError, match="onnx format"):
        export_weights(sqz, "torchscript", tmp_path / "x.pt", compressed_weights=True)


def test_cli_export_compressed_weights_json(sqz, tmp_path, capsys):
    out = tmp_path / "c.onnx"
    assert main(["export", "--weights", str(sqz), "--format", "onnx", "--compressed-weights", "--out", str(out),
                 "--json"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["bytes"] == out.stat().st_size and report["ratio"] <= 0.25 and report["packed_layers"] == 26
