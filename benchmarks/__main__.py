"""`python -m benchmarks [--quick] [--only quality|speed] [--out DIR]`."""

import argparse
import shlex
import sys
import warnings
from pathlib import Path

from .report import write_report


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small settings (a smoke run)")
    parser.add_argument("--only", choices=["quality", "speed"], help="run one part only")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parent,
        help="folder for RESULTS.md and results.json (default: benchmarks/)",
    )
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    warnings.filterwarnings("ignore")
    quality = speed = None
    if args.only in (None, "quality"):
        from .quality import run_quality

        quality = run_quality(quick=args.quick, log=_log)
    if args.only in (None, "speed"):
        from .speed import run_speed

        speed = run_speed(quick=args.quick, log=_log)
    command = "python -m benchmarks " + shlex.join(argv if argv is not None else sys.argv[1:])
    path = write_report(args.out, command=command.strip(), quality=quality, speed=speed)
    _log(f"wrote {path} and {path.with_name('results.json')}")


def _log(message):
    print(message, flush=True)


if __name__ == "__main__":
    main()
