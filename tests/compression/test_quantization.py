import numpy as np
import pytest
import torch
import torch.nn as nn

from squeezenet.compression import kmeans_1d, prune_, share_weights_, snap_shared_weights_, sum_cluster_gradients_
from squeezenet.compression.pruning import PruneConfig, apply_masks_


def test_kmeans_exact_when_few_values():
    c, labels = kmeans_1d(np.array([1.0, 1.0, 2.0, 5.0]), 4)
    assert c.tolist() == [1.0, 2.0, 5.0] and labels.tolist() == [0, 0, 1, 2]


def test_kmeans_two_clusters_exact():
    c, labels = kmeans_1d(np.array([0.0, 1, 2, 9, 10, 11]), 2)
    assert c.tolist() == [1.0, 10.0] and labels.tolist() == [0, 0, 0, 1, 1, 1]


def test_kmeans_linear_init_and_full_codebook():
    rng = np.random.default_rng(0)
    v = np.concatenate([rng.normal(0, 0.01, 5000), [0.5, -0.5]])  # heavy tails leave init bins empty
    c, labels = kmeans_1d(v, 16)
    assert c.size == 16  # empty clusters are re-seeded, not lost
    assert np.all(np.diff(c) > 0)
    assert np.abs(c[labels] - v).max() < 0.05
    assert {0.5, -0.5} <= set(np.round(c, 6).tolist())  # extremes kept (linear init, as in the paper)


def test_kmeans_edge_cases():
    c, labels = kmeans_1d(np.array([]), 4)
    assert c.size == 0 and labels.size == 0
    c, labels = kmeans_1d(np.array([0.3] * 10), 4)
    assert c.tolist() == [pytest.approx(0.3)] and set(labels.tolist()) == {0}
    with pytest.raises(ValueError):
        kmeans_1d(np.array([1.0]), 0)


def tiny_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3))


def test_share_weights_limits_distinct_values_and_keeps_zeros():
    m = tiny_model()
    prune_(m, PruneConfig(density={"0": 0.5, "3": 0.25}))
    share_weights_(m, {"0": 2, "3": 3})
    for name, bits in (("0", 2), ("3", 3)):
        layer = m.get_submodule(name)
        nz = layer.weight[layer.weight_mask]
        assert torch.unique(nz).numel() <= 2 ** bits
        assert (layer.weight[~layer.weight_mask] == 0).all()
        kept = layer.weight_mask
        assert torch.equal(layer.weight[kept], layer.weight_codebook[layer.weight_index[kept].long()])


def test_bits_validated():
    with pytest.raises(ValueError, match="1..8"):
        share_weights_(tiny_model(), 9)


def test_centroid_gradient_is_the_cluster_mean():
    lin = nn.Linear(4, 1, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, 1.0, 3.0, 0.0]]))
    share_weights_(lin, 8)
    lin.weight.grad = torch.tensor([[0.1, 0.2, 0.5, 7.0]])
    sum_cluster_gradients_(lin)
    # weights 0 and 1 share a centroid: both get (0.1 + 0.2) / 2; the pruned weight gets nothing
    assert torch.allclose(lin.weight.grad, torch.tensor([[0.15, 0.15, 0.5, 0.0]]))


def test_masks_and_sharing_survive_optimizer_steps():
    m = tiny_model()
    prune_(m, PruneConfig(density={"0": 0.4, "3": 0.3}))
    share_weights_(m, 3)
    opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    x = torch.randn(8, 2, 6, 6)
    for _ in range(5):
        opt.zero_grad()
        m(x).pow(2).mean().backward()
        sum_cluster_gradients_(m)
        opt.step()
        apply_masks_(m)
        snap_shared_weights_(m)
    for name in ("0", "3"):
        layer = m.get_submodule(name)
        assert (layer.weight[~layer.weight_mask] == 0).all()
        assert torch.unique(layer.weight[layer.weight_mask]).numel() <= 8
        assert torch.equal(layer.weight[layer.weight_mask],
                           layer.weight_codebook[layer.weight_index[layer.weight_mask].long()])


def test_snap_writes_back_for_channels_last_weights():
    m = tiny_model().to(memory_format=torch.channels_last)
    share_weights_(m, 2)
    conv = m.get_submodule("0")
    with torch.no_grad():
        conv.weight.add_(0.01 * torch.randn_like(conv.weight))  # drift off the centroids
    snap_shared_weights_(m)
    assert torch.unique(conv.weight[conv.weight_mask]).numel() <= 4


def test_fine_tuning_hooks_accept_a_layer_with_every_weight_pruned():
    from squeezenet.compression.quantization import share_weights_, snap_shared_weights_, sum_cluster_gradients_
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    with torch.no_grad():
        model[0].weight.zero_()  # a size budget can prune a whole layer
    share_weights_(model, 2)
    assert model[0].weight_codebook.numel() == 0
    model(torch.randn(5, 4)).sum().backward()
    sum_cluster_gradients_(model)
    assert (model[0].weight.grad == 0).all()
    snap_shared_weights_(model)
    assert (model[0].weight == 0).all() and model[1].weight.abs().sum() > 0


@pytest.mark.parametrize("bf16", [False, True])
def test_distillation_moves_only_centroids_and_biases(bf16):
    from squeezenet.compression.finetune import distill_shared_
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 5, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    student = nn.Sequential(*[m for m in __import__("copy").deepcopy(teacher)])
    prune_(student, PruneConfig(density={"0": 0.5, "2": 0.5}))
    share_weights_(student, {"0": 2, "2": 2})
    loader = [torch.randn(4, 3, 8, 8) for _ in range(3)]
    kl_before = nn.functional.kl_div(student(loader[0]).log_softmax(1), teacher(loader[0]).softmax(1),
                                     reduction="batchmean")
    losses = distill_shared_(student, teacher, loader, steps=30, lr=1e-2, progress=False, bf16=bf16)
    assert len(losses) == 30 and all(np.isfinite(losses))
    kl_after = nn.functional.kl_div(student(loader[0]).log_softmax(1), teacher(loader[0]).softmax(1),
                                    reduction="batchmean")
    assert kl_after < kl_before
    for m in (student[0], student[2]):
        assert m.weight.is_contiguous()  # channels-last during bf16 steps only
        assert not m.weight[~m.weight_mask].any()
        assert torch.unique(m.weight[m.weight_mask]).numel() <= 4  # still on its 2-bit codebook
