import time

import torch

from squeezenet.export.timing import time_interleaved


def test_rounds_rotate_the_order_and_every_path_gets_its_iterations():
    calls = []
    paths = {n: (lambda x, n=n: calls.append(n)) for n in "ABC"}
    out = time_interleaved(paths, torch.zeros(4, 1), seconds=0.0, rounds=3, min_iters=3)
    timed = calls[6:]  # after two warm-up calls per path
    assert timed == list("ABC" "BCA" "CAB")
    assert {n: r["iterations"] for n, r in out.items()} == {"A": 3, "B": 3, "C": 3}


def test_slower_path_reports_fewer_images_per_second_and_higher_latency():
    paths = {"fast": lambda x: time.sleep(0.002), "slow": lambda x: time.sleep(0.012)}
    out = time_interleaved(paths, torch.zeros(8, 1), seconds=0.2, rounds=2)
    assert out["slow"]["images_per_s"] < out["fast"]["images_per_s"] / 2
    assert out["slow"]["p50_ms"] > 10 > out["fast"]["p50_ms"]
    assert out["fast"]["p50_ms"] <= out["fast"]["p90_ms"] <= out["fast"]["p99_ms"]
