"""Cell-type queries against a bundle's annotated reference, in three steps (like scanpy's ingest).

1. Neighbour search (`search`): the query is processed and embedded like the reference, and each
   query cell's `k` nearest reference cells are found.
2. Label transfer and rejection (`transfer`):
   - the kNN vote: each neighbour votes for its label with weight `exp(-d / s)`, `d` its distance
     and `s` the cell's mean distance to its `k` neighbours; a label's share of the weight is its
     vote share;
   - the prediction is the type with the highest mean of the vote share and the classifier head's
     probability (types the classifier was not trained on, added by `extend`, count by the vote
     alone), and that mean is the cell's `confidence`;
   - the query is clustered in its own expression (`cluster_query`: Leiden on a kNN graph of the
     PCA of its processed values; not in the embedding, which is trained to tell the known types
     apart and may map a type it never saw into one of them); a cluster's type is the argmax of
     its cells' mean evidence, and with `majority_voting` every cell of the cluster takes it
     (CellTypist's majority voting);
   - markers (`scquery.profiles`): a cluster mapped to type T is checked on the genes that define
     T in the reference, and only on those: the share of T's lineage genes (those found in the
     largest share more of T's reference cells than of the mix of types the query's clusters are
     mapped to) that the cluster expresses above the query's average type (`marker_agreement`), and
     the same share of T's own genes (those found in more of T's cells than of every other reference
     type's: `unique_markers`). Each side is measured within its own
     study, so what the two studies differ in everywhere cancels; what a condition (a treatment,
     stress, the cell cycle) adds on top of a type is not counted, since it does not define the
     type. A cluster of a type the reference lacks, mapped onto the nearest known type, lacks many
     of that type's genes;
   - novelty: a cell's distance to its nearest reference cell, divided by the typical nearest
     distance among the reference cells of its predicted type (a per-type scale), as a log ratio
     relative to the query's median log ratio (the query's own batch shift); a cluster's novelty is
     its cells' median;
   - a cell is 'Unknown' when it expresses none of the reference genes ('no reference genes'),
     when its confidence is below `min_confidence` ('low confidence'), when its cluster's novelty
     exceeds `novelty_threshold` ('new cluster': the whole cluster sits farther from its types than
     the rest of the query does), or when its cluster expresses less than `min_marker_agreement`
     of its type's lineage genes or less than `min_unique_markers` of its own genes ('markers
     differ'). A lone odd cell in a well-matched cluster keeps its label. The defaults (0.6, 0.7)
     were chosen on the cross-study pairs with each type held out in turn (benchmarks/RESULTS.md).
     These are the default cut-off (`max_unknown_score` 0.5) of one continuous Unknown score, how
     far past its threshold the cell's furthest score lies (`scquery.rules.unknown_score`);
     lowering the cut-off makes every rule stricter at once.
3. Writing to AnnData (`write_query`): obsm, obs and uns under `key_added`.
"""

import dataclasses
import warnings
from concurrent.futures import ThreadPoolExecutor

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc
import scipy.sparse as sp
from sklearn.utils.sparsefuncs import mean_variance_axis

from .bundle import Bundle, as_bundle, reference_index
from .embed import compute_embedding
from .labels import UNKNOWN
from .logs import stage
from .neighbors import NeighborIndex
from .options import InputOptions, recorded, take
from .palettes import palette
from .preflight import check_k
from .preprocessing.align import Alignment
from .profiles import PROFILES_KEY, group_means
from .provenance import write_run
from .rules import REASONS, SIGNALS, Findings, QueryOptions, judge


@dataclasses.dataclass
class Neighbors:
    """Step 1's result: the query's embedding, class probabilities and reference neighbours (and how
    they were searched: `search`, in words); `cluster`: the query's own clusters where `search` found
    them (else None, and `transfer` finds them)."""

    embedding: np.ndarray
    probabilities: np.ndarray
    distances: np.ndarray
    indices: np.ndarray
    expressed: np.ndarray  # per cell: does it express any reference gene?
    processed: sp.csr_matrix  # the processed query, on the model's genes
    alignment: Alignment
    index: NeighborIndex
    search: str
    cluster: np.ndarray | None = None  # the query's clusters, where `search` found them


@dataclasses.dataclass
class Transfer:
    """Step 2's result, one entry per query cell (see the module docstring); `scores`: each signal's
    score by its obs column (`scquery.rules.SIGNALS`), `unknown_score` their combined Unknown score."""

    prediction: np.ndarray
    reason: np.ndarray
    knn: np.ndarray
    knn_share: np.ndarray
    novelty: np.ndarray
    cluster: np.ndarray
    scores: dict
    unknown_score: np.ndarray
    labels: pd.Index


def vote(distances, codes, n_labels):
    """Distance-weighted vote (see the module docstring): the cells × labels weight shares."""
    n, k = distances.shape
    scale = np.maximum(distances.mean(axis=1, keepdims=True), np.finfo(np.float32).tiny)
    weights = np.exp(-distances / scale)
    rows = np.repeat(np.arange(n), k)
    tally = sp.csr_matrix((weights.ravel(), (rows, codes.ravel())), shape=(n, n_labels)).toarray()
    return np.clip(tally / weights.sum(axis=1, keepdims=True), 0.0, 1.0).astype(np.float32)


def search(adata, bundle: Bundle, options=QueryOptions(), inputs=InputOptions(), *, cluster=False):
    """Step 1: embed `adata` like the reference and find each cell's `options.k` nearest reference
    cells. With `cluster`, the query's own clusters (`cluster_query`, which needs the processed
    values only) are found on a second thread while the neighbour search runs, in `Neighbors.cluster`
    (faiss's search leaves the interpreter free; the PCA and Leiden mostly hold one core)."""
    embedding, probabilities, processed, alignment = compute_embedding(adata, bundle, inputs)
    index = reference_index(bundle)
    k = min(options.k, bundle.reference.n_obs)
    how = index.description(k)
    stage(
        "neighbours",
        "finding each cell's %d nearest of %s reference cells (%s search)%s",
        k,
        f"{bundle.reference.n_obs:,}",
        how,
        f", clustering the query on its own expression alongside (Leiden, resolution {options.resolution})"
        if cluster
        else "",
    )
    with ThreadPoolExecutor(max_workers=1) as pool:
        clustering = (
            pool.submit(cluster_query, processed, resolution=options.resolution, seed=options.seed)
            if cluster
            else None
        )
        distances, indices = index.kneighbors(embedding, k)
    return Neighbors(
        embedding,
        probabilities,
        distances,
        indices,
        expressed=np.diff(processed.indptr) > 0,
        processed=processed,
        alignment=alignment,
        index=index,
        search=index.description(k),  # with the `nprobe` this search used
        cluster=None if clustering is None else clustering.result(),
    )


#: Queries of more cells are clustered on a seeded sample of this many (see `cluster_query`).
SKETCH_CELLS = 20_000


def cluster_query(values, *, resolution, seed, n_neighbors=15, n_pcs=50, sketch_cells=SKETCH_CELLS):
    """Leiden clusters of the query cells (integer codes), found in the query's own expression.

    `values` (cells × genes, CSR or dense: the processed query, on the model's genes) are reduced to
    `n_pcs` principal components (scanpy's PCA, which keeps sparse data sparse); the cells' kNN graph
    there is built with the project's neighbour search (`NeighborIndex`: exact up to 20,000 cells,
    faiss IVF-Flat above), so it does not depend on pynndescent, and clustered by scanpy's Leiden
    (igraph implementation). Gene space, not the embedding: the embedding is trained to tell the
    reference's types apart and may place a type it never saw inside a known one.

    A query of more than `sketch_cells` cells is clustered on a seeded sample of that many (a
    sketch): the PCA is fitted, the graph built and Leiden run there, every other cell is projected
    onto the same components and joins the cluster most of its `n_neighbors` nearest sampled cells
    are in (exact search). The cost then stops growing with the query but for the projection and
    that search; smaller queries are clustered whole, as before.
    """
    n = values.shape[0]
    filled = np.asarray(abs(values).sum(axis=1)).ravel() > 0
    if not filled.all():  # cells expressing none of the genes: one cluster of their own, apart
        codes = np.zeros(n, dtype=np.int64)
        if filled.any():
            codes[filled] = cluster_query(
                values[filled],
                resolution=resolution,
                n_neighbors=n_neighbors,
                n_pcs=n_pcs,
                seed=seed,
                sketch_cells=sketch_cells,
            )
            codes[~filled] = codes[filled].max() + 1
        return codes
    if n < 3 or not _varies(values):  # nothing to tell apart (the PCA would fail)
        return np.zeros(n, dtype=np.int64)
    if n <= sketch_cells:
        return _leiden(_principal_components(values, n_pcs, seed)[0], n_neighbors, resolution, seed)
    sample = np.sort(np.random.default_rng(seed).choice(n, sketch_cells, replace=False))
    points, project = _principal_components(values[sample], n_pcs, seed)
    codes = np.empty(n, dtype=np.int64)
    codes[sample] = _leiden(points, n_neighbors, resolution, seed)
    rest = np.setdiff1d(np.arange(n), sample)
    k = min(n_neighbors, sketch_cells)
    # The project's approximate search (IVF-Flat, recall@k calibrated to TARGET_RECALL), not an
    # exact one: a vote of k neighbours barely feels a missed one, and the search costs a few
    # lists per cell instead of every sampled cell.
    sampled = NeighborIndex(points, seed=seed, exact_max_cells=0)
    _, nearest = sampled.kneighbors(project(values[rest]), k)
    votes = np.zeros((rest.size, codes[sample].max() + 1))
    np.add.at(votes, (np.repeat(np.arange(rest.size), k), codes[sample][nearest].ravel()), 1)
    codes[rest] = votes.argmax(axis=1)
    return codes


def _principal_components(values, n_pcs, seed):
    """The cells' coordinates on the `n_pcs` principal components of `values` (scanpy's PCA; the
    values themselves where fewer than 2 components fit), and the projection of other cells."""
    n_pcs = min(n_pcs, values.shape[0] - 1, values.shape[1] - 1)
    if n_pcs < 2:
        dense = values.toarray() if sp.issparse(values) else np.asarray(values, dtype=np.float32)
        return dense, lambda other: other.toarray() if sp.issparse(other) else np.asarray(other, np.float32)
    holder = ad.AnnData(
        X=values if sp.issparse(values) else np.asarray(values, dtype=np.float32),
        obs=pd.DataFrame(index=pd.RangeIndex(values.shape[0]).astype(str)),
    )
    sc.pp.pca(holder, n_comps=n_pcs, random_state=seed)
    components = holder.varm["PCs"].astype(np.float32)
    offset = np.asarray(values.mean(axis=0), dtype=np.float32).ravel() @ components
    return holder.obsm["X_pca"], lambda other: np.asarray(other @ components, dtype=np.float32) - offset


def _leiden(points, n_neighbors, resolution, seed):
    """Leiden clusters (igraph) of the symmetric kNN graph of `points`."""
    n = points.shape[0]
    k = min(n_neighbors, n - 1)
    _, indices = NeighborIndex(points, seed=seed).kneighbors(points, k + 1)
    rows = np.repeat(np.arange(n), k + 1)
    graph = sp.csr_matrix((np.ones(rows.size, dtype=np.float32), (rows, indices.ravel())), shape=(n, n))
    graph.setdiag(0)
    graph.eliminate_zeros()
    graph = graph.maximum(graph.T).tocsr()
    holder = ad.AnnData(obs=pd.DataFrame(index=pd.RangeIndex(n).astype(str)))
    sc.tl.leiden(
        holder,
        resolution=resolution,
        adjacency=graph,
        flavor="igraph",
        n_iterations=2,
        directed=False,
        random_state=seed,
    )
    return holder.obs["leiden"].astype(int).to_numpy()


def _varies(values):
    """Whether the rows of `values` differ at all (some gene's variance is above zero)."""
    if sp.issparse(values):
        return bool(np.any(mean_variance_axis(sp.csr_matrix(values, dtype=np.float64), axis=0)[1] > 0))
    return bool(np.any(np.var(values, axis=0) > 0))


def transfer(neighbors: Neighbors, bundle: Bundle, options=QueryOptions()):
    """Step 2: the prediction, its confidence and the Unknown calls (see the module docstring)."""
    reference = bundle.reference
    # The model's types first, in its order, then those only `extend` added: one order for every query.
    names = reference.obs["label"].astype(str)
    labels = pd.Index([*bundle.classes, *sorted(set(names) - set(bundle.classes))])
    codes = labels.get_indexer(names)
    shares = vote(neighbors.distances, codes[neighbors.indices], len(labels))
    evidence = combine_evidence(shares, neighbors.probabilities, labels.get_indexer(list(bundle.classes)))
    predicted = evidence.argmax(axis=1)

    cluster = neighbors.cluster
    if cluster is None:
        stage(
            "clusters",
            "clustering the query on its own expression (Leiden, resolution %s)",
            options.resolution,
        )
        cluster = cluster_query(neighbors.processed, resolution=options.resolution, seed=options.seed)
    else:
        stage("clusters", "judging the query's %d clusters", len(np.unique(cluster)))
    scales = _type_scales(neighbors.index.nearest_distances, codes, len(labels))
    ids, cluster_rows = np.unique(cluster, return_inverse=True)
    # Each cluster's most probable type: the argmax of its cells' mean evidence.
    cluster_type = group_means(evidence, cluster_rows)[1].argmax(axis=1)
    if options.majority_voting:
        predicted = cluster_type[cluster_rows]
    confidence = evidence[np.arange(len(predicted)), predicted]

    ratio = np.log(np.maximum(neighbors.distances[:, 0], 1e-12) / scales[predicted])
    novelty = (ratio - np.median(ratio)).astype(np.float32)
    found = Findings(
        expressed=neighbors.expressed,
        confidence=confidence,
        novelty=novelty,
        cluster=cluster,
        types=dict(zip(ids, labels.to_numpy()[cluster_type], strict=True)),
        processed=neighbors.processed,
        shared=neighbors.alignment.shared,
        profiles=_profiles(bundle),
    )
    scores, unknown, reason = judge(found, options)
    return Transfer(
        prediction=np.where(reason > 0, UNKNOWN, labels.to_numpy()[predicted]),
        reason=reason,
        knn=labels.to_numpy()[shares.argmax(axis=1)],
        knn_share=shares.max(axis=1),
        novelty=novelty,
        cluster=cluster,
        scores={signal.column: score for signal, score in zip(SIGNALS, scores, strict=True) if signal.column},
        unknown_score=unknown,
        labels=labels,
    )


def _profiles(bundle):
    """The reference's type profiles, or None (with a warning) for a bundle saved without them or
    without their detection rates (by an older scquery)."""
    profiles = bundle.reference.uns.get(PROFILES_KEY)
    if profiles is None or "detected" not in profiles:
        warnings.warn(
            "The model bundle holds no expression profiles of its cell types with their detection rates "
            "(it was saved by an older scquery), so query clusters are not checked for their types' "
            "markers; train it again to add them.",
            stacklevel=4,
        )
        return None
    return profiles


def combine_evidence(shares, probabilities, trained):
    """Each cell's evidence for each label (cells × labels): the mean of its vote `shares` and the
    classifier's `probabilities` (cells × classes; `trained`: the label of each class); a cell whose
    vote favours a label the classifier was not trained on (added by `extend`) has the vote alone."""
    spread = np.zeros_like(shares)
    spread[:, trained] = probabilities
    evidence = (shares + spread) / 2
    added = np.setdiff1d(np.arange(shares.shape[1]), trained)
    from_vote = np.isin(shares.argmax(axis=1), added)
    evidence[from_vote] = shares[from_vote]
    return evidence


def _type_scales(nearest_distances, codes, n_labels):
    """Per reference label: the median distance of its cells to their nearest other reference cell
    (over the cells the index measured: a sample of a large type; NaN marks the others)."""
    measured = np.isfinite(nearest_distances)
    medians = pd.Series(nearest_distances[measured]).groupby(codes[measured]).median()
    scales = medians.reindex(range(n_labels)).to_numpy(np.float64)
    fallback = np.median(nearest_distances[measured])
    scales = np.where(np.isfinite(scales) & (scales > 0), scales, fallback)
    return np.maximum(scales, 1e-12)


def query(
    adata: ad.AnnData,
    bundle: Bundle,
    *,
    k: int = 15,
    min_confidence: float = 0.5,
    novelty_threshold: float = 1.0,
    min_marker_agreement: float = 0.6,
    min_unique_markers: float = 0.7,
    max_unknown_score: float = 0.5,
    resolution: float = 1.0,
    majority_voting: bool = False,
    key_added: str = "scquery",
    layer: str | None = None,
    use_raw: bool = False,
    gene_key: str | None = None,
    min_overlap: float = 0.5,
    gene_map: object = None,
    species: str | None = None,
    batch_size: int = 8192,
    seed: int = 0,
    matches: bool = True,
) -> pd.DataFrame | None:
    """Predict the cell types of `adata` from the reference and the classifier (in place).

    Runs the three steps of the module docstring. Writes `obsm['X_' + key_added]` (the embedding,
    usable as `sc.pp.neighbors(use_rep=...)`), `uns[key_added]` (model, parameters, gene overlap,
    the detected input `values`, `species`, `gene_map` when genes were mapped, `query_params`) and
    the obs columns `{key_added}_prediction` (categorical, 'Unknown' for rejected cells),
    `_confidence` (mean of vote share and classifier probability of the predicted type),
    `_unknown_score` (`scquery.rules.unknown_score`; above `max_unknown_score`: Unknown),
    `_unknown_reason`, `_novelty` and `_cluster_novelty`, `_marker_agreement` and `_unique_markers`
    (of the cell's cluster), `_cluster` (the query's Leiden cluster), `_knn` and `_knn_share` (the
    vote's own answer), `_classifier` and `_classifier_probability` (the classifier head's),
    `_distance` (mean distance to the `k` neighbours), `_nearest_label` and `_nearest_dataset` (of
    the nearest reference cell).

    Args:
        bundle: the model, a `Bundle` or the path of a bundle folder (loaded as `scq.load` does).
        k, min_confidence, novelty_threshold, min_marker_agreement, min_unique_markers,
            max_unknown_score, resolution, majority_voting, seed: `scquery.rules.QueryOptions`
            (defaults, limits and meaning; the thresholds are those of the Unknown signals,
            `scquery.rules.SIGNALS`, and `max_unknown_score` the cut-off on their combined score).
        key_added: name of the results (default 'scquery'; the same meaning as in `embed`).
        matches: return the matches table (False: return None, for a caller that does not use it;
            it holds k rows per query cell).
        layer, use_raw, gene_key, min_overlap, gene_map, species, batch_size: as in
            `scquery.embed.embed` (`scquery.options.InputOptions`).

    Returns:
        The matches (`matches_table`), or None with `matches=False`.
    """
    options, inputs = take(locals(), QueryOptions, InputOptions)
    bundle = as_bundle(bundle, adata)
    check_k(options.k, bundle.reference.n_obs)
    neighbors = search(adata, bundle, options, inputs, cluster=True)
    result = transfer(neighbors, bundle, options)
    write_query(adata, bundle, neighbors, result, options, inputs, key_added=key_added)
    return matches_table(adata, bundle, neighbors) if matches else None


def write_query(adata, bundle: Bundle, neighbors: Neighbors, result: Transfer, options, inputs, *, key_added):
    """Step 3: write the results into `adata` (see `query`); `options`: the query's
    (`QueryOptions`), `inputs`: those of reading the values (`InputOptions`)."""
    reference = bundle.reference
    labels = reference.obs["label"].astype(str).to_numpy()
    datasets = reference.obs["dataset"].astype(str).to_numpy()
    classes = np.asarray(bundle.classes, dtype=object)
    nearest = neighbors.indices[:, 0]
    known = [name for name in result.labels if name != UNKNOWN]
    obs = adata.obs
    obs[f"{key_added}_prediction"] = pd.Categorical(result.prediction, categories=[*known, UNKNOWN])
    # scanpy's way: one colour per category, the same for every query of this model (scquery.pl)
    adata.uns[f"{key_added}_prediction_colors"] = list(palette([*known, UNKNOWN]).values())
    for column, score in result.scores.items():
        obs[f"{key_added}_{column}"] = score
    obs[f"{key_added}_unknown_score"] = result.unknown_score
    obs[f"{key_added}_unknown_reason"] = pd.Categorical(
        np.asarray(REASONS, dtype=object)[result.reason], categories=REASONS
    )
    obs[f"{key_added}_novelty"] = result.novelty
    obs[f"{key_added}_cluster"] = pd.Categorical(result.cluster.astype(str))
    obs[f"{key_added}_knn"] = pd.Categorical(result.knn, categories=known)
    obs[f"{key_added}_knn_share"] = result.knn_share
    obs[f"{key_added}_classifier"] = pd.Categorical(
        classes[neighbors.probabilities.argmax(axis=1)], categories=list(bundle.classes)
    )
    obs[f"{key_added}_classifier_probability"] = neighbors.probabilities.max(axis=1)
    obs[f"{key_added}_distance"] = neighbors.distances.mean(axis=1)
    obs[f"{key_added}_nearest_label"] = labels[nearest]
    obs[f"{key_added}_nearest_dataset"] = datasets[nearest]
    adata.obsm[f"X_{key_added}"] = neighbors.embedding
    k = int(neighbors.indices.shape[1])
    params = {
        item.name: type(item.default)(getattr(options, item.name)) for item in dataclasses.fields(options)
    }
    query_params = {
        **params,
        "k": k,
        "search": neighbors.search,
        "n_reference": int(reference.n_obs),
        "n_clusters": int(len(np.unique(result.cluster))),
        "n_unknown": int((result.reason > 0).sum()),
        "n_unknown_by_reason": {
            REASONS[code]: int((result.reason == code).sum()) for code in range(1, len(REASONS))
        },
    }
    reading = {"key_added": key_added, **recorded(inputs)}
    found = neighbors.alignment
    write_run(
        adata, key_added, model_id=bundle.model_id, params=reading, found=found, query_params=query_params
    )


def matches_table(adata, bundle: Bundle, neighbors: Neighbors):
    """One row per query cell and rank (1 = nearest) with `query_cell`, `rank`, `reference_cell`,
    `distance`, `reference_label`, `reference_dataset`."""
    reference = bundle.reference
    labels = reference.obs["label"].astype(str).to_numpy()
    datasets = reference.obs["dataset"].astype(str).to_numpy()
    k = int(neighbors.indices.shape[1])
    flat = neighbors.indices.ravel()
    return pd.DataFrame(
        {
            "query_cell": np.repeat(adata.obs_names.to_numpy(), k),
            "rank": np.tile(np.arange(1, k + 1), adata.n_obs),
            "reference_cell": reference.obs_names.to_numpy()[flat],
            "distance": neighbors.distances.ravel(),
            "reference_label": labels[flat],
            "reference_dataset": datasets[flat],
        }
    )
