"""``encode`` gives an unchanged model its last bytes back, and any change to what the file
holds misses."""
import torch
import torch.nn as nn

from squeezenet.compression.quantization import share_weights_
from squeezenet.weights import sqz


def _coded() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 36, 5))
    share_weights_(model, 4)
    return model


def test_an_unchanged_model_gets_its_last_bytes_back_and_any_change_misses():
    model = _coded()
    first = sqz.encode(model, codebook_dtype="f2")
    assert sqz.encode(model, codebook_dtype="f2") is first  # the same bytes object: not encoded again
    assert sqz.encode(model, codebook_dtype="f4") != first  # other options: encoded again
    with torch.no_grad():
        model[0].bias.numpy()[0] += 1.0  # written through numpy: no version bump, still seen
    changed = sqz.encode(model, codebook_dtype="f2")
    assert changed != first and changed == sqz._encode(model, codebook_dtype="f2")
    model[1].running_mean.add_(0.5)  # a raw tensor
    assert sqz.encode(model, codebook_dtype="f2") != changed
    model[4].weight_index = model[4].weight_index.flip(1).contiguous()  # a coding buffer replaced
    assert sqz.encode(model, codebook_dtype="f2") == sqz._encode(model, codebook_dtype="f2")


def test_a_coded_layers_weight_is_not_in_the_file_so_writing_it_hits():
    model = _coded()
    first = sqz.encode(model)
    with torch.no_grad():
        model[0].weight.mul_(2.0)  # the file holds the layer's codes, not this
    assert sqz.encode(model) is first and first == sqz._encode(model)


def test_tying_two_entries_misses_and_an_equal_replacement_hits():
    model = _coded()
    first = sqz.encode(model)
    model[4].weight_codebook = model[4].weight_codebook.clone()  # the same values in a new tensor
    assert sqz.encode(model) is first
    model[1].bias = nn.Parameter(model[0].bias.detach().clone())  # equal values, two tensors
    untied = sqz.encode(model)
    model[1].bias = model[0].bias  # the same values, tied now: the file records an alias
    tied = sqz.encode(model)
    assert tied is not untied and tied == sqz._encode(model)
