"""One epoch of training, evaluation, initialisation and the learning-rate schedule: plain functions."""
from __future__ import annotations

import copy
import math
import sys
import time
from typing import Callable

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from ..cpu import has_native_bf16
from ..metrics import topk_hits
from .checkpoint import unwrap
from .config import TrainConfig, TrainingError
from .distributed import Dist, _all_sum


def init_xavier_(model: nn.Module) -> None:
    """The paper's Caffe solver: Xavier initialisation, conv10 from N(0, 0.01), zero biases."""
    convs = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    for m in convs:
        if m is convs[-1]:
            nn.init.normal_(m.weight, 0.0, 0.01)
        else:
            nn.init.xavier_uniform_(m.weight)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


@torch.no_grad()
def init_stem_whitening_(model: nn.Module, images: torch.Tensor, eps: float = 1e-2) -> int:
    """Patch-whitening first layer (Keller Jordan's airbench): the stem's filters become the
    eigenvectors of the covariance of its input patches, each scaled by 1/sqrt(eigenvalue + eps),
    in +/- pairs (so a ReLU after it keeps both signs), largest eigenvalues first; filters beyond
    twice the patch dimension keep their initialisation. Only the start changes: the filters train.

    Args:
        model: the network; its stem is the first ``Conv2d`` taking ``images``' channels.
        images: normalised training images, (N, C, H, W).
    Returns:
        the number of filters set.
    """
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d) and m.groups == 1
                 and m.in_channels == images.shape[1]), None)
    if conv is None:
        raise TrainingError(f"no convolution takes {images.shape[1]}-channel images: nothing to whiten")
    dim = conv.weight[0].numel()
    cov, count = torch.zeros(dim, dim, dtype=torch.float64), 0
    for chunk in images.split(256):  # patches of 256 images at a time: 2,048 images' would be ~0.4 GB
        patches = F.unfold(chunk.float(), conv.kernel_size, stride=conv.stride)  # (n, C*kh*kw, L)
        patches = patches.transpose(1, 2).reshape(-1, dim).double()
        cov += patches.T @ patches
        count += len(patches)
    eigenvalues, eigenvectors = torch.linalg.eigh(cov / count)  # ascending
    basis = (eigenvectors / (eigenvalues.clamp(min=0) + eps).sqrt()).T.flip(0)  # rows, largest first
    filters = torch.cat([basis, -basis])[:conv.out_channels]
    weight = conv.weight.detach().contiguous().clone()
    weight.view(conv.out_channels, dim)[:len(filters)] = filters.to(weight.dtype)
    conv.weight.copy_(weight)
    if conv.bias is not None:
        conv.bias.zero_()
    return len(filters)


def bf16_pays(device: torch.device) -> bool:
    """bf16 autocast helps on CUDA and on CPUs with native bf16 math; elsewhere it is emulated
    and slower (measured 8x slower than fp32 on an AVX2-only CPU)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return has_native_bf16()


def make_optimizer(model: nn.Module, cfg: TrainConfig, lr: float) -> torch.optim.Optimizer:
    """SGD (Nesterov optional) or AdamW; no weight decay on biases; batch-norm shifts at
    ``cfg.bn_bias_lr_scale`` times the learning rate (a group of their own only when scaled)."""
    bn_shift = set()
    if cfg.bn_bias_lr_scale != 1:
        bn_shift = {id(m.bias) for m in model.modules()
                    if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.bias is not None}
    decay, no_decay, shifts = [], [], []
    for n, p in model.named_parameters():
        (shifts if id(p) in bn_shift else no_decay if n.endswith("bias") else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if shifts:
        groups.append({"params": shifts, "weight_decay": 0.0, "lr": lr * cfg.bn_bias_lr_scale})
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum, nesterov=cfg.nesterov)


def make_scheduler(opt, cfg: TrainConfig, steps_per_epoch: int):
    total = max(1, cfg.epochs * steps_per_epoch)
    warm = int(cfg.warmup_epochs * steps_per_epoch)

    def factor(step: int) -> float:
        if cfg.schedule == "onecycle":
            # linear up for 15% of the steps, then linear down to 0 (fast convergence on small budgets)
            peak = max(1, int(0.15 * total))
            return (step + 1) / peak if step < peak else max(0.0, (total - step) / max(1, total - peak))
        if step < warm:
            return (step + 1) / warm
        p = min(1.0, (step - warm) / max(1, total - warm))
        if cfg.schedule == "poly":
            return (1 - p) ** cfg.poly_power
        if cfg.schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * p))
        return 1.0
    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def schedule_factor(cfg: TrainConfig, progress: float, step: int, warm_steps: int) -> float:
    """The learning-rate multiplier at ``progress`` (the share of the run done, 0 to 1).

    The same shapes as ``make_scheduler`` on a continuous axis: onecycle rises linearly over
    the first 15% and falls linearly to 0; poly and cosine warm up over ``warm_steps`` steps
    (counted in steps, as in ``make_scheduler``) and then decay to 0 at ``progress`` 1."""
    p = min(1.0, max(0.0, progress))
    if cfg.schedule == "onecycle":
        return p / 0.15 if p < 0.15 else (1 - p) / 0.85
    if step < warm_steps:
        return (step + 1) / warm_steps
    if cfg.schedule == "poly":
        return (1 - p) ** cfg.poly_power
    if cfg.schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * p))
    return 1.0


class TimeBudgetScheduler:
    """A learning-rate schedule driven by the share of a time budget spent (budgeted training,
    Li, Yumer and Ramanan, ICLR 2020: a schedule that decays to 0 exactly when the budget ends
    beats a longer schedule cut short).

    Progress is ``max(elapsed / (budget - reserve), steps / (epochs * steps_per_epoch))``, so
    the schedule ends (``done``) when the time or the epochs run out, whichever comes first;
    ``reserve_s`` is time kept back for the final evaluation. Under DDP every process takes the
    largest elapsed time of all (one all-reduce a step), so all step with the same learning
    rate. Not bit-exact across runs or resumes: the learning rate depends on the wall clock.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int,
                 budget_s: float, d: Dist | None = None, started: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.optimizer, self.cfg, self.d, self.clock = optimizer, cfg, d or Dist(), clock
        self.budget_s, self.reserve_s = float(budget_s), 0.0
        self.total_steps = max(1, cfg.epochs * steps_per_epoch)
        self.warm_steps = int(cfg.warmup_epochs * steps_per_epoch)
        self.steps, self.progress = 0, 0.0
        self.t0 = clock() if started is None else started
        for g in optimizer.param_groups:
            g.setdefault("initial_lr", g["lr"])
        self._apply()

    @property
    def done(self) -> bool:
        return self.progress >= 1.0

    def elapsed(self) -> float:
        e = self.clock() - self.t0
        if self.d.world > 1:  # one clock for all processes: the slowest
            t = torch.tensor([e], dtype=torch.float64, device=self.d.device)
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            e = float(t.item())
        return e

    def _apply(self) -> None:
        f = schedule_factor(self.cfg, self.progress, self.steps, self.warm_steps)
        for g in self.optimizer.param_groups:
            g["lr"] = g["initial_lr"] * f

    def step(self) -> None:
        self.steps += 1
        available = max(1e-9, self.budget_s - self.reserve_s)
        self.progress = min(1.0, max(self.elapsed() / available, self.steps / self.total_steps))
        self._apply()

    def get_last_lr(self) -> list[float]:
        return [g["lr"] for g in self.optimizer.param_groups]

    def state_dict(self) -> dict:
        return {"elapsed_s": self.clock() - self.t0, "steps": self.steps, "progress": self.progress,
                "reserve_s": self.reserve_s, "budget_s": self.budget_s}

    def load_state_dict(self, state: dict) -> None:
        if "elapsed_s" not in state:
            raise TrainingError("the checkpoint's schedule counts steps, not time: resume it without time_budget_min")
        self.t0 = self.clock() - float(state["elapsed_s"])
        self.steps, self.progress = int(state["steps"]), float(state["progress"])
        self.reserve_s = float(state.get("reserve_s", 0.0))
        self._apply()


class WeightEMA:
    """An exponential moving average of a model's weights and batch-norm statistics.

    ``update`` after each optimizer step: ``ema = d * ema + (1 - d) * weights`` with
    ``d = min(decay, (1 + n) / (10 + n))`` after ``n`` updates (timm's warm-up, so the first
    steps do not drag in the initial weights); integer buffers are copied. ``module`` is the
    averaged model, for evaluation and saving.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = float(decay)
        self.updates = 0
        self.module = copy.deepcopy(unwrap(model)).eval().requires_grad_(False)
        self._pairs: tuple | None = None

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        if self._pairs is None:  # the same tensors every step: the optimizer updates them in place
            src, dst = unwrap(model).state_dict(keep_vars=True), self.module.state_dict(keep_vars=True)
            floats = [k for k, v in dst.items() if v.is_floating_point()]
            self._pairs = ([dst[k].data for k in floats], [src[k].data for k in floats],
                           [(v.data, src[k].data) for k, v in dst.items() if not v.is_floating_point()])
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        averaged, current, others = self._pairs
        torch._foreach_lerp_(averaged, current, 1.0 - d)
        for a, c in others:
            a.copy_(c)


class Lookahead:
    """Lookahead (Zhang et al., NeurIPS 2019) as airbench schedules it.

    Every ``every`` optimizer steps a slow copy of the floating-point state (weights and
    batch-norm statistics) moves toward the model, ``slow = d * slow + (1 - d) * model``, and
    the model jumps back to it. ``d = decay * progress() ** 3`` (``progress``: the share of the
    run done, 0 to 1) rises from 0, no pull while the learning rate is high, to ``decay`` at the
    end; ``finish`` leaves the model on the slow copy. ``steps`` and ``slow`` are the state a
    resumed run needs.
    """

    def __init__(self, model: nn.Module, decay: float, progress: Callable[[], float], every: int = 5) -> None:
        self.decay, self.every, self.progress = float(decay), int(every), progress
        self.steps = 0
        state = unwrap(model).state_dict()
        self.slow = {k: v.detach().clone() for k, v in state.items() if v.is_floating_point()}
        self._pairs: tuple | None = None

    def _tensors(self, model: nn.Module) -> tuple[list, list]:
        if self._pairs is None:  # the same tensors every step: the optimizer updates them in place
            state = unwrap(model).state_dict(keep_vars=True)
            self._pairs = ([self.slow[k] for k in self.slow], [state[k].data for k in self.slow])
        return self._pairs

    @torch.no_grad()
    def pull(self, model: nn.Module, d: float) -> None:
        """``slow = d * slow + (1 - d) * model``, then the model takes the slow values."""
        slow, current = self._tensors(model)
        torch._foreach_lerp_(slow, current, 1.0 - d)
        torch._foreach_copy_(current, slow)

    def update(self, model: nn.Module) -> None:
        """The ``after_step`` hook: a pull every ``every`` steps."""
        self.steps += 1
        if self.steps % self.every == 0:
            self.pull(model, self.decay * min(1.0, max(0.0, self.progress())) ** 3)

    def finish(self, model: nn.Module) -> None:
        """End of training: the model takes the slow copy."""
        self.pull(model, 1.0)

    def state_dict(self) -> dict:
        return {"slow": {k: v.detach().cpu().clone() for k, v in self.slow.items()}, "steps": self.steps,
                "decay": self.decay, "every": self.every}

    def load_state_dict(self, state: dict) -> None:
        for k, v in self.slow.items():
            v.copy_(state["slow"][k])
        self.steps = int(state["steps"])


# ----------------------------------------------------------------------------- loops
def train_one_epoch(model: nn.Module, batches, optimizer, scheduler, *, d: Dist, epoch: int,
                    autocast: bool = False, label_smoothing: float = 0.0, max_steps: int = 0,
                    before_step: Callable | None = None, after_step: Callable | None = None,
                    progress: bool | str = False) -> dict:
    """One pass over ``batches``. ``before_step`` runs after backward (e.g. mask or sum
    gradients), ``after_step`` after each optimizer step (e.g. re-apply masks and centroids).
    ``progress``: True for a progress bar, ``"lines"`` for a plain line every tenth of the
    epoch (logs, where a bar's carriage returns show nothing until the epoch ends), False for none."""
    model.train()
    batches.set_epoch(epoch)
    total = len(batches) if not max_steps else min(max_steps, len(batches))
    loss_sum = correct = seen = 0.0
    start = time.perf_counter()
    bar = tqdm(total=total, desc=f"epoch {epoch + 1}", disable=progress is not True, unit="batch", dynamic_ncols=True)
    line_every = max(1, total // 10) if progress == "lines" else 0
    for step, (x, y) in enumerate(batches):
        x, y = x.to(d.device, non_blocking=True), y.to(d.device, non_blocking=True)
        with torch.autocast(d.device.type, dtype=torch.bfloat16, enabled=autocast):
            out = model(x)
            loss = F.cross_entropy(out.float(), y, label_smoothing=label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if before_step:
            before_step(model)
        optimizer.step()
        scheduler.step()
        if after_step:
            after_step(model)
        l_sum, c, n = _all_sum([loss.item() * len(y), (out.argmax(1) == y).sum().item(), len(y)], d)
        if not math.isfinite(l_sum):
            raise TrainingError(f"loss became {l_sum / n} at epoch {epoch + 1}, step {step + 1}; "
                                f"lower the learning rate (now {scheduler.get_last_lr()[0]:.4g}) or check the data")
        loss_sum += l_sum
        correct += c
        seen += n
        bar.update(1)
        el = time.perf_counter() - start
        if getattr(scheduler, "done", False):  # a time budget spent: stop mid-epoch
            total = step + 1
        bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}", img_s=f"{seen / el:.0f}")
        if line_every and ((step + 1) % line_every == 0 or step + 1 == total):
            print(f"epoch {epoch + 1}: step {step + 1}/{total}, loss {loss_sum / seen:.3f}, acc {correct / seen:.3f}, "
                  f"{seen / el:.0f} images/s, {el:.0f} s", file=sys.stderr, flush=True)
        if step + 1 >= total:
            break
    bar.close()
    seconds = time.perf_counter() - start
    return {"loss": loss_sum / max(seen, 1), "top1": correct / max(seen, 1), "images": int(seen),
            "seconds": seconds, "images_per_s": seen / seconds if seconds else 0.0}


def shifted_view(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """``x`` (N, C, H, W) moved by ``dy``, ``dx`` pixels, the exposed edge filled by reflection:
    pixel ``(i, j)`` of the result is pixel ``(i + dy, j + dx)`` of ``x`` reflected at the borders."""
    t = max(abs(dy), abs(dx))
    if t == 0:
        return x
    h, w = x.shape[-2:]
    padded = F.pad(x, (t, t, t, t), mode="reflect")
    return padded[..., t + dy:t + dy + h, t + dx:t + dx + w]


def tta_logits(model: nn.Module, x: torch.Tensor, flip: bool = False, translate: int = 0) -> torch.Tensor:
    """Logits averaged over test-time views of ``x`` (float32).

    ``flip``: each view and its mirror averaged. ``translate``: also the views shifted by
    ``translate`` pixels up-left and down-right (reflection padding), weighted 1/4 each against
    1/2 for the unshifted view (the weighting of Keller Jordan's airbench).
    """
    def view(v: torch.Tensor) -> torch.Tensor:
        out = model(v).float()
        return (out + model(v.flip(-1)).float()) / 2 if flip else out

    out = view(x)
    if translate:
        t = translate
        out = out / 2 + (view(shifted_view(x, -t, -t)) + view(shifted_view(x, t, t))) / 4
    return out


@torch.inference_mode()
def evaluate(model: nn.Module, batches, d: Dist, autocast: bool = False, flip: bool = False,
             translate: int = 0) -> dict:
    """Top-1 / top-5 / loss over ``batches`` (every process evaluates its shard, then all-reduce).

    ``flip``, ``translate``: test-time augmentation (see ``tta_logits``). ``never_predicted``:
    the classes no image was assigned to (a dead class score, see ``SqueezeNetConfig.final_relu``)."""
    model.eval()
    batches.set_epoch(0)
    s = [0.0, 0.0, 0.0, 0.0]
    predicted = None
    for x, y in batches:
        x, y = x.to(d.device), y.to(d.device)
        with torch.autocast(d.device.type, dtype=torch.bfloat16, enabled=autocast):
            out = tta_logits(model, x, flip, translate)
        hits1, hits5 = topk_hits(out, y)
        s[0] += F.cross_entropy(out, y, reduction="sum").item()
        s[1] += hits1
        s[2] += hits5
        s[3] += len(y)
        counts = torch.bincount(out.argmax(1).cpu(), minlength=out.shape[1])
        predicted = counts if predicted is None else predicted + counts
    classes = 0 if predicted is None else len(predicted)
    totals = _all_sum(s + ([] if predicted is None else predicted.tolist()), d)
    loss, c1, c5, n = totals[:4]
    return {"loss": loss / max(n, 1), "top1": c1 / max(n, 1), "top5": c5 / max(n, 1), "images": int(n),
            "never_predicted": [i for i in range(classes) if totals[4 + i] == 0]}
