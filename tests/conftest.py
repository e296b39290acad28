import os
from pathlib import Path

import pytest
import torch

SHARED = Path(os.environ.get("SQUEEZENET_SHARED", Path(__file__).resolve().parents[1].parent / "shared" / "data"))
PUBLISHED_NET = SHARED / "squeezenet-deep-compression" / "compressed_SqueezeNet.net"
IMAGENET_SAMPLES = SHARED / "imagenet-samples"
CIFAR10 = SHARED / "cifar10"


def pytest_collection_modifyitems(config, items):
    run_slow = os.environ.get("RUN_SLOW") == "1"
    has_cuda = torch.cuda.is_available()
    for item in items:
        if "slow" in item.keywords and not run_slow:
            item.add_marker(pytest.mark.skip(reason="slow test; make test-slow (RUN_SLOW=1) runs it"))
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU"))


def need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"shared data not found at {path} (set SQUEEZENET_SHARED to the shared data folder)")
    return path


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
