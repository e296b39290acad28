import numpy as np
import pytest
import torch

from squeezenet.weights.caffe_net import (LAYER_NAMES, decode_positions, encode_positions, layers_from_state_dict,
                                              layers_to_state_dict, parse_caffe_net, read_caffe_net,
                                              serialize_caffe_net, write_caffe_net)
from squeezenet.errors import FormatError
from squeezenet.models import create_model
from tests.conftest import PUBLISHED_NET, need


def test_relative_positions_with_fillers_exact():
    # gaps: 0, 15 (fits), 16 (one filler), 40 (two fillers: 15+1, 15+1, then 8)
    pos = np.array([0, 16, 33, 74])
    gaps, vals = encode_positions(pos, np.array([5, 6, 7, 8], np.uint8))
    assert gaps.tolist() == [0, 15, 15, 0, 15, 15, 8]
    assert vals.tolist() == [5, 6, 0, 7, 0, 0, 8]
    assert decode_positions(gaps)[vals != 0].tolist() == pos.tolist()


def test_relative_positions_empty_and_first_gap():
    gaps, vals = encode_positions(np.array([], np.int64), np.array([], np.uint8))
    assert gaps.size == 0 and vals.size == 0
    gaps, vals = encode_positions(np.array([20]), np.array([3], np.uint8))
    assert gaps.tolist() == [15, 4] and vals.tolist() == [0, 3]


def sparse_shared_state_dict(seed=0):
    g = torch.Generator().manual_seed(seed)
    sd = create_model("squeezenet1_0").state_dict()
    for k, v in sd.items():
        if k.endswith("weight"):
            levels = torch.linspace(-0.5, 0.5, 200)
            idx = torch.randint(0, 200, v.shape, generator=g)
            keep = torch.rand(v.shape, generator=g) < 0.3
            sd[k] = levels[idx] * keep
        else:
            sd[k] = torch.randn(v.shape, generator=g)
    return sd


def test_write_from_state_dict_round_trip(tmp_path):
    sd = sparse_shared_state_dict()
    path = tmp_path / "m.net"
    size = write_caffe_net(path, layers_from_state_dict(sd))
    assert path.stat().st_size == size
    back = layers_to_state_dict(read_caffe_net(path))
    for k in sd:
        assert torch.equal(back[k], sd[k]), k


def test_state_dict_with_too_many_values_rejected():
    sd = create_model("squeezenet1_0").state_dict()
    with pytest.raises(ValueError, match="at most 255"):
        layers_from_state_dict(sd)


def test_published_file_round_trips_byte_identical(tmp_path):
    path = need(PUBLISHED_NET)
    layers = read_caffe_net(path)
    assert [layer.caffe_name for layer in layers] == [n for n, _ in LAYER_NAMES]
    out = tmp_path / "copy.net"
    write_caffe_net(out, layers)
    assert out.read_bytes() == path.read_bytes()
    sd = layers_to_state_dict(layers)
    kept = sum(int((v != 0).sum()) for k, v in sd.items() if k.endswith("weight"))
    assert 400_000 < kept < 430_000
    create_model("squeezenet1_0").load_state_dict(sd)


def test_corrupt_inputs_give_format_errors(tmp_path):
    data = serialize_caffe_net(layers_from_state_dict(sparse_shared_state_dict(1)))
    parse_caffe_net(data)  # valid
    with pytest.raises(FormatError, match="truncated|does not match"):
        parse_caffe_net(data[:-1], "x.net")
    with pytest.raises(FormatError, match="trailing|does not match"):
        parse_caffe_net(data + b"\0", "x.net")
    with pytest.raises(FormatError, match="shorter than"):
        parse_caffe_net(data[:50], "x.net")
    huge = bytearray(data)
    huge[0:4] = (2**32 - 1).to_bytes(4, "little")  # claims 4 billion entries
    with pytest.raises(FormatError, match="claims"):
        parse_caffe_net(bytes(huge), "x.net", num_classes=1000)
    with pytest.raises(FormatError):
        parse_caffe_net(bytes(huge), "x.net")
    with pytest.raises(FormatError, match="x.net"):
        parse_caffe_net(b"garbage" * 100, "x.net")
    p = tmp_path / "missing.net"
    with pytest.raises(FileNotFoundError):
        read_caffe_net(p)
