"""Extending a bundle's reference with new annotated cells, without retraining (`extend`)."""

import dataclasses
import os
import warnings

import anndata as ad
import pandas as pd

from .bundle import Bundle, as_bundle, save_bundle, with_index
from .embed import compute_embedding
from .errors import ScqueryError
from .imputation import IMPUTER_KEY
from .labels import check_labels
from .options import InputOptions, take
from .profiles import PROFILES_KEY, merge_profiles, type_profiles
from .propagate import LABEL_SOURCE, USER
from .provenance import source_of


def extend(
    bundle: Bundle,
    adata: ad.AnnData,
    *,
    label_key: str,
    path: str | os.PathLike | None = None,
    overwrite: bool = False,
    layer: str | None = None,
    use_raw: bool = False,
    gene_key: str | None = None,
    min_overlap: float = 0.5,
) -> Bundle:
    """A bundle whose reference also holds `adata`'s annotated cells (no retraining).

    The new cells are embedded with the bundle's model and appended with their labels (`obs[label_key]`;
    `obs['label_source']` 'user') and datasets (`obs['dataset']`, or 'extension'); cell types the
    classifier does not know can then be found by `query`. Cells whose names the reference already holds
    are refused (they would count twice). The new bundle has its own neighbour index: a copy of the
    bundle's with the new cells added, where its kind allows (`scquery.neighbors.NeighborIndex.grown`),
    else one built anew. With `path`, the new bundle is also saved there (`save_bundle`: an existing
    bundle is replaced only with `overwrite`). `bundle` is a `Bundle` or the path of a bundle folder
    (loaded as `scq.load` does); `layer`, `use_raw`, `gene_key`, `min_overlap`: as in
    `scquery.embed.embed`.
    """
    bundle = as_bundle(bundle, adata, call="scq.extend(bundle, adata, label_key=...)")
    source = source_of(adata, "the new reference")
    check_labels(adata, label_key, source, min_classes=1)
    held = adata.obs_names.isin(bundle.reference.obs_names)
    if held.any():
        raise ScqueryError(
            f"{int(held.sum())} cells of {source} (e.g. {adata.obs_names[held][0]!r}) are already in "
            "the model's reference; extend it with new cells only (or give the cells distinct names)."
        )
    inputs = take(locals(), InputOptions)
    embedding, _, processed, _ = compute_embedding(adata, bundle, inputs)
    dataset = adata.obs["dataset"].astype(str).to_numpy() if "dataset" in adata.obs else "extension"
    added = ad.AnnData(
        obs=pd.DataFrame(
            {"label": adata.obs[label_key].astype(str).to_numpy(), "dataset": dataset},
            index=adata.obs_names.copy(),
        ),
        obsm={"X_scquery": embedding},
    )
    if LABEL_SOURCE in bundle.reference.obs:  # the user's labels (`scquery.propagate`)
        added.obs[LABEL_SOURCE] = USER
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # names repeated within the new cells are kept
        reference = ad.concat([bundle.reference, added])
    reference.obs = reference.obs.astype(str).astype("category")
    if IMPUTER_KEY in bundle.reference.uns:  # the model's, not the cells'
        reference.uns[IMPUTER_KEY] = bundle.reference.uns[IMPUTER_KEY]
    if "detected" in bundle.reference.uns.get(PROFILES_KEY, {}):  # not an older bundle's
        added_profiles = type_profiles(processed, added.obs["label"].to_numpy())
        reference.uns[PROFILES_KEY] = merge_profiles(bundle.reference.uns[PROFILES_KEY], added_profiles)
    extended = with_index(dataclasses.replace(bundle, reference=reference), grown_from=bundle.index)
    if path is not None:
        save_bundle(extended, path, overwrite=overwrite)
    return extended
