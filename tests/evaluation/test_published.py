"""End to end on the real published model and ImageNet samples (skipped without shared data)."""
import json

import pytest
import torch

from squeezenet.cli.main import main
from squeezenet.compression import CompressionConfig, compress_weights
from squeezenet.utils import atomic_write_bytes
from squeezenet.evaluation import predict
from squeezenet.preprocessing import CAFFE_IMAGENET
from squeezenet.weights import load_weights
from tests.conftest import IMAGENET_SAMPLES, PUBLISHED_NET, need


def test_published_weights_carry_caffe_preprocessing():
    lw = load_weights(need(PUBLISHED_NET))
    assert lw.kind == "caffe-net" and lw.preprocessing == CAFFE_IMAGENET and lw.model_name == "squeezenet1_0"


def test_eval_published_accuracy_and_json(capsys):
    need(PUBLISHED_NET), need(IMAGENET_SAMPLES)
    rc = main(["eval", "--weights", str(PUBLISHED_NET), "--data", str(IMAGENET_SAMPLES), "--json", "--workers", "1"])
    assert rc == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["images"] == 250
    assert result["top1"] > 0.60 and result["top5"] > 0.78
    assert 0 <= result["top1"] <= result["top5"] <= 1


def test_lossless_reencoding_predicts_identically(tmp_path):
    lw = load_weights(need(PUBLISHED_NET))
    images = sorted((need(IMAGENET_SAMPLES) / "val").glob("*/*.JPEG"))[:12]
    data, _, _ = compress_weights(lw, CompressionConfig(bits=8, density="keep"))
    assert len(data) < 600_000
    path = tmp_path / "sq.sqz"
    atomic_write_bytes(path, data)
    a = predict(lw, images, top=5)
    b = predict(path, images, top=5)
    assert [r["predictions"] for r in a] == [r["predictions"] for r in b]
    sd_a, sd_b = lw.state_dict, load_weights(path).state_dict
    assert all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a)


def test_predict_names_classes():
    img = sorted((need(IMAGENET_SAMPLES) / "val" / "n01440764").glob("*.JPEG"))[0]
    res = predict(need(PUBLISHED_NET), [img], top=3, mapping=IMAGENET_SAMPLES / "LOC_synset_mapping.txt")
    preds = res[0]["predictions"]
    assert len(preds) == 3 and preds[0]["probability"] >= preds[1]["probability"]
    assert preds[0]["class_name"] == "tench"


@pytest.mark.openvino_int8
def test_predict_through_the_int8_engine_agrees_on_a_clear_image(tmp_path):
    """int8 export gives sane predictions on shared images, calibrated on *other* images."""
    val = need(IMAGENET_SAMPLES) / "val"
    files = sorted(val.rglob("*.JPEG"))
    calib = tmp_path / "calib"
    calib.mkdir()
    for f in files[1::2][:16]:
        (calib / f.name).symlink_to(f.resolve())
    img = sorted((val / "n01440764").glob("*.JPEG"))[0]
    assert not (calib / img.name).exists()
    res = predict(need(PUBLISHED_NET), [img], top=3, mapping=IMAGENET_SAMPLES / "LOC_synset_mapping.txt",
                  engine="openvino-int8", calibration=calib)
    assert res[0]["predictions"][0]["class_name"] == "tench"
