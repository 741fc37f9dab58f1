"""`python -m benchmarks [--quick] [--only PART[,PART...]] [--out DIR] [--train-options JSON]`.

Each part (see `PARTS`) runs on its own and stores its figures, with the command, date and machine
that produced them, under its name in `results.json`; a run of some parts keeps the others' figures.
`RESULTS.md` is then written anew from every part in `results.json`.
"""

import argparse
import json
import shlex
import sys
import warnings
from pathlib import Path

from .report import current_commit, write_report


def _quality(quick, log):
    from .quality import run_quality

    rows, summary = run_quality(quick=quick, log=log)
    return {"rows": rows, "summary": summary.to_dict("records")}


def _precision(quick, log):
    from .precision import run_precision

    return run_precision(quick=quick, log=log)


def _speed(quick, log):
    from .speed import run_speed

    return run_speed(quick=quick, log=log)


def _crossstudy(quick, log):
    from .crossstudy import run_crossstudy

    return run_crossstudy(quick=quick, log=log)


def _unknown(quick, log):
    from .unknown import run_unknown
    from .unknown_pairs import run_unknown_pairs

    result = run_unknown(quick=quick, log=log)
    result["pairs"] = run_unknown_pairs(quick=quick, log=log)["rows"]
    return result


def _seeds(quick, log):
    from .seeds import run_seeds

    return run_seeds(quick=quick, log=log)


def _labels(quick, log):
    from .labels import run_labels, settings

    rows, summary, skipped, lowered = run_labels(quick=quick, log=log)
    records = summary.to_dict("records")
    return {**settings(quick), "rows": rows, "summary": records, "skipped": skipped, "lowered": lowered}


def _pretraining(quick, log):
    from .pretraining import run_pretraining

    return run_pretraining(quick=quick, log=log)


def _species(quick, log):
    from .species import run_species

    return run_species(quick=quick, log=log)


def _scale(quick, log):
    from .scale import run_scale

    return run_scale(quick=quick, log=log)


def _throughput(quick, log):
    from .speed import run_throughput

    return run_throughput(quick=quick, log=log)


def _atlas(quick, log):
    from .atlas import run_atlas

    return run_atlas(quick=quick, log=log)


def _gpu(quick, log):
    from .gpu import run_gpu

    return run_gpu(quick=quick, log=log)


#: Every part of the benchmark, in the order of RESULTS.md: name → function(quick, log) → figures.
PARTS = {
    "quality": _quality,
    "precision": _precision,
    "crossstudy": _crossstudy,
    "unknown": _unknown,
    "seeds": _seeds,
    "labels": _labels,
    "pretraining": _pretraining,
    "species": _species,
    "speed": _speed,
    "scale": _scale,
    "atlas": _atlas,
    "throughput": _throughput,
    "gpu": _gpu,
}


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small settings (a smoke run)")
    parser.add_argument(
        "--only",
        type=lambda text: text.split(","),
        default=list(PARTS),
        help=f"comma-separated parts to run (default: all of {', '.join(PARTS)})",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parent,
        help="folder for RESULTS.md and results.json (default: benchmarks/)",
    )
    parser.add_argument(
        "--train-options",
        type=json.loads,
        default={},
        help="training options on top of the benchmark's, as JSON (e.g. '{\"mixed_precision\": true}'), for "
        "the parts that train through benchmarks/methods.py (quality, crossstudy, labels, species); "
        "give another --out to keep the stored figures",
    )
    args = parser.parse_args(argv)
    unknown = sorted(set(args.only) - set(PARTS))
    if unknown:
        parser.error(f"unknown part(s) {', '.join(unknown)}; choose among {', '.join(PARTS)}")
    if args.train_options:
        from .methods import OVERRIDES

        OVERRIDES.update(args.train_options)
    args.out.mkdir(parents=True, exist_ok=True)
    warnings.filterwarnings("ignore")
    command = "python -m benchmarks " + shlex.join(argv if argv is not None else sys.argv[1:])
    commit = current_commit()  # the code as the run starts
    results = {name: PARTS[name](args.quick, _log) for name in PARTS if name in args.only}
    path = write_report(args.out, command=command.strip(), results=results, order=list(PARTS), commit=commit)
    _log(f"wrote {path} and {path.with_name('results.json')}")


def _log(message):
    print(message, flush=True)


if __name__ == "__main__":
    main()
