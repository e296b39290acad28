import pytest
import torch
import torch.nn as nn

from squeezenet.compression import CompressionConfig, compress_
from squeezenet.compression.fastconv import one_dimensional_convolutions


class AudioNet(nn.Module):
    """CREPE's pattern: 1-D convolutions written as Conv2d of kernel (k, 1) over width-1 inputs."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, (9, 1), stride=(2, 1), padding=(4, 0))
        self.conv2 = nn.Conv2d(8, 8, (5, 1), dilation=(2, 1), groups=2, bias=False)
        self.reflect = nn.Conv2d(8, 4, (3, 1), padding=(1, 0), padding_mode="reflect")
        self.fc = nn.Linear(4 * 24, 5)

    def forward(self, x):
        x = torch.relu(self.conv1(x.unsqueeze(1).unsqueeze(-1)))
        x = self.reflect(torch.relu(self.conv2(x)))
        return self.fc(x.flatten(1))


def test_width_one_convolutions_run_as_1d_with_the_same_outputs_and_gradients():
    torch.manual_seed(0)
    model = AudioNet()
    x = torch.randn(3, 64)
    expected = model(x)
    expected.square().sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    with one_dimensional_convolutions(model) as patched:
        assert patched == 2  # the reflect-padded layer keeps its own forward
        assert "forward" in model.conv1.__dict__ and "forward" not in model.reflect.__dict__
        out = model(x)
        out.square().sum().backward()
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    for p, g in zip(model.parameters(), grads):
        torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-6)
    assert not any("forward" in m.__dict__ for m in model.modules())


def test_other_inputs_take_the_module_forward_and_the_patch_is_undone_on_errors():
    conv = nn.Conv2d(2, 3, (3, 1))
    wide = torch.randn(1, 2, 7, 4)  # width 4: a true 2-D convolution
    with pytest.raises(RuntimeError, match="boom"):
        with one_dimensional_convolutions(conv):
            torch.testing.assert_close(conv(wide), nn.Conv2d.forward(conv, wide))
            raise RuntimeError("boom")
    assert "forward" not in conv.__dict__


def test_a_user_forward_on_the_instance_is_left_alone():
    conv = nn.Conv2d(2, 3, (3, 1))
    conv.forward = lambda x: x * 0  # noqa: E731 - a user's own override
    with one_dimensional_convolutions(conv) as patched:
        assert patched == 0
    assert conv(torch.ones(1, 2, 5, 1)).abs().sum() == 0


def test_budget_compression_runs_width_one_layers_as_1d_and_leaves_no_patch(monkeypatch):
    import squeezenet.compression.fastconv as fastconv
    calls = []
    original = fastconv._forward
    monkeypatch.setattr(fastconv, "_forward", lambda m, x: calls.append(x.shape) or original(m, x))
    torch.manual_seed(1)
    model = AudioNet()
    x = torch.randn(64, 64)
    compress_(model, CompressionConfig(size_budget=900), calibration=x)
    assert calls and all(shape[-1] == 1 for shape in calls)  # the statistics passes went through conv1d
    assert not any("forward" in m.__dict__ for m in model.modules())
