"""The `scquery` command: a thin face over the package's functions."""

import argparse
import logging
import sys
import warnings

from . import __version__
from .errors import ScqueryError

log = logging.getLogger("scquery")

#: Options every subcommand takes (pass `parents=[COMMON]` to `add_parser`).
COMMON = argparse.ArgumentParser(add_help=False)
COMMON.add_argument("-q", "--quiet", action="store_true", help="print errors only")


def _add_input_options(parser):
    parser.add_argument("--layer", help="take the values from this layer (e.g. counts)")
    parser.add_argument("--use-raw", action="store_true", help="take the values from .raw")
    parser.add_argument(
        "--genes-by-cells", action="store_true", help="csv/tsv files hold genes as rows"
    )


def _read(args, paths):
    from .io import read_many

    return read_many(
        paths, layer=args.layer, use_raw=args.use_raw, genes_by_cells=args.genes_by_cells
    )


def _verbosity(args):
    """Keras progress bars on a terminal, one line per epoch in logs, nothing with --quiet."""
    if args.quiet:
        return 0
    return 1 if sys.stderr.isatty() else 2


def _add_train(subparsers):
    parser = subparsers.add_parser(
        "train",
        parents=[COMMON],
        help="train a model bundle on annotated reference data",
        description="Preprocess the reference, pretrain the denoising autoencoders greedily, "
        "fine-tune the cell-type classifier and write the model bundle.",
    )
    parser.add_argument("reference", nargs="+", help="reference file(s) or 10x folder(s)")
    parser.add_argument("--label-key", required=True, help="obs column holding the cell types")
    parser.add_argument("--out", required=True, help="model bundle folder to write")
    parser.add_argument("--config", help="YAML file of training options (see `scquery options`)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    _add_input_options(parser)
    parser.set_defaults(run=_train)


def _train(args):
    from .bundle import save_bundle
    from .config import load_train_config
    from .train import train

    config = load_train_config(args.config)
    reference = _read(args, args.reference)
    bundle = train(
        reference, label_key=args.label_key, config=config, seed=args.seed,
        verbose=_verbosity(args),
    )
    save_bundle(bundle, args.out)
    accuracy = bundle.history["classifier"].get("val_accuracy", [float("nan")])
    log.info(
        "Wrote %s: %d cells, %d genes, %d cell types, validation accuracy %.3f.",
        args.out, bundle.reference.n_obs, len(bundle.genes), len(bundle.classes), max(accuracy),
    )


def build_parser():
    parser = argparse.ArgumentParser(
        prog="scquery",
        description="Cell embeddings from denoising autoencoders, and cell-type queries.",
    )
    parser.add_argument("--version", action="version", version=f"scquery {__version__}")
    subparsers = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")
    _add_train(subparsers)
    return parser


def main(argv=None):
    """Run the command line; user errors print one sentence and exit with status 2."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO, format="scquery: %(message)s"
    )
    warnings.showwarning = _show_warning
    try:
        args.run(args)
    except ScqueryError as error:
        print(f"scquery: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("scquery: interrupted", file=sys.stderr)
        return 130
    return 0


def _show_warning(message, category, filename, lineno, file=None, line=None):
    print(f"scquery: warning: {message}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
