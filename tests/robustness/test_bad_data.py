"""Bad images and folders: converted, skipped with a warning naming the file, or a clear error."""
import io
import warnings

import numpy as np
import pytest
from PIL import Image

from squeezenet.data.folders import decode_to_tensor, list_samples, split_dirs
from squeezenet.data.imagenet import MAX_IMAGE_PIXELS, ImageNetFolder, load_image
from squeezenet.errors import DataError
from squeezenet.evaluation import evaluate_weights
from squeezenet.models import create_model
from squeezenet.preprocessing import TORCHVISION_IMAGENET
from squeezenet.weights import save_checkpoint


def write_kinds(folder):
    """One file of each awkward kind; returns name -> expected outcome ("ok" or "error")."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(folder / "rgb.jpg")
    Image.fromarray(rgb).convert("CMYK").save(folder / "cmyk.jpg")
    Image.fromarray(rgb[..., 0]).save(folder / "grey.png")
    Image.fromarray((rng.integers(0, 65535, (40, 40))).astype(np.uint16)).save(folder / "grey16.png")
    Image.fromarray(rgb).convert("P").save(folder / "palette.png")
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG")
    (folder / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 3])
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "garbage.jpg").write_bytes(b"not an image at all" * 10)
    return {"rgb.jpg": "ok", "cmyk.jpg": "ok", "grey.png": "ok", "grey16.png": "ok", "palette.png": "ok",
            "truncated.jpg": "error", "empty.jpg": "error", "garbage.jpg": "error"}


def test_each_kind_is_converted_or_refused_by_name(tmp_path):
    kinds = write_kinds(tmp_path / "imgs")
    for name, expected in kinds.items():
        if expected == "ok":
            img = load_image(tmp_path / "imgs" / name)
            assert img.mode == "RGB" and img.size == (40, 40)
        else:
            with pytest.raises(DataError, match=name):
                load_image(tmp_path / "imgs" / name)


def test_sixteen_bit_is_scaled_not_clipped(tmp_path):
    arr = np.full((8, 8), 40000, np.uint16)
    Image.fromarray(arr).save(tmp_path / "g16.png")
    px = np.asarray(load_image(tmp_path / "g16.png"))
    assert px[0, 0, 0] == 40000 // 256


def test_decompression_bomb_refused(tmp_path):
    side = int(MAX_IMAGE_PIXELS ** 0.5) + 100
    Image.new("1", (side, side)).save(tmp_path / "bomb.png")  # tiny file, huge image
    with pytest.raises(DataError, match="bomb.png"):
        load_image(tmp_path / "bomb.png")


def test_training_decode_skips_and_counts_bad_files(tmp_path):
    kinds = write_kinds(tmp_path / "d" / "train" / "a")
    samples = [(tmp_path / "d" / "train" / "a" / n, 0) for n in sorted(kinds)]
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        x, y, skipped = decode_to_tensor(samples, 32, None, progress=False)
    assert skipped == 3 and len(x) == 5 and x.shape[1:] == (3, 32, 32)
    messages = " ".join(str(m.message) for m in w)
    assert "truncated.jpg" in messages and "empty.jpg" in messages and "garbage.jpg" in messages


def test_eval_stops_with_the_bad_file_named(tmp_path):
    root = tmp_path / "val_data"
    (root / "val" / "n00000001").mkdir(parents=True)
    (root / "LOC_synset_mapping.txt").write_text("n00000000 zero\nn00000001 one\n")
    write_kinds(root / "val" / "n00000001")
    m = create_model("squeezenet1_1", num_classes=2)
    ck = tmp_path / "ck.pt"
    save_checkpoint(ck, "squeezenet1_1", m.state_dict(), preprocessing=TORCHVISION_IMAGENET, num_classes=2)
    with pytest.raises(DataError, match=r"(truncated|empty|garbage)\.jpg"):
        evaluate_weights(ck, root, workers=0, progress=False)


def test_folder_problems_are_clear(tmp_path):
    with pytest.raises(DataError, match="no train/"):
        split_dirs(tmp_path)
    (tmp_path / "train" / "a").mkdir(parents=True)
    with pytest.raises(DataError, match="val/ or test/"):
        split_dirs(tmp_path)
    (tmp_path / "test" / "b").mkdir(parents=True)
    with pytest.raises(DataError, match="not in the training classes"):
        list_samples(tmp_path / "test", ["a"])
    (tmp_path / "test" / "a").mkdir()
    with pytest.raises(DataError, match="no images|not in the training"):
        list_samples(tmp_path / "test", ["a", "b"])
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "LOC_synset_mapping.txt").write_text("n00000000 zero\n")
    with pytest.raises(DataError, match="no class folders"):
        ImageNetFolder(empty)
    (empty / "LOC_synset_mapping.txt").write_text("this is not a mapping\n")
    with pytest.raises(DataError, match="expected '<wnid> <class name>'"):
        ImageNetFolder(empty)
