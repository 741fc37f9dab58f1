"""Cell embeddings from a trained bundle: `obsm['X_scquery']` on the user's own AnnData."""

import keras
import numpy as np

from .batches import iter_dense_chunks
from .bundle import Bundle, current_versions
from .classifier import embedding_model
from .errors import check_number
from .io import select_values
from .preprocess import apply_preprocess


def compute_embedding(
    adata,
    bundle: Bundle,
    *,
    layer=None,
    use_raw=False,
    gene_key=None,
    min_overlap=0.5,
    batch_size=8192,
):
    """The embedding of `adata`'s cells and the classifier's probabilities, without changing it.

    The values (`.X`, `layers[layer]` or `.raw`: `scquery.io.select_values`) are processed like
    the reference (`apply_preprocess`: genes aligned to the bundle's, missing ones zero-filled) and
    fed to the model `batch_size` rows at a time, so the expression matrix is never dense as a whole.

    Returns:
        `(embedding, probabilities, overlap)`: float32 cells × embedding width; float32 cells ×
        classes in the order of `bundle.classes`; the gene overlap report of `apply_preprocess`.
    """
    check_number("min_overlap", min_overlap, low=0, high=1)
    check_number("batch_size", batch_size, low=1, integer=True)
    values = select_values(adata, layer=layer, use_raw=use_raw)
    aligned, overlap = apply_preprocess(values, bundle.preprocess, gene_key=gene_key, min_overlap=min_overlap)
    encoder = embedding_model(bundle.model)
    model = keras.Model(encoder.input, [encoder.output, bundle.model.output])
    embedding, probabilities = [], []
    for chunk in iter_dense_chunks(aligned.X, batch_size):
        codes, probs = model(chunk, training=False)
        embedding.append(keras.ops.convert_to_numpy(codes))
        probabilities.append(keras.ops.convert_to_numpy(probs))
    return (
        np.concatenate(embedding).astype(np.float32),
        np.concatenate(probabilities).astype(np.float32),
        overlap,
    )


def embed(
    adata,
    bundle: Bundle,
    *,
    key_added="X_scquery",
    layer=None,
    use_raw=False,
    gene_key=None,
    min_overlap=0.5,
    batch_size=8192,
    copy=False,
):
    """Embed `adata`'s cells with `bundle`'s encoder (scanpy style).

    Writes `adata.obsm[key_added]` (cells × embedding width) and `adata.uns['scquery']`
    (`model_id`, `params`, gene `overlap`, `versions`); nothing else of `adata` changes (its genes
    keep their order: the alignment to the model's genes is internal).

    Args:
        layer: take the values from `layers[layer]` instead of `.X` (e.g. `'counts'`).
        use_raw: take the values (and genes) from `.raw`.
        gene_key: `var` column holding gene names matching the model's (default: `var_names`).
        min_overlap: the least fraction of the model's genes the data must have
            (`ScqueryError` below it).
        batch_size: cells densified and embedded at a time.
        copy: return an embedded copy and leave `adata` alone.

    Returns:
        None, or the embedded copy when `copy=True`.
    """
    adata = adata.copy() if copy else adata
    embedding, _, overlap = compute_embedding(
        adata,
        bundle,
        layer=layer,
        use_raw=use_raw,
        gene_key=gene_key,
        min_overlap=min_overlap,
        batch_size=batch_size,
    )
    adata.obsm[key_added] = embedding
    params = {
        "key_added": key_added,
        "layer": layer,
        "use_raw": use_raw,
        "gene_key": gene_key,
        "min_overlap": min_overlap,
    }
    record_run(adata, bundle, overlap, params)
    return adata if copy else None


def record_run(adata, bundle: Bundle, overlap, params, *, uns_key="scquery"):
    """Write `uns[uns_key]`: the model, the parameters (None left out) and the gene overlap."""
    adata.uns[uns_key] = {
        "model_id": bundle.model_id,
        "params": {key: value for key, value in params.items() if value is not None},
        "overlap": _storable(overlap),
        "versions": current_versions(),
    }


def _storable(value):
    """`value` with None entries dropped and numpy scalars made plain, so h5ad can hold it."""
    if isinstance(value, dict):
        return {str(k): _storable(v) for k, v in value.items() if v is not None}
    if isinstance(value, np.generic):
        return value.item()
    return value
