"""The round-trip contract: any model, compressed to a budget, comes back as a state dict with
exactly the keys, shapes and dtypes of ``model.state_dict()`` that a freshly built instance loads
with ``strict=True``. A zoo of the patterns users' models are built with, each built in code."""
import pytest
import torch
import torch.nn as nn
import torch.nn.utils.parametrize as parametrize
from torch.nn.utils import parametrizations, prune

from squeezenet.compression import CompressionConfig, compress_
from squeezenet.compression.api import fp32_bytes
from squeezenet.errors import ConfigError
from squeezenet.models.layers import prunable_layers
from squeezenet.weights import load_compressed, load_weights, save_compressed, save_safetensors, save_state_dict
from squeezenet.weights.sqz import size_report


class TiedLanguageModel(nn.Module):
    """GPT-2 style: the output projection is the embedding table, a transformer in between."""

    def __init__(self, vocab: int = 96, width: int = 32):
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        layer = nn.TransformerEncoderLayer(width, 4, 64, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, tokens):
        return self.head(self.norm(self.encoder(self.embed(tokens))))


class CrossAttention(nn.Module):
    """``nn.MultiheadAttention`` with other key and value widths: separate q/k/v projections."""

    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(32, 4, kdim=24, vdim=20, batch_first=True)
        self.self_attn = nn.MultiheadAttention(32, 4, batch_first=True)
        self.out = nn.Linear(32, 10)

    def forward(self, x):
        q = x[..., :32]
        y, _ = self.attn(q, x[..., 32:56], x[..., 56:76])
        y, _ = self.self_attn(y, y, y)
        return self.out(y.mean(1))


class Symmetric(nn.Module):
    """A user-defined parametrization (the one in PyTorch's parametrization tutorial)."""

    def forward(self, x):
        return x.triu() + x.triu(1).transpose(-1, -2)


class Recurrent(nn.Module):
    def __init__(self):
        super().__init__()
        self.gru = nn.GRU(12, 24, batch_first=True, bidirectional=True)
        self.lstm = nn.LSTM(48, 32, num_layers=2, batch_first=True, proj_size=16)
        self.out = nn.Linear(16, 6)

    def forward(self, x):
        y, _ = self.gru(x)
        y, _ = self.lstm(y)
        return self.out(y[:, -1])


def weight_norm_net():
    """HiFi-GAN style: weight-normed convolutions (the parametrization API)."""
    net = nn.Sequential(nn.Conv1d(8, 32, 5, padding=2), nn.LeakyReLU(0.1), nn.Conv1d(32, 32, 3, padding=1),
                        nn.LeakyReLU(0.1), nn.Flatten(), nn.Linear(32 * 24, 12))
    for i in (0, 2, 5):
        parametrizations.weight_norm(net[i])
    return net


def old_weight_norm_net():
    """The older ``torch.nn.utils.weight_norm`` hooks (``weight_g``, ``weight_v``) many checkpoints hold."""
    net = nn.Sequential(nn.Conv1d(8, 32, 5, padding=2), nn.LeakyReLU(0.1), nn.Conv1d(32, 32, 3, padding=1),
                        nn.LeakyReLU(0.1), nn.Flatten(), nn.Linear(32 * 24, 12))
    with pytest.warns(FutureWarning):
        for i in (0, 2):
            torch.nn.utils.weight_norm(net[i])
    return net


def normed_net():
    """Spectral norm (both APIs), orthogonal and a user-defined parametrization, pruning's hook."""
    net = nn.Sequential(nn.Linear(24, 48), nn.ReLU(), nn.Linear(48, 48), nn.ReLU(), nn.Linear(48, 48), nn.ReLU(),
                        nn.Linear(48, 48), nn.ReLU(), nn.Linear(48, 10))
    parametrizations.spectral_norm(net[0])
    torch.nn.utils.spectral_norm(net[2])
    parametrizations.orthogonal(net[4])
    parametrize.register_parametrization(net[6], "weight", Symmetric())
    prune.l1_unstructured(net[8], "weight", amount=0.3)
    return net


def convolutions():
    """Grouped and depthwise convolutions in 1-D and 2-D, transposed ones, batch norm."""
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1, groups=4), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1, groups=32), nn.ReLU(),
        nn.ConvTranspose2d(32, 16, 2, stride=2), nn.ReLU(),
        nn.Flatten(2), nn.Conv1d(16, 16, 5, padding=2, groups=16), nn.ReLU(),
        nn.Conv1d(16, 24, 3, padding=1, groups=8), nn.ConvTranspose1d(24, 8, 4, stride=2),
        nn.AdaptiveAvgPool1d(4), nn.Flatten(), nn.Linear(32, 10))


def half(dtype):
    def build():
        return nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
                             nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(128, 10)).to(dtype)
    return build


ZOO = {
    "tied_language_model": (TiedLanguageModel, lambda g: torch.randint(0, 96, (64, 12), generator=g)),
    "cross_attention": (CrossAttention, lambda g: torch.randn(64, 6, 76, generator=g)),
    "weight_norm": (weight_norm_net, lambda g: torch.randn(64, 8, 24, generator=g)),
    "old_weight_norm": (old_weight_norm_net, lambda g: torch.randn(64, 8, 24, generator=g)),
    "spectral_orthogonal_user_pruned": (normed_net, lambda g: torch.randn(64, 24, generator=g)),
    "gru_lstm": (Recurrent, lambda g: torch.randn(64, 7, 12, generator=g)),
    "grouped_depthwise_transposed_bn": (convolutions, lambda g: torch.randn(64, 3, 8, 8, generator=g)),
    "fp16": (half(torch.float16), lambda g: torch.randn(64, 3, 8, 8, generator=g).half()),
    "bf16": (half(torch.bfloat16), lambda g: torch.randn(64, 3, 8, 8, generator=g).bfloat16()),
}


def _built(name: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return ZOO[name][0]().eval()


def _settled(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """A few training-mode passes, so batch-norm statistics and spectral norm's power iterations
    hold values of their own (not the freshly built ones a strict load would also accept)."""
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(x)
    return model.eval()


@pytest.mark.parametrize("name", list(ZOO))
def test_every_model_of_the_zoo_round_trips_into_a_fresh_instance(name, tmp_path):
    x = ZOO[name][1](torch.Generator().manual_seed(1))
    model = _settled(_built(name), x)
    with torch.no_grad():
        reference = model(x[32:]).float()
    expected = {k: (tuple(v.shape), v.dtype) for k, v in _built(name, seed=5).state_dict().items()}
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())  # stored exactly
    budget = (fp32_bytes(model) - buffers) // 5 + buffers
    report = compress_(model, CompressionConfig(size_budget=budget), calibration=x[:32])
    path = tmp_path / "m.sqz"
    assert save_compressed(model, path) == report.bytes <= budget
    state = load_compressed(path).state_dict

    assert {k: (tuple(v.shape), v.dtype) for k, v in state.items()} == expected
    fresh = _built(name, seed=5)
    fresh.load_state_dict(state, strict=True)
    with torch.no_grad():
        decoded, in_place = fresh(x[32:]).float(), model(x[32:]).float()
    assert torch.allclose(decoded, in_place, rtol=1e-3, atol=1e-3 * float(in_place.abs().max()))  # model == file
    error = float((decoded - reference).norm() / reference.norm())
    assert error < 0.25, f"{name}: relative output error {error:.3f} at a fifth of the fp32 size"

    for out in (tmp_path / "m.pt", tmp_path / "m.safetensors"):
        (save_safetensors if out.suffix == ".safetensors" else save_state_dict)(out, state)
        again = load_weights(out).state_dict
        assert {k: (tuple(v.shape), v.dtype) for k, v in again.items()} == expected
        _built(name, seed=7).load_state_dict(again, strict=True)


def test_a_tied_tensor_is_coded_once_counted_once_and_restored_as_one_tensor(tmp_path):
    x = ZOO["tied_language_model"][1](torch.Generator().manual_seed(1))
    model = _built("tied_language_model")
    names = [k for k, v in model.state_dict().items() if v.data_ptr() == model.embed.weight.data_ptr()]
    assert names == ["embed.weight", "head.weight"]
    untied = sum(4 * v.numel() for v in model.state_dict().values())
    assert fp32_bytes(model) == untied - 4 * model.embed.weight.numel()
    assert sum(1 for layer in prunable_layers(model).values() if layer.weight is model.embed.weight) == 1
    compress_(model, CompressionConfig(size_budget=40_000), calibration=x)
    save_compressed(model, tmp_path / "m.sqz")
    size = size_report((tmp_path / "m.sqz").read_bytes())
    assert size["fp32_bytes"] == fp32_bytes(model.__class__()) and size["version"] == 5
    assert size["components"]["raw_tensors"] < 4 * model.embed.weight.numel()  # not stored again in fp32
    state = load_compressed(tmp_path / "m.sqz").state_dict
    assert state["embed.weight"] is state["head.weight"]


def test_parametrized_layers_code_their_originals_with_sensitivities_through_the_parametrization():
    model = weight_norm_net()
    layers = prunable_layers(model)
    assert "0" not in layers and "0.parametrizations.weight.original1" in layers
    assert all(layer.weight.is_leaf for layer in layers.values())
    from squeezenet.compression.rdquant import fisher_sensitivity
    sensitivity = fisher_sensitivity(model, torch.randn(16, 8, 24), output="logits")
    assert set(sensitivity) == set(layers) and all(s > 1e-20 for s in sensitivity.values())
    old = old_weight_norm_net()
    assert set(prunable_layers(old)) == {"0.weight_g", "0.weight_v", "2.weight_g", "2.weight_v", "5"}


def test_a_model_holding_tensors_the_format_cannot_store_is_refused_before_any_work():
    model = nn.Sequential(nn.Linear(8, 8))
    model.register_buffer("phase", torch.zeros(4, dtype=torch.complex64))
    with pytest.raises(ConfigError, match="phase"):
        compress_(model, CompressionConfig(size_budget=2000), calibration=torch.randn(8, 8))


def test_a_file_that_keeps_one_name_of_a_tied_tensor_loads_into_the_model_with_both():
    from squeezenet.weights.loaded import with_tied_keys
    model = _built("tied_language_model")
    state = {k: v for k, v in model.state_dict().items() if k != "head.weight"}  # as tools that drop ties write
    fresh = _built("tied_language_model", seed=3)
    with pytest.raises(RuntimeError, match="head.weight"):
        fresh.load_state_dict(state, strict=True)
    fresh.load_state_dict(with_tied_keys(fresh, state), strict=True)
    assert torch.equal(fresh.head.weight, model.embed.weight)
    assert with_tied_keys(fresh, model.state_dict()) is not None


def _with_header(data: bytes, header: dict) -> bytes:
    """The file with another header (same body), its checksum made anew."""
    import json
    import struct
    import zlib
    from squeezenet.weights.sqz import _PREAMBLE, parse_header
    _, body_at = parse_header(data)
    magic, _, flags, _ = _PREAMBLE.unpack_from(data)
    hbytes = zlib.compress(json.dumps(header).encode(), 9)
    out = _PREAMBLE.pack(magic, header["version"], flags, len(hbytes)) + hbytes + data[body_at:-4]
    return out + struct.pack("<I", zlib.crc32(out))


def test_aliases_that_do_not_fit_the_state_dict_are_refused():
    from squeezenet.errors import FormatError
    from squeezenet.weights.sqz import decode, encode, parse_header
    model = _built("tied_language_model")
    compress_(model, CompressionConfig(bits=6))
    good = encode(model)
    header, _ = parse_header(good)
    assert header["aliases"] == {"embed.weight": "head.weight"}
    assert set(decode(_with_header(good, header))[1]) == set(model.__class__().state_dict())
    # (a file of no named architecture describes its state dict itself: an alias of another
    # tensor, or none, makes another state dict, which the strict load refuses)
    bad = [{"embed.weight": "nowhere"}, {"embed.weight": "embed.weight"}, {"head.weight": "head.weight"},
           {"embed.weight": "head.weight", "head.weight": "embed.weight"}, ["embed.weight"], {"embed.weight": 3}]
    for aliases in bad:
        with pytest.raises(FormatError):
            decode(_with_header(good, {**header, "aliases": aliases}))
    with pytest.raises(FormatError, match="version 4"):
        decode(_with_header(good, {**header, "version": 4}))
