"""Subcommands beyond list/summary, each parser (``add_<command>``) beside its handler (``cmd_<command>``)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch.distributed as dist

from ..compression import calibration_from_folder
from ..compression.config import EFFORTS, OUTPUT_KINDS, QUANTIZERS
from ..compression.plots import plot_weight_distributions
from ..compression.sensitivity import sensitivity
from ..download import download
from ..evaluation.evaluate import evaluate_weights, predict
from ..evaluation.reproduce import reproduce
from ..exploration import run_sweep
from ..export import export_weights
from ..export.bench import format_bench, run_bench
from ..export.engine import ENGINES
from ..preprocessing import TORCHVISION_IMAGENET
from ..training import load_config, train
from ..training.checkpoint import load_training_checkpoint
from ..training.config import recipe_for_data
from ..weights import load_weights, save_checkpoint, save_safetensors, save_state_dict
from ..weights.codecs import codec_names
from .args import UsageError, _positive_int, _print_json, bounded_int
from .compress import compress_command, format_size_report, size_of_file, weights_with_model

_nonneg_int = bounded_int(0, what="value")
_bits = bounded_int(1, 8, what="bits")


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        v = float("nan")
    if not v > 0 or v == float("inf"):
        raise argparse.ArgumentTypeError(f"value must be a positive number, got {text!r}")
    return v


def _weights(args):
    """The weights ``--weights`` names, with the architecture ``--model`` gives where it lacks one."""
    return weights_with_model(args.weights, getattr(args, "model", None), getattr(args, "model_kwargs", None))


def _add_model_args(s) -> None:
    s.add_argument("--model", default=None,
                   help="the architecture of a bare state dict: a registered name, torchvision:NAME (e.g. "
                        "torchvision:resnet18) or package.module:function; files that name theirs need none")
    s.add_argument("--model-kwargs", default=None, help="JSON arguments of --model, e.g. '{\"num_classes\": 10}'")


def _calibration_source(text: str) -> str:
    """A calibration folder or file that exists, or ``package.module:function``."""
    if Path(text).exists() or (":" in text and not Path(text).suffix):
        return text
    raise argparse.ArgumentTypeError(f"{text}: no such file or folder (nor package.module:function)")


def _existing_path(text: str) -> Path:
    p = Path(text)
    if not p.exists():
        raise argparse.ArgumentTypeError(f"{text}: no such file or folder")
    return p


# ---------------------------------------------------------------- eval / predict
def cmd_eval(args) -> int:
    result = evaluate_weights(_weights(args), args.data, batch_size=args.batch_size, workers=args.workers,
                              engine=args.engine, calibration=args.calibration,
                              log=lambda m: print(m, file=sys.stderr))
    line = (f"{result['weights']} ({result['weights_kind']}, {result['model']}, engine {result['engine']}): "
            f"top-1 {result['top1']:.4f}  top-5 {result['top5']:.4f}  on {result['images']} images "
            f"({result['images_per_s']:.1f} images/s)")
    print(line, file=sys.stderr if args.json else sys.stdout)
    if args.json:
        _print_json(result)
    return 0


def add_eval(sub) -> None:
    s = sub.add_parser("eval", help="top-1/top-5 of any weights file on an ImageNet validation folder",
                       description="Evaluate weights (the published .net file, our checkpoints or compressed "
                                   ".sqz files, detected by content) on DIR/val/<wnid>/*.JPEG or DIR/<wnid>/*.JPEG "
                                   "with labels from DIR/LOC_synset_mapping.txt. The preprocessing comes from "
                                   "the weights.")
    s.add_argument("--weights", required=True, type=_existing_path, help="weights file (any supported kind)")
    s.add_argument("--data", required=True, type=_existing_path,
                   help="ImageNet validation folder with the mapping file")
    s.add_argument("--batch-size", type=_positive_int, default=50, help="images per batch (default 50)")
    s.add_argument("--workers", type=_nonneg_int, default=None, help="data loading processes (default: 2)")
    s.add_argument("--engine", choices=ENGINES, default=None,
                   help="inference engine (default torch; onnxruntime for an .onnx file). auto times the "
                        "fp32 engines here and keeps the fastest; with --calibration it also builds OpenVINO "
                        "int8 (NNCF) and admits it if its top-1 agrees with fp32 on >= 85%% of held-out calibration "
                        "images. The *-int8 engines need --calibration")
    s.add_argument("--calibration", type=_existing_path, default=None,
                   help="images for int8 calibration (never the evaluation images: overlap is refused)")
    _add_model_args(s)
    s.add_argument("--json", action="store_true", help="print one JSON object with top1, top5, images")
    s.set_defaults(func=cmd_eval)


def cmd_predict(args) -> int:
    results = predict(_weights(args), args.images, top=args.top, mapping=args.mapping, engine=args.engine,
                      calibration=args.calibration, log=lambda m: print(m, file=sys.stderr))
    if args.json:
        _print_json({"results": results})
        return 0
    for r in results:
        print(r["image"])
        for p in r["predictions"]:
            print(f"  {p['probability']:7.2%}  {p['class_name']} ({p['class_index']})")
    return 0


# ---------------------------------------------------------------- download


def add_predict(sub) -> None:
    s = sub.add_parser("predict", help="top-K classes with probabilities for images",
                       description="Classify images with any weights file; class names come from --mapping, "
                                   "the weights, or torchvision's ImageNet list.")
    s.add_argument("images", nargs="+", type=_existing_path, help="image files")
    s.add_argument("--weights", required=True, type=_existing_path, help="weights file (any supported kind)")
    s.add_argument("--top", type=_positive_int, default=5, help="classes per image (default 5)")
    s.add_argument("--mapping", type=_existing_path, default=None, help="LOC_synset_mapping.txt for class names")
    s.add_argument("--engine", choices=ENGINES, default=None,
                   help="inference engine, as for eval (default torch; onnxruntime for an .onnx file)")
    s.add_argument("--calibration", type=_existing_path, default=None, help="images for int8 calibration")
    _add_model_args(s)
    s.add_argument("--json", action="store_true", help="print one JSON object")
    s.set_defaults(func=cmd_predict)


def cmd_download(args) -> int:
    path = download(args.asset, args.to, url=args.url, source=getattr(args, "from"))
    if args.json:
        _print_json({"path": str(path), "bytes": path.stat().st_size})
    else:
        print(path)
    return 0


# ---------------------------------------------------------------- compression


def add_download(sub) -> None:
    s = sub.add_parser("download", help="fetch the published weights (sha256-checked) into the cache",
                       description="Download the published Deep Compression SqueezeNet into $SQUEEZENET_HOME "
                                   "(default ~/.cache/squeezenet) or --to DIR, check its pinned sha256 and print "
                                   "its path. Offline: --from FILE_OR_DIR imports a local copy.")
    s.add_argument("--to", type=Path, default=None, help="destination folder (default: the cache)")
    s.add_argument("--from", dest="from", type=_existing_path, default=None,
                   help="import a local file or folder instead")
    s.add_argument("--url", default=None, help="download from this address instead of the public one (mirrors)")
    s.add_argument("--asset", default="squeezenet1_0-deep-compression",
                   help="what to fetch (default: the published model)")
    s.add_argument("--json", action="store_true", help="print one JSON object")
    s.set_defaults(func=cmd_download)


def cmd_compress(args) -> int:
    report = compress_command(args)
    if args.json:
        _print_json(report)
    return 0


def add_compress(sub) -> None:
    s = sub.add_parser("compress", help="Deep Compression: prune, quantize, entropy-code, write a .sqz file",
                       description="Compress any weights file into our .sqz format. Density and bits take a number "
                                   "for every layer or a spec 'PATTERN=VALUE,...' over module names (shell globs, "
                                   "e.g. 'classifier.1=0.2,*.expand3x3=0.33'). Density 'auto' applies the paper's "
                                   "profile to dense weights and keeps already-pruned ones as they are. With no bits "
                                   "and no budget, an already-shared model (the published .net) is re-encoded "
                                   "losslessly. --size-budget B writes at most B bytes or fails. Any model's "
                                   "state dict works: convolutions, linear layers and every other floating-point "
                                   "tensor of rank 2-5 (LSTM matrices, embeddings) are coded; 1-D tensors (batch "
                                   "norm, biases of other modules) and integer ones are stored exactly. Without "
                                   "--model, every *.weight of rank 2-5 is coded as a linear/conv weight. Default "
                                   "density for models other than SqueezeNet/AlexNet: the first and last layer, "
                                   "layers under 10,000 weights and tensors that are not conv/linear weights "
                                   "dense, 33%% elsewhere.")
    s.add_argument("--weights", required=True, type=_existing_path, help="weights file (any supported kind)")
    s.add_argument("--out", required=True, type=Path, help="output .sqz file")
    g = s.add_mutually_exclusive_group()
    g.add_argument("--bits", type=_bits, default=None, help="bits per weight index for every layer, 1..8 (default 8)")
    g.add_argument("--bits-per-layer", default=None, help="bits spec, e.g. '6,classifier.1=5'")
    g.add_argument("--size-budget", type=_positive_int, default=None,
                   help="largest file in bytes, a hard limit: rate-distortion optimised quantization with "
                        "per-layer Fisher sensitivity, then distillation (needs --calibration; with --data, "
                        "retraining with labels instead)")
    s.add_argument("--density", default="auto", help="'auto', 'profile', 'keep', a fraction in (0,1] or a spec")
    s.add_argument("--calibration", type=_calibration_source, default=None,
                   help="unlabelled inputs for sensitivities and distillation: a folder of images, a tensor "
                        "file (.pt/.npy/.npz holding one (N, ...) batch) or package.module:function returning "
                        "a tensor or batches")
    s.add_argument("--output", choices=list(OUTPUT_KINDS), default="auto",
                   help="what the model outputs, for the distortion that the size budget and distillation "
                        "minimise: logits and probs (KL), sigmoid (Bernoulli KL), mse (regression, embeddings); "
                        "auto reads it off the outputs (default)")
    s.add_argument("--quantizer", choices=list(QUANTIZERS), default="auto",
                   help="with --size-budget: fisher (steps weighted by layer sensitivity), uniform (one step "
                        "for all layers, as MPEG NNC) or auto: both and their middle, keeping the one closest "
                        "to the original model on the calibration inputs (default)")
    s.add_argument("--effort", choices=list(EFFORTS), default="auto",
                   help="with --size-budget: best (every quantizer of --quantizer auto, judged), fast (the "
                        "uniform quantizer alone with error feedback: a 22M-parameter model in under half "
                        "the time) or auto: fast on models of over 4M weights, "
                        "else best (default)")
    s.add_argument("--codec", choices=codec_names(), default="range",
                   help="range: context-modelled range coding, format version 3 (default); huffman: the "
                        "paper's k-means + Huffman coding, format version 1")
    s.add_argument("--finetune-steps", type=_nonneg_int, default=None,
                   help="centroid fine-tuning steps by distillation on --calibration images "
                        "(default 150 with --size-budget and the range codec, else 0)")
    s.add_argument("--finetune-lr", type=float, default=1e-4, help="fine-tuning learning rate (Adam)")
    s.add_argument("--error-feedback", action=argparse.BooleanOptionalAction, default=None,
                   help="with --size-budget: quantize each layer's columns in turn, feeding the output error on "
                        "the calibration images into the columns not yet quantized (GPTQ). Default: on with "
                        "--calibration, whose images must then come from the model's own domain (CIFAR-10 "
                        "images for an ImageNet model made a 400 kB file worse: use --no-error-feedback there); "
                        "off with --data (retraining with labels recovers more from the plain quantizer)")
    s.add_argument("--fold-batch-norm", action="store_true",
                   help="fold batch norm into the convolutions first: a bias per channel instead of four "
                        "stored statistics (a batch-norm SqueezeNet becomes its plain architecture)")
    s.add_argument("--codebook-dtype", choices=["auto", "f4", "f2"], default="auto",
                   help="codebook storage: f4 exact, f2 half size, auto = f4 where sharing was lossless (default)")
    s.add_argument("--data", type=_existing_path, default=None,
                   help="labelled folders (train/ and val|test/): prune, retrain with masks, share, fine-tune "
                        "centroids with labels, reporting accuracy after each stage")
    s.add_argument("--retrain-epochs", type=_nonneg_int, default=1, help="epochs of retraining per stage (with --data)")
    s.add_argument("--config", type=_existing_path, default=None, help="training recipe for retraining (with --data)")
    s.add_argument("--max-steps", type=_nonneg_int, default=None, help="at most this many steps per retraining epoch")
    s.add_argument("--retrain-lr", type=_positive_float, default=None,
                   help="peak learning rate of retraining and label fine-tuning (default: a tenth of the recipe's)")
    _add_model_args(s)
    s.add_argument("--json", action="store_true", help="print one JSON object with bytes and per-stage figures")
    s.set_defaults(func=cmd_compress)


def cmd_decompress(args) -> int:
    lw = load_weights(args.file)
    if lw.kind not in ("compressed", "caffe-net"):
        raise UsageError(f"{args.file}: not a compressed file (.sqz or the published .net); it is a {lw.kind}")
    if args.format is None:
        args.format = "safetensors" if Path(args.out).suffix == ".safetensors" else "state-dict"
    if args.format == "safetensors":
        save_safetensors(args.out, lw.state_dict)
    elif args.format == "state-dict":
        save_state_dict(args.out, lw.state_dict)
        if lw.has_architecture and lw.preprocessing != TORCHVISION_IMAGENET:
            p = lw.preprocessing
            print(f"note: these weights expect {p.channel_order} inputs scaled to {p.scale:g} "
                  f"with mean {list(p.mean)}, "
                  f"which a bare state dict does not record; --format checkpoint keeps it for eval/predict/export",
                  file=sys.stderr)
    else:
        if not lw.has_architecture:
            raise UsageError(f"{args.file} does not name its architecture: write --format state-dict")
        save_checkpoint(args.out, lw.model_name, lw.state_dict, preprocessing=lw.preprocessing,
                        num_classes=lw.num_classes, model_kwargs=lw.model_kwargs, class_names=lw.class_names)
    what = lw.model_name or "state dict"
    print(f"wrote {args.out} ({what}, {len(lw.state_dict)} tensors, {args.format})",
          file=sys.stderr if args.json else sys.stdout)
    if args.json:
        _print_json({"out": str(args.out), "model": lw.model_name, "format": args.format,
                     "tensors": len(lw.state_dict), "bytes": Path(args.out).stat().st_size})
    return 0


def add_decompress(sub) -> None:
    s = sub.add_parser("decompress", help="decode a .sqz or published .net file into a state dict or checkpoint",
                       description="Decode a compressed file (ours, .sqz, or the published Deep Compression "
                                   ".net). --format state-dict (default) writes the plain state dict, which "
                                   "model.load_state_dict(torch.load(OUT, weights_only=True), strict=True) takes; "
                                   "--format checkpoint writes our checkpoint, which also keeps the architecture, "
                                   "preprocessing and class names for eval/predict/export.")
    s.add_argument("file", type=_existing_path, help="compressed file: .sqz or the published .net")
    s.add_argument("--out", required=True, type=Path, help="output file")
    s.add_argument("--format", choices=["state-dict", "safetensors", "checkpoint"], default=None,
                   help="state-dict (default): tensors only, a torch file; safetensors (the default when --out "
                        "ends in .safetensors): tensors only; checkpoint: with architecture and preprocessing")
    s.add_argument("--json", action="store_true", help="print one JSON object")
    s.set_defaults(func=cmd_decompress)


def cmd_size(args) -> int:
    report = size_of_file(args.file)
    text = format_size_report(report)
    print(text, file=sys.stderr if args.json else sys.stdout)
    if args.plot:
        report["plot"] = plot_weight_distributions(args.file, args.plot)
        print(f"wrote {args.plot}", file=sys.stderr)
    if args.json:
        _print_json(report)
    return 0


def add_size(sub) -> None:
    s = sub.add_parser("size", help="exact byte accounting of a compressed (.sqz) or published (.net) file",
                       description="Bytes per layer and per component (header, codebooks, biases, code tables, "
                                   "weight codes, position codes), with ratios against fp32 SqueezeNet and AlexNet.")
    s.add_argument("file", type=_existing_path, help="compressed .sqz or published .net file")
    s.add_argument("--plot", type=Path, default=None,
                   help="also write a PNG: weight histograms with centroids per layer")
    s.add_argument("--json", action="store_true", help="print one JSON object with bytes and components")
    s.set_defaults(func=cmd_size)


def cmd_sensitivity(args) -> int:
    lw = load_weights(args.weights)
    images = calibration_from_folder(args.calibration, lw.preprocessing, args.images).inputs
    bits = [int(b) for b in args.bits.split(",")]
    if any(not 1 <= b <= 8 for b in bits):
        raise UsageError("--bits values must be in 1..8")
    densities = [float(d) for d in args.densities.split(",")] if args.densities else None
    if densities and any(not 0 < d <= 1 for d in densities):
        raise UsageError("--densities values must be in (0, 1]")
    result = sensitivity(lw.build_model(), images, bits, densities, args.metric)
    out = sys.stderr if args.json else sys.stdout
    head = (f"{'layer':<26}" + "".join(f"{f'{b} bits':>10}" for b in bits)
            + "".join(f"{f'd={d}':>10}" for d in densities or []))
    measure = "relative layer output error" if args.metric == "layer" else "1 - top-1 agreement"
    print(f"sensitivity ({args.metric}: {measure})", file=out)
    print(head, file=out)
    for layer, row in result["bits"].items():
        cells = "".join(f"{row[b]:>10.4f}" for b in bits)
        cells += "".join(f"{result['density'][layer][d]:>10.4f}" for d in densities or [])
        print(f"{layer:<26}{cells}", file=out)
    if args.json:
        _print_json({k: ({name: {str(b): e for b, e in r.items()} for name, r in v.items()}
                         if isinstance(v, dict) else v) for k, v in result.items()})
    return 0


def add_sensitivity(sub) -> None:
    s = sub.add_parser("sensitivity", help="per-layer sensitivity to bits and density",
                       description="For each layer alone, quantize to each bit width (and prune to each density) "
                                   "and measure the error on unlabelled calibration images: 'layer' = relative "
                                   "error of the layer's output (fast), 'network' = 1 - top-1 agreement of the "
                                   "whole model with the original (slow).")
    s.add_argument("--weights", required=True, type=_existing_path, help="weights file (any supported kind)")
    s.add_argument("--calibration", required=True, type=_existing_path, help="folder of unlabelled images")
    s.add_argument("--images", type=_positive_int, default=16, help="calibration images (default 16)")
    s.add_argument("--bits", default="2,3,4,5,6,7,8", help="bit widths to try (default 2..8)")
    s.add_argument("--densities", default=None, help="densities to try, e.g. 0.2,0.5")
    s.add_argument("--metric", choices=["layer", "network"], default="layer", help="error measure (default layer)")
    s.add_argument("--json", action="store_true", help="print one JSON object")
    s.set_defaults(func=cmd_sensitivity)


def cmd_train(args) -> int:
    log = (lambda *a: print(*a, file=sys.stderr)) if args.json else print
    overrides = {"model": args.model, "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
                 "seed": args.seed, "workers": args.workers, "max_steps_per_epoch": args.max_steps,
                 "limit_train": args.limit_train, "time_budget_min": args.time_budget}
    base: dict = {}
    if args.config is None and args.resume is not None:  # continue with the recipe the run started with
        base = dict(load_training_checkpoint(args.resume).get("config") or {})
        log(f"no --config: the recipe saved in {args.resume}")
    elif args.config is None:
        base, why = recipe_for_data(args.data)
        log(f"no --config: {why}")
    kwargs = dict(base.pop("model_kwargs", {}))
    if args.small_input:
        kwargs["small_input"] = True
    if args.batch_norm:
        kwargs["batch_norm"] = True
    if kwargs:
        overrides["model_kwargs"] = kwargs
    cfg = load_config(args.config, **{**base, **{k: v for k, v in overrides.items() if v is not None}})
    if args.config is not None and (args.small_input or args.batch_norm):
        cfg.model_kwargs = {**cfg.model_kwargs, **kwargs}
    if args.small_input and cfg.preprocessing != "cifar10" and args.config is None:
        cfg.preprocessing = "cifar10"
    result = train(cfg, args.data, args.out, args.resume, log=log)
    if args.json:
        if not dist.is_initialized() or dist.get_rank() == 0:  # one JSON line, from rank 0
            _print_json(result)
    return 0


def add_train(sub) -> None:
    s = sub.add_parser("train", help="train a model on image folders (one process or torchrun/DDP)",
                       description="Train on DIR/train/<class>/... with evaluation on DIR/val or DIR/test. Recipes "
                                   "in configs/ (paper ImageNet solver, CIFAR-10); flags override the config. "
                                   "Without --config the recipe follows the images (small images: 32 px stem, "
                                   "CIFAR-10 statistics, tensor cache; ImageNet-size: 224 px crops, torchvision "
                                   "preprocessing, a DataLoader) and says why; every run writes OUT/config.yaml. "
                                   "Several processes: torchrun --nproc_per_node=N -m squeezenet train ... "
                                   "(--batch-size is global). Writes metrics.csv, last.pt and best.pt to --out.")
    s.add_argument("--model", default=None, help="model name (default: the config's, else squeezenet1_1)")
    s.add_argument("--data", required=True, type=_existing_path, help="folder with train/ and val/ or test/")
    s.add_argument("--config", type=_existing_path, default=None, help="YAML recipe (see configs/)")
    s.add_argument("--epochs", type=_positive_int, default=None, help="epochs (overrides the config)")
    s.add_argument("--batch-size", type=_positive_int, default=None, help="global batch size")
    s.add_argument("--lr", type=float, default=None, help="learning rate at the reference batch")
    s.add_argument("--time-budget", type=_positive_float, default=None, metavar="MIN",
                   help="finish within MIN minutes, final evaluation included: the learning-rate schedule "
                        "follows the share of the time spent and ends at 0 when it runs out (--epochs is then "
                        "an upper bound)")
    s.add_argument("--small-input", action="store_true", help="32x32 stem (CIFAR-10 sized images)")
    s.add_argument("--batch-norm", action="store_true",
                   help="conv -> batch norm -> ReLU (a departure from the paper; folded away for export)")
    s.add_argument("--out", type=Path, default=Path("runs/train"), help="output folder (default runs/train)")
    s.add_argument("--resume", type=_existing_path, default=None, help="continue from a last.pt checkpoint")
    s.add_argument("--seed", type=_nonneg_int, default=None, help="random seed")
    s.add_argument("--workers", type=_nonneg_int, default=None, help="data loading processes")
    s.add_argument("--max-steps", type=_nonneg_int, default=None, help="at most this many steps per epoch")
    s.add_argument("--limit-train", type=_nonneg_int, default=None, help="train on a fixed random subset")
    s.add_argument("--json", action="store_true", help="print one JSON object with the final metrics")
    s.set_defaults(func=cmd_train)


def cmd_export(args) -> int:
    report = export_weights(_weights(args), args.format, args.out, batch=args.batch, int8=args.int8,
                            calibration=args.calibration, compressed_weights=args.compressed_weights)
    msg = (f"wrote {report['out']} ({report['bytes']:,} bytes); "
           f"max abs difference to PyTorch {report['max_abs_diff']:.2e}")
    if args.compressed_weights:
        msg += (f"; {report['ratio']:.1%} of the fp32 export's {report['fp32_onnx_bytes']:,} bytes, "
                f"{report['packed_layers']} layers kept as codes")
        if report["fp32_layers"]:
            msg += f" ({len(report['fp32_layers'])} left fp32: {', '.join(report['fp32_layers'][:3])})"
    if args.int8:
        msg += (f"; int8 max abs difference {report['int8_max_abs_diff']:.3g} on a random input "
                f"(measure its accuracy with `squeezenet eval --engine`)")
        if report.get("calibration_images", 0) < 16:
            print(f"warning: calibrated on only {report.get('calibration_images')} image(s); activation ranges "
                  f"from so few images are unreliable (64 or more recommended)", file=sys.stderr)
    print(msg, file=sys.stderr if args.json else sys.stdout)
    if args.json:
        _print_json(report)
    return 0


def add_export(sub) -> None:
    s = sub.add_parser("export", help="export any weights to ONNX, TorchScript, a torch.export program or OpenVINO IR",
                       description="Export weights (any supported file, compressed ones included) and check the "
                                   "result against PyTorch on the same input. Files carry the model name, "
                                   "preprocessing and class names as metadata; ONNX files pass onnx.checker.")
    s.add_argument("--weights", required=True, type=_existing_path, help="weights file (any supported kind)")
    s.add_argument("--format", required=True, choices=["onnx", "torchscript", "exported-program", "openvino"],
                   help="output format (openvino: NAME.xml + NAME.bin)")
    s.add_argument("--out", required=True, type=Path, help="output file")
    s.add_argument("--batch", default="dynamic", help="'dynamic' (default) or a fixed batch size")
    s.add_argument("--int8", action="store_true",
                   help="static int8 quantization: ONNX QDQ per-channel (ONNX Runtime) or, for openvino, NNCF")
    s.add_argument("--calibration", type=_existing_path, default=None, help="images for int8 calibration")
    s.add_argument("--compressed-weights", action="store_true",
                   help="onnx from a .sqz file: keep each coded layer as bit-packed level indices and its codebook, "
                        "expanded to fp32 by ONNX Runtime when it loads the file (a fraction of the fp32 size, "
                        "the same outputs)")
    _add_model_args(s)
    s.add_argument("--json", action="store_true", help="print one JSON object")
    s.set_defaults(func=cmd_export)


def cmd_bench(args) -> int:
    try:
        batches = [int(b) for b in args.batch.split(",")]
    except ValueError:
        raise UsageError(f"--batch must be comma-separated positive integers, got {args.batch!r}") from None
    if any(b < 1 for b in batches):
        raise UsageError("--batch sizes must be positive")
    result = run_bench(args.model, batches, args.seconds, args.threads,
                       log=lambda m: print(m, file=sys.stderr), calibration=args.calibration, weights=args.weights)
    print(format_bench(result), file=sys.stderr if args.json else sys.stdout)
    if args.json:
        _print_json(result)
    return 0


def add_bench(sub) -> None:
    s = sub.add_parser("bench", help="inference speed: torchvision, ONNX Runtime, OpenVINO, ours, side by side",
                       description="Images/s and latency percentiles of each runtime path at each batch size, with "
                                   "ratios to ONNX Runtime fp32 and to the fastest path. int8 models are calibrated "
                                   "on random inputs: speed only.")
    s.add_argument("--model", default="squeezenet1_0", help="model name (default squeezenet1_0)")
    s.add_argument("--batch", default="1,32", help="batch sizes, comma-separated (default 1,32)")
    s.add_argument("--seconds", type=float, default=3.0, help="timing per path and batch (default 3 s)")
    s.add_argument("--threads", type=_positive_int, default=None, help="threads (default: all cores)")
    s.add_argument("--weights", type=_existing_path, default=None,
                   help="weights file to time instead of a freshly built --model")
    s.add_argument("--calibration", type=_existing_path, default=None,
                   help="real images for int8 calibration; lets the auto engine admit int8 after its "
                        "agreement check (default: random images, int8 rows timed for speed only)")
    s.add_argument("--json", action="store_true", help="print one JSON object")
    s.set_defaults(func=cmd_bench)


def cmd_explore(args) -> int:
    log = (lambda *a: print(*a, file=sys.stderr)) if args.json else print
    overrides = {k: v for k, v in {"config": args.config, "epochs": args.epochs, "batch_size": args.batch_size,
                                   "limit_train": args.limit_train, "max_steps_per_epoch": args.max_steps,
                                   "seed": args.seed}.items() if v is not None}
    width = {k: v for k, v in {"base_e": args.base_e, "incr_e": args.incr_e, "freq": args.freq}.items()
             if v is not None}
    result = run_sweep(args.sweep, args.data, args.out, args.values, jobs=args.jobs, log=log, width=width,
                       **overrides)
    log("wrote " + ", ".join(result["files"]))
    if args.json:
        _print_json(result)
    return 0


def add_explore(sub) -> None:
    s = sub.add_parser("explore", help="design-space sweeps (paper sections 5-6): train each point, plot, report",
                       description="Sweep the squeeze ratio (at pct3x3 0.5), the 3x3 fraction (at SR 0.5) or the "
                                   "bypass variants; each point is trained, evaluated and saved as it finishes "
                                   "(a restarted sweep skips finished points). Writes CSV, JSON, a PNG and a "
                                   "Markdown report into --out.")
    s.add_argument("--sweep", required=True, choices=["sr", "pct3x3", "bypass"], help="which sweep")
    s.add_argument("--values", nargs="+", default=None, help="points to run (default: the paper's)")
    s.add_argument("--data", required=True, type=_existing_path, help="folder with train/ and val|test/")
    s.add_argument("--config", type=_existing_path, default=None, help="training recipe (default: CIFAR-10 defaults)")
    s.add_argument("--epochs", type=_positive_int, default=None, help="epochs per point")
    s.add_argument("--batch-size", type=_positive_int, default=None, help="batch size")
    s.add_argument("--limit-train", type=_nonneg_int, default=None, help="train on a fixed random subset per point")
    s.add_argument("--max-steps", type=_nonneg_int, default=None, help="at most this many steps per epoch")
    s.add_argument("--seed", type=_nonneg_int, default=None, help="random seed")
    s.add_argument("--base-e", type=_positive_int, default=None,
                   help="expand filters of the first fire module, fixed for every point (default 128)")
    s.add_argument("--incr-e", type=_nonneg_int, default=None,
                   help="expand filters added every FREQ modules (default 128)")
    s.add_argument("--freq", type=_positive_int, default=None, help="fire modules per increment (default 2)")
    s.add_argument("--jobs", type=_positive_int, default=1, help="points trained in parallel processes")
    s.add_argument("--out", type=Path, default=Path("explore"), help="output folder (default ./explore)")
    s.add_argument("--json", action="store_true", help="print one JSON object")
    s.set_defaults(func=cmd_explore)


def cmd_reproduce(args) -> int:
    result = reproduce(data=args.data, weights=args.weights, out=args.out, calibration=args.calibration)
    if args.json:
        _print_json(result)
    return 0


def add_reproduce(sub) -> None:
    s = sub.add_parser("reproduce", help="measure the paper's Table 2 (sizes and accuracies)",
                       description="AlexNet and SqueezeNet fp32 sizes, the published 8-bit file with its accuracy, "
                                   "and our compressed files with exact bytes and measured top-1/top-5; writes "
                                   "Markdown, JSON and a size/accuracy plot into --out.")
    s.add_argument("--data", type=Path, default=None,
                   help="ImageNet validation folder (default ../shared/data/imagenet-samples)")
    s.add_argument("--weights", type=Path, default=None, help="published .net file (default: shared copy or cache)")
    s.add_argument("--calibration", type=Path, default=None,
                   help="unlabelled images for the size-budget files (default: each is made twice, calibrated "
                        "on either half of --data and scored on the other half)")
    s.add_argument("--out", type=Path, default=Path("reproduce"), help="output folder (default ./reproduce)")
    s.add_argument("--json", action="store_true", help="print one JSON object")
    s.set_defaults(func=cmd_reproduce)


def add_commands(sub) -> None:
    """Every command's parser (each defined beside its handler), in the order ``--help`` lists them."""
    for add in (add_eval, add_predict, add_download, add_compress, add_decompress, add_size, add_train, add_export,
                add_bench, add_explore, add_sensitivity, add_reproduce):
        add(sub)
