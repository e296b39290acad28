"""Deep Compression of any model through one verb: compress_, save_compressed, load_compressed."""
import io
import json

import pytest
import torch
import torch.nn as nn
import torchvision

from squeezenet.cli.main import main
from squeezenet.compression import CompressionConfig, compress_
from squeezenet.weights import encode, load_compressed, save_compressed
from squeezenet.errors import FormatError
from squeezenet.models import prunable_layers
from squeezenet.weights import decode, size_report


def mlp(num_classes: int = 10) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, num_classes))


def tiny_mixed(num_classes: int = 4) -> nn.Module:
    """Conv1d, a grouped and a depthwise conv, batch norm, an embedding: what `package.module:function` builds."""
    torch.manual_seed(1)
    m = nn.Module()
    m.embed = nn.Embedding(50, 16)
    m.conv1d = nn.Conv1d(16, 32, 5)
    m.grouped = nn.Conv2d(32, 64, 3, groups=4, bias=False)
    m.depthwise = nn.Conv2d(64, 64, 3, groups=64)
    m.bn = nn.BatchNorm2d(64)
    m.head = nn.Linear(64, num_classes)
    m.bn.running_mean.normal_()
    m.bn.num_batches_tracked.fill_(7)
    return m


def _state_bytes(sd: dict) -> int:
    buf = io.BytesIO()
    torch.save(sd, buf)
    return len(buf.getvalue())


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "mlp"])
def test_any_model_round_trips_strictly(tmp_path, name):
    model = mlp() if name == "mlp" else torchvision.models.get_model(name, num_classes=10)
    if name != "mlp":  # batch-norm statistics that are not the defaults, so "stored exactly" is tested
        torch.manual_seed(2)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2)
                m.num_batches_tracked.fill_(123)
    original = {k: v.clone() for k, v in model.state_dict().items()}
    arch = "" if name == "mlp" else f"torchvision:{name}"
    report = compress_(model, CompressionConfig(density=0.33, bits=6), model_name=arch)
    path = tmp_path / f"{name}.sqz"
    size = save_compressed(model, path)
    assert size == report["bytes"] == path.stat().st_size
    back = load_compressed(path)
    fresh = mlp() if name == "mlp" else torchvision.models.get_model(name, num_classes=10)
    fresh.load_state_dict(back.state_dict, strict=True)
    coded = {f"{n}.weight" for n in prunable_layers(fresh)}
    for k, v in original.items():
        got = back.state_dict[k]
        assert got.dtype == v.dtype and got.shape == v.shape, k
        if k in coded:
            assert torch.equal(got, model.state_dict()[k]), k  # the file holds what compress_ left
            assert torch.unique(got[got != 0]).numel() <= 64, k
            density = (got != 0).float().mean().item()
            assert abs(density - 0.33) < 0.01, (k, density)
        else:
            assert torch.equal(got, v), k  # biases, batch norm, counters: exact
    if name == "resnet18":
        assert _state_bytes(original) / size >= 9  # a random 33% mask and 6-bit indices bound it near 11x
    if arch:
        assert back.model_name == arch and back.num_classes == 10
        x = torch.randn(2, 3, 64, 64)
        model.eval()
        assert torch.equal(back.build_model()(x), model(x))
    else:
        with pytest.raises(FormatError, match="unknown architecture"):
            back.build_model()


def test_grouped_conv1d_embedding_and_user_builder(tmp_path):
    model = tiny_mixed()
    original = {k: v.clone() for k, v in model.state_dict().items()}
    compress_(model, CompressionConfig(density=0.5, bits=3), model_name="tests.compression.test_api:tiny_mixed")
    assert set(prunable_layers(model)) == {"conv1d", "grouped", "depthwise", "head", "embed.weight"}
    save_compressed(model, tmp_path / "m.sqz")
    back = load_compressed(tmp_path / "m.sqz")
    embed = back.state_dict["embed.weight"]  # an embedding table is coded as a tensor layer
    assert torch.count_nonzero(embed) == original["embed.weight"].numel() // 2  # density=0.5 holds for it too
    assert torch.unique(embed[embed != 0]).numel() <= 8 < torch.unique(original["embed.weight"]).numel()
    assert back.state_dict["bn.num_batches_tracked"].item() == 7
    rebuilt = back.build_model()  # imports package.module:function, passing num_classes
    assert rebuilt.head.out_features == 4
    for n in ("conv1d", "grouped", "depthwise", "head"):
        w = back.state_dict[f"{n}.weight"]
        assert torch.unique(w[w != 0]).numel() <= 8


@pytest.fixture(scope="module")
def state_dict_file(tmp_path_factory):
    """An architecture-free file: a bare MLP state dict with a bf16 and a bool tensor beside it."""
    d = tmp_path_factory.mktemp("sd")
    sd = mlp().state_dict()
    sd["extra.scale"] = torch.tensor([1.5, -2.25], dtype=torch.bfloat16)
    sd["extra.flags"] = torch.tensor([True, False, True])
    torch.save(sd, d / "mlp.pt")
    return d / "mlp.pt", sd


def test_cli_compress_decompress_any_state_dict(tmp_path, state_dict_file, capsys):
    src, sd = state_dict_file
    out = tmp_path / "mlp.sqz"
    assert main(["compress", "--weights", str(src), "--out", str(out), "--bits", "6", "--density", "0.33",
                 "--json"]) == 0
    rep = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    fp32 = sum(v.numel() * (4 if v.is_floating_point() else v.element_size()) for v in sd.values())
    assert rep["bytes"] == out.stat().st_size and rep["fp32_bytes"] == fp32
    assert rep["ratio"] == pytest.approx(fp32 / rep["bytes"])
    assert main(["size", str(out), "--json"]) == 0
    size = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert size["bytes"] == rep["bytes"] and size["ratio"] == pytest.approx(rep["ratio"])
    assert main(["decompress", str(out), "--out", str(tmp_path / "sd.pt")]) == 0
    back = torch.load(tmp_path / "sd.pt", weights_only=True)
    fresh = mlp()
    fresh.register_module("extra", nn.Module())
    fresh.extra.register_buffer("scale", torch.zeros(2, dtype=torch.bfloat16))
    fresh.extra.register_buffer("flags", torch.zeros(3, dtype=torch.bool))
    fresh.load_state_dict(back, strict=True)
    assert torch.equal(back["extra.scale"], sd["extra.scale"]) and torch.equal(back["extra.flags"], sd["extra.flags"])
    assert torch.equal(back["0.bias"], sd["0.bias"])
    for k in ("0.weight", "2.weight"):
        assert torch.unique(back[k][back[k] != 0]).numel() <= 64
    # a file that does not name its architecture cannot be written as a checkpoint
    assert main(["decompress", str(out), "--out", str(tmp_path / "c.pt"), "--format", "checkpoint"]) == 2
    assert "architecture" in capsys.readouterr().err


def test_cli_model_flag_names_the_architecture(tmp_path, capsys):
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=3)
    torch.save(model.state_dict(), tmp_path / "r.pt")
    out = tmp_path / "r.sqz"
    assert main(["compress", "--weights", str(tmp_path / "r.pt"), "--out", str(out), "--bits", "5",
                 "--model", "torchvision:resnet18", "--model-kwargs", '{"num_classes": 3}']) == 0
    capsys.readouterr()
    back = load_compressed(out)
    assert back.model_name == "torchvision:resnet18" and back.num_classes == 3
    # the default profile for other models: first, last and layers under 10,000 weights dense
    assert (back.state_dict["conv1.weight"] != 0).all() and (back.state_dict["fc.weight"] != 0).all()
    assert (back.state_dict["layer4.1.conv2.weight"] == 0).float().mean() > 0.6
    assert main(["compress", "--weights", str(tmp_path / "r.pt"), "--out", str(out), "--model-kwargs", "{}"]) == 2
    assert "--model-kwargs needs --model" in capsys.readouterr().err
    assert main(["compress", "--weights", str(tmp_path / "r.pt"), "--out", str(out),
                 "--model", "torchvision:nope"]) == 2
    assert "no model" in capsys.readouterr().err


def _rewrite(data: bytes, edit) -> bytes:
    from tests.weights.test_format import _rewrite_header
    return _rewrite_header(data, edit)


@pytest.mark.parametrize("edit,match", [
    (lambda h: h["raw"][0].update(dtype="c8"), "unknown type"),
    (lambda h: h["raw"][0].update(shape=[-1]), "shape"),
    (lambda h: h["raw"][0].update(shape=[2**40]), "shape"),
    (lambda h: h["raw"][0].update(name="0.weight"), "repeated"),
    (lambda h: h["raw"].append({"name": "x", "shape": [3], "dtype": "f4"}), "add up"),
    (lambda h: h["raw"].pop(), "add up"),
    (lambda h: h["raw"].__setitem__(0, "x"), "not an object"),
    (lambda h: h["layers"][0].update(shape=[256, 64, 0]), "empty weight"),
    (lambda h: h["layers"][0].update(dtype="i8"), "weight type"),
    (lambda h: h["layers"][0].update(bias=3), "bias"),
    (lambda h: h["layers"][0].update(name=None), "name"),
    (lambda h: h.update(num_classes="ten"), "num_classes"),
    (lambda h: h.update(model="package.that.does.not:exist"), "add up|match|unknown|cannot"),
])
def test_hostile_state_dict_headers_rejected(state_dict_file, tmp_path, edit, match):
    src, _ = state_dict_file
    out = tmp_path / "m.sqz"
    assert main(["compress", "--weights", str(src), "--out", str(out), "--bits", "4"]) == 0
    data = _rewrite(out.read_bytes(), edit)
    for reader in (decode, size_report):
        try:
            reader(data)
        except FormatError as e:
            assert __import__("re").search(match, str(e)), str(e)
        else:
            assert match.startswith("add up|"), "a hostile header was accepted"
    (tmp_path / "bad.sqz").write_bytes(data)
    bad = str(tmp_path / "bad.sqz")
    for args in (["size", bad], ["decompress", bad, "--out", str(tmp_path / "o.pt")]):
        code = main(args)
        assert code in (0, 2)  # a clean message or a clean result, never a traceback


def test_huffman_codec_meets_a_size_budget_by_bit_allocation():
    # the paper's coding cannot take a codebook of any size: the budget goes through the greedy
    # bit allocation over per-layer Huffman sizes (sensitivity.layer_sizes), a version 1 file
    from squeezenet.models import create_model
    torch.manual_seed(0)
    model = create_model("squeezenet1_1", num_classes=10, small_input=True)
    full, _ = compress_weights_of(model, CompressionConfig(codec="huffman", bits=8, density="keep"),
                                  model_name="squeezenet1_1", model_kwargs={"num_classes": 10, "small_input": True})
    budget = len(full) // 2
    x = torch.randn(16, 3, 32, 32)
    report = compress_(model, CompressionConfig(codec="huffman", size_budget=budget, density="keep"), calibration=x,
                       model_name="squeezenet1_1", model_kwargs={"num_classes": 10, "small_input": True},
                       log=lambda *a: None)
    data = encode(model)
    assert report["bytes"] == len(data) <= budget
    assert decode(data)[0]["version"] == 1 and max(report["bits"].values()) < 8


def compress_weights_of(model, config, **names):
    import copy
    m = copy.deepcopy(model)
    report = compress_(m, config, log=lambda *a: None, **names)
    return encode(m), report


def test_compress_folds_batch_norm_when_asked():
    # fold_batch_norm is honoured by the library verb itself, not only by the file-to-file path
    from squeezenet.models import create_model
    torch.manual_seed(0)
    model = create_model("squeezenet1_1", num_classes=10, small_input=True, batch_norm=True).eval()
    for m in model.modules():  # non-trivial statistics, so folding changes the weights
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        before = model(x)
    compress_(model, CompressionConfig(bits=8, density="keep", fold_batch_norm=True),
              model_name="squeezenet1_1", model_kwargs={"num_classes": 10, "small_input": True, "batch_norm": True})
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    header, state, _ = decode(encode(model))
    assert header["model_kwargs"].get("batch_norm") is False and not any("running" in k for k in state)
    plain = create_model("squeezenet1_1", num_classes=10, small_input=True)
    plain.load_state_dict(state)
    with torch.no_grad():
        assert torch.allclose(plain.eval()(x), before, atol=0.05 * float(before.abs().max()))
