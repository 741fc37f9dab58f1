"""The data's way through scquery's modules in one training run and one query (issue 22's target: it goes
back to a module it has left at most once).

    python -m benchmarks.data_path

A profiler records each scquery module entered by a call from another scquery module, in order
(consecutive repeats folded), on the built-in data with a tiny model; it prints the way and how many
times it enters a module it had left before, counted over every module and over the modules that
touch the data (leaving out errors, logs, options, config, labels and provenance, which check, declare
and record).
"""

import sys
import warnings

warnings.simplefilter("ignore")
from scquery.datasets import pbmc68k_split  # noqa: E402
from scquery.query import query  # noqa: E402
from scquery.train import train  # noqa: E402


def trace(run):
    way = []

    def profile(frame, event, arg):
        if event != "call":
            return
        module = frame.f_globals.get("__name__", "")
        caller = frame.f_back.f_globals.get("__name__", "") if frame.f_back else ""
        if module.startswith("scquery.") and module != caller and caller.startswith(("scquery.", "__main__")):
            name = module.split(".")[1]
            if not way or way[-1] != name:
                way.append(name)

    sys.setprofile(profile)
    try:
        result = run()
    finally:
        sys.setprofile(None)
    return result, way


#: Modules that check, declare and record (where the data came from: provenance), not touch the data.
DECLARING = {"errors", "logs", "options", "config", "labels", "provenance"}


def returns(way):
    """How many times `way` enters a module it had left before."""
    return sum(1 for i, name in enumerate(way) if name in way[:i])


def show(kind, way):
    data = [name for name in way if name not in DECLARING]
    data = [name for i, name in enumerate(data) if i == 0 or data[i - 1] != name]
    print(f"{kind}: {' > '.join(way)}")
    print(f"  returns to a module left before: {returns(way)}; over those touching the data: {returns(data)}")


if __name__ == "__main__":
    reference, held_out = pbmc68k_split(seed=0)
    config = {"min_genes": 0, "hidden_sizes": [16, 4], "pretrain_epochs": 1, "epochs": 1}
    bundle, way = trace(lambda: train(reference, label_key="bulk_labels", config=config, seed=0, verbose=0))
    show("train", way)
    show("query", trace(lambda: query(held_out[:100].copy(), bundle, k=5))[1])
