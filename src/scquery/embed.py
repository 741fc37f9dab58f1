"""Cell embeddings from a trained bundle: `obsm['X_scquery']` on the user's own AnnData."""

import keras
import numpy as np

from .bundle import Bundle, as_bundle, current_versions
from .classifier import embedding_model, predict_in_chunks
from .logs import stage
from .options import InputOptions, check, recorded, take
from .preprocess import apply_preprocess
from .values import select_values


def compute_embedding(adata, bundle: Bundle, inputs=InputOptions()):
    """The embedding of `adata`'s cells and the classifier's probabilities, without changing it.

    The values (`.X`, `layers[layer]` or `.raw`: `scquery.values.select_values`) are processed like
    the reference (`apply_preprocess`: values brought to the reference's scale, genes aligned to the
    bundle's, missing ones zero-filled; a query of another species mapped through `gene_map` or the
    built-in orthologues of `species` first) and fed to the model `batch_size` rows at a time (`encode`;
    `inputs`: `scquery.options.InputOptions`),
    so the expression matrix is never dense as a whole.

    Returns:
        `(embedding, probabilities, processed)`: float32 cells × embedding width; float32 cells ×
        classes in the order of `bundle.classes`; the processed AnnData of `apply_preprocess`, whose
        `uns['scquery']` holds the gene `overlap` and the detected input `values`.
    """
    values = select_values(adata, layer=inputs.layer, use_raw=inputs.use_raw)
    aligned, overlap = apply_preprocess(values, bundle.preprocess, inputs)
    aligned.uns["scquery"]["overlap"] = overlap
    stage("embedding", "embedding %s cells: %s", f"{aligned.n_obs:,}", genes_found(overlap))
    return (*encode(aligned.X, bundle, inputs.batch_size), aligned)


def embedded(adata, key_added="scquery"):
    """What `embed` did, in words, for the line that ends a run: `210 cells embedded in
    obsm['X_scquery']`."""
    return f"{adata.n_obs:,} cells embedded in obsm['X_{key_added}']"


def genes_found(overlap):
    """The gene overlap (`uns['scquery']['overlap']`) in words: `765 of the model's 765 genes found
    (100%)`."""
    return (
        f"{overlap['n_shared']:,} of the model's {overlap['n_reference_genes']:,} genes found "
        f"({overlap['fraction']:.0%})"
    )


def encode(X, bundle: Bundle, batch_size):
    """The embedding and class probabilities of the processed rows of CSR `X` (float32 arrays)."""
    encoder = embedding_model(bundle.model)
    model = keras.Model(encoder.input, [encoder.output, bundle.model.output])
    embedding, probabilities = predict_in_chunks(model, X, chunk_size=batch_size)
    return embedding, probabilities


def embed(
    adata,
    bundle: Bundle,
    *,
    key_added="scquery",
    layer=None,
    use_raw=False,
    gene_key=None,
    min_overlap=0.5,
    gene_map=None,
    species=None,
    batch_size=8192,
    copy=False,
):
    """Embed `adata`'s cells with `bundle`'s encoder (scanpy style).

    Writes `adata.obsm['X_' + key_added]` (cells × embedding width) and `adata.uns[key_added]`
    (`model_id`, `params`, gene `overlap`, the detected input `values`, the query's and the
    reference's `species`, `gene_map` when genes were mapped, `versions`); nothing else of
    `adata` changes (its genes keep their order: the alignment to the model's genes is internal).
    `key_added` means the same in `scquery.query.query`.

    Args:
        bundle: the model, a `Bundle` or the path of a bundle folder (loaded as `scq.load` does).
        key_added: name of the results (default 'scquery': `obsm['X_scquery']`, `uns['scquery']`).
        layer: take the values from `layers[layer]` instead of `.X` (e.g. `'counts'`).
        use_raw: take the values (and genes) from `.raw`.
        gene_key: `var` column holding gene names matching the model's (default: `var_names`).
        min_overlap: the least fraction of the model's genes the data must have
            (`ScqueryError` below it).
        gene_map: a query of another species: pairs of its genes and the model's (a CSV/TSV path
            with columns `query_gene`, `reference_gene` or else the first two, a DataFrame, a dict
            {query gene: reference gene(s)} or a `scquery.orthologs.GeneMap`); see
            `scquery.orthologs` for genes mapped several times.
        species: the query's species ('human' or 'mouse') where the model's reference is the other:
            its genes are mapped through the built-in orthologues (`scquery.orthologs`).
        batch_size: cells densified and embedded at a time.
        copy: return an embedded copy and leave `adata` alone.

    Returns:
        None, or the embedded copy when `copy=True`.
    """
    inputs = check(take(InputOptions, locals()))
    bundle = as_bundle(bundle, adata, call="scq.embed(adata, bundle)")
    adata = adata.copy() if copy else adata
    embedding, _, processed = compute_embedding(adata, bundle, inputs)
    adata.obsm[f"X_{key_added}"] = embedding
    record_run(adata, bundle, processed, {"key_added": key_added, **recorded(inputs)}, uns_key=key_added)
    return adata if copy else None


def record_run(adata, bundle: Bundle, processed, params, *, uns_key="scquery"):
    """Write `uns[uns_key]`: the model, the parameters (None left out), the gene overlap, the
    input values `detect_values` found, the species and the gene map's record (from
    `processed.uns['scquery']`)."""
    found = processed.uns["scquery"]
    adata.uns[uns_key] = {
        "model_id": bundle.model_id,
        "params": {key: value for key, value in params.items() if value is not None},
        **{
            key: _storable(found[key]) for key in ("overlap", "values", "species", "gene_map") if key in found
        },
        "versions": current_versions(),
    }


def _storable(value):
    """`value` with None entries dropped and numpy scalars made plain, so h5ad can hold it."""
    if isinstance(value, dict):
        return {str(k): _storable(v) for k, v in value.items() if v is not None}
    if isinstance(value, np.generic):
        return value.item()
    return value
