"""``squeezenet reproduce`` scores each size-budget file on the half of the images its calibration did not see."""
from dataclasses import replace

from squeezenet.evaluation import reproduce as rp
from squeezenet.models import create_model
from squeezenet.preprocessing import Preprocessing
from squeezenet.weights import save_checkpoint
from tests.evaluation.test_eval_small import make_folder


def test_budget_rows_are_cross_calibrated_on_the_halves_of_the_data(tmp_path, monkeypatch):
    data = make_folder(tmp_path / "d", per_class=3)
    model = create_model("squeezenet1_1", num_classes=8)
    weights = tmp_path / "ck.pt"
    save_checkpoint(weights, "squeezenet1_1", model.state_dict(), num_classes=8,
                    preprocessing=Preprocessing(resize=40, crop=32))
    calibrations = []
    real = rp.compress_weights

    def recording(published, config, calibration=None, out=None):
        calibrations.append(None if calibration is None else sorted(int(p.name.split("_")[0])
                                                                    for p in calibration.iterdir()))
        if config.size_budget:  # the real budget search is slow; what this test checks is who sees what
            config = replace(config, size_budget=None, bits=4)
        return real(published, config, calibration=calibration, out=out)

    monkeypatch.setattr(rp, "compress_weights", recording)
    points = [("ours, 7-bit k-means", None, 7, 0, "range"), ("ours <= 300 kB", 300_000, None, 0, "range")]
    result = rp.reproduce(data=data, weights=weights, out=tmp_path / "out", points=points, log=lambda *a: None)
    kmeans, budget = result["rows"][-2:]
    assert calibrations[0] is None and kmeans["scored_on"] == "all images"
    assert calibrations[1:] == [[0, 2, 4], [1, 3, 5]]
    assert budget["scored_on"] == "held-out halves" and len(budget["fold_bytes"]) == 2
    assert budget["bytes"] == max(budget["fold_bytes"]) and 0 <= budget["agreement_with_8bit"] <= 1
    table = (tmp_path / "out" / "table2.md").read_text()
    assert "held-out halves" in table and f"{budget['bytes']:,}" in table
    assert (tmp_path / "out" / "size_accuracy.png").stat().st_size > 0
    assert (tmp_path / "out" / "ours_le_300_kB.sqz").is_file()
