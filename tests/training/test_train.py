import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from squeezenet.training import TrainingError, load_config, train
from squeezenet.weights import load_weights

FAST = dict(model="squeezenet1_1", model_kwargs={"small_input": True}, batch_size=8, lr=0.01, epochs=3,
            schedule="cosine", optimizer="sgd", preprocessing="cifar10", augment="cifar", workers=0)


def cfg(**kw):
    return load_config(None, **{**FAST, **kw})


def test_train_writes_checkpoints_and_metrics(tiny_data, tmp_path):
    out = tmp_path / "run"
    result = train(cfg(epochs=2), tiny_data, out, progress=False, log=lambda *a: None)
    assert result["epoch"] == 2 and 0 <= result["top1"] <= 1
    rows = (out / "metrics.csv").read_text().strip().splitlines()
    assert len(rows) == 3 and rows[0].startswith("epoch,")
    lw = load_weights(out / "last.pt")
    assert lw.num_classes == 3 and lw.class_names == ["class0", "class1", "class2"]
    assert (out / "best.pt").is_file()
    assert not list(out.glob(".*.tmp"))  # atomic writes leave no temporary files


class Interrupt(Exception):
    pass


def test_resume_reaches_the_same_weights(tiny_data, tmp_path):
    full = tmp_path / "full"
    train(cfg(), tiny_data, full, progress=False, log=lambda *a: None)
    cut = tmp_path / "cut"
    steps = {"n": 0}

    def die_in_epoch_3(model):
        steps["n"] += 1
        if steps["n"] > 2 * 3 + 1:  # 3 steps per epoch (24 images / 8): die during epoch 3
            raise Interrupt()
    with pytest.raises(Interrupt):
        train(cfg(), tiny_data, cut, after_step=die_in_epoch_3, progress=False, log=lambda *a: None)
    ck = torch.load(cut / "last.pt", weights_only=True)
    assert ck["epoch"] == 1  # epochs 1 and 2 finished (0-based index 1)
    train(cfg(), tiny_data, cut, resume=cut / "last.pt", progress=False, log=lambda *a: None)
    a = load_weights(full / "last.pt").state_dict
    b = load_weights(cut / "last.pt").state_dict
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_nan_loss_is_a_clear_error(tiny_data):
    with pytest.raises(TrainingError, match="loss became"):
        train(cfg(lr=1e12, epochs=1, schedule="constant"), tiny_data, None, progress=False, log=lambda *a: None)


def test_bad_config_rejected(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: -1\n")
    with pytest.raises(TrainingError, match="epochs"):
        load_config(bad)
    bad.write_text("learning_rate: 0.1\n")
    with pytest.raises(TrainingError, match="unknown config keys"):
        load_config(bad)


def test_shipped_configs_load():
    root = Path(__file__).resolve().parents[2] / "configs"
    paths = sorted(root.glob("*.yaml"))
    assert len(paths) >= 5, f"no training recipes found in {root}"
    for path in paths:
        config = load_config(path)
        assert config.epochs >= 1 and config.lr > 0, path.name
        assert config != load_config(), f"{path.name} sets nothing the defaults do not"


DDP_SCRIPT = """
import sys, torch, torch.distributed as dist
from squeezenet.training import load_config, train
from squeezenet.training.checkpoint import unwrap
cfg = load_config(None, model="squeezenet1_1", model_kwargs={"small_input": True}, batch_size=8, lr=0.01,
                  epochs=2, schedule="cosine", preprocessing="cifar10", workers=0)
captured = {}
def keep(model):
    captured["model"] = model
train(cfg, sys.argv[1], sys.argv[2], after_step=keep, progress=False)
state = unwrap(captured["model"]).state_dict()
torch.save(state, f"{sys.argv[2]}/rank{dist.get_rank()}.pt")
dist.destroy_process_group()
"""


def test_ddp_two_cpu_processes_agree(tiny_data, tmp_path):
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT)
    out = tmp_path / "ddp"
    out.mkdir()
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    import socket
    with socket.socket() as sock:  # a free port on the loopback interface
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--nnodes=1",
                        "--master_addr=127.0.0.1", f"--master_port={port}", str(script), str(tiny_data), str(out)],
                       capture_output=True, text=True, timeout=300, env=env)
    assert p.returncode == 0, p.stderr[-3000:]
    r0 = torch.load(out / "rank0.pt", weights_only=True)
    r1 = torch.load(out / "rank1.pt", weights_only=True)
    saved = load_weights(out / "last.pt").state_dict
    assert all(torch.equal(r0[k], r1[k]) for k in r0)
    assert all(torch.equal(r0[k], saved[k]) for k in saved)
    assert p.stdout.count("epoch 2/2") == 1  # rank 0 logs alone


def test_compress_with_retraining_reports_every_stage(tiny_data, tmp_path):
    from squeezenet.compression import CompressionConfig, RetrainConfig, compress_with_retraining
    run = tmp_path / "run"
    train(cfg(epochs=1), tiny_data, run, progress=False, log=lambda *a: None)
    out = tmp_path / "m.sqz"
    rep = compress_with_retraining(run / "last.pt", CompressionConfig(bits=4), RetrainConfig(tiny_data, epochs=1), out,
                                   log=lambda *a: None)
    stages = [s["stage"] for s in rep["stages"]]
    assert stages[0] == "original" and stages[-1] == "file (decoded from disk)"
    assert "pruned + retrained" in stages and "centroids fine-tuned" in stages
    assert rep["bytes"] == out.stat().st_size and rep["ratio"] > 5
    lw = load_weights(out)
    assert lw.kind == "compressed" and lw.class_names == ["class0", "class1", "class2"]



def test_retraining_with_batch_norm_folds_after_pruning(tiny_data, tmp_path):
    from squeezenet.compression import CompressionConfig, RetrainConfig, compress_with_retraining
    run = tmp_path / "run"
    train(cfg(epochs=1, model_kwargs={"small_input": True, "batch_norm": True}), tiny_data, run, progress=False,
          log=lambda *a: None)
    out = tmp_path / "m.sqz"
    rep = compress_with_retraining(run / "last.pt", CompressionConfig(bits=4, density=0.3, fold_batch_norm=True),
                                   RetrainConfig(tiny_data, epochs=1), out, log=lambda *a: None)
    stages = {s["stage"]: s for s in rep["stages"]}
    names = [s["stage"] for s in rep["stages"]]
    # masked retraining ran on the batch-norm model, then folding changed no prediction
    assert names.index("pruned + retrained") + 1 == names.index("batch norm folded")
    assert stages["batch norm folded"]["top1"] == stages["pruned + retrained"]["top1"]
    lw = load_weights(out)
    assert lw.model_kwargs.get("batch_norm") is False and not any("running_mean" in k for k in lw.state_dict)
    conv = lw.state_dict["features.3.expand3x3.weight"]  # pruned at 30%: folding kept the zeros
    assert abs(float((conv != 0).float().mean()) - 0.3) < 0.01
    lw.build_model()


def test_retraining_to_a_size_budget_stays_within_it(tiny_data, tmp_path):
    from squeezenet.compression import CompressionConfig, RetrainConfig, compress_with_retraining
    run = tmp_path / "run"
    train(cfg(epochs=1), tiny_data, run, progress=False, log=lambda *a: None)
    out = tmp_path / "m.sqz"
    rep = compress_with_retraining(run / "last.pt", CompressionConfig(density=0.3, size_budget=60_000),
                                   RetrainConfig(tiny_data, epochs=1), out, log=lambda *a: None)
    names = [s["stage"] for s in rep["stages"]]
    assert "weight-shared (rate-distortion levels)" in names and "centroids fine-tuned" in names
    assert rep["bytes"] == out.stat().st_size <= 60_000
    assert rep["bytes"] > 50_000  # the search spends the budget rather than undershooting it
    load_weights(out).build_model()


def test_without_a_terminal_progress_comes_as_plain_lines(tiny_data, capsys):
    # logs (nohup, CI) get one line per tenth of the epoch instead of a bar's carriage returns
    train(cfg(epochs=1), tiny_data, None, log=lambda *a: None)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("epoch 1: step ")]
    assert lines and "\r" not in err
    last = lines[-1]
    steps, total = last.split("step ")[1].split(",")[0].split("/")
    assert steps == total and "images/s" in last and "loss " in last


def test_evaluation_with_flips_averages_an_image_and_its_mirror():
    from squeezenet.training.distributed import Dist
    from squeezenet.training.loop import evaluate

    class Batches(list):
        def set_epoch(self, epoch):
            pass

    class LeftHalf(torch.nn.Module):  # class 0 when the left half is brighter
        def forward(self, x):
            left, right = x[..., :2].mean((1, 2, 3)), x[..., 2:].mean((1, 2, 3))
            return torch.stack([left - right, torch.zeros_like(left)], 1) * 10

    x = torch.zeros(2, 1, 4, 4)
    x[0, ..., :2] = 1.0   # left bright: class 0, mirror says class 1, the average ties
    x[1, ..., 2:] = 1.0   # right bright: class 1
    y = torch.tensor([0, 1])
    plain = evaluate(LeftHalf(), Batches([(x, y)]), Dist())
    flipped = evaluate(LeftHalf(), Batches([(x, y)]), Dist(), flip=True)
    assert plain["top1"] == 1.0
    # averaged logits are 0 for both classes on both images: argmax picks class 0 for both
    assert flipped["top1"] == 0.5


def test_shifted_view_moves_the_image_and_reflects_at_the_border():
    from squeezenet.training.loop import shifted_view

    x = torch.arange(9.0).reshape(1, 1, 3, 3)
    down = shifted_view(x, 1, 0)  # pixel (i, j) shows x(i + 1, j); row 3 reflects to row 1
    assert torch.equal(down[0, 0], x[0, 0, [1, 2, 1]])
    left = shifted_view(x, 0, -1)  # column -1 reflects to column 1
    assert torch.equal(left[0, 0], x[0, 0][:, [1, 0, 1]])
    assert shifted_view(x, 0, 0) is x


def test_test_time_shifts_weight_the_shifted_views_a_quarter_each():
    from squeezenet.training.loop import tta_logits

    calls = []

    class Pixel11(torch.nn.Module):  # logits: the value at row 1, column 1 of each channel
        def forward(self, x):
            calls.append(x.shape)
            return x[..., 1, 1]

    x = torch.arange(2 * 16, dtype=torch.float32).reshape(2, 1, 4, 4)
    # shifted down-right by 1, pixel (1,1) shows x(0,0); shifted up-left, x(2,2)
    expected = x[..., 1, 1] / 2 + x[..., 0, 0] / 4 + x[..., 2, 2] / 4
    assert torch.equal(tta_logits(Pixel11(), x, translate=1), expected)
    assert torch.equal(tta_logits(Pixel11(), x), x[..., 1, 1])
    calls.clear()
    tta_logits(Pixel11(), x, flip=True, translate=2)
    assert len(calls) == 6 and all(s == x.shape for s in calls)


def test_eval_translate_is_validated():
    with pytest.raises(TrainingError, match="eval_translate"):
        load_config(None, eval_translate=-1)
    assert load_config(None, eval_translate=1).eval_translate == 1


def test_batch_norm_shifts_can_learn_faster():
    from squeezenet.models import create_model
    from squeezenet.training.loop import make_optimizer
    model = create_model("squeezenet1_1", num_classes=10, small_input=True, batch_norm=True)
    shifts = {id(m.bias) for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)}
    plain = make_optimizer(model, cfg(), 0.1)
    assert len(plain.param_groups) == 2  # unchanged recipe: no group of its own
    opt = make_optimizer(model, cfg(bn_bias_lr_scale=64), 0.1)
    fast = [g for g in opt.param_groups if g["lr"] == pytest.approx(6.4)]
    assert len(fast) == 1 and {id(p) for p in fast[0]["params"]} == shifts and fast[0]["weight_decay"] == 0
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))
    with pytest.raises(TrainingError, match="bn_bias_lr_scale"):
        load_config(None, bn_bias_lr_scale=0)


def test_weight_ema_averages_on_exact_inputs():
    from squeezenet.training.loop import WeightEMA
    model = torch.nn.Sequential(torch.nn.Linear(1, 1, bias=False), torch.nn.BatchNorm1d(1))
    with torch.no_grad():
        model[0].weight.fill_(0.0)
    ema = WeightEMA(model, decay=0.5)
    with torch.no_grad():
        model[0].weight.fill_(1.0)
    model[1].num_batches_tracked.fill_(7)
    ema.update(model)  # warm-up: d = min(0.5, 2 / 11)
    assert ema.module[0].weight.item() == pytest.approx(9 / 11)
    assert ema.module[1].num_batches_tracked.item() == 7  # integer buffers copied, not averaged
    for _ in range(20):  # d reaches 0.5 and stays there
        ema.update(model)
    with torch.no_grad():
        model[0].weight.fill_(3.0)
    before = ema.module[0].weight.item()
    ema.update(model)
    assert ema.module[0].weight.item() == pytest.approx(0.5 * before + 0.5 * 3.0)
    assert not any(p.requires_grad for p in ema.module.parameters())
    with pytest.raises(TrainingError, match="ema_decay"):
        load_config(None, ema_decay=1.0)


def _cut_in_epoch_3_and_resume(hook_class, config, data, out, monkeypatch) -> dict:
    """Train 3 epochs of 3 steps but die after step 7 (inside ``hook_class.update``, the
    after_step hook), resume from last.pt, and return the final checkpoint."""
    from squeezenet.training.checkpoint import load_training_checkpoint
    real_update = hook_class.update
    steps = {"n": 0}

    def die_in_epoch_3(self, model):
        real_update(self, model)
        steps["n"] += 1
        if steps["n"] > 7:
            raise Interrupt()
    monkeypatch.setattr(hook_class, "update", die_in_epoch_3)
    with pytest.raises(Interrupt):
        train(config, data, out, progress=False, log=lambda *a: None)
    monkeypatch.setattr(hook_class, "update", real_update)
    train(config, data, out, resume=out / "last.pt", progress=False, log=lambda *a: None)
    return load_training_checkpoint(out / "last.pt")


def test_ema_checkpoints_resume_bit_exact(tiny_data, tmp_path, monkeypatch):
    import importlib

    from squeezenet.training.checkpoint import load_training_checkpoint
    train_module = importlib.import_module("squeezenet.training.train")  # the package's `train` is the function
    fast = dict(model_kwargs={"small_input": True, "batch_norm": True}, ema_decay=0.9)
    full = tmp_path / "full"
    train(cfg(**fast), tiny_data, full, progress=False, log=lambda *a: None)
    ck = load_training_checkpoint(full / "last.pt")
    raw, averaged = ck["ema"]["raw_state_dict"], ck["state_dict"]
    assert ck["ema"]["updates"] == 9  # 3 epochs x 3 steps
    assert not torch.equal(raw["features.0.0.weight"], averaged["features.0.0.weight"])
    assert not torch.equal(raw["features.0.1.running_mean"], averaged["features.0.1.running_mean"])

    again = _cut_in_epoch_3_and_resume(train_module.WeightEMA, cfg(**fast), tiny_data, tmp_path / "cut", monkeypatch)
    assert all(torch.equal(averaged[k], again["state_dict"][k]) for k in averaged)
    assert all(torch.equal(raw[k], again["ema"]["raw_state_dict"][k]) for k in raw)


@pytest.mark.parametrize("averaging", ["ema", "lookahead"])
def test_weight_averaging_is_off_when_steps_keep_masks(averaging, tiny_data, tmp_path):
    said = []
    train(cfg(epochs=1, max_steps_per_epoch=1, **{f"{averaging}_decay": 0.9}), tiny_data, tmp_path / "run",
          progress=False, after_step=lambda m: None, log=said.append)
    assert any(f"{averaging}_decay ignored" in s for s in said)
    assert averaging not in torch.load(tmp_path / "run" / "last.pt", weights_only=True)


def test_lookahead_pulls_back_on_exact_inputs():
    from squeezenet.training.loop import Lookahead
    model = torch.nn.Sequential(torch.nn.Linear(1, 1, bias=False), torch.nn.BatchNorm1d(1))
    with torch.no_grad():
        model[0].weight.fill_(0.0)
    progress = {"p": 1.0}
    la = Lookahead(model, decay=0.5, progress=lambda: progress["p"], every=2)
    with torch.no_grad():
        model[0].weight.fill_(4.0)
        model[1].running_mean.fill_(2.0)
    model[1].num_batches_tracked.fill_(7)
    la.update(model)  # step 1 of 2: no pull
    assert model[0].weight.item() == 4.0
    la.update(model)  # slow = 0.5 * 0 + 0.5 * 4, and the model jumps back to it
    assert model[0].weight.item() == 2.0 and la.slow["0.weight"].item() == 2.0
    assert model[1].running_mean.item() == 1.0  # float buffers too
    assert model[1].num_batches_tracked.item() == 7  # integer buffers are left alone
    progress["p"] = 0.5  # d = 0.5 * 0.5 ** 3 = 1/16
    with torch.no_grad():
        model[0].weight.fill_(10.0)
    la.update(model)
    la.update(model)
    assert model[0].weight.item() == pytest.approx(2.0 / 16 + 10.0 * 15 / 16)
    progress["p"] = 0.0  # d = 0 at the start of a run: the slow copy follows the model exactly
    with torch.no_grad():
        model[0].weight.fill_(-3.0)
    la.update(model)
    la.update(model)
    assert model[0].weight.item() == -3.0 and la.slow["0.weight"].item() == -3.0
    with torch.no_grad():
        model[0].weight.fill_(5.0)
    la.finish(model)  # d = 1: the model takes the slow copy
    assert model[0].weight.item() == -3.0
    with pytest.raises(TrainingError, match="lookahead_decay"):
        load_config(None, lookahead_decay=1.0)
    with pytest.raises(TrainingError, match="turn one off"):
        load_config(None, lookahead_decay=0.5, ema_decay=0.9)


def test_lookahead_checkpoints_resume_bit_exact(tiny_data, tmp_path, monkeypatch):
    import importlib

    from squeezenet.training.checkpoint import load_training_checkpoint
    train_module = importlib.import_module("squeezenet.training.train")
    fast = dict(model_kwargs={"small_input": True, "batch_norm": True}, lookahead_decay=0.9)
    full = tmp_path / "full"
    train(cfg(**fast), tiny_data, full, progress=False, log=lambda *a: None)
    ck = load_training_checkpoint(full / "last.pt")
    assert ck["lookahead"]["steps"] == 9  # 3 epochs x 3 steps: pulls at step 5, then finish
    slow, final = ck["lookahead"]["slow"], ck["state_dict"]
    assert all(torch.equal(slow[k], final[k]) for k in slow)  # finish left the model on the slow copy
    plain = tmp_path / "plain"
    train(cfg(**{**fast, "lookahead_decay": 0.0}), tiny_data, plain, progress=False, log=lambda *a: None)
    other = load_training_checkpoint(plain / "last.pt")
    assert "lookahead" not in other
    assert not torch.equal(other["state_dict"]["features.0.0.weight"], final["features.0.0.weight"])

    again = _cut_in_epoch_3_and_resume(train_module.Lookahead, cfg(**fast), tiny_data, tmp_path / "cut", monkeypatch)
    assert all(torch.equal(final[k], again["state_dict"][k]) for k in final)


def test_cutout_zeroes_one_clipped_square_per_image():
    from squeezenet.training.data import cutout_
    x = torch.ones(64, 3, 8, 8)
    g = torch.Generator().manual_seed(0)
    cutout_(x, 4, g)
    zeroed = x[:, 0] == 0
    assert torch.equal(zeroed, (x == 0).all(1))  # the same square in every channel
    for img in zeroed:
        rows, cols = img.any(1).nonzero().flatten(), img.any(0).nonzero().flatten()
        # one solid rectangle, at most 4x4, clipped only where it meets an edge
        assert img.sum() == len(rows) * len(cols) and 1 <= len(rows) <= 4 and 1 <= len(cols) <= 4
        assert len(rows) == 4 or rows[0] == 0 or rows[-1] == 7
        assert len(cols) == 4 or cols[0] == 0 or cols[-1] == 7
    assert (zeroed.sum((1, 2)) == 16).any() and (zeroed.sum((1, 2)) < 16).any()
    with pytest.raises(TrainingError, match="cutout"):
        load_config(None, cutout=-2)


def test_alternating_flip_mirrors_each_image_every_other_epoch():
    from squeezenet.preprocessing import Preprocessing
    from squeezenet.training.data import TensorBatches
    from squeezenet.training.distributed import Dist
    n = 32
    # each image: a distinct value in its 8 left columns only; shifts of up to 4 px keep the bright
    # band's centre left of the middle, and a mirror puts it right of it
    images = torch.zeros(n, 3, 32, 32, dtype=torch.uint8)
    images[:, :, :, :8] = torch.arange(1, n + 1, dtype=torch.uint8).view(n, 1, 1, 1)
    identity = Preprocessing(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), resize=32, crop=32, scale=255.0,
                             channel_order="RGB")

    def mirrored(batches, epoch):
        batches.set_epoch(epoch)
        flips = {}
        for x, _ in batches:
            for img in x:
                bright = img[0].amax(0).nonzero().flatten().float()
                flips[int(img.max().item())] = bright.mean().item() > 16
        return flips

    alt = TensorBatches(images, torch.zeros(n, dtype=torch.long), 8, identity, True, "cifar", Dist(), 3, False,
                        alternating_flip=True)
    e0, e1, e2 = (mirrored(alt, e) for e in range(3))
    assert set(e0) == set(range(1, n + 1))
    assert all(e1[k] != e0[k] for k in e0) and e2 == e0
    assert 0 < sum(e0.values()) < n
    coin = TensorBatches(images, torch.zeros(n, dtype=torch.long), 8, identity, True, "cifar", Dist(), 3, False)
    c0, c1 = mirrored(coin, 0), mirrored(coin, 1)
    assert any(c1[k] == c0[k] for k in c0)  # a fresh coin each epoch repeats some views


@pytest.mark.parametrize("padding,mode", [(0, "zeros"), (2, "zeros"), (2, "reflect"), (4, "zeros")])
def test_crop_padding_shifts_by_at_most_the_padding(padding, mode):
    import torch.nn.functional as F
    from squeezenet.preprocessing import Preprocessing
    from squeezenet.training.data import TensorBatches
    from squeezenet.training.distributed import Dist
    n = 64
    # one image, every pixel distinct and non-zero, so each view names its shift and mirror
    image = (torch.arange(3 * 8 * 8).view(1, 3, 8, 8) % 250 + 1).to(torch.uint8)
    identity = Preprocessing(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), resize=8, crop=8, scale=255.0,
                             channel_order="RGB")
    batches = TensorBatches(image.expand(n, -1, -1, -1).contiguous(), torch.zeros(n, dtype=torch.long), n,
                            identity, True, "cifar", Dist(), 0, False, crop_padding=padding, crop_padding_mode=mode)
    (x, _), = list(batches)
    padded = F.pad(image.float(), (padding,) * 4, mode="reflect" if mode == "reflect" else "constant")[0]
    views = [v for dy in range(2 * padding + 1) for dx in range(2 * padding + 1)
             for v in (padded[:, dy:dy + 8, dx:dx + 8], padded[:, dy:dy + 8, dx:dx + 8].flip(2))]
    seen = {next(i for i, v in enumerate(views) if torch.equal(v, img)) for img in x}  # StopIteration if not a view
    assert len(seen) > min(len(views), 8) // 2  # the shifts and mirrors vary over the batch
    assert ((x == 0).any() if mode == "zeros" and padding else not (x == 0).any())
    with pytest.raises(TrainingError, match="crop_padding"):
        load_config(None, crop_padding=17)
    with pytest.raises(TrainingError, match="crop_padding_mode"):
        load_config(None, crop_padding_mode="edge")
    if mode == "reflect":  # reflection needs a border narrower than the image
        with pytest.raises(TrainingError, match="cannot reflect"):
            TensorBatches(image, torch.zeros(1, dtype=torch.long), 1, identity, True, "cifar", Dist(), 0, False,
                          crop_padding=8, crop_padding_mode=mode)


def test_stem_whitening_decorrelates_the_stem_outputs():
    from squeezenet.models import create_model
    from squeezenet.training.loop import init_stem_whitening_
    g = torch.Generator().manual_seed(0)
    # correlated channels and smooth images: far from white patches
    base = torch.nn.functional.avg_pool2d(torch.randn(64, 1, 18, 18, generator=g), 3, 1)
    images = torch.cat([base, base * 0.5 + 0.1 * torch.randn(64, 1, 16, 16, generator=g),
                        torch.randn(64, 1, 16, 16, generator=g)], 1)
    model = create_model("squeezenet1_1", num_classes=10, small_input=True, batch_norm=True)
    conv = model.features[0][0]
    untouched = conv.weight[54:].clone()
    assert init_stem_whitening_(model, images, eps=1e-6) == 54  # 27-dimensional 3x3x3 patches, +/- pairs
    out = torch.nn.functional.conv2d(images, conv.weight).permute(1, 0, 2, 3).reshape(conv.out_channels, -1)
    white = out[:27] @ out[:27].T / out.shape[1]
    assert torch.allclose(white, torch.eye(27), atol=1e-3)
    assert torch.equal(conv.weight[27:54], -conv.weight[:27]) and torch.equal(conv.weight[54:], untouched)
    with pytest.raises(TrainingError, match="stem_whitening"):
        load_config(None, stem_whitening="yes")


def test_training_with_stem_whitening_says_so(tiny_data, capsys):
    train(cfg(epochs=1, stem_whitening=True, max_steps_per_epoch=1), tiny_data)
    assert "patch-whitening basis" in capsys.readouterr().out


def test_time_budget_schedule_follows_the_share_of_time_spent():
    from squeezenet.training.loop import TimeBudgetScheduler
    now = {"t": 0.0}
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    c = cfg(schedule="onecycle", epochs=100)
    s = TimeBudgetScheduler(opt, c, steps_per_epoch=10, budget_s=100.0, clock=lambda: now["t"])
    assert s.get_last_lr() == [0.0] and not s.done
    for t, lr in [(7.5, 0.5), (15.0, 1.0), (57.5, 0.5)]:  # up over 15% of the time, then down to 0
        now["t"] = t
        s.step()
        assert s.get_last_lr()[0] == pytest.approx(lr)
    s.reserve_s = 50.0  # time kept back for the final evaluation shortens what training may use
    now["t"] = 42.5
    s.step()
    assert s.progress == pytest.approx(0.85) and s.get_last_lr()[0] == pytest.approx(0.15 / 0.85)
    state = s.state_dict()
    now["t"] = 1000.0  # a resumed run continues from the elapsed time saved, not from its own start
    s2 = TimeBudgetScheduler(opt, c, steps_per_epoch=10, budget_s=100.0, clock=lambda: now["t"])
    s2.load_state_dict(state)
    now["t"] = 1005.0
    s2.step()
    assert s2.progress == pytest.approx((42.5 + 5.0) / 50.0)
    now["t"] = 1010.0
    s2.step()
    assert s2.done and s2.get_last_lr() == [0.0]
    # the epochs bound the run too: with the clock stopped, 2 of 4 steps are half of it
    s3 = TimeBudgetScheduler(opt, cfg(schedule="onecycle", epochs=1), steps_per_epoch=4, budget_s=100.0,
                             clock=lambda: 0.0)
    s3.step(), s3.step()
    assert s3.progress == 0.5 and s3.get_last_lr()[0] == pytest.approx(0.5 / 0.85)
    with pytest.raises(TrainingError, match="counts steps"):
        TimeBudgetScheduler(opt, c, 10, 100.0).load_state_dict({"last_epoch": 3})


def test_training_to_a_time_budget_ends_in_time_with_the_schedule_at_zero(tiny_data, tmp_path):
    import time
    start = time.monotonic()
    result = train(cfg(schedule="onecycle", epochs=100000, time_budget_min=0.05), tiny_data, tmp_path / "run",
                   progress=False, log=lambda *a: None)
    took = time.monotonic() - start
    # stopped early and evaluated (on a loaded machine the 3 s can end inside the first epoch)
    assert 1 <= result["epoch"] < 100000 and result["top1"] is not None
    assert result["lr"] == 0.0
    assert took < 3.0 + 30.0  # 3 s budget; slack for a loaded CI machine's first evaluation
    ck = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert ck["scheduler"]["progress"] == 1.0 and ck["config"]["time_budget_min"] == 0.05
    with pytest.raises(TrainingError, match="time budget"):  # a step-counted schedule cannot take it up
        train(cfg(schedule="onecycle", epochs=100000), tiny_data, tmp_path / "run", resume=tmp_path / "run" / "last.pt",
              progress=False, log=lambda *a: None)


def test_time_budget_is_validated():
    with pytest.raises(TrainingError, match="time_budget_min"):
        cfg(time_budget_min=-1)
    with pytest.raises(TrainingError, match="time_budget_min"):
        cfg(time_budget_min=float("nan"))


def test_a_dead_class_is_reported_after_training(tiny_data, tmp_path):
    from squeezenet.models import create_model
    from squeezenet.training.distributed import Dist
    from squeezenet.training.loop import evaluate

    class Batches(list):
        def set_epoch(self, epoch):
            pass
    model = create_model("squeezenet1_1", num_classes=3, small_input=True)
    with torch.no_grad():  # class1's score below zero everywhere: behind the paper's ReLU it stays dead
        model.classifier[1].bias[1] = -100.0
    x = torch.randn(6, 3, 32, 32)
    ev = evaluate(model, Batches([(x, torch.tensor([0, 1, 2, 0, 1, 2]))]), Dist())
    assert 1 in ev["never_predicted"] and ev["top1"] <= 4 / 6
    said = []
    train(cfg(epochs=1), tiny_data, tmp_path / "run", model=model, progress=False, log=said.append)
    warning = [s for s in said if "never predicted" in s]
    assert warning and "class1" in warning[0] and "final_relu: false" in warning[0]
