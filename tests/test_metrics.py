"""Known answers for the top-1/top-5 arithmetic, with no data files."""
import pytest
import torch

from squeezenet.evaluation.evaluate import evaluate_loader as evaluate
from squeezenet.metrics import topk_hits


def test_topk_hits_known_answer():
    logits = torch.tensor([[0.1, 0.9, 0.0, 0.3, 0.2, 0.5, 0.4],    # label 1: top-1
                           [0.9, 0.1, 0.8, 0.7, 0.6, 0.5, 0.0],    # label 6: last of 7, outside top-5
                           [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6],    # label 2: 5th highest
                           [0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.0]])   # label 5: 6th highest
    labels = torch.tensor([1, 6, 2, 5])
    assert topk_hits(logits, labels) == [1, 2]
    assert topk_hits(logits, labels, ks=(1, 2, 6, 7)) == [1, 1, 3, 4]


def test_topk_caps_k_at_the_class_count():
    logits = torch.tensor([[3.0, 2.0, 1.0], [1.0, 2.0, 3.0]])
    assert topk_hits(logits, torch.tensor([2, 0])) == [0, 2]  # top-5 of 3 classes is top-3


def test_topk_rejects_mismatched_shapes():
    with pytest.raises(ValueError):
        topk_hits(torch.zeros(4, 3), torch.zeros(3, dtype=torch.long))


def test_evaluate_known_answer_over_batches():
    # 10 images over 3 batches; the "model" returns logits that put the label at a known rank.
    ranks = [0, 0, 1, 4, 5, 9, 0, 2, 7, 3]  # rank 0 = top-1; < 5 = top-5
    labels = torch.arange(10) % 10
    logits = torch.zeros(10, 10)
    for i, r in enumerate(ranks):
        order = [c for c in range(10) if c != labels[i]]
        order.insert(r, int(labels[i]))
        logits[i, order] = torch.arange(10, 0, -1, dtype=torch.float32)
    data = list(zip(torch.arange(10).split(4), labels.split(4)))

    class Loader(list):
        dataset = range(10)

    result = evaluate(lambda idx: logits[idx], Loader(data), progress=False)
    assert result["top1"] == pytest.approx(3 / 10) and result["top5"] == pytest.approx(7 / 10)
    assert result["images"] == 10
