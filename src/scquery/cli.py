"""The `scquery` command: a thin face over the package's functions.

It answers `--help`, `--version`, wrong arguments and missing inputs before importing anything
heavy: each command imports the package's modules (and with them Keras) only once its inputs and
outputs have been checked.
"""

import argparse
import dataclasses
import json
import logging
import os
import sys
import warnings
from pathlib import Path

from . import __version__
from .config import TrainConfig
from .errors import ScqueryError
from .logs import log_to_stderr
from .options import InputOptions, default_of, item_type
from .rules import SIGNALS, QueryOptions

log = logging.getLogger("scquery")


def _verbosity_options(parser, *, defaults=True):
    """-q and -v; without `defaults`, the options set nothing unless given."""
    quiet, verbose = (False, 0) if defaults else (argparse.SUPPRESS, argparse.SUPPRESS)
    parser.add_argument(
        "-q", "--quiet", action="store_true", default=quiet, help="print warnings and errors only"
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=verbose,
        help="print each epoch and details (-vv: the backend's too)",
    )


#: Options every subcommand takes (pass `parents=[COMMON]` to `add_parser`); given before the
#: command (`scquery -q train …`) they mean the same.
COMMON = argparse.ArgumentParser(add_help=False)
_verbosity_options(COMMON, defaults=False)  # where given, they take the place of those before it


def _add_options(parser, kind, names=None, *, over_config=False):
    """The flags of the options `kind` (`scquery.options.InputOptions`, `scquery.rules.QueryOptions`,
    `scquery.config.TrainConfig`) the command line takes (those of `names`; None: all), from their
    fields: name, type, default, help. With `over_config`, the keys of a configuration file default
    to None, so that only those given replace its values (a boolean has `--no-` too)."""
    groups = {}
    for item in dataclasses.fields(kind):
        meta = item.metadata
        if not meta.get("cli", True) or (names is not None and item.name not in names):
            continue
        place = parser
        if meta.get("exclusive"):
            if meta["exclusive"] not in groups:
                groups[meta["exclusive"]] = parser.add_mutually_exclusive_group()
            place = groups[meta["exclusive"]]
        flag, help, default = "--" + item.name.replace("_", "-"), meta["help"], default_of(item)
        given_only = over_config and meta.get("workflow", True)
        if isinstance(default, bool) and not given_only:
            place.add_argument(flag, action="store_true", help=help)
            continue
        if default is not None:
            help += f" (default: {default}{', or --config' if given_only else ''})"
        if isinstance(default, bool):
            place.add_argument(flag, action=argparse.BooleanOptionalAction, help=help)
            continue
        single, many = item_type(item)
        place.add_argument(
            flag,
            type=single,
            nargs="+" if many else None,
            default=None if given_only else default,
            choices=meta["choices"],
            metavar=meta.get("metavar"),
            help=help,
        )


def _options(args, kind, names=None):
    """The options of `kind` (of `names`; None: all) among the parsed `args`, by name."""
    return {name: getattr(args, name) for name in names or _fields(kind) if hasattr(args, name)}


def _add_input_options(parser):
    _add_options(parser, InputOptions, names=("layer", "use_raw"))
    parser.add_argument("--genes-by-cells", action="store_true", help="csv/tsv files hold genes as rows")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace outputs that exist (a model bundle is swapped whole, the old one removed last)",
    )


def _read(args, paths):
    from .io import read_many

    return read_many(paths, layer=args.layer, use_raw=args.use_raw, genes_by_cells=args.genes_by_cells)


def _check_outputs(args, outputs, inputs, *, folders=()):
    """Refuse, before any work or heavy import, inputs that do not exist and outputs that are
    inputs, repeat, or may not be written (see `scquery.outputs.check_outputs`)."""
    from .outputs import check_outputs

    for path in inputs:
        if not os.path.exists(path):
            raise ScqueryError(f"The input {path} does not exist; check the path.")
    check_outputs(outputs, inputs, folders=folders, overwrite=args.overwrite)


def _verbosity(args):
    """Training progress: a bar on a terminal, one line per epoch in logs and with -v, none with -q."""
    if args.quiet:
        return 0
    return 1 if sys.stderr.isatty() and not args.verbose else 2


def _add_train(subparsers):
    parser = subparsers.add_parser(
        "train",
        parents=[COMMON],
        help="train a model bundle on annotated reference data",
        description="Preprocess the reference, pretrain the denoising autoencoders greedily on all "
        "its cells and the unlabelled ones, fine-tune the cell-type classifier on the labelled cells "
        "and write the model bundle.",
    )
    parser.add_argument("reference", nargs="+", help="reference file(s) or 10x folder(s)")
    parser.add_argument(
        "--label-key",
        required=True,
        help="obs column holding the cell types; cells without one (empty) serve pretraining, and "
        "those the classifier then labels confidently become reference points marked 'propagated'",
    )
    parser.add_argument(
        "--unlabeled",
        nargs="+",
        default=[],
        metavar="FILE",
        help="more files or 10x folders for pretraining only, each processed like a query "
        "(aligned to the reference's genes); the input options below apply to them too",
    )
    parser.add_argument("--out", required=True, help="model bundle folder to write")
    parser.add_argument(
        "--config",
        help="YAML file of training options (keys: the options below, with _ for -; "
        "scquery/schemas/train.schema.yaml); the options given here replace its values",
    )
    _add_options(parser, TrainConfig, over_config=True)
    parser.add_argument(
        "--species",
        choices=["human", "mouse"],
        help="the reference's species, recorded for queries of the other one (default: told by the "
        "gene names: CD3E human, Cd3e mouse, ENSG/ENSMUSG)",
    )
    _add_input_options(parser)
    parser.set_defaults(run=_train)


def _read_reference(args):
    """The training reference: one h5ad file's `.X` stays on disk (read in blocks while training,
    `scquery.preprocessing.fit`), other inputs are read into memory."""
    if len(args.reference) == 1 and args.layer is None and not args.use_raw:
        from .io import read_backed

        reference = read_backed(args.reference[0])
        if reference is not None:
            return reference
    return _read(args, args.reference)


def _train(args):
    inputs = [*args.reference, *args.unlabeled, *filter(None, [args.config])]
    _check_outputs(args, {"--out": args.out}, inputs, folders={"--out"})
    from .config import load_train_config

    options = _options(args, TrainConfig)
    seed = options.pop("seed")
    config = load_train_config(args.config, **options)

    from .bundle import save_bundle
    from .placement import process_index
    from .train import train

    reference = _read_reference(args)
    unlabeled = [_read(args, [path]) for path in args.unlabeled]
    bundle = train(
        reference,
        label_key=args.label_key,
        config=config,
        unlabeled=unlabeled or None,
        seed=seed,
        species=args.species,
        verbose=_verbosity(args),
        **_options(args, InputOptions, _READING),
    )
    if process_index() != 0:  # one of several processes that trained together: the first one writes
        return
    save_bundle(bundle, args.out, overwrite=args.overwrite)
    accuracy = bundle.history["classifier"].get("val_accuracy", [float("nan")])
    log.info(
        "Wrote %s: %s cells, %s genes, %d cell types, validation accuracy %.1f%%.",
        args.out,
        f"{bundle.reference.n_obs:,}",
        f"{len(bundle.genes):,}",
        len(bundle.classes),
        100 * max(accuracy),
    )


def _add_query_options(parser, names=None):
    """The options of reading a query against a model (`InputOptions`), and --genes-by-cells, --overwrite."""
    _add_options(parser, InputOptions, names=[n for n in names or _fields(InputOptions) if n not in _READING])
    _add_input_options(parser)


#: Input options that reading the files takes too (`_add_input_options`).
_READING = ("layer", "use_raw")


def _fields(kind):
    return [item.name for item in dataclasses.fields(kind)]


def _add_embed(subparsers):
    parser = subparsers.add_parser(
        "embed",
        parents=[COMMON],
        help="embed cells with a model bundle (obsm['X_scquery'])",
        description="Process the cells like the model's reference and write their embedding "
        "to obsm['X_scquery']; every other field of the input is kept.",
    )
    parser.add_argument("model", help="model bundle folder (from `scquery train`)")
    parser.add_argument("input", nargs="+", help="file(s) or 10x folder(s) to embed")
    parser.add_argument("--out", required=True, help="h5ad file to write")
    _add_query_options(parser)
    parser.set_defaults(run=_embed)


def _embed(args):
    _check_outputs(args, {"--out": args.out}, [args.model, *args.input, *filter(None, [args.gene_map])])
    from .bundle import load_bundle
    from .embed import embed
    from .outputs import write_h5ad

    bundle = load_bundle(args.model)
    adata = _read(args, args.input)
    embed(adata, bundle, **_options(args, InputOptions))
    write_h5ad(adata, args.out)
    log.info("Wrote %s: %s cells embedded.", args.out, f"{adata.n_obs:,}")


def _add_query(subparsers):
    parser = subparsers.add_parser(
        "query",
        parents=[COMMON],
        help="predict cell types from the nearest reference cells",
        description="Embed the query cells, find their nearest reference cells, and predict each "
        "cell's type from their distance-weighted vote and the classifier. A cell is 'Unknown', and "
        f"obs['scquery_unknown_reason'] says why, {_unknown_rules()}.",
    )
    parser.add_argument("model", help="model bundle folder (from `scquery train`)")
    parser.add_argument("query", nargs="+", help="query file(s) or 10x folder(s)")
    parser.add_argument("--out", required=True, help="h5ad file to write (predictions in obs)")
    parser.add_argument("--matches", help="TSV file of each cell's k nearest reference cells")
    parser.add_argument("--summary", help="TSV file of predicted types per dataset (and group)")
    parser.add_argument("--groupby", help="obs column of clusters to summarize by")
    parser.add_argument(
        "--truth-key",
        metavar="COL",
        help="obs column of the query's known cell types: print accuracy, macro-F1 and the share "
        "Unknown, and keep them in uns['scquery']['scores'] of --out",
    )
    _add_options(parser, QueryOptions)
    _add_query_options(parser)
    parser.set_defaults(run=_query)


def _unknown_rules():
    """The Unknown signals in words (`scquery.rules.SIGNALS`): when, the reason, the flags."""
    rules = {}
    for signal in SIGNALS:
        whens, flags = rules.setdefault(signal.reason, ([], []))
        whens.append(signal.when)
        flags += [f"--{signal.option.replace('_', '-')}"] if signal.option else []
    return ", or ".join(
        f"when {' or '.join(whens)} ('{reason}'{''.join(', ' + flag for flag in flags)})"
        for reason, (whens, flags) in rules.items()
    )


def _query(args):
    outputs = {"--out": args.out, "--matches": args.matches, "--summary": args.summary}
    _check_outputs(args, outputs, [args.model, *args.query, *filter(None, [args.gene_map])])
    from .bundle import load_bundle
    from .evaluate import score, summarize
    from .outputs import write_h5ad, write_table
    from .query import query

    bundle = load_bundle(args.model)
    adata = _read(args, args.query)
    options = {**_options(args, QueryOptions), **_options(args, InputOptions)}
    matches = query(adata, bundle, matches=bool(args.matches or args.summary), **options)
    summary = summarize(adata, groupby=args.groupby, matches=matches) if args.summary else None
    scores = score(adata, args.truth_key)
    if args.truth_key is not None:
        from .provenance import add_to_run

        add_to_run(adata, "scquery", scores=dict(scores))
    write_h5ad(adata, args.out)
    if args.matches:
        write_table(matches, args.matches)
    if summary is not None:
        write_table(summary, args.summary)
    log.info("Wrote %s: %s.", args.out, scores)


def _add_extend(subparsers):
    parser = subparsers.add_parser(
        "extend",
        parents=[COMMON],
        help="add annotated cells to a model's reference (no retraining)",
        description="Embed new annotated cells with the model and append them to its reference, "
        "so queries can find them (also cell types the classifier does not know).",
    )
    parser.add_argument("model", help="model bundle folder (from `scquery train`)")
    parser.add_argument("reference", nargs="+", help="annotated file(s) or 10x folder(s) to add")
    parser.add_argument("--label-key", required=True, help="obs column holding the cell types")
    parser.add_argument("--out", help="bundle folder to write (default: MODEL itself, with --overwrite)")
    _add_query_options(parser, names=_EXTEND)
    parser.set_defaults(run=_extend)


#: The input options `extend` takes.
_EXTEND = ("layer", "use_raw", "gene_key", "min_overlap")


def _extend(args):
    out = args.out or args.model
    if args.out is None and not args.overwrite:
        raise ScqueryError(
            f"extend writes a new bundle: give --out NEW_FOLDER, or --overwrite to replace {args.model}."
        )
    replacing = os.path.abspath(out) == os.path.abspath(args.model)
    _check_outputs(
        args, {"--out": out}, [*args.reference, *([] if replacing else [args.model])], folders={"--out"}
    )
    from .bundle import load_bundle
    from .extend import extend

    bundle = load_bundle(args.model)
    adata = _read(args, args.reference)
    options = _options(args, InputOptions)
    extended = extend(bundle, adata, label_key=args.label_key, path=out, overwrite=args.overwrite, **options)
    log.info("Wrote %s: %s reference cells.", out, f"{extended.reference.n_obs:,}")


def _add_score(subparsers):
    parser = subparsers.add_parser(
        "score",
        parents=[COMMON],
        help="score an annotated file's predictions against its known cell types",
        description="Print one line of accuracy, macro-F1 and the share of cells predicted Unknown, "
        "for a file `scquery query` wrote (its predictions in obs['scquery_prediction']) that holds "
        "the cells' known types.",
    )
    parser.add_argument("annotated", help="h5ad file written by `scquery query`")
    parser.add_argument("--truth-key", required=True, metavar="COL", help="obs column of the known types")
    parser.add_argument(
        "--prediction",
        default="scquery_prediction",
        metavar="COL",
        help="obs column of the predictions (default: scquery_prediction)",
    )
    parser.add_argument("--json", metavar="FILE", help="also write the scores to this JSON file")
    parser.add_argument("--overwrite", action="store_true", help="replace the JSON file if it exists")
    parser.set_defaults(run=_score)


def _score(args):
    _check_outputs(args, {"--json": args.json}, [args.annotated])
    import anndata as ad

    from .evaluate import score
    from .outputs import write_atomically

    scores = score(ad.read_h5ad(args.annotated), args.truth_key, prediction=args.prediction)
    print(f"{args.annotated}: {scores}")
    if args.json:
        write_atomically(args.json, lambda path: Path(path).write_text(json.dumps(scores, indent=1) + "\n"))


def build_parser():
    parser = argparse.ArgumentParser(
        prog="scquery",
        description="Cell embeddings from denoising autoencoders, and cell-type queries.",
    )
    parser.add_argument("--version", action="version", version=f"scquery {__version__}")
    _verbosity_options(parser)
    subparsers = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")
    _add_train(subparsers)
    _add_embed(subparsers)
    _add_query(subparsers)
    _add_extend(subparsers)
    _add_score(subparsers)
    return parser


def main(argv=None):
    """Run the command line; user errors print one sentence and exit with status 2."""
    args = build_parser().parse_args(argv)
    stop_logging = log_to_stderr(-1 if args.quiet else args.verbose)
    warnings.showwarning = _show_warning
    # Repeated cell names are the user's, kept on purpose (each output row follows the input's order).
    warnings.filterwarnings("ignore", message="Observation names are not unique")
    try:
        args.run(args)
    except ScqueryError as error:
        # The package's messages name its Python options; here the user gave command-line options.
        print(f"scquery: error: {str(error).replace('overwrite=True', '--overwrite')}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("scquery: interrupted", file=sys.stderr)
        return 130
    finally:
        stop_logging()
    return 0


def _show_warning(message, category, filename, lineno, file=None, line=None):
    print(f"scquery: warning: {message}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
