"""Cross-calibrated scores: views kept with their image, each file scored only on the fold it did not see."""
import torch
import torch.nn as nn

from squeezenet.data import ImageNetFolder
from squeezenet.evaluation.crossfold import HeldOutViews, cross_calibrated, score, split_folds
from squeezenet.evaluation.fidelity import load_views
from squeezenet.preprocessing import Preprocessing
from tests.evaluation.test_eval_small import make_folder

PREP = Preprocessing(resize=20, crop=16, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


def _paths(root):
    return [s[0] for s in ImageNetFolder(root).samples]


def test_centre_views_keep_each_images_crop_and_mirror_together(tmp_path):
    paths = _paths(make_folder(tmp_path / "d", per_class=3))
    views = load_views(paths, PREP, "centre")
    ds = ImageNetFolder(tmp_path / "d", PREP.transform())
    centre = torch.stack([ds[i][0] for i in range(len(paths))])
    assert views.shape[0] == 2 * len(paths)
    for i in range(len(paths)):
        assert torch.equal(views[2 * i], centre[i])
        assert torch.equal(views[2 * i + 1], centre[i].flip(2))


def test_split_folds_puts_image_i_in_fold_i_mod_2(tmp_path):
    data = make_folder(tmp_path / "d", per_class=3)
    folds = split_folds(data, tmp_path / "folds")
    names = [sorted(p.name for p in f.iterdir()) for f in folds]
    assert not set(names[0]) & set(names[1])
    assert len(names[0]) + len(names[1]) == len(_paths(data)) == 6
    for k, fold in enumerate(folds):
        for link in fold.iterdir():
            assert int(link.name.split("_")[0]) % 2 == k
            assert link.resolve() == _paths(data)[int(link.name.split("_")[0])].resolve()


class _Recorder(nn.Module):
    """A linear classifier that remembers every input it was shown."""

    def __init__(self, weight):
        super().__init__()
        self.fc = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
        self.fc.weight.data.copy_(weight)
        self.seen = []

    def forward(self, x):
        self.seen.append(x.clone())
        return self.fc(x.flatten(1))


def _held(n=6, per_image=2, dim=12, classes=5):
    g = torch.Generator().manual_seed(0)
    views = torch.randn(n * per_image, 3, 2, 2, generator=g)
    weight = torch.randn(classes, dim, generator=g)
    reference = views.flatten(1) @ weight.T
    centre = views[::per_image].clone()
    labels = reference[::per_image].argmax(1)
    return HeldOutViews(views, per_image, centre, labels, reference), weight


def test_each_model_sees_only_the_views_of_the_fold_it_is_scored_on():
    held, weight = _held()
    right, wrong = _Recorder(weight), _Recorder(-weight)  # agrees everywhere / almost nowhere
    out = score([right, wrong], held, scored_folds=[1, 0])
    fold1 = held.view_fold() == 1
    seen_views = torch.cat([x for x in right.seen if x.shape[0] == int(fold1.sum())])
    assert torch.equal(seen_views, held.views[fold1])
    assert out["views"] == len(held.views) and out["images"] == len(held.labels)
    assert out["agreement"] == 0.5  # the right model on half the views, the negated one agrees nowhere
    assert out["top1"] == 0.5


def test_cross_calibrated_scores_the_file_of_fold_k_on_the_other_fold(tmp_path):
    data = make_folder(tmp_path / "d", per_class=3)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 8))
    held = HeldOutViews.load(data, PREP, model)
    seen = []

    def compress(fold):
        seen.append(sorted(int(p.name.split("_")[0]) for p in fold.iterdir()))
        state = model.state_dict() if len(seen) == 2 else {k: -v for k, v in model.state_dict().items()}
        return b"x" * (10 + len(seen)), state  # fold 0's file is wrong, fold 1's is the reference

    out = cross_calibrated(compress, lambda: nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 8)), data, held)
    assert seen == [[0, 2, 4], [1, 3, 5]]
    assert out["fold_bytes"] == [11, 12] and out["bytes"] == 12
    # fold 1's file (the reference) agrees on all of fold 0's views; fold 0's (negated) is scored on fold 1's
    fold0 = held.view_fold() == 0
    assert abs(out["agreement"] - (fold0.sum().item() + _agreeing(model, held, ~fold0)) / len(held.views)) < 1e-6


def _agreeing(model, held, on):
    wrong = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 8))
    wrong.load_state_dict({k: -v for k, v in model.state_dict().items()})
    with torch.no_grad():
        return (wrong(held.views[on]).argmax(1) == held.reference[on].argmax(1)).sum().item()
