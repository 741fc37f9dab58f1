"""Training options: one dataclass with documented defaults, validated against a JSON schema."""

import dataclasses
import math
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path

import jsonschema
import yaml

from .errors import ScqueryError

SCHEMA = yaml.safe_load(files("scquery").joinpath("schemas/train.schema.yaml").read_text())


@dataclass(frozen=True)
class TrainConfig:
    """Every option of `scquery.train.train`; the schema `schemas/train.schema.yaml` describes each."""

    # preprocessing (scanpy)
    min_genes: int = 200
    min_cells: int = 3
    max_pct_mito: float | None = None
    target_sum: float = 1e4
    n_top_genes: int = 2000
    marker_genes: int = 20
    genes: list[str] | None = None
    scale: bool = False
    # network: hidden widths, the last is the embedding (scQuery: 1136, 100 on ~20k genes)
    hidden_sizes: list[int] = field(default_factory=lambda: [500, 100])
    activation: str = "tanh"
    # greedy denoising pretraining
    pretrain: bool = True
    noise: str = "mask"
    noise_level: float = 0.2
    pretrain_epochs: int = 10
    finetune_autoencoder: bool = False
    # classifier fine-tuning
    epochs: int = 50
    batch_size: int = 256
    learning_rate: float = 1e-3
    validation_fraction: float = 0.1
    patience: int = 5
    min_cells_per_class: int = 2
    class_weight: bool = True
    # reference points from the unlabelled reference cells (scquery.propagate)
    propagate: bool = True
    propagate_min_probability: float = 0.5

    def to_dict(self):
        return dataclasses.asdict(self)


def load_train_config(source=None, **overrides) -> TrainConfig:
    """A `TrainConfig` from a YAML/JSON file, a dict or nothing (defaults), with `overrides` on top."""
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
