"""`vwt-export`: parses the command line, calls `vwt_export.export`, prints what it found. No stage lives here."""

from __future__ import annotations

import logging
import shlex
import sys
from pathlib import Path
from typing import Any

import click

from . import methods
from .config import BACKENDS
from .errors import VWTError
from .graph.quantize import CALIBRATIONS


class _Lines(logging.Formatter):
    """Progress lines as they are; warnings prefixed, so they stand out in a long log."""

    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        return f"warning: {msg}" if record.levelno >= logging.WARNING else msg


def _log_to_stderr(debug: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Lines())
    logger = logging.getLogger("vwt_export")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.DEBUG if debug else logging.INFO)
    logger.propagate = False


def _parse_model_args(items: tuple[str, ...]) -> dict[str, Any]:
    import yaml

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.isidentifier():
            raise VWTError(f"--model-arg {item}: expected KEY=VALUE, e.g. img_size=384")
        out[key] = yaml.safe_load(value)
    return out


def _print_result(result) -> None:
    t = result.torch_check
    if t:
        click.echo(f"tokens per image: mean {t['tokens_mean']:.1f} of {t['tokens_in']} "
                   f"({t['tokens_mean'] / t['tokens_in']:.0%}), min {t['tokens_min']}, max {t['tokens_max']}")
        if t["top1_agreement"] is None:
            click.echo(f"feature cosine to the uncompressed model on {t['images']} images: "
                       f"{t['cosine_similarity']:.4f} (no classifier head)")
        else:
            click.echo(f"agreement with the uncompressed model on {t['images']} images: top-1 {t['top1_agreement']:.1%}, "
                       f"top-5 overlap {t['top5_overlap']:.1%}, max |logit diff| {t['max_abs_logit_diff']:.3g}")
    ties = result.near_ties
    if ties["images"]:
        from .check.verify import near_tie_summary

        click.echo(f"near-ties: {near_tie_summary(ties)} (counted, not errors; see report.md's Verification)")
    if result.report:
        from .check.report import VERIFICATION_HEADING, markdown

        click.echo("")
        click.echo(markdown(result.report).split(VERIFICATION_HEADING)[0].split("Not measured:")[0].rstrip())
    for path in result.written:
        click.echo(f"wrote {path}", err=True)


def _click_option(option: methods.Option):
    """A method's option as a flag, from its one declaration (default, range, choices, help)."""
    if option.kind is bool:
        return click.option(f"{option.flag}/--no-{option.flag[2:]}", option.name, default=option.default,
                            show_default=True, help=option.help)
    if option.choices:
        kind = click.Choice(option.choices)
    elif option.parser is not None:
        kind = click.STRING  # the option parses its own text
    else:
        lo, hi = option.bounds
        kind = click.FloatRange(lo, hi) if option.kind is float else click.IntRange(lo, hi)
    own = methods.mode_defaults(option.name)
    if own:  # no click default: None lets each mode fill in its own (methods.spec)
        shown = "; ".join([f"{option.default}", *(f"{mode}: {value}" for mode, value in own.items())])
        return click.option(option.flag, option.name, type=kind, default=None, help=f"{option.help}  [default: {shown}]")
    return click.option(option.flag, option.name, type=kind, default=option.default,
                        show_default=option.default is not None, help=option.help)


def _method_options(command):
    for option in reversed(list(methods.all_options().values())):
        command = _click_option(option)(command)
    return command


def _methods_help() -> str:
    return "; ".join(f"{name}: {methods.get(name).summary}" for name in methods.names())


def _sweep_help() -> str:
    keys = ", ".join(f"{k} ({name})" for name in methods.names() for k in methods.get(name).sweep_keys)
    return f"measure many settings on the same images and plot the trade-off; KEY: {keys}; repeatable"


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.argument("model")
@click.option("--mode", type=click.Choice(methods.names()), default="inter", show_default=True, help=_methods_help())
@click.option("--weights", default=None, help="pretrained (timm hub/cache), random, or a checkpoint path "
              "(.pth/.pt/.bin/.safetensors, timm's or Hugging Face transformers' names, or a save_pretrained "
              "folder)  [default: pretrained; random with --demo]")
@click.option("--model-arg", "model_args", multiple=True, metavar="KEY=VALUE",
              help="extra timm.create_model argument, repeatable (e.g. img_size=384, num_classes=10)")
@click.option("--calib", type=click.Path(path_type=Path), help="folder of calibration images; learns the vocabulary")
@click.option("--val", type=click.Path(path_type=Path), help="folder of images for the checks  [default: --calib]")
@click.option("--vocab", type=click.Path(path_type=Path),
              help="vocabulary to use instead of learning one (.safetensors, or a reference vocab.pt)")
@click.option("--vocab-size", type=click.IntRange(min=1), default=1000, show_default=True,
              help="words in the vocabulary learned from --calib (k-means clusters; near-duplicates merged)")
@_method_options
@click.option("--out", type=click.Path(path_type=Path), default=None, help="output folder  [default: vwt-out/MODEL-MODE]")
@click.option("--skip-checks", is_flag=True, help="do not compare against the uncompressed model")
@click.option("--skip-export", is_flag=True, help="do not write ONNX files (torch path only)")
@click.option("--skip-int8", is_flag=True, help="do not build the INT8 variants")
@click.option("--int8-attention", is_flag=True,
              help="INT8: also quantize attention's activation products (Q.K^T, softmax.V), for TensorRT's fused "
              "attention; by default only weight GEMMs and the patch conv are")
@click.option("--int8-calibration", type=click.Choice(CALIBRATIONS), default="minmax",
              show_default=True, help="INT8 calibration method")
@click.option("--triton", is_flag=True, help="also write OUT/triton/, a Triton Inference Server model repository "
              "(serve it with `vwt-export serve OUT/triton`)")
@click.option("--backend", type=click.Choice(BACKENDS), default="ort", show_default=True,
              help="ort: ONNX Runtime CPU variants; trt: also TensorRT engines (FP32, FP16, INT8)")
@click.option("--trt-target", default=None, metavar="SM89",
              help="TensorRT-RTX: build engines ahead of time for this compute capability (no GPU needed)")
@click.option("--batch", "batches", default="1,8", show_default=True, help="batch sizes timed, comma-separated")
@click.option("--reps", type=click.IntRange(min=1), default=10, show_default=True, help="timed repetitions per variant and batch")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True,
              help="images per batch when learning the vocabulary and running the checks; also the largest batch "
              "of the TensorRT engines' profiles")
@click.option("--max-images", type=click.IntRange(min=1), default=None, help="use at most N images of each folder")
@click.option("--sweep", multiple=True, metavar="KEY=V1,V2", help=_sweep_help())
@click.option("--target", default=None, metavar="METRIC=VALUE",
              help="find the fastest setting keeping this quality: cosine=0.98 (outputs' cosine to FP32) or top1=0.9 "
              "(top-1 agreement, models with a head); searches every method's settings with INT8 on and off on the "
              "--calib images, writes the chosen one as this run's model, reports it on the held-out --val images")
@click.option("--seed", type=int, default=0, show_default=True, help="k-means seed")
@click.option("--device", default="cpu", show_default=True, help="torch device for the torch path (cpu, cuda)")
@click.option("--demo", is_flag=True, help="offline demo: random weights and built-in synthetic images")
@click.option("--quiet", is_flag=True, help="no progress bars")
@click.option("--debug", is_flag=True, help="show tracebacks")
@click.version_option(package_name="vwt-export")
@click.pass_obj
def command(argv: list[str], model: str, demo: bool, quiet: bool, debug: bool, model_args: tuple[str, ...], weights: str | None,
            calib: Path | None, **options: Any) -> None:
    """Compress the timm ViT MODEL (an alias such as deit_s, or a timm name) with the Visual Word Tokenizer.

    \b
    Examples:
      vwt-export deit_s --mode inter --calib images/ --val val/
      vwt-export deit_s --mode intra --keep 0.5 --val val/
      vwt-export deit_s --demo --triton && vwt-export serve vwt-out/deit_s-inter/triton
    """
    from .pipeline import export

    _log_to_stderr(debug)
    try:
        if demo:
            from .demo import write_demo_images
            from .outdir import OutputRun

            weights = weights or "random"
            if calib is None and options["val"] is None:  # with a --vocab, the scenes are for the checks only
                out = options["out"] or Path("vwt-out") / f"{model}-{options['mode']}"
                with OutputRun(out, [out / "demo-images"]):  # --out checked and locked before the scenes go in
                    scenes = write_demo_images(out / "demo-images")
                click.echo(f"demo: {len(list(scenes.glob('*.png')))} synthetic images in {scenes}", err=True)
                if methods.get(options["mode"]).needs_vocabulary and options["vocab"]:
                    options["val"] = scenes
                else:
                    calib = scenes
        result = export(model, weights=weights or "pretrained", calib=calib, model_args=_parse_model_args(model_args),
                        progress=not quiet, command=shlex.join(["vwt-export", *argv]), **options)
    except VWTError as e:
        if debug:
            raise
        click.echo(f"error: {e}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except Exception as e:  # a bug, not bad input: say so plainly
        if debug:
            raise
        click.echo(f"error: unexpected {type(e).__name__}: {e} (rerun with --debug for the traceback)", err=True)
        sys.exit(1)
    _print_result(result)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: usage errors, like input errors, are one line and exit 2."""
    argv = sys.argv[1:] if argv is None else list(argv)
    entry, prog, args = command, "vwt-export", argv
    if argv[:1] == ["serve"]:  # `vwt-export serve OUT/triton`: a model can never be called "serve"
        from .serving import serve as entry

        prog, args = "vwt-export serve", argv[1:]
    try:
        code = entry.main(args=args, prog_name=prog, standalone_mode=False, obj=argv)
    except click.ClickException as e:
        click.echo(f"error: {e.format_message()} (see vwt-export --help)", err=True)
        sys.exit(e.exit_code)
    except click.Abort:
        click.echo("interrupted", err=True)
        sys.exit(130)
    sys.exit(code or 0)
