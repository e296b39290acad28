"""Evaluation on a tiny folder made in the test: labels from the mapping file, clear errors."""
import numpy as np
import pytest
from PIL import Image

from squeezenet.data import ImageNetFolder
from squeezenet.errors import DataError
from squeezenet.evaluation import evaluate_weights
from squeezenet.preprocessing import TORCHVISION_IMAGENET
from squeezenet.weights import save_checkpoint
from squeezenet.models import create_model


def make_folder(root, wnids=("n00000002", "n00000005"), with_val=True, per_class=2):
    (root).mkdir(parents=True, exist_ok=True)
    mapping = [f"n{i:08d} class{i}" for i in range(8)]
    (root / "LOC_synset_mapping.txt").write_text("\n".join(mapping) + "\n")
    base = root / "val" if with_val else root
    rng = np.random.default_rng(0)
    for w in wnids:
        (base / w).mkdir(parents=True, exist_ok=True)
        for j in range(per_class):
            Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(base / w / f"{j}.JPEG")
    return root


def test_labels_come_from_mapping_not_folder_order(tmp_path):
    ds = ImageNetFolder(make_folder(tmp_path / "d"))
    assert sorted({label for _, label in ds.samples}) == [2, 5]
    ds2 = ImageNetFolder(make_folder(tmp_path / "e", with_val=False))
    assert len(ds2) == 4


def test_unknown_class_folder_is_an_error(tmp_path):
    root = make_folder(tmp_path / "d", wnids=("n00000002", "n99999999"))
    with pytest.raises(DataError, match="n99999999"):
        ImageNetFolder(root)


def test_missing_mapping_is_an_error(tmp_path):
    root = make_folder(tmp_path / "d")
    (root / "LOC_synset_mapping.txt").unlink()
    with pytest.raises(DataError, match="mapping file"):
        ImageNetFolder(root)


def test_evaluate_checkpoint_on_tiny_folder(tmp_path):
    root = make_folder(tmp_path / "d")
    m = create_model("squeezenet1_1", num_classes=8)
    ck = tmp_path / "ck.pt"
    save_checkpoint(ck, "squeezenet1_1", m.state_dict(), preprocessing=TORCHVISION_IMAGENET, num_classes=8)
    r = evaluate_weights(ck, root, batch_size=3, workers=0, progress=False)
    assert r["images"] == 4 and 0 <= r["top1"] <= r["top5"] <= 1 and r["weights_kind"] == "checkpoint"


def test_calibrating_on_the_evaluation_images_is_refused(tmp_path):
    root = make_folder(tmp_path / "d")
    m = create_model("squeezenet1_1", num_classes=8)
    ck = tmp_path / "ck.pt"
    save_checkpoint(ck, "squeezenet1_1", m.state_dict(), preprocessing=TORCHVISION_IMAGENET, num_classes=8)
    with pytest.raises(ValueError, match="also evaluation images"):
        evaluate_weights(ck, root, workers=0, progress=False, engine="onnxruntime-int8", calibration=root / "val")
