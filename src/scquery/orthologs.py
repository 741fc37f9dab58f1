"""Gene maps between species: the user's own (`gene_map=`) or the built-in human ↔ mouse orthologues.

A query from another species than the reference is brought onto the reference's genes before the
genes are aligned (`scquery.preprocessing.align.apply_record`): each query gene's values go to the
reference genes it maps to, on the linear scale of the normalized values (sparse: one product with a
sparse genes × genes matrix), then log1p again. How entries that are not one-to-one are handled:

- a query gene mapped to several reference genes (1:N) fills each of them (as one gene matching
  several reference genes does in `align_genes`);
- several query genes mapped to one reference gene (N:1) are averaged (`collapse='mean'`, the default,
  as CellTypist's `Model.convert(collapse='average')` averages its weights), summed (`'sum'`) or all
  left out (`'drop'`: only 1:1 entries are used, CellTypist's default `unique_only=True`). Chosen on the
  simulation of benchmarks/RESULTS.md ("Another species"): a Baron pancreas query whose human genes were
  split among their mouse paralogues and mapped back agreed with the human query's predictions on 99.3 %
  of cells averaged, 99.1 % summed (0.2–0.6 points behind the mean in both runs) and 91.0 % dropped.

The built-in table (`data/human_mouse_orthologs.tsv.gz`, see `data/README.md`) holds CellTypist's
Ensembl 105 human–mouse orthologues by gene symbol, with the human genes' Ensembl IDs (GENCODE v44);
mouse Ensembl IDs are not in it.
"""

import dataclasses
import re
from functools import cache
from importlib.resources import files
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .errors import ScqueryError

__all__ = [
    "GeneMap",
    "builtin_map",
    "detect_species",
    "map_genes",
    "gene_lookup",
    "match_keys",
    "read_gene_map",
]

#: Species of the built-in table.
SPECIES = ("human", "mouse")
#: Ways of handling several query genes mapped to one reference gene (see the module docstring).
COLLAPSE = ("sum", "mean", "drop")
COLUMNS = ("query_gene", "reference_gene")
_ENSEMBL_VERSION = re.compile(r"^(ENS[A-Z]*[GT]\d+)\.\d+$", re.IGNORECASE)
_HUMAN_ORF = re.compile(r"^C\d+orf\d+")
_EXAMPLES = {"human": "CD3E", "mouse": "Cd3e"}


def match_keys(names):
    """Names with Ensembl version suffixes removed (`ENSG00000123.12` → `ENSG00000123`)."""
    return [_ENSEMBL_VERSION.sub(r"\1", str(name)) for name in names]


def _name_species(name):
    """'human', 'mouse' or None for one gene name (see `detect_species`)."""
    upper = name.upper()
    if upper.startswith("ENSMUSG"):
        return "mouse"
    if upper.startswith("ENSG"):
        return "human"
    if not any(c.isalpha() for c in name):
        return None
    if not any(c.islower() for c in name) or _HUMAN_ORF.match(name):
        return "human"
    if name.startswith("mt-") or (name[0].isupper() and name[1:] != name[1:].upper()):
        return "mouse"
    return None


def detect_species(names, *, min_share=0.8):
    """'human' or 'mouse' from gene names, or None when they do not tell.

    Human symbols are upper case (CD3E, C1orf112), mouse symbols capitalised (Cd3e, mt-Nd1); Ensembl
    IDs tell by prefix (ENSG, ENSMUSG). A species is named when at least `min_share` of the names that
    look like one of them, and at least half of all names, look like it.
    """
    names = [str(name) for name in names]
    found = pd.Series([_name_species(name) for name in names], dtype=object).value_counts()
    if found.empty:
        return None
    species, count = found.index[0], int(found.iloc[0])
    if count >= min_share * found.sum() and count >= 0.5 * len(names):
        return species
    return None


@dataclasses.dataclass(frozen=True)
class GeneMap:
    """Pairs of query and reference gene names (`pairs`: columns `query_gene`, `reference_gene`),
    where they came from (`name`) and how several query genes of one reference gene are combined
    (`collapse`: one of `COLLAPSE`). `species` is the query's species for the built-in map."""

    pairs: pd.DataFrame
    name: str
    collapse: str = "mean"
    species: str | None = None

    def __post_init__(self):
        if self.collapse not in COLLAPSE:
            raise ScqueryError(
                f"collapse={self.collapse!r} is not a way of combining genes; choose one of {COLLAPSE}."
            )


@cache
def _table():
    """The built-in human–mouse table (columns human_gene, mouse_gene, human_gene_id)."""
    with files("scquery").joinpath("data/human_mouse_orthologs.tsv.gz").open("rb") as handle:
        return pd.read_csv(handle, sep="\t", compression="gzip", dtype=str, keep_default_na=False)


def builtin_map(query_species, reference_species) -> GeneMap:
    """The built-in orthologue map from `query_species` to `reference_species` ('human', 'mouse'):
    symbols, and the human genes' Ensembl IDs on the human side."""
    for what, value in (("species", query_species), ("reference species", reference_species)):
        if value not in SPECIES:
            raise ScqueryError(
                f"The {what} {value!r} has no built-in orthologues; choose one of {', '.join(SPECIES)} "
                "or give a gene map (--gene-map FILE, gene_map=)."
            )
    table = _table()
    human = pd.concat(
        [
            table[["human_gene", "mouse_gene"]],
            table.loc[table["human_gene_id"] != "", ["human_gene_id", "mouse_gene"]].set_axis(
                ["human_gene", "mouse_gene"], axis=1
            ),
        ]
    )
    columns = {"human": "human_gene", "mouse": "mouse_gene"}
    pairs = human[[columns[query_species], columns[reference_species]]].set_axis(list(COLUMNS), axis=1)
    name = f"built-in {query_species} → {reference_species} orthologues (Ensembl 105, via CellTypist 1.7.1)"
    return GeneMap(pairs.drop_duplicates().reset_index(drop=True), name, species=query_species)


def read_gene_map(source) -> GeneMap:
    """A `GeneMap` from a CSV or TSV file (told by a tab in its header line) with a header (columns
    `query_gene` and `reference_gene`, else the first two), a DataFrame of the same, a dict
    {query gene: reference gene or list of them}, or a `GeneMap` (returned as it is)."""
    if isinstance(source, GeneMap):
        return source
    if isinstance(source, dict):
        rows = [
            (query_gene, target)
            for query_gene, targets in source.items()
            for target in ([targets] if isinstance(targets, str) else targets)
        ]
        return GeneMap(_pairs(pd.DataFrame(rows, columns=list(COLUMNS)), "The gene map"), "a dict")
    if isinstance(source, pd.DataFrame):
        return GeneMap(_pairs(source, "The gene map"), "a DataFrame")
    path = Path(source)
    if not path.is_file():
        raise ScqueryError(f"The gene map {path} does not exist; give a CSV or TSV file.")
    try:
        with path.open() as handle:
            sep = "\t" if "\t" in handle.readline() else ","
        table = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as error:
        raise ScqueryError(f"The gene map {path} cannot be read as CSV or TSV ({error}).") from None
    return GeneMap(_pairs(table, f"The gene map {path}"), path.name)


def _pairs(table, source):
    """The two gene columns of `table` as unique string pairs without empty names."""
    if set(COLUMNS) <= set(map(str, table.columns)):
        table = table[list(COLUMNS)]
    elif table.shape[1] >= 2:
        table = table.iloc[:, :2]
    else:
        raise ScqueryError(
            f"{source} has {table.shape[1]} column(s); give columns query_gene and reference_gene "
            "(or two columns: the query's gene, then the reference's)."
        )
    table = table.set_axis(list(COLUMNS), axis=1).dropna().astype(str)
    table = table[(table["query_gene"].str.strip() != "") & (table["reference_gene"].str.strip() != "")]
    if table.empty:
        raise ScqueryError(
            f"{source} holds no pairs of genes; give one query gene and one reference gene a row."
        )
    return table.drop_duplicates().reset_index(drop=True)


def gene_lookup(names):
    """A function from a name to its position in `names`: exact first, then case-insensitive."""
    exact, folded = {}, {}
    for position, key in enumerate(match_keys(names)):
        exact.setdefault(key, position)
        folded.setdefault(key.lower(), position)
    return lambda key: exact.get(key, folded.get(key.lower(), -1))


def map_genes(X, names, gene_map: GeneMap, reference_genes):
    """The columns of `X` (CSR cells × genes of log1p-normalized values, genes `names`) mapped onto
    `reference_genes` through `gene_map` (see the module docstring).

    Returns:
        `(mapped, genes, record)`: CSR float32 cells × mapped genes, their names (reference genes that
        some query gene maps to), and a JSON-serializable record: the map's `name`, `collapse`,
        `species`, `n_pairs` (pairs in the map), the pairs used `one_to_one`, the query genes mapped
        to several reference genes `one_to_many`, the reference genes given several query genes
        `many_to_one`, and `n_dropped` (pairs left out by `collapse='drop'`).
    """
    reference_genes = [str(gene) for gene in reference_genes]
    find_query, find_reference = gene_lookup(names), gene_lookup(reference_genes)
    pairs = pd.DataFrame(
        {
            "column": [find_query(key) for key in match_keys(gene_map.pairs["query_gene"])],
            "target": [find_reference(key) for key in match_keys(gene_map.pairs["reference_gene"])],
        }
    )
    pairs = pairs[(pairs["column"] >= 0) & (pairs["target"] >= 0)].drop_duplicates()
    per_column = pairs.groupby("column")["target"].transform("size").to_numpy()
    per_target = pairs.groupby("target")["column"].transform("size").to_numpy()
    one_to_one = (per_column == 1) & (per_target == 1)
    record = {
        "name": gene_map.name,
        "collapse": gene_map.collapse,
        "species": gene_map.species,
        "n_pairs": int(len(gene_map.pairs)),
        "one_to_one": int(one_to_one.sum()),
        "one_to_many": int(pairs["column"][per_column > 1].nunique()),
        "many_to_one": int(pairs["target"][per_target > 1].nunique()),
        "n_dropped": 0,
    }
    weights = np.ones(len(pairs))
    if gene_map.collapse == "drop":
        record["n_dropped"] = int((~one_to_one).sum())
        pairs, weights = pairs[one_to_one], weights[one_to_one]
    elif gene_map.collapse == "mean":
        weights = 1.0 / per_target
    targets, columns = np.unique(pairs["target"].to_numpy(), return_inverse=True)
    matrix = sp.csr_matrix((weights, (pairs["column"].to_numpy(), columns)), shape=(X.shape[1], len(targets)))
    linear = X.astype(np.float64, copy=True)
    linear.data = np.expm1(linear.data)
    mapped = (linear @ matrix).tocsr()
    mapped.data = np.log1p(mapped.data)
    mapped.sort_indices()
    return mapped.astype(np.float32), [reference_genes[t] for t in targets], record


def species_hint(query_species, reference_species):
    """The sentence's end naming the option for a query of `query_species` against a reference of
    `reference_species`."""
    return (
        f"its gene names look {query_species} (like {_EXAMPLES[query_species]}) while the model's "
        f"reference is {reference_species} (like {_EXAMPLES[reference_species]}); give "
        f"--species {query_species} (species={query_species!r}) to map them through the built-in "
        "orthologues, or your own gene map (--gene-map FILE, gene_map=)"
    )
