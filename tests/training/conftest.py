import numpy as np
import pytest
from PIL import Image


def make_image_folder(root, classes=3, per_class=8, size=32, splits=("train", "test")):
    rng = np.random.default_rng(0)
    for split in splits:
        for c in range(classes):
            d = root / split / f"class{c}"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                img = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
                img[..., c % 3] += 150  # a learnable colour cue
                Image.fromarray(img).save(d / f"{i}.png")
    return root


@pytest.fixture
def tiny_data(tmp_path, monkeypatch):
    monkeypatch.setenv("SQUEEZENET_HOME", str(tmp_path / "home"))
    return make_image_folder(tmp_path / "data")
