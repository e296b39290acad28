import pytest
import torch

from squeezenet.compression import default_density, magnitude_mask, prune_, threshold_mask
from squeezenet.compression.pruning import PruneConfig, apply_masks_, attach_masks_, mask_gradients_
from squeezenet.models import create_model


def test_magnitude_mask_exact():
    w = torch.tensor([0.1, -0.5, 0.3, 0.0, -0.2, 0.4])
    assert magnitude_mask(w, 0.5).tolist() == [False, True, True, False, False, True]
    assert magnitude_mask(w, 1.0).tolist() == [True, True, True, False, True, True]  # zeros stay pruned
    with pytest.raises(ValueError):
        magnitude_mask(w, 0.0)
    with pytest.raises(ValueError):
        magnitude_mask(w, 1.5)


def test_threshold_mask_sensitivity_times_std():
    w = torch.tensor([1.0, -1.0, 3.0, -3.0])
    std = w.std().item()
    assert threshold_mask(w, 1.0).tolist() == [abs(v) > std for v in w.tolist()]


def test_default_profile_squeezenet1_0():
    m = create_model("squeezenet1_0")
    d = default_density(m)
    assert d["features.0"] == 1.0 and d["classifier.1"] == 0.2
    assert d["features.9.squeeze"] == 0.5 and d["features.10.expand1x1"] == 0.5
    assert d["features.12.expand3x3"] == 0.30 and d["features.3.expand3x3"] == 0.33
    prune_(m)
    kept = sum(int(mod.weight_mask.sum()) for mod in m.modules() if hasattr(mod, "weight_mask"))
    assert 415_000 < kept < 425_000  # paper / published file: about 421,000


def test_default_profile_squeezenet_family_and_alexnet():
    from squeezenet.compression.pruning import ALEXNET_DENSITY
    from squeezenet.models import prunable_layers
    m = create_model("squeezenet1_1", num_classes=10)
    d = default_density(m)
    assert list(d) == list(prunable_layers(m))
    # v1.1's fire modules sit at features.3,4,6,7,9,10,11,12: the k-th takes the paper's fire(k+2) row
    assert d["features.0"] == 1.0 and d["classifier.1"] == 0.2
    assert (d["features.3.squeeze"], d["features.3.expand3x3"]) == (1.0, 0.33)
    assert (d["features.9.squeeze"], d["features.9.expand1x1"]) == (1.0, 0.5)
    assert (d["features.10.squeeze"], d["features.12.expand3x3"]) == (0.5, 0.30)
    bypass = default_density(create_model("squeezenet1_0_complex_bypass", num_classes=10))
    assert [v for k, v in bypass.items() if k.endswith(".bypass")] == [0.5] * 4
    assert list(default_density(create_model("alexnet", num_classes=10)).values()) == ALEXNET_DENSITY


def test_default_profile_any_other_model():
    m = torch.nn.Sequential(torch.nn.Conv2d(3, 64, 3), torch.nn.Conv2d(64, 64, 3, groups=64),  # 576 weights
                            torch.nn.Conv2d(64, 128, 3), torch.nn.Flatten(), torch.nn.Linear(128, 10))
    assert default_density(m) == {"0": 1.0, "1": 1.0, "2": 0.33, "4": 1.0}


def test_masks_survive_optimizer_and_checkpoint():
    m = create_model("squeezenet1_1", num_classes=5, small_input=True)
    prune_(m, PruneConfig(density={"classifier.1": 0.2, "features.3.expand3x3": 0.3}))
    opt = torch.optim.SGD(m.parameters(), lr=0.5, momentum=0.9)
    for _ in range(3):
        opt.zero_grad()
        m(torch.randn(4, 3, 32, 32)).sum().backward()
        mask_gradients_(m)
        opt.step()
        apply_masks_(m)
    w = m.classifier[1].weight
    assert (w[~m.classifier[1].weight_mask] == 0).all()
    sd = m.state_dict()
    assert "classifier.1.weight_mask" in sd
    fresh = create_model("squeezenet1_1", num_classes=5, small_input=True)
    attach_masks_(fresh, sd)
    fresh.load_state_dict(sd)
    assert torch.equal(fresh.classifier[1].weight_mask, m.classifier[1].weight_mask)


def test_unknown_layer_in_density_rejected():
    with pytest.raises(ValueError, match="unknown layers"):
        prune_(create_model("squeezenet1_1"), PruneConfig(density={"nope": 0.5}))


@pytest.mark.parametrize("density", [0.01, 0.3, 0.5, 0.77, 0.999, 1.0])
def test_magnitude_mask_keeps_what_a_stable_descending_sort_keeps(density):
    g = torch.Generator().manual_seed(0)
    w = torch.randint(-6, 7, (40, 25), generator=g).float() / 4  # many ties and zeros
    flat = w.reshape(-1).abs()
    k = min(round(density * flat.numel()), int((flat != 0).sum()))
    expected = torch.zeros(flat.numel(), dtype=torch.bool)
    expected[torch.sort(flat, descending=True, stable=True).indices[:k]] = True
    got = magnitude_mask(w, density)
    assert torch.equal(got.reshape(-1), expected) and int(got.sum()) == k
    assert not magnitude_mask(torch.zeros(3, 4), 0.5).any()
