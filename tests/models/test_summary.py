import pytest

from squeezenet.models import create_model
from squeezenet.models.summary import format_summary, summarize


def test_v1_0_summary_matches_table_1():
    s = summarize(create_model("squeezenet1_0"), 224)
    rows = {r["name"]: r for r in s["rows"]}
    assert s["params"] == 1_248_424 and s["bytes"] == 4 * 1_248_424
    assert rows["conv1"]["output_size"] == [96, 109, 109]
    assert rows["fire9"]["output_size"] == [512, 13, 13]
    assert (rows["fire2"]["s1x1"], rows["fire2"]["e1x1"], rows["fire2"]["e3x3"]) == (16, 64, 64)
    assert rows["conv10"]["params"] == 513_000
    assert sum(r["params"] for r in s["rows"]) == s["params"]
    # conv1 MACs: 109*109 outputs per map * 96 maps * 3*7*7 weights each
    assert rows["conv1"]["macs"] == 109 * 109 * 96 * 147
    assert sum(r["macs"] for r in s["rows"]) == s["macs"]
    assert 0.80e9 < s["macs"] < 0.84e9


def test_alexnet_summary_grouped_macs():
    s = summarize(create_model("alexnet"), 227)
    rows = {r["name"]: r for r in s["rows"]}
    assert rows["conv2"]["macs"] == 27 * 27 * 256 * 48 * 25  # grouped: 48 input channels per filter
    assert rows["fc6"]["params"] == 9216 * 4096 + 4096


def test_format_and_errors():
    text = format_summary(summarize(create_model("squeezenet1_1"), 224))
    assert "fire9" in text and "1,235,496" in text
    with pytest.raises(ValueError):
        summarize(create_model("squeezenet1_0"), 8)
