"""``squeezenet`` command line. Each handler parses, calls the library, prints.

Commands that report figures take ``--json``: one JSON object on the last line of stdout.
"""
from __future__ import annotations

import argparse
import sys

from ..errors import SqueezeNetError
from ..models import create_model, list_models
from ..models.summary import format_summary, summarize
from . import commands
from .args import UsageError, _positive_int, _print_json


# ---------------------------------------------------------------- list / summary
def cmd_list(args: argparse.Namespace) -> int:
    names = list_models()
    if args.json:
        _print_json({"models": names})
    else:
        print("\n".join(names))
    return 0


def _model_kwargs(args: argparse.Namespace) -> dict:
    kw = {}
    for key in ("sr", "pct3x3", "base_e", "incr_e", "freq"):
        v = getattr(args, key, None)
        if v is not None:
            kw[key] = v
    if getattr(args, "small_input", False):
        kw["small_input"] = True
    return kw


def cmd_summary(args: argparse.Namespace) -> int:
    kw = _model_kwargs(args)
    name = args.model
    if name is None:
        name = "squeezenet_from_metaparameters" if kw else "squeezenet1_0"
    elif (any(k in kw for k in ("sr", "pct3x3", "base_e", "incr_e", "freq"))
          and name != "squeezenet_from_metaparameters"):
        raise UsageError("--sr/--pct3x3/--base-e/--incr-e/--freq apply to squeezenet_from_metaparameters only")
    model = create_model(name, num_classes=args.num_classes, **kw)
    size = args.input_size or (32 if kw.get("small_input") else (227 if name == "alexnet" else 224))
    summary = summarize(model, size)
    summary["model"] = name
    summary["model_kwargs"] = kw
    summary["num_classes"] = args.num_classes
    if args.json:
        print(format_summary(summary, f"{name} {kw or ''}".strip()), file=sys.stderr)
        _print_json(summary)
    else:
        print(format_summary(summary, f"{name} {kw or ''}".strip()))
    return 0


# ---------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="squeezenet",
        description="SqueezeNet and Deep Compression: models, published weights, compression, evaluation.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    s = sub.add_parser("list", help="list the registered models",
                       description="Names of the registered models (create_model(name)). Any other architecture "
                                   "is named as torchvision:NAME or package.module:function where a command takes "
                                   "--model.")
    s.add_argument("--json", action="store_true", help="print one JSON object")
    s.set_defaults(func=cmd_list)

    s = sub.add_parser("summary", help="per-layer table (paper Table 1) with parameters, MACs and size",
                       description="Per-layer table like the paper's Table 1 and totals: parameters, "
                                   "multiply-accumulates and fp32 size. Without MODEL but with "
                                   "metaparameters, summarises squeezenet_from_metaparameters.")
    s.add_argument("model", nargs="?", help="model name (see `squeezenet list`); default squeezenet1_0")
    s.add_argument("--input-size", type=_positive_int, default=None,
                   help="square input side in pixels (default 224; 227 for alexnet; 32 with --small-input)")
    s.add_argument("--num-classes", type=_positive_int, default=1000, help="classifier outputs (default 1000)")
    s.add_argument("--small-input", action="store_true", help="32x32 stem (CIFAR-10 sized images)")
    s.add_argument("--sr", type=float, help="squeeze ratio of the metaparameter generator, in (0, 1]")
    s.add_argument("--pct3x3", type=float, help="fraction of 3x3 expand filters, in (0, 1)")
    s.add_argument("--base-e", dest="base_e", type=int, help="expand filters of the first fire module")
    s.add_argument("--incr-e", dest="incr_e", type=int, help="expand filters added every FREQ modules")
    s.add_argument("--freq", type=int, help="fire modules between increments of expand filters")
    s.add_argument("--json", action="store_true", help="print one JSON object (table goes to stderr)")
    s.set_defaults(func=cmd_summary)

    commands.add_commands(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args)
    # Only the package's own errors (and missing or unreadable paths) become one-line messages:
    # any other exception is a bug here and keeps its traceback.
    except (SqueezeNetError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError) as e:
        msg = str(e) or type(e).__name__
        print(f"squeezenet {args.command}: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"squeezenet {args.command}: interrupted", file=sys.stderr)
        return 130
