"""Parameters of modules that are not conv / linear layers (LSTM, attention, embeddings) are coded
as layers of their own, through every stage: pruning, sharing, the budget path, the file, training."""
import copy

import pytest
import torch
import torch.nn as nn

from squeezenet.compression import CompressionConfig, after_step_, compress_, prune_, share_weights_
from squeezenet.compression.pruning import attach_masks_
from squeezenet.compression.quantization import attach_shared_state_
from squeezenet.errors import FormatError
from squeezenet.models.layers import TensorLayer, coded_key, prunable_layers
from squeezenet.weights import decode, encode, size_report
from tests.weights.test_format import _rewrite_header


class Recurrent(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(24, 32, num_layers=2, batch_first=True)
        self.attention = nn.MultiheadAttention(32, 4, batch_first=True)
        self.norm = nn.LayerNorm(32)
        self.head = nn.Linear(32, 8)

    def forward(self, x):
        y, _ = self.lstm(x)
        y, _ = self.attention(y, y, y)
        return self.head(self.norm(y[:, -1]))


def _model():
    torch.manual_seed(0)
    return Recurrent().eval()


def test_parameters_of_two_to_five_dimensions_outside_conv_and_linear_become_tensor_layers():
    layers = prunable_layers(_model())
    assert list(layers) == ["lstm.weight_ih_l0", "lstm.weight_hh_l0", "lstm.weight_ih_l1", "lstm.weight_hh_l1",
                            "attention.in_proj_weight", "attention.out_proj", "head"]
    assert isinstance(layers["lstm.weight_hh_l0"], TensorLayer) and layers["lstm.weight_hh_l0"].bias is None
    assert isinstance(layers["head"], nn.Linear)  # modules keep being coded with their biases
    assert "norm.weight" not in layers  # 1-D: stored exactly


def test_a_tensor_layers_coding_buffers_live_on_its_owner_under_the_parameters_name():
    model = _model()
    prune_(model)
    layer = prunable_layers(model)["lstm.weight_ih_l0"]
    assert "weight_mask" in layer._buffers and list(layer._buffers) == ["weight_mask"]
    assert "lstm.weight_ih_l0_mask" in model.state_dict()
    assert layer.weight_mask is model.lstm.weight_ih_l0_mask
    assert torch.equal(model.lstm.weight_ih_l0 != 0, model.lstm.weight_ih_l0_mask)
    with pytest.raises(AttributeError):
        layer.weight_codebook  # noqa: B018 - not made yet
    with pytest.raises(AttributeError):
        layer.weight_step = torch.tensor(1.0)  # buffers are registered, not set out of nowhere
    del layer._buffers["weight_mask"]
    assert "lstm.weight_ih_l0_mask" not in model.state_dict()
    assert coded_key("lstm.weight_ih_l0", "weight_codebook", True) == "lstm.weight_ih_l0_codebook"
    assert coded_key("head", "weight_codebook") == "head.weight_codebook"


def test_an_lstm_and_attention_model_compresses_to_a_budget_and_decodes_to_the_same_outputs():
    model = _model()
    x = torch.randn(96, 10, 24)
    reference = model(x).detach()
    fp32 = sum(p.numel() for p in model.parameters()) * 4
    report = compress_(model, CompressionConfig(size_budget=fp32 // 8), calibration=x)
    data = encode(model)
    assert len(data) == report["bytes"] <= fp32 // 8
    header, state, _ = decode(data)
    records = {layer["name"]: layer for layer in header["layers"]}
    assert records["lstm.weight_hh_l1"]["tensor"] is True and "tensor" not in records["head"]
    assert not any(r["name"].startswith("lstm.weight") for r in header["raw"])  # coded, not stored
    fresh = copy.deepcopy(_model())
    fresh.load_state_dict(state)  # strict: the same keys as the model's own state dict
    assert torch.equal(fresh.lstm.weight_hh_l1, model.lstm.weight_hh_l1.detach())
    with torch.no_grad():
        assert torch.allclose(fresh(x), model(x), atol=1e-6)
        error = float((fresh(x) - reference).pow(2).mean() / reference.pow(2).mean())
    assert error < 0.05  # an eighth of the fp32 bytes keeps the outputs
    assert size_report(data)["components"]["raw_tensors"] < 4 * 2_000  # biases and norms only


def test_checkpointed_coding_state_reloads_and_training_keeps_tensor_layers_on_their_centroids():
    model = _model()
    prune_(model)
    share_weights_(model, 4)
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    fresh = _model()
    attach_masks_(fresh, saved)
    attach_shared_state_(fresh, saved)
    fresh.load_state_dict(saved)  # strict
    layer = prunable_layers(fresh)["attention.in_proj_weight"]
    assert layer.weight_codebook.numel() == 16
    opt = torch.optim.SGD(fresh.parameters(), lr=0.1)
    fresh(torch.randn(4, 10, 24)).pow(2).sum().backward()
    opt.step()
    after_step_(fresh)
    w = layer.weight.detach()
    assert torch.all(w[~layer.weight_mask] == 0)
    kept = w[layer.weight_mask]
    assert torch.isin(kept, layer.weight_codebook.to(kept.dtype)).all()


def test_a_tensor_flag_that_is_not_a_boolean_or_a_tensor_layer_with_biases_is_refused():
    model = _model()
    prune_(model)
    share_weights_(model, 4)
    data = encode(model, "")
    decode(data)  # the file itself is good

    def bad_flag(h):
        h["layers"][0]["tensor"] = "yes"

    def biased(h):
        h["layers"][0]["bias"] = h["layers"][0]["shape"][0]

    for change in (bad_flag, biased):
        with pytest.raises(FormatError):
            decode(_rewrite_header(data, change))


def test_a_bare_state_dict_holds_recurrent_matrices_as_tensor_layers_and_keeps_its_keys():
    from squeezenet.models.standin import module_from_state_dict
    sd = _model().state_dict()
    held = module_from_state_dict(sd)
    assert held.state_dict().keys() == sd.keys()
    layers = prunable_layers(held)
    assert isinstance(layers["lstm.weight_hh_l1"], TensorLayer) and isinstance(layers["head"], nn.Linear)
    assert "lstm.bias_hh_l1" not in layers and "norm.weight" not in layers  # 1-D: stored exactly
    prune_(held)
    share_weights_(held, 5)
    header, state, _ = decode(encode(held, ""))
    assert state.keys() == sd.keys()
    assert any(layer.get("tensor") for layer in header["layers"])
    assert torch.unique(state["lstm.weight_hh_l1"]).numel() <= 32


def test_a_tied_embedding_is_coded_once_as_the_output_layers_weight():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(50, 16)
            self.rnn = nn.GRU(16, 16, batch_first=True)
            self.out = nn.Linear(16, 50, bias=False)
            self.out.weight = self.embed.weight

        def forward(self, tokens):
            return self.out(self.rnn(self.embed(tokens))[0])

    model = Tied()
    layers = prunable_layers(model)
    assert "out" in layers and "embed.weight" not in layers
    assert {"rnn.weight_ih_l0", "rnn.weight_hh_l0"} <= set(layers)
