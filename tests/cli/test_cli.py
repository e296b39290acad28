import json
import subprocess
import sys

import pytest

from squeezenet.cli.main import build_parser, main


def run(args):
    return subprocess.run([sys.executable, "-m", "squeezenet", *args], capture_output=True, text=True, timeout=120)


def test_list_and_summary_json(capsys):
    assert main(["list"]) == 0
    assert "squeezenet1_0" in capsys.readouterr().out.split()
    assert main(["summary", "squeezenet1_0", "--json"]) == 0
    d = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert d["params"] == 1_248_424 and d["bytes"] == 4 * 1_248_424 and d["macs"] > 0


def test_summary_of_generated_configuration(capsys):
    assert main(["summary", "--sr", "0.5", "--pct3x3", "0.25", "--json"]) == 0
    d = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    fire2 = [r for r in d["rows"] if r["name"] == "fire2"][0]
    assert (fire2["s1x1"], fire2["e1x1"], fire2["e3x3"]) == (64, 96, 32)


@pytest.mark.parametrize("args,needle", [
    (["summary", "nosuchmodel"], "unknown model"),
    (["summary", "--sr", "0"], "sr"),
    (["summary", "squeezenet1_0", "--input-size", "-3"], "positive integer"),
    (["eval", "--weights", "/nonexistent", "--data", "."], "no such file"),
    (["compress", "--weights", "/nonexistent", "--out", "x.sqz"], "no such file"),
    (["compress", "--weights", "pyproject.toml", "--out", "x.sqz", "--bits", "9"], "1..8"),
    (["size", "pyproject.toml"], "not a valid"),
    (["compress", "--weights", "pyproject.toml", "--out", "x.sqz", "--retrain-lr", "-1"], "positive number"),
])
def test_bad_arguments_one_line_no_traceback(args, needle):
    p = run(args)
    assert p.returncode != 0
    assert "Traceback" not in p.stderr
    assert needle in p.stderr


# Commands that report figures: each must offer --json.
FIGURE_COMMANDS = {"list", "summary", "eval", "predict", "download", "compress", "decompress", "size", "train",
                   "export", "bench", "explore", "sensitivity", "reproduce"}


def test_every_command_has_help():
    parser = build_parser()
    sub = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"][0]
    listed = {a.dest: a.help for a in sub._choices_actions}
    assert set(sub.choices) == FIGURE_COMMANDS  # a new command must be added here, and thought about
    for name, sp in sub.choices.items():
        assert listed.get(name), f"{name} has no one-line help in `squeezenet --help`"
        assert sp.description and len(sp.description) > len(listed[name]), f"{name} has no description"
        options = [a for a in sp._actions if a.option_strings and a.dest != "help"]
        undocumented = [a.option_strings[0] for a in options if not a.help]
        assert not undocumented, f"{name}: options without help: {undocumented}"
        assert any("--json" in a.option_strings for a in options), f"{name} reports figures but has no --json"


def test_cli_choices_are_the_library_lists():
    from squeezenet.compression.config import EFFORTS, QUANTIZERS
    from squeezenet.export.engine import ENGINES
    from squeezenet.weights.codecs import codec_names
    commands = build_parser()._subparsers._group_actions[0].choices
    choices = {a.dest: a.choices for a in commands["eval"]._actions}
    assert tuple(choices["engine"]) == tuple(ENGINES)
    choices = {a.dest: a.choices for a in commands["compress"]._actions}
    assert tuple(choices["codec"]) == codec_names() and tuple(choices["quantizer"]) == QUANTIZERS
    assert tuple(choices["effort"]) == EFFORTS


def test_decompress_sqz_and_published_net_into_plain_checkpoints(tmp_path, capsys):
    import torch

    from squeezenet.models import create_model
    from squeezenet.preprocessing import TORCHVISION_IMAGENET
    from squeezenet.weights import load_weights, save_checkpoint
    from tests.conftest import PUBLISHED_NET
    dense = tmp_path / "dense.pt"
    save_checkpoint(dense, "squeezenet1_1", create_model("squeezenet1_1", num_classes=10).state_dict(),
                    preprocessing=TORCHVISION_IMAGENET, num_classes=10)
    assert main(["compress", "--weights", str(dense), "--out", str(tmp_path / "m.sqz"), "--bits", "4"]) == 0
    sources = [tmp_path / "m.sqz"] + ([PUBLISHED_NET] if PUBLISHED_NET.is_file() else [])
    for src in sources:
        out = tmp_path / (src.stem + ".pt")
        assert main(["decompress", str(src), "--out", str(out), "--format", "checkpoint", "--json"]) == 0
        assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["bytes"] == out.stat().st_size
        torch.load(out, weights_only=True)  # plain tensors: PyTorch alone reads it
        a, b = load_weights(src), load_weights(out)
        assert a.model_name == b.model_name and a.num_classes == b.num_classes
        assert a.preprocessing == b.preprocessing
        assert all(torch.equal(a.state_dict[k], b.state_dict[k]) for k in a.state_dict)
        # the default, a plain state dict, loads strictly into the model
        plain = tmp_path / (src.stem + "-sd.pt")
        assert main(["decompress", str(src), "--out", str(plain)]) == 0
        model = a.build_model()
        model.load_state_dict(torch.load(plain, weights_only=True), strict=True)
    # a dense checkpoint is not a compressed file: refused in one line
    assert main(["decompress", str(dense), "--out", str(tmp_path / "x.pt")]) != 0
    assert "not a compressed file" in capsys.readouterr().err


def small_mlp(num_classes=None):
    """A builder for ``--model tests.cli.test_cli:small_mlp``."""
    import torch
    return torch.nn.Sequential(torch.nn.Linear(12, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))


def test_safetensors_in_and_out_with_a_tensor_file_as_calibration(tmp_path, capsys):
    import numpy as np
    import torch
    from safetensors.torch import load_file, save_file
    torch.manual_seed(0)
    model = small_mlp()
    src = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(src))
    np.save(tmp_path / "inputs.npy", torch.randn(64, 12).numpy())
    sqz = tmp_path / "m.sqz"
    budget = ["--size-budget", "900", "--calibration", str(tmp_path / "inputs.npy")]
    assert main(["compress", "--weights", str(src), "--out", str(sqz), *budget]) != 0  # no architecture to run
    assert "--model" in capsys.readouterr().err
    assert main(["compress", "--weights", str(src), "--model", "tests.cli.test_cli:small_mlp", "--out", str(sqz),
                 "--size-budget", "900",
                 "--calibration", str(tmp_path / "inputs.npy"), "--quantizer", "uniform", "--json"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["bytes"] <= 900 and report["quantizer"] == "uniform" and report["output"] == "logits"
    out = tmp_path / "back.safetensors"
    assert main(["decompress", str(sqz), "--out", str(out)]) == 0
    back = load_file(str(out))
    assert set(back) == set(model.state_dict())
    for k, v in model.state_dict().items():
        assert back[k].shape == v.shape
    assert not torch.equal(back["0.weight"], model.state_dict()["0.weight"])  # quantized, not copied
    assert (back["0.weight"] - model.state_dict()["0.weight"]).abs().max() < 0.2


def test_compress_with_data_and_without_builds_one_config(tmp_path, capsys, monkeypatch):
    # every compression flag reaches the library through one CompressionConfig, with or without
    # --data; the flags that cannot apply to one branch are refused, naming the flag
    import torch
    from squeezenet.cli import compress as cli_compress
    src = tmp_path / "m.pt"
    torch.save(torch.nn.Linear(3, 2).state_dict(), src)
    seen = {}

    def fake_retraining(lw, config, retraining, out, log):
        seen.update(config=config, retraining=retraining)
        return {"bytes": 1, "ratio": 1.0, "top1": 0.5, "top1_lost": 0.0}

    monkeypatch.setattr(cli_compress, "compress_with_retraining", fake_retraining)
    flags = ["--codec", "huffman", "--codebook-dtype", "f2", "--quantizer", "uniform", "--output", "mse",
             "--bits", "5", "--density", "0.4", "--no-error-feedback", "--fold-batch-norm", "--effort", "fast"]
    base = ["compress", "--weights", str(src), "--out", str(tmp_path / "o.sqz")]
    assert main(base + ["--data", str(tmp_path), "--retrain-epochs", "3", "--retrain-lr", "0.01"] + flags) == 0
    config, retraining = seen["config"], seen["retraining"]
    assert (config.codec, config.codebook_dtype, config.quantizer, config.output) == ("huffman", "f2", "uniform", "mse")
    assert (config.bits, config.density, config.error_feedback, config.fold_batch_norm) == (5, "0.4", False, True)
    assert config.effort == "fast"
    assert (retraining.epochs, retraining.lr, str(retraining.data)) == (3, 0.01, str(tmp_path))
    for refused in (["--calibration", str(tmp_path)], ["--finetune-steps", "5"]):
        capsys.readouterr()
        assert main(base + ["--data", str(tmp_path)] + refused) != 0
        assert refused[0] in capsys.readouterr().err
    assert main(base + ["--retrain-epochs", "2"]) != 0
    err = capsys.readouterr().err
    assert "--retrain-epochs" in err and "need --data" in err
