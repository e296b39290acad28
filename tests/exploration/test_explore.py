import json

import pytest

from squeezenet.cli.main import main
from squeezenet.exploration import run_sweep
from tests.training.conftest import make_image_folder

FAST = dict(epochs=1, max_steps_per_epoch=1, batch_size=4, workers=0)


def test_sweep_runs_saves_and_resumes(tmp_path, monkeypatch):
    monkeypatch.setenv("SQUEEZENET_HOME", str(tmp_path / "home"))
    data = make_image_folder(tmp_path / "data", classes=2, per_class=4)
    out = tmp_path / "sr"
    logs = []
    r = run_sweep("sr", data, out, values=["0.25", "0.5"], log=logs.append, **FAST)
    assert [p["id"] for p in r["points"]] == ["sr-0.25", "sr-0.5"]
    assert r["points"][0]["params"] < r["points"][1]["params"]  # a larger squeeze ratio is a larger model
    for name in ("sr.csv", "sr.json", "sr.png", "sr.md"):
        assert (out / name).stat().st_size > 0
    assert (out / "sr.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    before = (out / "points" / "sr-0.25.json").stat().st_mtime_ns
    logs.clear()
    r2 = run_sweep("sr", data, out, values=["0.25", "0.5", "1.0"], log=logs.append, **FAST)
    assert "2 point(s) already finished" in logs[0]
    assert (out / "points" / "sr-0.25.json").stat().st_mtime_ns == before  # not retrained
    assert [p["id"] for p in r2["points"]] == ["sr-0.25", "sr-0.5", "sr-1.0"]


def test_narrow_width_is_used_reported_and_guarded(tmp_path, monkeypatch):
    monkeypatch.setenv("SQUEEZENET_HOME", str(tmp_path / "home"))
    data = make_image_folder(tmp_path / "data", classes=2, per_class=4)
    out = tmp_path / "narrow"
    narrow = run_sweep("sr", data, out, values=["0.5"], width={"base_e": 16, "incr_e": 16}, log=lambda *a: None, **FAST)
    wide = run_sweep("sr", data, tmp_path / "wide", values=["0.5"], log=lambda *a: None, **FAST)
    assert narrow["points"][0]["params"] < wide["points"][0]["params"] / 10  # width enters squared
    assert narrow["points"][0]["model_kwargs"]["base_e"] == 16
    assert "base_e 16, incr_e 16" in (out / "sr.md").read_text()
    # Finished points of another design space are never mixed into the same report.
    with pytest.raises(ValueError, match="another output folder"):
        run_sweep("sr", data, out, values=["0.5"], log=lambda *a: None, **FAST)
    with pytest.raises(ValueError, match="unknown width"):
        run_sweep("sr", data, tmp_path / "x", values=["0.5"], width={"depth": 3})


def test_bypass_sweep_bar_chart(tmp_path, monkeypatch):
    monkeypatch.setenv("SQUEEZENET_HOME", str(tmp_path / "home"))
    data = make_image_folder(tmp_path / "data", classes=2, per_class=4)
    r = run_sweep("bypass", data, tmp_path / "b", log=lambda *a: None, **FAST)
    params = {p["value"]: p["params"] for p in r["points"]}
    assert params["none"] == params["simple"] < params["complex"]
    assert (tmp_path / "b" / "bypass.png").stat().st_size > 1000


def test_bad_sweep_values_rejected(tmp_path):
    with pytest.raises(ValueError):
        run_sweep("sr", tmp_path, tmp_path / "o", values=["2.0"])
    with pytest.raises(ValueError):
        run_sweep("bypass", tmp_path, tmp_path / "o", values=["sideways"])


def test_size_plot_of_compressed_file(tmp_path, capsys):
    from squeezenet.compression import CompressionConfig, compress_weights
    from squeezenet.models import create_model
    from squeezenet.preprocessing import CIFAR10
    from squeezenet.weights import LoadedWeights
    m = create_model("squeezenet1_1", num_classes=10, small_input=True)
    lw = LoadedWeights("squeezenet1_1", m.state_dict(), CIFAR10, num_classes=10, model_kwargs={"small_input": True})
    data, _, _ = compress_weights(lw, CompressionConfig(bits=4))
    f = tmp_path / "m.sqz"
    f.write_bytes(data)
    png = tmp_path / "w.png"
    assert main(["size", str(f), "--plot", str(png), "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["bytes"] == len(data)
    assert png.read_bytes()[:4] == b"\x89PNG"
