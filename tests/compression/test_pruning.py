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


@pytest.mark.parametrize("name", ["squeezenet1_1", "squeezenet1_0_complex_bypass", "alexnet"])
def test_default_profile_other_models(name):
    m = create_model(name, num_classes=10)
    d = default_density(m)
    assert all(0 < v <= 1 for v in d.values()) and len(d) == sum(1 for _ in d)


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
