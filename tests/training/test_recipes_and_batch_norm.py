"""Recipes from the data, the resolved config written, batch-norm models trained, folded, resumed."""
import pytest
import torch
import yaml

from squeezenet.cli.main import main
from squeezenet.models import create_model, list_models, prunable_layers
from squeezenet.models.fold import fold_batch_norm, has_batch_norm
from squeezenet.training import load_config, train
from squeezenet.training.config import input_size_warning, recipe_for_data
from squeezenet.weights import load_weights

from .conftest import make_image_folder

SQUEEZENETS = [n for n in list_models() if n != "alexnet"]


def test_recipe_follows_the_images(tmp_path):
    small = make_image_folder(tmp_path / "small", classes=2, per_class=2, size=32)
    large = make_image_folder(tmp_path / "large", classes=2, per_class=2, size=160)
    recipe, why = recipe_for_data(small)
    assert recipe["preprocessing"] == "cifar10" and recipe["model_kwargs"]["small_input"] is True
    assert "32x32" in why and recipe["tensor_cache"] is True
    recipe, why = recipe_for_data(large)
    assert recipe["preprocessing"] == "torchvision" and recipe["augment"] == "imagenet"
    assert recipe["model_kwargs"] == {} and recipe["tensor_cache"] is False and "160x160" in why


def test_imagenet_size_folder_trains_with_imagenet_preprocessing(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SQUEEZENET_HOME", str(tmp_path / "home"))
    data = make_image_folder(tmp_path / "photos", classes=2, per_class=2, size=240)
    out = tmp_path / "run"
    assert main(["train", "--data", str(data), "--out", str(out), "--epochs", "1", "--max-steps", "1",
                 "--batch-size", "2", "--workers", "0"]) == 0
    printed = capsys.readouterr().out
    assert "ImageNet-size recipe" in printed and "warning" not in printed
    written = yaml.safe_load((out / "config.yaml").read_text())
    assert written["preprocessing"] == "torchvision" and written["augment"] == "imagenet"
    assert written["model_kwargs"] == {} and written["tensor_cache"] is False
    assert load_config(out / "config.yaml").prep.crop == 224  # the file reads back as a recipe
    assert load_weights(out / "last.pt").preprocessing.crop == 224


def test_a_224px_model_on_32px_crops_is_called_out():
    cfg = load_config(None, model="squeezenet1_1", preprocessing="cifar10", model_kwargs={})
    assert "ImageNet stem" in input_size_warning(cfg)
    assert input_size_warning(load_config(None, model="squeezenet1_1", preprocessing="cifar10",
                                          model_kwargs={"small_input": True})) is None


def test_plain_models_keep_torchvision_state_dicts():
    import torchvision
    for name in ("squeezenet1_0", "squeezenet1_1"):
        ours = create_model(name, num_classes=10).state_dict()
        theirs = getattr(torchvision.models, name)(num_classes=10).state_dict()
        assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}


@pytest.mark.parametrize("name", SQUEEZENETS)
def test_batch_norm_variant_trains_and_folds(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=5, small_input=True, batch_norm=True)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(bns) == len(prunable_layers(model)) - 1  # every conv but conv10
    assert all(m.bias is None for n, m in prunable_layers(model).items() if n != "classifier.1")
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for _ in range(3):
        loss = torch.nn.functional.cross_entropy(model(torch.randn(8, 3, 32, 32)), torch.randint(0, 5, (8,)))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert all(m.num_batches_tracked.item() == 3 for m in bns)
    model.eval()
    x = torch.randn(4, 3, 32, 32)
    folded = fold_batch_norm(model)
    assert not has_batch_norm(folded) and has_batch_norm(model)
    assert torch.allclose(folded(x), model(x), atol=1e-4, rtol=0)


def test_export_folds_batch_norm(tmp_path):
    import onnx

    from squeezenet.export import export_weights
    from squeezenet.preprocessing import CIFAR10
    from squeezenet.weights import LoadedWeights
    torch.manual_seed(0)
    model = create_model("squeezenet1_1", num_classes=5, small_input=True, batch_norm=True)
    model.train()
    model(torch.randn(16, 3, 32, 32) * 3 + 1)  # running statistics away from 0 / 1
    lw = LoadedWeights("squeezenet1_1", model.state_dict(), CIFAR10, num_classes=5,
                       model_kwargs={"small_input": True, "batch_norm": True})
    report = export_weights(lw, "onnx", tmp_path / "m.onnx")
    graph = onnx.load(str(tmp_path / "m.onnx")).graph
    assert not [n for n in graph.node if n.op_type == "BatchNormalization"]
    assert report["max_abs_diff"] < 1e-4  # against PyTorch on the same input
    import onnxruntime as ort
    x = torch.randn(2, 3, 32, 32)
    got = ort.InferenceSession(str(tmp_path / "m.onnx")).run(None, {graph.input[0].name: x.numpy()})[0]
    assert torch.allclose(torch.from_numpy(got), model.eval()(x), atol=1e-4, rtol=0)


def test_resume_with_batch_norm_is_bit_exact(tiny_data, tmp_path):
    fast = dict(model="squeezenet1_1", model_kwargs={"small_input": True, "batch_norm": True}, batch_size=8,
                lr=0.01, epochs=3, schedule="cosine", optimizer="sgd", preprocessing="cifar10", augment="cifar",
                workers=0)
    full = tmp_path / "full"
    train(load_config(None, **fast), tiny_data, full, progress=False, log=lambda *a: None)
    cut = tmp_path / "cut"
    steps = {"n": 0}

    class Interrupt(Exception):
        pass

    def die_in_epoch_3(model):
        steps["n"] += 1
        if steps["n"] > 2 * 3 + 1:  # 3 steps per epoch (24 images / 8): die during epoch 3
            raise Interrupt()
    with pytest.raises(Interrupt):
        train(load_config(None, **fast), tiny_data, cut, after_step=die_in_epoch_3, progress=False, log=lambda *a: None)
    train(load_config(None, **fast), tiny_data, cut, resume=cut / "last.pt", progress=False, log=lambda *a: None)
    a = load_weights(full / "last.pt").state_dict
    b = load_weights(cut / "last.pt").state_dict
    assert any("running_mean" in k for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_compression_keeps_batch_norm_exactly(tmp_path):
    from squeezenet.compression import CompressionConfig, compress_weights
    from squeezenet.preprocessing import CIFAR10
    from squeezenet.weights import LoadedWeights
    torch.manual_seed(0)
    model = create_model("squeezenet1_1", num_classes=5, small_input=True, batch_norm=True)
    model.train()
    model(torch.randn(16, 3, 32, 32) * 3 + 1)
    kw = {"small_input": True, "batch_norm": True}
    lw = LoadedWeights("squeezenet1_1", model.state_dict(), CIFAR10, num_classes=5, model_kwargs=kw)
    data, compressed, report = compress_weights(lw, CompressionConfig(bits=5), out=tmp_path / "bn.sqz")
    back = load_weights(tmp_path / "bn.sqz")
    for k, v in model.state_dict().items():
        if "bn" in k or k.startswith("features.0.1"):
            assert torch.equal(back.state_dict[k], v), k  # statistics and affine parameters exact
    x = torch.randn(2, 3, 32, 32)
    compressed.eval()
    assert torch.allclose(back.build_model()(x), compressed(x), atol=1e-6)
    assert torch.allclose(back.build_inference_model()(x), compressed(x), atol=1e-4)


def test_compression_can_fold_batch_norm_first(tmp_path):
    from squeezenet.compression import CompressionConfig, compress_weights
    from squeezenet.preprocessing import CIFAR10
    from squeezenet.weights import LoadedWeights
    torch.manual_seed(0)
    model = create_model("squeezenet1_1", num_classes=5, small_input=True, batch_norm=True, stem_pool=True)
    model.train()
    model(torch.randn(16, 3, 32, 32) * 3 + 1)
    model.eval()
    kw = {"small_input": True, "batch_norm": True, "stem_pool": True}
    lw = LoadedWeights("squeezenet1_1", model.state_dict(), CIFAR10, num_classes=5, model_kwargs=kw)
    kept, _, _ = compress_weights(lw, CompressionConfig(bits=8, density="keep"))
    folded, _, report = compress_weights(lw, CompressionConfig(bits=8, density="keep", fold_batch_norm=True),
                                         out=tmp_path / "f.sqz")
    assert len(folded) < len(kept) - 20_000  # four statistics a channel become one bias
    back = load_weights(tmp_path / "f.sqz")
    assert back.model_kwargs == {"small_input": True, "batch_norm": False, "stem_pool": True}
    assert not any("running" in k for k in back.state_dict)
    x = torch.randn(4, 3, 32, 32)
    assert torch.allclose(back.build_model()(x), model(x), atol=0.05)  # 8-bit sharing of the folded weights
    state = model.state_dict().values()
    assert report["fp32_bytes"] == sum(4 * v.numel() if v.is_floating_point() else 8 for v in state)


def test_time_budget_flag_reaches_the_recipe(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SQUEEZENET_HOME", str(tmp_path / "home"))
    data = make_image_folder(tmp_path / "small", classes=2, per_class=4, size=32)
    out = tmp_path / "run"
    assert main(["train", "--data", str(data), "--out", str(out), "--epochs", "1000", "--time-budget", "0.02",
                 "--batch-size", "4", "--workers", "0", "--json"]) == 0
    import json
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["epoch"] < 1000 and result["lr"] == 0.0  # the clock, not the epochs, ended it
    assert yaml.safe_load((out / "config.yaml").read_text())["time_budget_min"] == 0.02
    with pytest.raises(SystemExit):  # a budget of no time is refused by the parser
        main(["train", "--data", str(data), "--time-budget", "0"])
