"""``squeezenet explore``: the paper's design-space sweeps, trained and measured.

Each point is built by the metaparameter generator, trained with the training loop,
evaluated, and saved as ``points/<id>.json`` the moment it finishes; a sweep started again
skips finished points. Points can run in parallel processes (``jobs``), each with an equal
share of the cores.
"""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

from ..errors import ConfigError
from ..models import create_model
from ..models.summary import summarize
from ..training import load_config, train
from ..utils import atomic_write_bytes
from .paper import SWEEPS, WIDTH_KEYS
from .report import write_outputs


def point_kwargs(sweep: str, value, width: dict | None = None) -> dict:
    """Generator arguments of one point (small-input stem for 32x32 data).

    Args:
        width: optional base_e / incr_e / freq held fixed across the sweep.
    """
    width = dict(width or {})
    unknown = set(width) - set(WIDTH_KEYS)
    if unknown:
        raise ConfigError(f"unknown width metaparameter(s) {sorted(unknown)}; use {', '.join(WIDTH_KEYS)}")
    if sweep == "sr":
        kw = {"sr": float(value), "pct3x3": 0.5}
    elif sweep == "pct3x3":
        kw = {"sr": 0.5, "pct3x3": float(value)}
    elif sweep == "bypass":
        kw = {"bypass": None if value in (None, "none") else str(value)}
    else:
        raise ConfigError(f"unknown sweep {sweep!r}; choose one of {', '.join(SWEEPS)}")
    return {**kw, **width, "small_input": True}


def point_id(sweep: str, value) -> str:
    return f"{sweep}-{value}"


def _parse_values(sweep: str, values, width: dict | None = None) -> list:
    if values is None:
        return list(SWEEPS[sweep])
    out = []
    for v in values:
        if sweep == "bypass":
            if v not in ("none", "simple", "complex"):
                raise ConfigError(f"bypass values are none, simple, complex; got {v!r}")
            out.append(v)
        else:
            try:
                out.append(float(v))
            except ValueError:
                raise ConfigError(f"{sweep} values must be numbers, got {v!r}") from None

    for v in out:  # build each point on the meta device: bad ranges fail before any training
        with torch.device("meta"):
            create_model("squeezenet_from_metaparameters", num_classes=10, **point_kwargs(sweep, v, width))
    return out


def run_point(sweep: str, value, data: str, out: str, overrides: dict, threads: int,
              width: dict | None = None) -> dict:
    """Train and measure one design point; writes ``points/<id>.json`` atomically."""

    torch.set_num_threads(threads)
    kwargs = point_kwargs(sweep, value, width)
    cfg_path = overrides.pop("config", None)
    cfg = load_config(cfg_path, model="squeezenet_from_metaparameters", model_kwargs=kwargs, **overrides)
    pid = point_id(sweep, value)
    start = time.perf_counter()
    result = train(cfg, data, Path(out) / "runs" / pid, progress=False, log=lambda *a: None)
    seconds = time.perf_counter() - start
    summary = summarize(create_model("squeezenet_from_metaparameters", num_classes=len(result["classes"]), **kwargs),
                        cfg.prep.crop)
    row = {"id": pid, "sweep": sweep, "value": value, "model_kwargs": kwargs, "params": summary["params"],
           "bytes": summary["bytes"], "mb": summary["mb"], "macs": summary["macs"], "top1": result["top1"],
           "top5": result["top5"], "best_top1": result["best_top1"], "epochs": cfg.epochs, "seconds": seconds,
           "train_images": cfg.limit_train or "all"}
    atomic_write_bytes(Path(out) / "points" / f"{pid}.json", json.dumps(row, indent=1).encode())
    return row


def run_sweep(sweep: str, data, out, values=None, jobs: int = 1, log=print, width: dict | None = None,
              **overrides) -> dict:
    """Run (or finish) a sweep; returns every point, then writes CSV, JSON, plots and report.

    Args:
        width: base_e / incr_e / freq held fixed for every point (default: the paper's 128/128/2).
        overrides: training settings (epochs, batch_size, limit_train, ...).
    """
    if sweep not in SWEEPS:
        raise ConfigError(f"unknown sweep {sweep!r}; choose one of {', '.join(SWEEPS)}")
    if jobs < 1:
        raise ConfigError(f"jobs must be at least 1, got {jobs}")
    values = _parse_values(sweep, values, width)
    out = Path(out)
    (out / "points").mkdir(parents=True, exist_ok=True)
    done = {}
    for v in values:
        p = out / "points" / f"{point_id(sweep, v)}.json"
        if p.is_file():
            try:
                row = json.loads(p.read_text())
            except json.JSONDecodeError:
                p.unlink()  # a damaged record: run the point again
                continue
            wanted = point_kwargs(sweep, v, width)
            if row.get("model_kwargs") != wanted:
                # Mixing points of different design spaces in one report would mislead.
                raise ConfigError(f"{p} was trained with {row.get('model_kwargs')}, not {wanted}; "
                                  f"use another output folder")
            done[point_id(sweep, v)] = row
    todo = [v for v in values if point_id(sweep, v) not in done]
    if done:
        log(f"{len(done)} point(s) already finished in {out}/points, skipping them")
    threads = max(1, (os.cpu_count() or 1) // jobs)
    if jobs == 1:
        for v in todo:
            log(f"training {point_id(sweep, v)} ...")
            row = run_point(sweep, v, str(data), str(out), dict(overrides), threads, width)
            done[row["id"]] = row
            log(f"  {row['id']}: {row['params']:,} params, {row['mb']:.2f} MB, "
                f"top-1 {row['top1']:.4f}, top-5 {row['top5']:.4f}")
    else:
        with ProcessPoolExecutor(jobs, mp_context=mp.get_context("spawn")) as pool:
            futures = [pool.submit(run_point, sweep, v, str(data), str(out), dict(overrides), threads, width)
                       for v in todo]
            for f in futures:
                row = f.result()
                done[row["id"]] = row
                log(f"  {row['id']}: top-1 {row['top1']:.4f}, top-5 {row['top5']:.4f}")
    rows = [done[point_id(sweep, v)] for v in values]
    files = write_outputs(sweep, rows, out)
    return {"sweep": sweep, "points": rows, "files": files, "out": str(out)}
