"""Each option declared once (`InputOptions`, `QueryOptions`, `TrainConfig`) and every other place checked
against it: the public functions' keywords and defaults, the command line's flags, the schemas (the
workflow's, training's), config/README.md and config/config.yaml; and the Unknown signals' registry against
what a query writes. A new option or signal that misses one of these places fails here."""

import argparse
import dataclasses
import inspect
import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from scquery.cli import build_parser
from scquery.config import SCHEMA, TrainConfig
from scquery.datasets import pbmc68k_split
from scquery.embed import embed
from scquery.errors import ScqueryError
from scquery.extend import extend
from scquery.io import read, read_many
from scquery.options import InputOptions, check, default_of, schema
from scquery.query import query
from scquery.rules import REASONS, SIGNALS, QueryOptions, unknown_reasons
from scquery.train import pretrain, train

ROOT = Path(__file__).resolve().parents[1]
CONFIG_README = (ROOT / "config" / "README.md").read_text()


def fields(kind):
    return {item.name: item for item in dataclasses.fields(kind)}


def keywords(function):
    return {
        name: parameter.default
        for name, parameter in inspect.signature(function).parameters.items()
        if parameter.kind is inspect.Parameter.KEYWORD_ONLY
    }


def assert_same_defaults(function, kinds, others):
    """`function`'s keywords are the fields of `kinds` (with their defaults) plus `others`."""
    spelled = keywords(function)
    declared = {name: item.default for kind in kinds for name, item in fields(kind).items()}
    assert set(spelled) - set(others) == set(declared), function.__name__
    assert {name: spelled[name] for name in declared} == declared, function.__name__


def test_the_public_functions_spell_out_the_options_with_their_defaults():
    assert_same_defaults(query, [QueryOptions, InputOptions], {"key_added", "matches"})
    assert_same_defaults(embed, [InputOptions], {"key_added", "copy"})
    # extend takes the options of reading and matching genes, not those of another species
    spelled, declared = keywords(extend), fields(InputOptions)
    taken = set(spelled) & set(declared)
    assert taken == {"layer", "use_raw", "gene_key", "min_overlap"}
    assert {name: spelled[name] for name in taken} == {name: declared[name].default for name in taken}
    # reading and training take the values from where the query does, by default
    for function in (read, read_many, train, pretrain):
        spelled = keywords(function)
        assert {name: spelled[name] for name in READING} == {name: declared[name].default for name in READING}
    # training's keyword options that are not keys of a configuration (seed)
    own = {
        name: item.default
        for name, item in fields(TrainConfig).items()
        if not item.metadata.get("workflow", True)
    }
    for function in (train, pretrain):
        assert {name: keywords(function)[name] for name in own} == own, function.__name__
    # the built-in data's split takes the workflow's one seed too
    assert keywords(pbmc68k_split)["seed"] == own["seed"]


#: The input options of reading files and of training.
READING = ("layer", "use_raw")


def test_the_options_are_checked_against_their_limits():
    check(QueryOptions())
    check(InputOptions())
    for kind, name, wrong in [
        (QueryOptions, "k", 0),
        (QueryOptions, "min_confidence", 1.5),
        (QueryOptions, "novelty_threshold", 0.0),
        (InputOptions, "min_overlap", -0.1),
        (InputOptions, "batch_size", 2.5),
        (InputOptions, "species", "fish"),
    ]:
        with pytest.raises(ScqueryError, match=name):
            check(kind(**{name: wrong}))


def flags(command):
    """The flags of `scquery COMMAND` and their defaults, by destination."""
    subparsers = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    parser = subparsers.choices[command]
    return {action.dest: action for action in parser._actions if action.option_strings}


@pytest.mark.parametrize(
    ("command", "kinds", "names"),
    [
        ("query", [QueryOptions, InputOptions], None),
        ("embed", [InputOptions], None),
        ("extend", [InputOptions], {"layer", "use_raw", "gene_key", "min_overlap"}),
        ("train", [InputOptions], {"layer", "use_raw"}),
    ],
)
def test_the_command_line_has_a_flag_per_option_with_its_default_and_help(command, kinds, names):
    found = flags(command)
    for kind in kinds:
        for name, item in fields(kind).items():
            if not item.metadata.get("cli", True) or (names is not None and name not in names):
                # train's own --species and --batch-size (the reference's species, TrainConfig's size)
                assert name not in found or command == "train" and name in ("species", "batch_size")
                continue
            action = found[name]
            assert action.option_strings == ["--" + name.replace("_", "-")]
            assert action.default == item.default, (command, name)
            assert action.help.startswith(item.metadata["help"]), (command, name)


def test_the_train_command_has_a_flag_per_training_option_over_the_configuration_file():
    found = flags("train")
    for name, item in fields(TrainConfig).items():
        action = found[name]
        assert action.option_strings[0] == "--" + name.replace("_", "-")
        assert action.help.startswith(item.metadata["help"]), name
        key = item.metadata.get("workflow", True)  # a key of --config: only a flag given replaces it
        assert action.default == (None if key else item.default), name
        if default_of(item) is not None:
            assert f"(default: {default_of(item)}" in action.help, name


def test_the_training_schema_is_made_from_the_options_and_its_file_is_the_same():
    path = ROOT / "src" / "scquery" / "schemas" / "train.schema.yaml"
    lines = "\n".join(
        f"  {name}: {json.dumps(entry, ensure_ascii=False)}" for name, entry in SCHEMA["properties"].items()
    )
    assert yaml.safe_load(path.read_text()) == SCHEMA, f"{path.name}'s properties should be:\n{lines}"
    keys = {name for name, item in fields(TrainConfig).items() if item.metadata.get("workflow", True)}
    assert set(SCHEMA["properties"]) == keys
    assert set(TrainConfig().to_dict()) == set(SCHEMA["properties"])


def test_config_readme_gives_each_training_option_its_default():
    rows = dict(
        re.findall(
            r"^\| `(\w+)` \| `([^`]*)` \|", _section(CONFIG_README, "### `train` keys"), flags=re.MULTILINE
        )
    )
    assert set(rows) == set(SCHEMA["properties"]), (
        f"config/README.md: `train` rows for {set(rows) ^ set(SCHEMA['properties'])}"
    )
    for name in rows:
        assert yaml.safe_load(rows[name]) == default_of(fields(TrainConfig)[name]), (
            f"config/README.md: {name}'s default"
        )


def _section(text, heading):
    """The part of `text` from the line `heading` to the next heading."""
    start = text.index(heading + "\n") + len(heading)
    end = text.find("\n#", start)
    return text[start:] if end < 0 else text[start:end]


def test_the_workflow_schema_is_made_from_the_options():
    config = yaml.safe_load((ROOT / "workflow" / "schemas" / "config.schema.yaml").read_text())
    made = schema(QueryOptions, InputOptions)
    lines = "\n".join(
        f"      {name}: {json.dumps(entry, ensure_ascii=False)}" for name, entry in made.items()
    )
    assert config["properties"]["query"]["properties"] == made, f"query's properties should be:\n{lines}"


def test_config_readme_and_config_yaml_give_each_workflow_option_its_default():
    shipped = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())["query"]
    rows = dict(re.findall(r"^\| `query\.(\w+)` \| `([^`]*)` \|", CONFIG_README, flags=re.MULTILINE))
    workflow = set(schema(QueryOptions, InputOptions))
    assert set(rows) == workflow, f"config/README.md: rows `query.NAME` for {workflow ^ set(rows)}"
    assert set(shipped) <= workflow
    defaults = {
        name: item.default for kind in (QueryOptions, InputOptions) for name, item in fields(kind).items()
    }
    for name in workflow:
        assert yaml.safe_load(rows[name]) == defaults[name], f"config/README.md: query.{name}'s default"
    for name, value in shipped.items():
        assert value == defaults[name], name


# The Unknown signals' registry.


def test_each_signal_with_an_option_has_its_field_and_the_reasons_follow_the_registry():
    options = fields(QueryOptions)
    for signal in SIGNALS:
        if signal.option:
            assert options[signal.option].default == signal.default
        assert signal.reason in REASONS
    assert REASONS[0] == "" and len(set(REASONS)) == len(REASONS)
    # the order of the registry is the order of priority
    assert [REASONS.index(s.reason) for s in SIGNALS] == sorted(REASONS.index(s.reason) for s in SIGNALS)


def test_unknown_reasons_takes_one_score_per_signal():
    scores = [np.ones(2) for _ in SIGNALS]
    with pytest.raises(ValueError):
        unknown_reasons(*scores[:-1], min_confidence=0.5)


def test_a_query_writes_each_signals_score_and_records_its_options(bundle, split):
    adata = split[1][:40].copy()
    query(adata, bundle, k=5, min_confidence=0.25)
    for signal in SIGNALS:
        if signal.column:
            assert adata.obs[f"scquery_{signal.column}"].dtype == np.float32, signal.column
    # the cells past the cut-off of the Unknown score are the Unknown cells, at the default and below it
    score = adata.obs["scquery_unknown_score"]
    assert ((score > 0.5) == (adata.obs["scquery_unknown_reason"] != "")).all()
    stricter = split[1][:40].copy()
    query(stricter, bundle, k=5, min_confidence=0.25, max_unknown_score=float(score.median()))
    unknown = stricter.obs["scquery_unknown_reason"] != ""
    assert ((score > score.median()) == unknown).all() and unknown.any() and not unknown.all()
    params = adata.uns["scquery"]["query_params"]
    assert {name: params[name] for name in fields(QueryOptions)} == {
        **dataclasses.asdict(QueryOptions()),
        "k": 5,
        "min_confidence": 0.25,
    }
    assert set(adata.uns["scquery"]["params"]) == {"key_added", "use_raw", "min_overlap"}  # None left out
