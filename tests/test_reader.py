"""``squeezenet.reader``: the file read with numpy and constriction only, bit for bit what the
torch reader gives, in a process where torch cannot be imported."""
import copy
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import torch.nn as nn

from squeezenet import reader
from squeezenet.compression import CompressionConfig, compress_, compress_weights, rdquant
from squeezenet.compression.quantization import share_weights_
from squeezenet.errors import FormatError
from squeezenet.models import create_model
from squeezenet.preprocessing import CIFAR10
from squeezenet.weights import LoadedWeights, decode, encode
from tests.compression.test_round_trip import ZOO, _built

# Imports that fail in the subprocess, as they would where only numpy and constriction are installed.
BLOCKER = textwrap.dedent("""
    import sys
    class _NoTorch:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torch", "torchvision", "bitarray", "numba", "PIL", "safetensors"):
                raise ImportError(f"{name} is not installed here")
    sys.meta_path.insert(0, _NoTorch())
""")


class OddBuffers(nn.Module):
    """Raw tensors of every kind the format stores beside the coded layers."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(16, 8)
        self.register_buffer("flags", torch.tensor([True, False, True]))
        self.register_buffer("counts", torch.arange(5, dtype=torch.uint8))
        self.register_buffer("small", torch.tensor([-3, 4], dtype=torch.int8))
        self.register_buffer("halves", torch.randn(4).bfloat16())
        self.register_buffer("doubles", torch.randn(3, dtype=torch.float64))


def _squeezenet(codec: str) -> bytes:
    torch.manual_seed(0)
    m = create_model("squeezenet1_1", num_classes=10, small_input=True)
    lw = LoadedWeights("squeezenet1_1", m.state_dict(), CIFAR10, num_classes=10, model_kwargs={"small_input": True})
    return compress_weights(lw, CompressionConfig(bits=4, codec=codec))[0]


def _trellis() -> bytes:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(4, 16, 5), nn.ReLU(), nn.Conv1d(16, 16, 5), nn.ReLU(), nn.Flatten(),
                          nn.Linear(16 * 12, 10)).eval()

    def serialize(m):
        return encode(m, "", codebook_dtype="f2", bias_dtype="f2")
    shared = copy.deepcopy(model)
    share_weights_(shared, 8)
    full = len(serialize(shared))
    rdquant.quantize_for_budget_(model, {n: 1.0 for n in ("0", "2", "5")}, full // 5, serialize, trellis=True)
    return serialize(model)


def _zoo(name: str) -> bytes:
    model = _built(name) if name in ZOO else OddBuffers()
    compress_(model, CompressionConfig(bits=4))
    return encode(model)


FILES = {"huffman_v1": lambda: _squeezenet("huffman"), "range_registered": lambda: _squeezenet("range"),
         "trellis": _trellis, "tied_aliases": lambda: _zoo("tied_language_model"),
         "lstm_tensor_layers": lambda: _zoo("gru_lstm"), "bf16": lambda: _zoo("bf16"), "fp16": lambda: _zoo("fp16"),
         "batch_norm": lambda: _zoo("grouped_depthwise_transposed_bn"), "raw_kinds": lambda: _zoo("odd")}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("reader")
    out = {}
    for name, make in FILES.items():
        path = root / f"{name}.sqz"
        path.write_bytes(make())
        out[name] = path
    return out


def _as_numpy(t: torch.Tensor) -> np.ndarray:
    return (t.float() if t.dtype == torch.bfloat16 else t).numpy()


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    """Same dtype, shape and bytes (so -0.0 and 0.0 differ, as they would in a model)."""
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def test_the_files_cover_every_coding_of_the_format(files):
    headers = {name: reader.read_header(p) for name, p in files.items()}
    codings = {layer.get("coding", "huffman") for h in headers.values() for layer in h["layers"]}
    assert codings == {"huffman", "range", "trellis"}
    assert {h["version"] for h in headers.values()} == {1, 3, 4, 5}
    assert any(layer.get("tensor") for layer in headers["lstm_tensor_layers"]["layers"])
    assert {r["dtype"] for r in headers["raw_kinds"]["raw"]} >= {"b1", "u1", "i1", "bf16", "f8"}
    assert headers["tied_aliases"]["aliases"]


@pytest.mark.parametrize("name", list(FILES))
def test_reader_gives_the_torch_decode_bit_for_bit(files, name):
    data = files[name].read_bytes()
    _, state, _ = decode(data)
    arrays = reader.read(files[name])
    assert list(arrays) == list(state) or name == "huffman_v1"  # version 1 lists by file order
    assert set(arrays) == set(state)
    for k, t in state.items():
        assert _same(arrays[k], _as_numpy(t)), k
    if name == "tied_aliases":  # one array under both names, as one tensor in the model
        header = reader.read_header(files[name])
        for alias, target in header["aliases"].items():
            assert arrays[alias] is arrays[target]


def test_reader_runs_where_torch_cannot_be_imported(files, tmp_path):
    expected = {}
    for name, path in files.items():
        _, state, _ = decode(path.read_bytes())
        np.savez(tmp_path / f"{name}.npz", **{k.replace(".", "__"): _as_numpy(t) for k, t in state.items()})
        expected[name] = str(path)
    script = BLOCKER + textwrap.dedent(f"""
        import json, numpy as np
        import squeezenet
        import squeezenet.reader as reader
        files = json.loads({json.dumps(json.dumps(expected))})
        checked = 0
        for name, path in files.items():
            got = reader.read(path)
            want = np.load({str(tmp_path)!r} + "/" + name + ".npz")
            assert sorted(k.replace(".", "__") for k in got) == sorted(want.files), name
            for k, a in got.items():
                b = want[k.replace(".", "__")]
                assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes(), (name, k)
                checked += 1
        try:
            squeezenet.create_model("squeezenet1_0")
        except ImportError:
            pass
        else:
            raise AssertionError("torch was importable: the test proves nothing")
        assert not [m for m in sys.modules if m.split(".")[0] in ("torch", "torchvision")]
        print("checked", checked)
    """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    n_tensors = sum(len(decode(p.read_bytes())[1]) for p in files.values())
    assert run.stdout.split() == ["checked", str(n_tensors)]


def test_importing_the_package_and_the_reader_imports_no_torch():
    script = ("import sys, squeezenet, squeezenet.reader, squeezenet.weights\n"
              "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision', 'numba')))")
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip() == "[]"


def test_reader_refuses_corrupt_truncated_and_foreign_files(files, tmp_path):
    data = bytearray(files["range_registered"].read_bytes())
    data[len(data) // 2] ^= 0x40
    (tmp_path / "flipped.sqz").write_bytes(bytes(data))
    with pytest.raises(FormatError, match="checksum"):
        reader.read(tmp_path / "flipped.sqz")
    (tmp_path / "cut.sqz").write_bytes(files["trellis"].read_bytes()[:-100])
    with pytest.raises(FormatError):
        reader.read(tmp_path / "cut.sqz")
    (tmp_path / "other.bin").write_bytes(b"PK\x03\x04" + bytes(100))
    with pytest.raises(FormatError, match="magic"):
        reader.read(tmp_path / "other.bin")
    with pytest.raises(FileNotFoundError):
        reader.read(tmp_path / "missing.sqz")


@pytest.mark.parametrize("value", [1.0, 1.00390625, 1.005859375, -2.0078125, 3.0e38, 1e-40, 0.0, -0.0])
def test_bfloat16_rounding_matches_torch(value):
    x = np.array([value, np.nextafter(np.float32(value), np.float32(np.inf))], np.float32)
    ours = reader._as_dtype(x, "bf16")
    assert _same(ours, torch.from_numpy(x).to(torch.bfloat16).float().numpy())
