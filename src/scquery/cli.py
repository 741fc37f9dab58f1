"""The `scquery` command: a thin face over the package's functions.

It answers `--help`, `--version` and wrong arguments before importing anything heavy, and each
command runs `_preflight` first: every check that needs only the arguments, the files' names and
headers (`scquery.preflight`) and the outputs' places (`scquery.outputs.check_outputs`). The
package's modules (and with them Keras) are imported only once these pass.
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
from .labels import check_label_map, read_label_map
from .logs import log_to_stderr, stage, stages
from .options import InputOptions, check, default_of, item_type
from .outputs import TABLES, check_outputs
from .preflight import (
    REFERENCE_FILE,
    Header,
    bundle_meta,
    check_column,
    check_data_path,
    check_k,
    check_values_place,
    h5ad_header,
)
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

    stage("reading", "reading %s", ", ".join(map(str, paths)))
    return read_many(paths, layer=args.layer, use_raw=args.use_raw, genes_by_cells=args.genes_by_cells)


#: What each output option writes: the suffixes its file may have (`scquery.outputs.check_outputs`).
_WRITES = {
    "--out": (".h5ad",),
    "--matches": TABLES,
    "--summary": TABLES,
    "--json": (".json",),
}


def _preflight(
    args, outputs, *, model=None, data=(), others=(), folders=(), options=(), columns=None, replacing=False
):
    """Refuse, before any work or heavy import, what the arguments and the files' headers show wrong:
    inputs that do not exist; a `model` that is not a bundle (a data file: swapped?) and `data` that
    are not data (a bundle: swapped?); `options` (`InputOptions`, `QueryOptions`) out of their
    limits, or taking the values from two places; a layer or `.raw` the data lack; obs `columns`
    (flag → the column, the files that need it, whether every one of them or one) missing;
    outputs that are inputs, repeat, have a suffix scquery does not write, lie in a missing folder
    or may not be written (`replacing`: the model is an output too). Returns the model's
    `bundle.json` (None without a model)."""
    inputs = [*filter(None, [model]), *data, *others]
    for path in inputs:
        if not os.path.exists(path):
            raise ScqueryError(f"The input {path} does not exist; check the path.")
    meta = None if model is None else bundle_meta(model)
    for path in data:
        check_data_path(path)
    for kind in options:  # the values given (a training flag not given leaves --config's value)
        given = {name: value for name, value in _options(args, kind).items() if value is not None}
        check(kind(**given), flags=True)
    layer, use_raw = getattr(args, "layer", None), getattr(args, "use_raw", False)
    for path in data:
        header = h5ad_header(path)
        known = {} if header is None else {"layers": header.layers, "has_raw": header.has_raw}
        check_values_place(path, layer=layer, use_raw=use_raw, **known)
    for flag, (key, paths, every) in (columns or {}).items():
        if key is not None:
            check_column(paths, key, what=f"{flag} column", every=every)
    check_outputs(
        outputs,
        inputs[1:] if replacing else inputs,
        folders=folders,
        overwrite=args.overwrite,
        suffixes={flag: _WRITES[flag] for flag in outputs if flag not in folders},
    )
    return meta


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
        "(aligned to the reference's genes; one of another species through the built-in "
        "orthologues); the input options below apply to them too",
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
    _preflight(
        args,
        {"--out": args.out},
        data=[*args.reference, *args.unlabeled],
        others=list(filter(None, [args.config])),
        folders={"--out"},
        options=[TrainConfig],
        # files without the column add unlabelled cells (pretraining only): one needs it
        columns={"--label-key": (args.label_key, args.reference, False)},
    )
    from .config import load_train_config

    options = _options(args, TrainConfig)
    seed = options.pop("seed")
    config = load_train_config(args.config, **options)

    from .bundle import save_bundle, trained
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
    log.info("Wrote %s: %s.", args.out, trained(bundle))


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
    _preflight(
        args,
        {"--out": args.out},
        model=args.model,
        data=args.input,
        others=list(filter(None, [args.gene_map])),
        options=[InputOptions],
    )
    from .bundle import load_bundle
    from .embed import embed, embedded
    from .outputs import write_h5ad

    bundle = load_bundle(args.model)
    adata = _read(args, args.input)
    embed(adata, bundle, **_options(args, InputOptions))
    stage("writing", "writing %s", args.out)
    write_h5ad(adata, args.out)
    log.info("Wrote %s: %s.", args.out, embedded(adata))


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
    tables = ", ".join(TABLES)
    parser.add_argument(
        "--matches",
        help=f"table of each cell's k nearest reference cells ({tables}: tab- or comma-separated)",
    )
    parser.add_argument("--summary", help=f"table of the predicted types per dataset (and group) ({tables})")
    parser.add_argument("--groupby", help="obs column of clusters to summarize by (with --summary)")
    parser.add_argument(
        "--truth-key",
        metavar="COL",
        help="obs column of the query's known cell types: print accuracy, macro-F1 and the share "
        "Unknown, and keep them in uns['scquery']['scores'] of --out (names are compared: see "
        "--label-map)",
    )
    _add_label_map(parser)
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


def _add_label_map(parser):
    parser.add_argument(
        "--label-map",
        metavar="FILE",
        help="CSV or TSV file (header line; two columns: the --truth-key names, then the model's type "
        "names they mean) renaming the known types before they are compared with the predictions",
    )


#: The stages of `scquery query`, each announced as it starts (`scquery.logs.stage`).
QUERY_STAGES = ("model", "reading", "embedding", "neighbours", "clusters", "writing")


def _query(args):
    outputs = {"--out": args.out, "--matches": args.matches, "--summary": args.summary}
    meta = _preflight(
        args,
        outputs,
        model=args.model,
        data=args.query,
        others=list(filter(None, [args.gene_map, args.label_map])),
        options=[QueryOptions, InputOptions],
        columns={
            "--truth-key": (args.truth_key, args.query, True),
            "--groupby": (args.groupby, args.query, True),
        },
    )
    if args.groupby is not None and args.summary is None:
        raise ScqueryError("--groupby shapes the --summary table only; give --summary FILE too.")
    reference = _reference_header(args.model)
    if reference.n_obs is not None:
        check_k(args.k, reference.n_obs, name="--k")
    label_map = _label_map(args, [*meta["classes"], *reference.categories.get("label", [])])
    with stages("query", QUERY_STAGES, verbose=_verbosity(args)):
        stage(
            "model",
            "loading the model %s (%s reference cells, %d cell types)",
            args.model,
            f"{reference.n_obs or 0:,}",
            len(meta["classes"]),
        )
        from .bundle import load_bundle
        from .evaluate import score, summarize
        from .outputs import write_h5ad, write_table
        from .query import query

        bundle = load_bundle(args.model)
        adata = _read(args, args.query)
        options = {**_options(args, QueryOptions), **_options(args, InputOptions)}
        matches = query(adata, bundle, matches=bool(args.matches or args.summary), **options)
        summary = summarize(adata, groupby=args.groupby, matches=matches) if args.summary else None
        scores = score(adata, args.truth_key, label_map=label_map)
        if args.truth_key is not None:
            from .provenance import add_to_run

            add_to_run(adata, "scquery", scores=dict(scores))
        stage("writing", "writing %s", ", ".join(filter(None, outputs.values())))
        write_h5ad(adata, args.out)
        if args.matches:
            write_table(matches, args.matches)
        if summary is not None:
            write_table(summary, args.summary)
    log.info("Wrote %s: %s.", args.out, scores)


def _reference_header(model):
    """The `Header` of the bundle's reference (its cells, and the names of their types); an empty
    one where the file cannot be read (loading the bundle then says what is wrong with it)."""
    try:
        return Header(Path(model) / REFERENCE_FILE, categories=["label"])
    except ScqueryError:
        return Header.empty()


def _label_map(args, types):
    """The label map of --label-map, read and checked against the model's `types` (None without one)."""
    if args.label_map is None:
        return None
    if args.truth_key is None:
        raise ScqueryError("--label-map renames the known types of --truth-key; give --truth-key COL too.")
    renames = read_label_map(args.label_map)
    check_label_map(renames, types, args.label_map)
    return args.label_map


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
    _preflight(
        args,
        {"--out": out},
        model=args.model,
        data=args.reference,
        folders={"--out"},
        options=[InputOptions],
        columns={"--label-key": (args.label_key, args.reference, True)},
        replacing=os.path.abspath(out) == os.path.abspath(args.model),
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
    _add_label_map(parser)
    parser.add_argument("--json", metavar="FILE", help="also write the scores to this JSON file")
    parser.add_argument("--overwrite", action="store_true", help="replace the JSON file if it exists")
    parser.set_defaults(run=_score)


def _score(args):
    _preflight(
        args,
        {"--json": args.json},
        data=[args.annotated],
        others=list(filter(None, [args.label_map])),
        columns={"--truth-key": (args.truth_key, [args.annotated], True)},
    )
    header = Header(args.annotated, categories=[args.prediction])
    if args.prediction not in header.columns:
        raise ScqueryError(
            f"{args.annotated} has no obs column {args.prediction!r} of predictions; give a file "
            "`scquery query` wrote, or name the column with --prediction."
        )
    label_map = _label_map(args, header.categories.get(args.prediction))

    from .evaluate import score
    from .io import read_h5ad
    from .outputs import write_atomically

    scores = score(read_h5ad(args.annotated), args.truth_key, prediction=args.prediction, label_map=label_map)
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
