import json
import struct
import zlib

import numpy as np
import pytest
import torch

from squeezenet.compression import CompressionConfig, compress_weights
from squeezenet.weights import decode, size_report
from squeezenet.weights.codecs.huffman import gap_symbols, positions_from_gaps
from squeezenet.weights.sqz import CODING_BUFFERS, MAGIC
from squeezenet.models.layers import prunable_layers
from squeezenet.errors import FormatError
from squeezenet.models import create_model, list_models
from squeezenet.preprocessing import CIFAR10
from squeezenet.weights import LoadedWeights, load_weights


def loaded(name, **kw):
    m = create_model(name, num_classes=10, **kw)
    return LoadedWeights(model_name=name, state_dict=m.state_dict(), preprocessing=CIFAR10, num_classes=10,
                         model_kwargs=kw, path="test")


def test_gap_symbols_with_skip_exact():
    pos = np.array([0, 3, 20, 21])
    sym = gap_symbols(pos, 8)  # SKIP = 8 advances 8 positions without an entry
    assert sym.tolist() == [0, 2, 8, 8, 0, 0]  # gap 16 = two SKIPs, then gap 0
    assert positions_from_gaps(sym, 8).tolist() == pos.tolist()
    assert gap_symbols(np.array([], np.int64), 8).size == 0


@pytest.mark.parametrize("name", [n for n in list_models() if n != "alexnet"])
def test_every_squeezenet_round_trips(name):
    kw = {"small_input": True}
    data, model, info = compress_weights(loaded(name, **kw), CompressionConfig(bits=4, density="profile"))
    header, state, shared = decode(data)
    model_state = model.state_dict()
    # every entry of the model's state dict but the coding buffers, and each one exactly
    assert state.keys() == {k for k in model_state if not k.endswith(CODING_BUFFERS)}
    assert all(torch.equal(state[k], model_state[k]) for k in state)
    assert {k.rsplit(".", 1)[0] for k in shared} == set(prunable_layers(model))
    assert header["model"] == name and header["model_kwargs"] == kw
    rep = size_report(data)
    assert rep["bytes"] == len(data) == sum(rep["components"].values())


@pytest.mark.slow
def test_alexnet_round_trips():
    data, model, _ = compress_weights(loaded("alexnet"), CompressionConfig(bits=3, density="profile", kmeans_iters=5))
    _, state, _ = decode(data)
    model_state = model.state_dict()
    assert state.keys() == {k for k in model_state if not k.endswith(CODING_BUFFERS)}
    assert all(torch.equal(state[k], model_state[k]) for k in state)
    assert len(data) < 0.08 * 4 * sum(p.numel() for p in model.parameters())


def test_load_weights_detects_compressed_and_builds(tmp_path):
    data, model, _ = compress_weights(loaded("squeezenet1_1", small_input=True), CompressionConfig(bits=5))
    path = tmp_path / "model.bin"  # extension is irrelevant: detection is by content
    path.write_bytes(data)
    lw = load_weights(path)
    assert lw.kind == "compressed" and lw.preprocessing == CIFAR10
    x = torch.randn(2, 3, 32, 32)
    model.eval()
    assert torch.equal(lw.build_model()(x), model(x))


def _rewrite_header(data: bytes, edit, body_edit=None, version=None) -> bytes:
    """Change the JSON header (and optionally the body and the preamble's version) and fix up
    the checksum: a hostile but well-formed file."""
    _, old_version, flags, hlen = struct.unpack_from("<8sHHI", data)
    header = json.loads(zlib.decompress(data[16:16 + hlen]))
    body = data[16 + hlen:-4]
    if body_edit is not None:
        body = body_edit(header, body)
    edit(header)
    hb = zlib.compress(json.dumps(header).encode())
    out = struct.pack("<8sHHI", MAGIC, old_version if version is None else version, flags, len(hb)) + hb + body
    return out + struct.pack("<I", zlib.crc32(out))


@pytest.fixture(scope="module")
def small_weights():
    torch.manual_seed(0)
    return loaded("squeezenet1_1", small_input=True)


@pytest.fixture(scope="module")
def small_file(small_weights):
    """A version 1 (Huffman) file."""
    data, _, _ = compress_weights(small_weights, CompressionConfig(bits=4, codec="huffman"))
    assert struct.unpack_from("<H", data, 8)[0] == 1
    return data


@pytest.fixture(scope="module")
def small_file_v2(small_weights):
    """A version 3 (range-coded) file of the same weights; the v2 tests run on it (version 3 is
    version 2 plus raw tensors of any dtype and architecture-free files)."""
    data, _, _ = compress_weights(small_weights, CompressionConfig(bits=4))
    assert struct.unpack_from("<H", data, 8)[0] == 3
    return data


def test_version_2_files_still_decode(small_file_v2):
    # A model without buffers and with every layer coded has the same layout in versions 2 and 3:
    # relabelled as version 2 (as the previous release wrote it), it decodes to the same tensors.
    v2 = _rewrite_header(small_file_v2, lambda h: h.update(version=2), version=2)
    h2, s2, _ = decode(v2)
    _, s3, _ = decode(small_file_v2)
    assert h2["version"] == 2 and s2.keys() == s3.keys()
    assert all(torch.equal(s2[k], s3[k]) for k in s3)
    assert size_report(v2)["bytes"] == len(v2)


def test_corrupt_files_rejected(small_file):
    data = small_file
    decode(data)
    with pytest.raises(FormatError, match="checksum"):
        decode(data[:100] + bytes([data[100] ^ 1]) + data[101:])
    with pytest.raises(FormatError, match="truncated|checksum"):
        decode(data[:-10])
    with pytest.raises(FormatError, match="magic"):
        decode(b"NOTMAGIC" + data[8:])
    bad_version = bytearray(data)
    bad_version[8] = 9
    with pytest.raises(FormatError, match="version"):
        decode(bytes(bad_version))


@pytest.mark.parametrize("edit,match", [
    (lambda h: h["layers"][0].update(nnz=10**12), "kept weights"),
    (lambda h: h["layers"][0].update(bits=12), "bits"),
    (lambda h: h["layers"][0].update(index_bits=-5), "index bits"),
    (lambda h: h["layers"][0].update(shape=[4096, 4096, 3, 3]), "shape"),
    (lambda h: h.update(model="resnet50"), "unknown model"),
    (lambda h: h.update(model="squeezenet1_0"), "match"),
    (lambda h: h.update(num_classes=-1), "num_classes"),
    (lambda h: h["layers"][1].update(sizes=[1, 2, 3]), "section sizes"),
    (lambda h: h["layers"].pop(), "match"),
])
def test_hostile_headers_rejected(small_file, edit, match):
    with pytest.raises(FormatError, match=match):
        decode(_rewrite_header(small_file, edit))


@pytest.mark.parametrize("edit,match", [
    (lambda h: h["layers"][0].update(nnz=10**12), "kept weights"),
    (lambda h: h["layers"][0].update(k=10**9), "codebook size"),
    (lambda h: h["layers"][0].update(neg="3"), "negative levels"),
    (lambda h: h["layers"][0].update(coding="huffman"), "coding"),
    (lambda h: h["layers"][0].update(bias_dtype="f8"), "bias type"),
    (lambda h: h["layers"][0].pop("sizes"), "section sizes"),
    (lambda h: h["layers"][1].update(sizes=[1, 2, 3, 4]), "section sizes"),
    (lambda h: h["layers"][1].update(sizes=[True, 2, 3, 4]), "section sizes"),
    (lambda h: h.update(layers={"a": 1}), "layer list"),
    (lambda h: h.update(version=1), "version"),
    (lambda h: h.update(raw=[{"name": "x", "shape": [10**9]}]), "raw tensor"),
    (lambda h: h["layers"].pop(), "match"),
])
def test_hostile_v2_headers_rejected(small_file_v2, edit, match):
    with pytest.raises(FormatError, match=match):
        decode(_rewrite_header(small_file_v2, edit))
    with pytest.raises(FormatError, match=match):  # size accounting validates as the reader does
        size_report(_rewrite_header(small_file_v2, edit))


def test_version_1_and_2_decode_to_the_same_weights(small_file, small_file_v2):
    _, s1, _ = decode(small_file)
    _, s2, _ = decode(small_file_v2)
    assert s1.keys() == s2.keys()
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    assert len(small_file_v2) < len(small_file)


@pytest.mark.parametrize("seed", range(4))
def test_v2_stream_garbage_rejected(small_file_v2, seed):
    # Scramble the first layer's stream bytes with a fixed-up checksum. A range-coded stream has no
    # redundancy to check, so garbage may decode to *some* layer; the decoder must then still keep
    # its promises: exactly the declared number of kept weights, every one a codebook level.
    h, off = __import__("squeezenet.weights.sqz", fromlist=["parse_header"]).parse_header(small_file_v2)
    layer = h["layers"][0]
    sizes = layer["sizes"]
    start = off + sum(sizes[:3])
    body = bytearray(small_file_v2[:-4])
    rng = np.random.default_rng(seed)
    body[start:start + sizes[3]] = rng.integers(0, 256, sizes[3], dtype=np.uint8).tobytes()
    bad = bytes(body) + struct.pack("<I", zlib.crc32(bytes(body)))
    try:
        _, state, shared = decode(bad)
    except FormatError:
        return
    _, clean, _ = decode(small_file_v2)
    name = layer["name"]
    weight, mask = state[f"{name}.weight"], shared[f"{name}.weight_mask"]
    assert not torch.equal(weight, clean[f"{name}.weight"])  # the garbage was read, not skipped
    assert int(mask.sum()) == layer["nnz"]
    codebook = shared[f"{name}.weight_codebook"]
    assert torch.isin(weight[mask], codebook).all() and (weight[~mask] == 0).all()


def test_codebook_index_out_of_range_rejected(small_file):
    # Cut the first layer's codebook to one entry, with its section size, the body and the
    # checksum fixed up to match: every size check passes and only the index range check is left.
    def cut_codebook(h, body):
        layer = h["layers"][0]
        width = {"f4": 4, "f2": 2}[layer["codebook_dtype"]]
        assert layer["k"] > 1
        return body[:width] + body[width * layer["k"]:]

    def shrink(h):
        layer = h["layers"][0]
        layer["sizes"][0] //= layer["k"]
        layer["k"] = 1
    with pytest.raises(FormatError, match="codebook index .* out of range"):
        decode(_rewrite_header(small_file, shrink, cut_codebook))


@pytest.mark.parametrize("codec", ["huffman", "range"])
def test_empty_layer_and_single_value_layer_round_trip(codec):
    m = create_model("squeezenet1_1", num_classes=10, small_input=True)
    with torch.no_grad():
        m.features[3].squeeze.weight.zero_()          # every weight pruned: an empty layer
        m.features[3].expand1x1.weight.fill_(0.25)    # one distinct value
    lw = LoadedWeights("squeezenet1_1", m.state_dict(), CIFAR10, num_classes=10, model_kwargs={"small_input": True})
    data, model, _ = compress_weights(lw, CompressionConfig(bits=3, density="keep", codec=codec))
    header, state, _ = decode(data)
    assert (state["features.3.squeeze.weight"] == 0).all()
    assert (state["features.3.expand1x1.weight"] == 0.25).all()
    layers = {entry["name"]: entry for entry in header["layers"]}
    assert layers["features.3.squeeze"]["nnz"] == 0 and layers["features.3.expand1x1"]["k"] == 1
    if codec == "huffman":
        assert layers["features.3.expand1x1"]["positions"] == "dense"


@pytest.mark.parametrize("codec", ["range", "huffman"])
def test_fixed_bytes_are_the_file_less_its_layers_codes(codec):
    # what the budget search adds to its code-length estimate: the preamble, header, biases, raw
    # tensors and checksum, read off the header without decoding the layers
    from squeezenet.compression import compress_
    from squeezenet.weights import encode
    from squeezenet.weights.sqz import fixed_bytes
    model = create_model("squeezenet1_1", num_classes=10, small_input=True)
    if codec == "range":  # raw tensors (the version 1 format holds registered architectures only)
        model.features[0] = torch.nn.Sequential(model.features[0], torch.nn.BatchNorm2d(64))
    registered = {} if codec == "range" else {"model_name": "squeezenet1_1", "model_kwargs": {"small_input": True,
                                                                                             "num_classes": 10}}
    compress_(model, CompressionConfig(bits=4, codec=codec), **registered)
    data = encode(model)
    parts = size_report(data)["components"]
    assert parts["biases"] > 0 and (parts["raw_tensors"] > 0) == (codec == "range")
    assert fixed_bytes(data) == len(data) - parts["codebooks"] - parts["code_tables"] - parts["weight_codes"] \
        - parts["position_codes"]
