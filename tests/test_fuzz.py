"""Fuzzing every reader with mutated files: only our error type may come out, quickly.

10,000 mutated inputs per reader (published .net parser, our .sqz decoder with and without a
fixed-up checksum, checkpoints, YAML configs), from a seeded generator so failures reproduce.
"""
import io
import random
import struct
import time
import zlib

import pytest
import torch

from squeezenet.compression import CompressionConfig, compress_weights
from squeezenet.weights.caffe_net import layers_from_state_dict, parse_caffe_net, serialize_caffe_net
from squeezenet.weights.sqz import decode
from squeezenet.errors import FormatError
from squeezenet.models import create_model
from squeezenet.preprocessing import CIFAR10
from squeezenet.training import TrainingError, load_config
from squeezenet.weights import LoadedWeights, load_weights

CASES = 10_000
EXTREMES = [0, 1, 0x7FFFFFFF, 0xFFFFFFFF, 0x80000000, 255, 65535]


def mutate(data: bytes, rng: random.Random) -> bytes:
    b = bytearray(data)
    kind = rng.randrange(6)
    if kind == 0 and b:  # flip a few bits
        for _ in range(rng.randint(1, 8)):
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
    elif kind == 1:  # truncate
        del b[rng.randrange(len(b) + 1):]
    elif kind == 2:  # insert garbage
        i = rng.randrange(len(b) + 1)
        b[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
    elif kind == 3 and len(b) >= 4:  # extreme 32-bit value
        i = rng.randrange(len(b) - 3)
        b[i:i + 4] = struct.pack("<I", rng.choice(EXTREMES))
    elif kind == 4 and b:  # overwrite a run
        i = rng.randrange(len(b))
        n = rng.randint(1, 64)
        b[i:i + n] = bytes([rng.randrange(256)]) * min(n, len(b) - i)
    else:  # duplicate a slice
        i = rng.randrange(len(b) + 1)
        j = min(len(b), i + rng.randint(1, 64))
        b[i:i] = b[i:j]
    return bytes(b)


def fix_crc(data: bytes) -> bytes:
    if len(data) < 4:
        return data
    return data[:-4] + struct.pack("<I", zlib.crc32(data[:-4]))


def run_cases(fn, seed: int, accepted=(FormatError,)) -> dict:
    rng = random.Random(seed)
    outcome = {"rejected": 0, "accepted": 0}
    start = time.perf_counter()
    for _ in range(CASES):
        try:
            fn(rng)
            outcome["accepted"] += 1
        except accepted:
            outcome["rejected"] += 1
    outcome["seconds"] = time.perf_counter() - start
    return outcome


@pytest.fixture(scope="module")
def net_bytes():
    g = torch.Generator().manual_seed(0)
    sd = create_model("squeezenet1_0").state_dict()
    for k, v in sd.items():
        if k.endswith("weight"):
            levels = torch.linspace(-1, 1, 100)[torch.randint(0, 100, v.shape, generator=g)]
            sd[k] = levels * (torch.rand(v.shape, generator=g) < 0.05)
    return serialize_caffe_net(layers_from_state_dict(sd))


@pytest.mark.slow
def test_fuzz_published_net_reader(net_bytes):
    out = run_cases(lambda rng: parse_caffe_net(mutate(net_bytes, rng), "fuzz.net"), seed=1)
    assert out["rejected"] + out["accepted"] == CASES
    # flips inside codebooks or indices still give valid files; everything else must be rejected cleanly
    assert out["rejected"] > CASES * 0.3


@pytest.fixture(scope="module", params=["range", "huffman", "state-dict"])
def sqz_bytes(request):
    """A version 3 (range-coded) and a version 1 (Huffman) file of a small SqueezeNet, and an
    architecture-free version 3 file (a state dict with batch norm and integer buffers)."""
    if request.param == "state-dict":
        from squeezenet.compression import compress_
        from squeezenet.weights import encode
        torch.manual_seed(0)
        m = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3), torch.nn.BatchNorm2d(16),
                                torch.nn.Conv2d(16, 32, 3, groups=4), torch.nn.Flatten(), torch.nn.Linear(32, 10))
        compress_(m, CompressionConfig(bits=3, density=0.5))
        return encode(m)
    # A 15,090-parameter SqueezeNet: version 2 codes a flag for every position, so a mutated
    # file that still decodes costs time in proportion to the model; a small one keeps 10,000 quick.
    kw = {"base_e": 16, "incr_e": 16, "small_input": True}
    m = create_model("squeezenet_from_metaparameters", num_classes=2, **kw)
    lw = LoadedWeights("squeezenet_from_metaparameters", m.state_dict(), CIFAR10, num_classes=2, model_kwargs=kw)
    data, _, _ = compress_weights(lw, CompressionConfig(bits=2, density=0.3, codec=request.param))
    return data


def test_fuzz_compressed_reader_checksum_layer(sqz_bytes):
    out = run_cases(lambda rng: decode(mutate(sqz_bytes, rng), "fuzz.sqz"), seed=2)
    assert out["accepted"] <= CASES * 0.01  # the checksum catches nearly every mutation


def test_fuzz_compressed_reader_past_the_checksum(sqz_bytes):
    # With the CRC fixed up, mutations reach the header and the bit streams.
    out = run_cases(lambda rng: decode(fix_crc(mutate(sqz_bytes, rng)), "fuzz.sqz"), seed=3)
    assert out["rejected"] > CASES * 0.3


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_fuzz_checkpoint_reader(tmp_path):
    m = torch.nn.Conv2d(2, 2, 1)
    buf = io.BytesIO()
    torch.save({"format": "squeezenet-checkpoint", "state_dict": m.state_dict(), "model": "x"}, buf)
    good = buf.getvalue()
    path = tmp_path / "ck.pt"
    cases = {"n": 0}

    cases["generic"] = 0

    def one(rng):
        path.write_bytes(mutate(good, rng))
        cases["n"] += 1
        lw = load_weights(path)
        # A mutation of the "format" string leaves a generic checkpoint holding a state dict,
        # which is read as such (architecture unknown); its tensors must be the originals.
        assert lw.kind == "state-dict" and not lw.has_architecture
        assert all(torch.equal(lw.state_dict[k], v) for k, v in m.state_dict().items())
        cases["generic"] += 1
    out = run_cases(one, seed=4, accepted=(FormatError,))
    assert out["accepted"] == cases["generic"]  # nothing else is accepted: no complete valid checkpoint


def test_fuzz_config_reader(tmp_path):
    good = (b"model: squeezenet1_1\nepochs: 3\nbatch_size: 16\nlr: 0.1\nschedule: cosine\n"
            b"model_kwargs: {small_input: true}\n")
    path = tmp_path / "c.yaml"

    def one(rng):
        path.write_bytes(mutate(good, rng))
        load_config(path)
    out = run_cases(one, seed=5, accepted=(TrainingError,))
    assert out["rejected"] > 0
