"""What the budget search holds in memory: the model's own weights as its reference (never
written until the end), one pass's quants on a lean search, buffers that share the quants'
arrays, heap pages given back, and no torchvision on the compression path."""
import copy
import platform
import subprocess
import sys

import numpy as np
import pytest
import torch

from squeezenet.compression import rdquant
from squeezenet.errors import ConfigError
from squeezenet.memory import release_memory
from squeezenet.weights import encode

from .test_any_model import _trained_regressor

SENS = {n: 1.0 for n in ("0", "2", "4")}


def _search(model, lean: bool, monkeypatch, budget: int = 20_000, check=None, log=None):
    monkeypatch.setattr(rdquant, "EXACT_SEARCH_WEIGHTS", 0)  # sized on estimates, as large models are
    monkeypatch.setattr(rdquant, "LEAN_WEIGHTS", 0 if lean else 10**12)

    def serialize(m):
        if check is not None:
            check(m)
        return encode(m, codebook_dtype="f2", bias_dtype="f2")

    return rdquant.quantize_for_budget_(model, SENS, budget, serialize, coded_ratio=0.9, log=log)


def test_a_lean_search_gives_the_file_a_full_one_gives(monkeypatch):
    # the wrong starting ratio makes the search take several passes, so that the best fit is
    # not always the last pass: the lean search quantizes it again, to the same file
    model, _ = _trained_regressor()
    full, lean = copy.deepcopy(model), copy.deepcopy(model)
    original = {k: v.clone() for k, v in model.state_dict().items()}

    def weights_untouched(m):  # the search writes coding buffers only; weights at the end
        for k, v in m.state_dict().items():
            if k in original:
                assert torch.equal(v, original[k]), k

    a = _search(full, False, monkeypatch)
    b = _search(lean, True, monkeypatch, check=weights_untouched)
    assert a["bytes"] == b["bytes"] and a["lam"] == b["lam"]
    assert encode(full) == encode(lean)
    assert not torch.equal(lean[0].weight, original["0.weight"])  # installed at the end


def test_an_earlier_slope_is_quantized_again_to_the_same_quants(monkeypatch):
    monkeypatch.setattr(rdquant, "LEAN_WEIGHTS", 0)
    model, _ = _trained_regressor()
    sizer = rdquant._Sizer(model, SENS, encode, 0.6, {}, False, None)
    assert sizer.lean
    _, first = sizer.size_of(1e-5)
    kept = {n: (q.index.copy(), q.mask.copy(), q.codebook.copy()) for n, q in sizer.current[1].items()}
    _, second = sizer.size_of(1e-3)
    assert isinstance(first, rdquant._Slope) and sizer.current[0] == 1e-3
    again = sizer.quants_of(first)
    for n, (index, mask, codebook) in kept.items():
        assert np.array_equal(again[n].index, index) and np.array_equal(again[n].mask, mask)
        assert np.array_equal(again[n].codebook, codebook)
    assert sizer.current[0] == 1e-5 and sizer.quants_of(first) is again  # held now: not quantized again


def test_installed_buffers_share_the_quants_arrays():
    model, _ = _trained_regressor()
    weights, masks = rdquant.model_weights_and_masks(model)
    assert np.shares_memory(weights["0"], model[0].weight.detach().numpy())  # a view, not a copy
    quants = rdquant.quantize_layers(weights, masks, SENS, 1e-4, 0.6)
    rdquant.install_(model, quants, weights=False)
    for n, q in quants.items():
        m = model[int(n)]
        assert np.shares_memory(m.weight_index.numpy(), q.index)
        assert np.shares_memory(m.weight_mask.numpy(), q.mask)
    assert torch.equal(model[0].weight.detach().reshape(-1), torch.from_numpy(weights["0"]))


def test_a_search_that_cannot_fit_leaves_the_model_as_it_came(monkeypatch):
    model, _ = _trained_regressor()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ConfigError, match="cannot fit"):
        _search(model, True, monkeypatch, budget=300)
    after = model.state_dict()
    assert set(after) == set(before)  # no coding buffer left behind
    assert all(torch.equal(after[k], v) for k, v in before.items())


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_release_memory_reaches_glibcs_malloc_trim():
    assert release_memory() is True


def test_the_compression_path_does_not_import_torchvision():
    # torchvision brings torch._dynamo: 0.2 GB of resident memory and a second before any work
    code = ("import sys, squeezenet.compression, squeezenet.weights.sqz, squeezenet.weights.loading; "
            "sys.exit(int('torchvision' in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
