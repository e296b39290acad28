"""Named stages with progress bars on stderr: shown when asked for or on a terminal, quiet otherwise."""
import io
import json

import torch
import torch.nn as nn

from squeezenet.compression import CompressionConfig, compress_
from squeezenet.compression.progress import showing, stage, tick, wanted


def _small():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv1d(4, 16, 5, padding=2), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 32, 10))


STAGES = ("sensitivities", "input second moments", "factoring second moments", "quantizer middle",
          "quantizer uniform", "quantizer fisher")


def test_the_budget_path_names_its_stages_on_stderr_when_progress_is_asked_for(capsys):
    compress_(_small(), CompressionConfig(size_budget=3000), calibration=torch.randn(300, 4, 32), progress=True)
    err = capsys.readouterr().err
    for name in STAGES:
        assert name in err, name
    assert "100%" in err and "quantization passes" in err


def test_no_bars_where_stderr_is_not_a_terminal_or_progress_is_off(capsys):
    for progress in (None, False):  # pytest's captured stderr is not a terminal
        compress_(_small(), CompressionConfig(size_budget=3000), calibration=torch.randn(300, 4, 32),
                  progress=progress)
        assert not any(name in capsys.readouterr().err for name in STAGES)


def test_wanted_follows_the_terminal_unless_told():
    class Terminal(io.StringIO):
        def isatty(self):
            return True
    assert wanted(None, Terminal()) and not wanted(None, io.StringIO())
    assert wanted(True, io.StringIO()) and not wanted(False, Terminal())


def test_tick_advances_the_innermost_stage_and_costs_nothing_unshown(capsys):
    tick()  # no stage: nothing
    with stage("outer", total=2):
        tick()
    assert capsys.readouterr().err == ""
    with showing(True):
        with stage("outer", total=3):
            with stage("inner", total=2):
                tick(2)
            tick(3)
    err = capsys.readouterr().err
    assert "inner: 100%" in err and "outer: 100%" in err


def test_compress_with_json_prints_no_bars(tmp_path, capsys):
    from squeezenet.cli.main import main
    from squeezenet.weights import save_state_dict
    model = _small()
    save_state_dict(tmp_path / "m.pt", model.state_dict())
    torch.save(torch.randn(300, 4, 32), tmp_path / "x.pt")
    (tmp_path / "net.py").write_text("import torch.nn as nn\n\ndef build(num_classes=10):\n"
                                     "    return nn.Sequential(nn.Conv1d(4, 16, 5, padding=2), nn.ReLU(), nn.Flatten(),"
                                     " nn.Linear(16 * 32, num_classes))\n")
    import sys
    sys.path.insert(0, str(tmp_path))
    try:
        code = main(["compress", "--weights", str(tmp_path / "m.pt"), "--model", "net:build", "--out",
                     str(tmp_path / "m.sqz"), "--size-budget", "3000", "--calibration", str(tmp_path / "x.pt"),
                     "--json"])
    finally:
        sys.path.remove(str(tmp_path))
    captured = capsys.readouterr()
    assert code == 0 and json.loads(captured.out.strip().splitlines()[-1])["bytes"] <= 3000
    # (--json sends the log's lines to stderr; no bar among them)
    assert "fitting 3,000 bytes" in captured.err
    assert "%|" not in captured.err and "quantization passes" not in captured.err
