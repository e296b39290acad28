import pytest
import torch
import torchvision

from squeezenet.errors import ConfigError
from squeezenet.models import (
    Fire,
    UnknownModelError,
    create_model,
    fire_layout_from_metaparameters,
    list_models,
)
from squeezenet.models.squeezenet import V1_0_FIRES


def conv_params(cin, cout, k, groups=1):
    return cout * (cin // groups) * k * k + cout


def fire_params(cin, s, e1, e3):
    return conv_params(cin, s, 1) + conv_params(s, e1, 1) + conv_params(s, e3, 3)


def squeezenet_params(conv1_out, conv1_k, fires, classes=1000, complex_at=()):
    total = conv_params(3, conv1_out, conv1_k)
    cin = conv1_out
    for i, (s, e1, e3) in enumerate(fires):
        total += fire_params(cin, s, e1, e3)
        if i in complex_at:
            total += conv_params(cin, e1 + e3, 1)
        cin = e1 + e3
    return total + conv_params(cin, classes, 1)


def count(model):
    return sum(p.numel() for p in model.parameters())


def test_v1_0_parameters_exact():
    assert count(create_model("squeezenet1_0")) == 1_248_424
    assert squeezenet_params(96, 7, V1_0_FIRES) == 1_248_424


def test_v1_1_parameters_exact():
    assert count(create_model("squeezenet1_1")) == 1_235_496


def test_alexnet_parameters_exact():
    assert count(create_model("alexnet")) == 60_965_224


def test_bypass_parameter_counts():
    assert count(create_model("squeezenet1_0_simple_bypass")) == 1_248_424
    expected = squeezenet_params(96, 7, V1_0_FIRES, complex_at=(0, 2, 4, 6))
    assert count(create_model("squeezenet1_0_complex_bypass")) == expected == 1_589_672


@pytest.mark.parametrize("name", [n for n in list_models() if n != "alexnet"])
def test_small_input_stem_parameters_and_shape(name):
    m = create_model(name, num_classes=10, small_input=True)
    big = create_model(name, num_classes=10)
    conv1_out = m.features[0].out_channels
    k = big.features[0].kernel_size[0]
    # Only conv1 changes: its kernel becomes 3x3.
    assert count(big) - count(m) == conv1_out * 3 * (k * k - 9)
    m.eval()
    out = m(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10)
    assert m.features[:4](torch.randn(1, 3, 32, 32)).shape[-1] == 32  # no stride or pool in the stem


@pytest.mark.parametrize("name", list_models())
def test_forward_backward_finite(name):
    m = create_model(name, num_classes=7)
    size = 227 if name == "alexnet" else 96
    x = torch.randn(2, 3, size, size)
    out = m(x)
    assert out.shape == (2, 7)
    out.sum().backward()
    grads = [p.grad for p in m.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert torch.isfinite(out).all()


def test_imagenet_output_shape_and_caffe_pool_rounding():
    m = create_model("squeezenet1_0").eval()
    feats = m.features(torch.zeros(1, 3, 227, 227))
    assert feats.shape == (1, 512, 13, 13)  # 227 -> 111 -> 55 -> 27 -> 13, pools round up
    assert m(torch.zeros(3, 3, 227, 227)).shape == (3, 1000)


def test_generator_defaults_reproduce_v1_0():
    assert fire_layout_from_metaparameters() == V1_0_FIRES
    gen = create_model("squeezenet_from_metaparameters")
    ref = create_model("squeezenet1_0")
    assert [(k, v.shape) for k, v in gen.state_dict().items()] == [(k, v.shape) for k, v in ref.state_dict().items()]


def test_generator_on_the_v1_1_macro_architecture_reproduces_v1_1():
    gen = create_model("squeezenet_from_metaparameters", macro="v1.1")
    ref = create_model("squeezenet1_1")
    assert gen.config == ref.config
    assert [(k, v.shape) for k, v in gen.state_dict().items()] == [(k, v.shape) for k, v in ref.state_dict().items()]
    wide = create_model("squeezenet_from_metaparameters", macro="v1.1", sr=0.25, bypass="simple")
    assert [f[0] for f in wide.config.fires] == [32, 32, 64, 64, 96, 96, 128, 128]
    assert wide(torch.randn(1, 3, 64, 64)).shape == (1, 1000)
    with pytest.raises(ValueError, match="macro"):
        create_model("squeezenet_from_metaparameters", macro="v2")


@pytest.mark.parametrize("sr", [0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0])
def test_generator_sr_sweep_builds(sr):
    fires = fire_layout_from_metaparameters(sr=sr, pct3x3=0.5)
    for (s, e1, e3), e in zip(fires, [128, 128, 256, 256, 384, 384, 512, 512]):
        assert e1 + e3 == e and s == round(sr * e)
    m = create_model("squeezenet_from_metaparameters", sr=sr, small_input=True, num_classes=10)
    assert m(torch.randn(1, 3, 32, 32)).shape == (1, 10)


@pytest.mark.parametrize("pct", [0.01, 0.125, 0.25, 0.5, 0.75, 0.99])
def test_generator_pct3x3_sweep_builds(pct):
    fires = fire_layout_from_metaparameters(sr=0.5, pct3x3=pct)
    assert all(e1 >= 1 and e3 >= 1 for _, e1, e3 in fires)
    m = create_model("squeezenet_from_metaparameters", sr=0.5, pct3x3=pct, small_input=True, num_classes=10)
    assert m(torch.randn(1, 3, 32, 32)).shape == (1, 10)


@pytest.mark.parametrize("bad", [dict(sr=0), dict(sr=-0.5), dict(sr=1.5), dict(pct3x3=0.0), dict(pct3x3=1.0),
                                 dict(pct3x3=-1), dict(freq=0), dict(base_e=0), dict(bypass="weird")])
def test_generator_rejects_invalid_metaparameters(bad):
    with pytest.raises(ValueError):
        create_model("squeezenet_from_metaparameters", **bad)


def test_unknown_model_name_is_clear():
    with pytest.raises(UnknownModelError, match="unknown model 'squeezenet2'.*squeezenet1_0"):
        create_model("squeezenet2")


def test_fire_module_shapes_and_validation():
    f = Fire(32, 8, 20, 12)
    assert f(torch.randn(1, 32, 9, 9)).shape == (1, 32, 9, 9)
    with pytest.raises(ValueError, match="simple bypass"):
        Fire(32, 8, 16, 8, bypass="simple")
    with pytest.raises(ValueError):
        Fire(0, 8, 16, 8)


def test_simple_bypass_adds_input():
    f = Fire(16, 4, 8, 8, bypass="simple")
    plain = Fire(16, 4, 8, 8)
    plain.load_state_dict(f.state_dict())
    x = torch.randn(1, 16, 5, 5)
    torch.testing.assert_close(f(x), plain(x) + x)


@pytest.mark.parametrize("ours,theirs", [("squeezenet1_0", torchvision.models.squeezenet1_0),
                                         ("squeezenet1_1", torchvision.models.squeezenet1_1)])
def test_torchvision_state_dicts_load_both_ways(ours, theirs):
    a = create_model(ours).eval()
    b = theirs(weights=None).eval()
    assert list(a.state_dict()) == list(b.state_dict())
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 3, 224, 224)
    assert torch.equal(a(x), b(x))
    c = theirs(weights=None).eval()
    a.load_state_dict(c.state_dict())
    assert torch.equal(a(x), c(x))


def test_num_classes_validated():
    with pytest.raises(ValueError):
        create_model("squeezenet1_0", num_classes=0)


def test_builders_take_weights_like_torchvision(tmp_path, monkeypatch):
    from squeezenet.download import download
    from squeezenet.models import create_model, pretrained_tags, squeezenet1_0
    from squeezenet.models.registry import UnknownModelError
    from squeezenet.weights import load_weights
    from tests.conftest import PUBLISHED_NET, need
    assert pretrained_tags("squeezenet1_0") == ["deep-compression", "imagenet1k-v1"]
    with pytest.raises(UnknownModelError, match="known: deep-compression"):
        squeezenet1_0(weights="imagenet22k")
    need(PUBLISHED_NET)
    monkeypatch.setenv("SQUEEZENET_HOME", str(tmp_path))  # an empty cache, filled offline from the local copy
    download(source=PUBLISHED_NET)
    model = create_model("squeezenet1_0", weights="deep-compression")
    expected = load_weights(PUBLISHED_NET).state_dict
    assert all(torch.equal(model.state_dict()[k], v) for k, v in expected.items())
    # the enum member loads the same weights as its tag
    from squeezenet.weights import SqueezeNet1_0_Weights
    by_enum = squeezenet1_0(weights=SqueezeNet1_0_Weights.DEEP_COMPRESSION)
    assert all(torch.equal(by_enum.state_dict()[k], v) for k, v in expected.items())


def test_weights_enums_carry_preprocessing_categories_and_measurements():
    from PIL import Image

    from squeezenet.models import squeezenet1_1
    from squeezenet.models.registry import UnknownModelError
    from squeezenet.weights import SqueezeNet1_0_Weights, SqueezeNet1_1_Weights
    dc = SqueezeNet1_0_Weights.DEEP_COMPRESSION.value
    assert dc.tag == "deep-compression" and dc.model == "squeezenet1_0"
    assert len(dc.meta["categories"]) == 1000 and dc.meta["categories"][1] == "goldfish"
    assert dc.meta["file_bytes"] == 675_763 and dc.meta["accuracy"]["imagenet1k_val"]["top1"] == 0.575
    x = dc.transforms()(Image.new("RGB", (300, 260), (200, 10, 10)))
    assert x.shape == (3, 227, 227)  # Caffe's crop
    assert x[0].mean() < x[2].mean()  # BGR: a red image is bright in the last channel
    assert SqueezeNet1_0_Weights.IMAGENET1K_V1.value.transforms()(Image.new("RGB", (300, 260))).shape == (3, 224, 224)
    assert SqueezeNet1_0_Weights.DEFAULT is SqueezeNet1_0_Weights.IMAGENET1K_V1
    assert 0.5 < SqueezeNet1_1_Weights.DEFAULT.value.meta["accuracy"]["imagenet1k_val"]["top1"] < 0.6
    with pytest.raises(UnknownModelError, match="weights of squeezenet1_0"):
        squeezenet1_1(weights=SqueezeNet1_0_Weights.DEEP_COMPRESSION)


@pytest.mark.parametrize("name", ["squeezenet1_0", "squeezenet1_1", "squeezenet1_0_simple_bypass",
                                  "squeezenet1_0_complex_bypass", "squeezenet_from_metaparameters"])
def test_final_relu_off_keeps_the_state_dict_and_lets_a_dead_class_recover(name):
    torch.manual_seed(0)
    paper = create_model(name, num_classes=3, small_input=True, batch_norm=True)
    plain = create_model(name, num_classes=3, small_input=True, batch_norm=True, final_relu=False)
    assert list(paper.state_dict()) == list(plain.state_dict())  # the same keys: checkpoints load both ways
    plain.load_state_dict(paper.state_dict())
    with torch.no_grad():  # class 0's score below zero everywhere: the paper's ReLU zeroes it
        for m in (paper, plain):
            m.classifier[1].bias[0] = -100.0
    x = torch.randn(4, 3, 32, 32)
    grads = []
    for m in (paper, plain):
        m.eval()
        out = m(x)
        assert (out[:, 0] == 0).all() if m is paper else (out[:, 0] < -50).all()
        torch.nn.functional.cross_entropy(out, torch.zeros(4, dtype=torch.long)).backward()
        grads.append(m.classifier[1].bias.grad[0].item())
    assert grads[0] == 0.0  # dead for good: no gradient reaches it
    assert grads[1] < 0  # without the ReLU the loss pulls the score back up
    with pytest.raises(ConfigError, match="final_relu"):
        create_model(name, final_relu="no")
