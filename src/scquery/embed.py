"""Cell embeddings from a trained bundle: `obsm['X_scquery']` on the user's own AnnData."""

import anndata as ad
import keras

from .bundle import Bundle, as_bundle
from .classifier import embedding_model, predict_in_chunks
from .imputation import IMPUTER_KEY, Imputer
from .logs import stage
from .options import InputOptions, recorded, take
from .preprocessing.align import apply_record
from .profiles import PROFILES_KEY, missing_gene_levels
from .provenance import write_run
from .values import select_values


def compute_embedding(adata, bundle: Bundle, inputs=InputOptions()):
    """The embedding of `adata`'s cells and the classifier's probabilities, without changing it.

    The values (`.X`, `layers[layer]` or `.raw`, genes by `gene_key`: `scquery.values.select_values`)
    are processed like the reference (`scquery.preprocessing.align.apply_record`: values brought to
    the reference's scale, genes aligned to the bundle's, missing ones zero-filled; a query of another
    species mapped through `gene_map` or the built-in orthologues of `species` first) and fed to the
    model `batch_size` rows at a time (`encode`; each gene the data lack is read at its mean over the
    reference's types, then rebuilt from the others where the bundle keeps its pretrained autoencoder,
    `rebuild_missing`: `scquery.imputation`; `inputs`: `scquery.options.InputOptions`), so the
    expression matrix is never dense as a whole.

    Returns:
        `(embedding, probabilities, processed, alignment)`: float32 cells × embedding width; float32
        cells × classes in the order of `bundle.classes`; the processed values (CSR float32 cells ×
        the model's genes); the `Alignment` report (gene overlap, the detected input values,
        species, gene map).
    """
    cells = select_values(adata, layer=inputs.layer, use_raw=inputs.use_raw, gene_key=inputs.gene_key)
    processed, alignment = apply_record(cells, bundle.preprocess, inputs)
    levels = missing_gene_levels(bundle.reference.uns.get(PROFILES_KEY), alignment.shared)
    found, fill = genes_found(alignment.overlap), None
    if levels is not None:
        imputer = Imputer(*levels, bundle.reference.uns.get(IMPUTER_KEY), bundle.preprocess.get("scale"))
        found += f"; the other {len(levels[0]):,} " + (
            "rebuilt from them by the pretrained autoencoder"
            if imputer.rebuilds
            else "read at their mean over the reference's types"
        )
        fill = imputer.fill
    stage("embedding", "embedding %s cells: %s", f"{processed.shape[0]:,}", found)
    return (*encode(processed, bundle, inputs.batch_size, fill=fill), processed, alignment)


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


def encode(X, bundle: Bundle, batch_size, *, fill=None):
    """The embedding and class probabilities of the processed rows of CSR `X` (float32 arrays).
    `fill`: what gives each dense chunk the genes the data lack (`scquery.imputation.Imputer.fill`,
    which `compute_embedding` makes; None: they stay 0, as with a bundle saved before its profiles
    held means)."""
    encoder = embedding_model(bundle.model)
    model = keras.Model(encoder.input, [encoder.output, bundle.model.output])
    embedding, probabilities = predict_in_chunks(model, X, chunk_size=batch_size, fill=fill)
    return embedding, probabilities


def embed(
    adata: ad.AnnData,
    bundle: Bundle,
    *,
    key_added: str = "scquery",
    layer: str | None = None,
    use_raw: bool = False,
    gene_key: str | None = None,
    min_overlap: float = 0.5,
    gene_map: object = None,
    species: str | None = None,
    batch_size: int = 8192,
    copy: bool = False,
) -> ad.AnnData | None:
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
    inputs = take(locals(), InputOptions)
    bundle = as_bundle(bundle, adata, call="scq.embed(adata, bundle)")
    adata = adata.copy() if copy else adata
    embedding, _, _, alignment = compute_embedding(adata, bundle, inputs)
    adata.obsm[f"X_{key_added}"] = embedding
    params = {"key_added": key_added, **recorded(inputs)}
    write_run(adata, key_added, model_id=bundle.model_id, params=params, found=alignment)
    return adata if copy else None
