"""Faults: a SIGKILLed training resumes to the same weights; failed writes keep the old file."""
import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from squeezenet.utils import atomic_write_bytes
from squeezenet.weights import load_weights
from tests.training.conftest import make_image_folder

ROOT = Path(__file__).resolve().parents[2]
TRAIN = [sys.executable, "-m", "squeezenet", "train", "--model", "squeezenet1_1", "--small-input",
         "--batch-size", "8", "--lr", "0.01", "--epochs", "6", "--workers", "0"]


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_matches_uninterrupted(tmp_path):
    data = make_image_folder(tmp_path / "data", per_class=16)
    env = dict(os.environ, SQUEEZENET_HOME=str(tmp_path / "home"), OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    full = tmp_path / "full"
    subprocess.run(TRAIN + ["--data", str(data), "--out", str(full)], env=env, check=True, capture_output=True,
                   timeout=600)
    cut = tmp_path / "cut"
    p = subprocess.Popen(TRAIN + ["--data", str(data), "--out", str(cut)], env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while time.time() < deadline:  # kill as soon as one epoch is saved: mid-way through the next
        if (cut / "last.pt").exists():
            break
        time.sleep(0.02)
    p.send_signal(signal.SIGKILL)
    p.wait()
    ck = torch.load(cut / "last.pt", weights_only=True)  # never half-written
    assert ck["epoch"] < 5  # killed before the run finished
    subprocess.run(TRAIN + ["--data", str(data), "--out", str(cut), "--resume", str(cut / "last.pt")], env=env,
                   check=True, capture_output=True, timeout=600)
    a, b = load_weights(full / "last.pt").state_dict, load_weights(cut / "last.pt").state_dict
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_failed_write_keeps_previous_file(tmp_path, monkeypatch):
    target = tmp_path / "model.sqz"
    atomic_write_bytes(target, b"previous good file")

    def disk_full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space left"):
        atomic_write_bytes(target, b"new" * 1000)
    assert target.read_bytes() == b"previous good file"
    assert [p.name for p in tmp_path.iterdir()] == ["model.sqz"]  # no temporary left behind


def test_missing_output_folder_is_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="output folder does not exist"):
        atomic_write_bytes(tmp_path / "nope" / "x.sqz", b"x")


def test_read_only_output_folder_is_clear_and_keeps_previous(tmp_path, monkeypatch):
    # Root ignores permission bits, so the refusal the OS gives an ordinary user is simulated.
    import tempfile
    target = tmp_path / "model.sqz"
    atomic_write_bytes(target, b"previous good file")

    def refuse(*a, **k):
        raise PermissionError(errno.EACCES, "Permission denied")
    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    with pytest.raises(PermissionError, match="not writable"):
        atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"previous good file"


def test_cli_reports_unwritable_output_in_one_line(tmp_path):
    from tests.conftest import PUBLISHED_NET, need
    need(PUBLISHED_NET)
    p = subprocess.run([sys.executable, "-m", "squeezenet", "compress", "--weights", str(PUBLISHED_NET),
                        "--out", str(tmp_path / "missing" / "m.sqz")], capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert p.returncode == 2 and "Traceback" not in p.stderr and "output folder does not exist" in p.stderr
