import json
import subprocess
import sys

import pytest

from squeezenet.cli.main import build_parser, main


def run(args):
    return subprocess.run([sys.executable, "-m", "squeezenet", *args], capture_output=True, text=True, timeout=120)


def test_list_and_summary_json(capsys):
    assert main(["list"]) == 0
    assert "squeezenet1_0" in capsys.readouterr().out.split()
    assert main(["summary", "squeezenet1_0", "--json"]) == 0
    d = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert d["params"] == 1_248_424 and d["bytes"] == 4 * 1_248_424 and d["macs"] > 0


def test_summary_of_generated_configuration(capsys):
    assert main(["summary", "--sr", "0.5", "--pct3x3", "0.25", "--json"]) == 0
    d = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    fire2 = [r for r in d["rows"] if r["name"] == "fire2"][0]
    assert (fire2["s1x1"], fire2["e1x1"], fire2["e3x3"]) == (64, 96, 32)


@pytest.mark.parametrize("args,needle", [
    (["summary", "nosuchmodel"], "unknown model"),
    (["summary", "--sr", "0"], "sr"),
    (["summary", "squeezenet1_0", "--input-size", "-3"], "positive integer"),
    (["eval", "--weights", "/nonexistent", "--data", "."], "no such file"),
    (["compress", "--weights", "/nonexistent", "--out", "x.sqz"], "no such file"),
    (["compress", "--weights", "pyproject.toml", "--out", "x.sqz", "--bits", "9"], "1..8"),
    (["size", "pyproject.toml"], "not a valid"),
])
def test_bad_arguments_one_line_no_traceback(args, needle):
    p = run(args)
    assert p.returncode != 0
    assert "Traceback" not in p.stderr
    assert needle in p.stderr


def test_every_command_has_help():
    parser = build_parser()
    sub = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"][0]
    for name, sp in sub.choices.items():
        text = sp.format_help()
        assert "--json" in text or name == "list" or "--out" in text, name
        assert sp.description or sp.format_usage(), name


def test_cli_engine_choices_match_the_library():
    from squeezenet.cli.commands import ENGINE_CHOICES
    from squeezenet.export.engine import ENGINES
    assert tuple(ENGINE_CHOICES) == tuple(ENGINES)
