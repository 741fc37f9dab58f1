"""Training options, declared once: `TrainConfig`, one field per option with its default, limits and
help text (`scquery.options.option`).

The schema of a configuration (`SCHEMA`, and its copy `schemas/train.schema.yaml`, which the
workflow's schema references), the flags of `scquery train` and the keywords of `scquery.train.train`
and `pretrain` are made from or checked against these fields (tests/test_options.py); the stages of
training take the `TrainConfig` itself and repeat no default.
"""

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

from .errors import ScqueryError
from .options import option, schema


@dataclass(frozen=True)
class TrainConfig:
    """Every option of `scquery.train.train`: the keys of a configuration (`load_train_config`), and
    `seed`, which is `train`'s keyword (the workflow's top-level `seed`), not a key."""

    # preprocessing (scanpy)
    min_genes: int = option(200, "QC: drop cells with fewer detected genes", low=0, integer=True)
    min_cells: int = option(3, "QC: drop genes detected in fewer cells", low=0, integer=True)
    max_pct_mito: float | None = option(
        None,
        "QC: drop cells with a larger percentage of mitochondrial counts (MT-/mt- genes); null keeps all",
        low=0,
        high=100,
    )
    target_sum: float = option(1e4, "The normalize_total target before log1p", low=0, low_open=True)
    n_top_genes: int = option(
        2000, "Number of highly variable genes (scanpy, flavor seurat)", low=1, integer=True
    )
    marker_genes: int = option(
        20,
        "Per cell type, this many of its defining genes (those it raises most against the other labelled "
        "cells, by Welch's t) join the highly variable genes, so that the model sees what tells close "
        "types apart (0: none; not used with `genes`)",
        low=0,
        integer=True,
    )
    genes: list[str] | None = option(None, "Use these genes instead of highly variable genes", metavar="GENE")
    scale: bool = option(
        False,
        "Scale each gene to zero mean and unit variance with the reference's statistics (as CellTypist's "
        "logistic regression does): it passed that peer on Zeisel's 7 classes and lost on the other three "
        "same-study tasks (benchmarks/RESULTS.md, 'Quality')",
    )
    # network: hidden widths, the last is the embedding (scQuery: 1136, 100 on ~20k genes; a third layer
    # gains most at few labels: benchmarks/RESULTS.md, "Where pretraining pays")
    hidden_sizes: list[int] = option(
        [500, 250, 100], "Hidden layer widths; the last is the embedding", low=1, integer=True, min_items=1
    )
    activation: str = option("tanh", "Keras activation of the hidden layers")
    # greedy denoising pretraining
    pretrain: bool = option(
        True, "Greedy layer-wise denoising pretraining before fine-tuning (false: random initialisation)"
    )
    noise: str = option(
        "mask",
        "Corruption of the pretraining input: masking noise or additive Gaussian noise",
        choices=("mask", "gaussian"),
    )
    noise_level: float = option(
        0.2, "Masked fraction (mask, < 1) or noise standard deviation (gaussian)", low=0
    )
    pretrain_epochs: int = option(10, "Epochs per pretrained layer", low=1, integer=True)
    unlabeled_min_overlap: float = option(
        0.5,
        "Least fraction of the model's genes unlabelled data must have (after the orthologue mapping of "
        "another species' data); the genes they lack are zero in the pretraining input",
        low=0,
        high=1,
    )
    finetune_autoencoder: bool = option(
        False, "After the greedy stage, train the whole stacked autoencoder end to end"
    )
    # classifier fine-tuning
    epochs: int = option(
        50, "Maximum classifier epochs (early stopping on validation loss)", low=1, integer=True
    )
    batch_size: int = option(256, "Mini-batch size of every stage", low=1, integer=True)
    learning_rate: float = option(1e-3, "Adam learning rate", low=0, low_open=True)
    validation_fraction: float = option(
        0.1,
        "Stratified validation split for early stopping; held out only where it gives at least 3 cells "
        "per type on average (with fewer labels every labelled cell trains for `epochs` epochs, in "
        "batches of at most a tenth of them)",
        low=0,
        high=1,
        high_open=True,
    )
    patience: int = option(
        5, "Early-stopping patience in epochs (best weights restored)", low=1, integer=True
    )
    min_cells_per_class: int = option(
        2,
        "Cell types with fewer cells are dropped, with a warning naming them (2 keeps every type a "
        "stratified validation split can hold)",
        low=2,
        integer=True,
    )
    class_weight: bool = option(True, "Weight classes inversely to their size")
    dropout: float = option(
        0.0,
        "Dropout rate of the input genes while fine-tuning the classifier (none when predicting): the "
        "classifier learns not to rest on a few genes, which another study may measure differently or "
        "lack; 0.7 raised the head across studies and lowered it on fine types within one "
        "(benchmarks/RESULTS.md, 'Steadiness over seeds')",
        low=0,
        high=1,
        high_open=True,
    )
    ensemble_dropout: float = option(
        0.0,
        "Fine-tune a second classifier beside the first, from the same pretrained encoder, dropping its "
        "input genes at this rate while training, and average the two classifiers' probabilities (0: one "
        "classifier); the embedding stays the first's. 0.7 kept most of input dropout's gain across "
        "studies without its loss on fine types within one, at the cost of a second fine-tuning "
        "(benchmarks/RESULTS.md, 'Steadiness over seeds', 'Quality')",
        low=0,
        high=1,
        high_open=True,
    )
    average_epochs: float = option(
        0,
        "Epochs an exponential moving average of the classifier's weights spans while fine-tuning "
        "(Polyak averaging, Keras's `use_ema`: momentum 1 - 1/(epochs × batches per epoch); 0: off); "
        "early stopping judges, and the model keeps, the averaged weights. 10 steadied the head over "
        "seeds on the validation pairs but not the tuning pairs, which chose the default "
        "(benchmarks/RESULTS.md, 'Steadiness over seeds')",
        low=0,
    )
    rebuild_missing: bool = option(
        False,
        "Keep the first pretraining stage's autoencoder in the bundle and rebuild with it the genes a "
        "query lacks from those it holds, instead of reading them at their mean over the reference's "
        "types (`scquery.imputation`; needs `pretrain`): on the simulated mouse queries it raised the "
        "agreement with the human answers, on the real mouse queries it lost on two of three pairs "
        "(benchmarks/RESULTS.md, 'Another species')",
    )
    # reference points from the unlabelled reference cells (scquery.propagate)
    propagate: bool = option(
        True,
        "Label the unlabelled reference cells the classifier is confident about and add them to the "
        "reference points, marked 'propagated' in the bundle reference's obs['label_source'] (a fully "
        "labelled reference has none)",
    )
    propagate_min_probability: float = option(
        0.5, "The least classifier probability of a propagated label", low=0, high=1
    )
    # where training runs (docs/SCALING.md, "On a GPU")
    devices: int = option(
        1,
        "Devices to spread training over, each batch split evenly over them (Keras's DataParallel, on "
        "the JAX backend); 0: every device, of every process of a SLURM step",
        low=0,
        integer=True,
    )
    mixed_precision: bool = option(
        False,
        "Train in mixed precision (Keras's mixed_bfloat16: the layers compute in bfloat16, the weights "
        "stay float32; the model saved is float32)",
    )
    # `train`'s keyword, not a key of a configuration
    seed: int = option(
        0,
        "seed of every random choice of training (weights, noise, batch order, validation split): the "
        "same seed gives the same model on the same machine",
        low=0,
        integer=True,
        workflow=False,
    )

    def to_dict(self):
        """The configuration's keys and values (what a bundle records; `seed` is recorded beside)."""
        return {key: value for key, value in dataclasses.asdict(self).items() if key in SCHEMA["properties"]}


#: The JSON schema of a configuration, made from `TrainConfig`'s fields.
SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "description": (
        "Options of scquery training (scquery train --config, and the workflow's `train` section)."
    ),
    "type": "object",
    "additionalProperties": False,
    "properties": schema(TrainConfig),
}


def load_train_config(source=None, **overrides) -> TrainConfig:
    """A `TrainConfig` from a YAML/JSON file, a dict or nothing (defaults), with `overrides` on top."""
    import jsonschema  # loaded here: the command line builds its flags from TrainConfig at start
    import yaml

    if source is None:
        options = {}
    elif isinstance(source, dict):
        options = dict(source)
    else:
        path = Path(source)
        if not path.is_file():
            raise ScqueryError(f"Configuration file {path} does not exist; give an existing YAML file.")
        try:
            options = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as error:
            raise ScqueryError(f"Configuration file {path} is not valid YAML ({error}).") from None
        if not isinstance(options, dict):
            raise ScqueryError(f"Configuration file {path} must hold a mapping of option: value.")
    options.update({key: value for key, value in overrides.items() if value is not None})
    try:
        jsonschema.validate(options, SCHEMA)
    except jsonschema.ValidationError as error:
        where = ".".join(str(part) for part in error.absolute_path) or "the configuration"
        raise ScqueryError(f"Training option {where}: {error.message}.") from None
    for key, value in options.items():  # JSON Schema lets NaN and infinity pass every bound
        if isinstance(value, float) and not math.isfinite(value):
            raise ScqueryError(f"Training option {key} must be a finite number, got {value}.")
    return TrainConfig(**options)
