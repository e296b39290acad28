"""The size/accuracy plot stays readable: no text over another text or over a point."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from squeezenet.evaluation.plotting import place_labels, text_overlaps  # noqa: E402
from squeezenet.evaluation.reproduce import NNCODEC_MEASURED, plot_size_accuracy  # noqa: E402


def _row(method, size, top1, agreement):
    return {"model": "SqueezeNet v1.0", "method": method, "bytes": size, "top1": top1, "top5": 0.8,
            "agreement_with_8bit": agreement}


def _crowded_result():
    """Table 2's points as `make demo` has them: three files within 535-676 kB at the same accuracy."""
    rows = [{"model": "AlexNet", "method": "none (fp32, computed)", "bytes": 243_860_896},
            _row("fp32 (the published weights decoded)", 4_993_696, 0.644, 1.0),
            _row("published Deep Compression 8-bit (.net)", 675_763, 0.644, 1.0),
            _row("ours, lossless re-encoding", 535_170, 0.644, 1.0),
            _row("ours, lossless, paper's Huffman coding", 549_335, 0.644, 1.0),
            _row("ours, 7-bit k-means", 470_100, 0.640, 0.97), _row("ours <= 400 kB", 399_563, 0.616, 0.94),
            _row("ours <= 350 kB", 349_583, 0.624, 0.898), _row("ours <= 300 kB", 299_800, 0.62, 0.85)]
    nnc = [dict(zip(("qp", "bytes", "agreement_with_8bit", "top1", "top5"), n)) for n in NNCODEC_MEASURED]
    return {"images": 250, "views": 500, "rows": rows, "nncodec": nnc}


def test_the_size_accuracy_plot_has_no_overlapping_text(tmp_path):
    fig = plot_size_accuracy(_crowded_result(), tmp_path / "p.png")
    assert (tmp_path / "p.png").stat().st_size > 10_000
    labels = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert "published .net" in " ".join(labels) or any(t.isdigit() for t in labels)
    assert text_overlaps(fig) == []


def test_overlapping_texts_and_a_label_over_a_point_are_found():
    fig, ax = plt.subplots()
    ax.plot([1, 2], [1, 2], "o")
    ax.text(1.5, 1.5, "first label")
    ax.text(1.5, 1.5, "second label")
    ax.annotate("over the point", (1, 1), xytext=(0, 0), textcoords="offset points")
    found = text_overlaps(fig)
    plt.close(fig)
    assert ("first label", "second label") in found
    assert ("over the point", "marker") in found


def test_points_too_close_for_their_labels_get_numbers_and_a_key():
    fig, ax = plt.subplots(figsize=(3, 2))
    pts = [(1.0 + 0.001 * i, 1.0) for i in range(12)]
    ax.plot(*zip(*pts), "o")
    ax.set_xlim(0.99, 1.02)
    place_labels(ax, pts, [f"a long label number {i}" for i in range(12)])
    texts = [t.get_text() for t in ax.texts]
    plt.close(fig)
    assert any("1: a long label number" in t for t in texts)  # the key
    assert any(t.isdigit() for t in texts)
