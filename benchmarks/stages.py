"""Speed stages, each run in its own process (`python -m benchmarks.stages NAME JSON`) so that its
peak memory is its own; the last stdout line is a JSON object of the stage's figures."""

import json
import os
import resource
import sys
import time

from .synthetic import synthetic_counts

LABEL_KEY = "cell_type"
#: Two epochs of each stage: the second one, past tracing and warm-up, gives the throughput.
SPEED_OPTIONS = {"min_genes": 0, "pretrain_epochs": 2, "epochs": 2, "patience": 2}


def _config():
    from scquery.config import load_train_config

    return load_train_config(SPEED_OPTIONS)


def generate(*, n_cells, seed, path):
    """Write synthetic counts to `path`."""
    adata = synthetic_counts(n_cells, seed=seed)
    adata.write_h5ad(path)
    return {"nnz": int(adata.X.nnz)}


def train_stage(*, data, bundle, backed=False, options=None):
    """Time `train()` and read each stage's steady-state epoch (the last) from its history; with
    `backed`, `train()` reads the h5ad from disk (`backed='r'`). `options` replace `SPEED_OPTIONS`'s."""
    import anndata as ad

    from scquery.bundle import save_bundle
    from scquery.config import load_train_config
    from scquery.neighbors import NeighborIndex
    from scquery.train import train

    config = load_train_config({**SPEED_OPTIONS, **(options or {})})
    adata = ad.read_h5ad(data, backed="r" if backed else None)
    arrays = [adata.X.group[name] for name in ("data", "indices", "indptr")] if backed else None
    arrays = arrays or [adata.X.data, adata.X.indices, adata.X.indptr]
    csr_gb = sum(a.size * a.dtype.itemsize for a in arrays) / 1024**3
    before_gb = _status_gb("VmRSS")
    start = time.perf_counter()
    result = train(adata, label_key=LABEL_KEY, config=config, seed=0)
    total = time.perf_counter() - start
    train_peak = peak_rss_gb()
    start = time.perf_counter()  # `train()` built the bundle's index already: this builds it again, timed
    NeighborIndex.for_reference(result.reference, seed=result.seed)
    index_s = time.perf_counter() - start
    save_bundle(result, bundle)
    n_cells = result.reference.n_obs
    pretrain_epoch = sum(stage["seconds"][-1] for stage in result.history["pretrain"])
    finetune_epoch = result.history["classifier"]["seconds"][-1]
    return {
        "n_cells": n_cells,
        "n_genes": len(result.genes),
        "hidden_sizes": config.hidden_sizes,
        "n_classes": len(result.classes),
        "batch_size": config.batch_size,
        "train_api_s": total,
        "train_peak_rss_gb": train_peak,
        "rss_before_train_gb": before_gb,
        "backed": bool(backed),
        "input_csr_gb": csr_gb,
        "model_gb": sum(w.nbytes for w in result.model.get_weights()) / 1024**3,
        "index_s": index_s,
        "index_search": result.index.description(15),
        "pretrain_epoch_s": pretrain_epoch,
        "pretrain_cells_per_s": n_cells / pretrain_epoch,
        "finetune_epoch_s": finetune_epoch,
        "finetune_cells_per_s": n_cells * (1 - config.validation_fraction) / finetune_epoch,
    }


def embed_stage(*, data, bundle):
    """Time `embed()` of every cell of `data`."""
    import anndata as ad

    from scquery.bundle import load_bundle
    from scquery.embed import embed

    model, adata = load_bundle(bundle), ad.read_h5ad(data)
    start = time.perf_counter()
    embed(adata, model)
    seconds = time.perf_counter() - start
    return {"n_cells": adata.n_obs, "embed_s": seconds, "embed_cells_per_s": adata.n_obs / seconds}


def query_stage(*, data, bundle):
    """Time `query()` of `data` against the saved bundle (its neighbour index saved with it), and
    the search alone."""
    import anndata as ad

    from scquery.bundle import load_bundle, reference_index
    from scquery.query import query

    model, adata = load_bundle(bundle), ad.read_h5ad(data)
    start = time.perf_counter()
    query(adata, model, k=15)
    seconds = time.perf_counter() - start
    index = reference_index(model)
    start = time.perf_counter()
    index.kneighbors(adata.obsm["X_scquery"], 15)
    search_s = time.perf_counter() - start
    return {
        "n_query": adata.n_obs,
        "n_reference": model.reference.n_obs,
        "search_s": search_s,
        "query_s": seconds,
        "query_cells_per_s": adata.n_obs / seconds,
        "search": adata.uns["scquery"]["query_params"]["search"],
    }


def cli_query_stage(*, data, bundle, out, keep=False):
    """Wall seconds of `scquery query BUNDLE DATA --out OUT` in a new process, start-up included, and
    its peak memory; with `keep`, OUT is left for the next stage."""
    import shutil
    import subprocess

    command = [sys.executable, "-m", "scquery.cli", "query", bundle, data, "--out", out, "-q"]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(done.stderr.strip().splitlines()[-1])
    if not keep:
        shutil.rmtree(out, ignore_errors=True) if os.path.isdir(out) else os.remove(out)
    # the only child this stage waited for: its peak (ru_maxrss is in KB on Linux)
    query_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024**2
    return {"cli_query_s": seconds, "cli_query_peak_rss_gb": query_peak}


def search_accuracy_stage(*, data, bundle, answer, n_cells=2000, seed=0):
    """The CLI's search against exact search, on `n_cells` seeded query cells: the recall@k of the
    neighbours the bundle's index finds for the whole query (as `scquery query` searched it: the
    embedding it wrote in `answer`), and how often the prediction before the Unknown calls (the
    argmax of the mean of vote share and classifier probability) is the same with the exact
    neighbours."""
    import anndata as ad
    import numpy as np

    from scquery.bundle import load_bundle, reference_index
    from scquery.embed import compute_embedding
    from scquery.neighbors import ExactSearch
    from scquery.options import InputOptions
    from scquery.query import combine_evidence, vote

    model = load_bundle(bundle)
    written = ad.read_h5ad(answer)
    k = written.uns["scquery"]["query_params"]["k"]
    index = reference_index(model)
    rows = np.sort(np.random.default_rng(seed).choice(written.n_obs, n_cells, replace=False))
    found_distances, found = index.kneighbors(written.obsm["X_scquery"], k)
    exact_distances, exact = ExactSearch(index.embeddings, n_threads=os.cpu_count()).search(
        np.ascontiguousarray(written.obsm["X_scquery"][rows]), k
    )
    recall = np.mean([len(np.intersect1d(a, b)) / k for a, b in zip(found[rows], exact, strict=True)])
    probabilities = compute_embedding(ad.read_h5ad(data)[rows].copy(), model, InputOptions())[1]
    labels = list(model.classes)
    codes = np.array([labels.index(name) for name in model.reference.obs["label"].astype(str)])
    trained = np.arange(len(labels))

    def predicted(distances, indices):
        return combine_evidence(vote(distances, codes[indices], len(labels)), probabilities, trained).argmax(
            1
        )

    same = np.mean(predicted(found_distances[rows], found[rows]) == predicted(exact_distances, exact))
    return {
        "search": written.uns["scquery"]["query_params"]["search"],
        "recall_at_k": float(recall),
        "k": int(k),
        "prediction_agreement": float(same),
        "n_cells": int(n_cells),
    }


def cli_extend_stage(*, data, bundle, out):
    """Wall seconds of `scquery extend BUNDLE DATA --label-key cell_type --out OUT` in a new process
    (start-up, reading, embedding, the new index and writing the bundle), and its peak memory."""
    import shutil
    import subprocess

    command = [sys.executable, "-m", "scquery.cli", "extend", bundle, data, "--label-key", LABEL_KEY]
    start = time.perf_counter()
    done = subprocess.run([*command, "--out", out, "-q"], capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(done.stderr.strip().splitlines()[-1])
    shutil.rmtree(out, ignore_errors=True)
    child_peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024**2
    return {"cli_extend_s": seconds, "extend_peak_rss_gb": child_peak_gb}


def parallel_stage(*, n_cells, devices, seed=0):
    """Seconds per epoch of `train()` on `n_cells` synthetic cells on the JAX backend, its batches
    split over `devices` virtual CPU devices (`keras.distribution.DataParallel`) or on one."""
    os.environ["KERAS_BACKEND"] = "jax"
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={max(devices, 1)}"
    import jax
    import keras

    from scquery.config import load_train_config
    from scquery.train import train

    adata = synthetic_counts(n_cells, seed=seed)
    config = load_train_config(SPEED_OPTIONS)
    if devices > 1:
        with keras.distribution.DataParallel(devices=jax.devices()[:devices]).scope():
            bundle = train(adata, label_key=LABEL_KEY, config=config, seed=seed, verbose=0)
    else:
        bundle = train(adata, label_key=LABEL_KEY, config=config, seed=seed, verbose=0)
    history = bundle.history
    return {
        "devices": devices,
        "n_cells": n_cells,
        "pretrain_epoch_s": sum(stage["seconds"][-1] for stage in history["pretrain"]),
        "finetune_epoch_s": history["classifier"]["seconds"][-1],
    }


def index_stage(*, method, n_reference, n_query, shift=0.3, k=15, seed=0):
    """Build one neighbour index over simulated embeddings and search `n_query` cells of another
    (shifted) draw; recall@k against exact search on the first `RECALL_QUERIES` of them.

    `method`: 'scquery' (`NeighborIndex` with its own backend, faiss IVF-Flat at these sizes, whose
    search of many cells sets `nprobe` on a sample of them; its leave-self-out distances, of
    `SELF_PER_GROUP` cells per simulated type, are timed apart), or a peer of `PEERS` ('hnswlib',
    'faiss-hnsw', 'faiss-ivf-sq8', 'pynndescent'), each built as a backend of the same
    interface (`scquery.neighbors.ExactSearch`'s `build`, `search`, `describe`) at the least search
    width of its grid whose recall on the same queries reaches the target, where the grid allows.
    """
    import numpy as np
    from sklearn.neighbors import NearestNeighbors

    from scquery.neighbors import TARGET_RECALL, NeighborIndex

    from .synthetic import synthetic_embeddings

    reference, types = synthetic_embeddings(n_reference, seed=seed, with_types=True)
    queries = synthetic_embeddings(n_query, seed=seed + 1, shift=shift)
    sample = queries[:RECALL_QUERIES]
    truth = NearestNeighbors(algorithm="brute").fit(reference).kneighbors(sample, k, return_distance=False)
    baseline = _status_gb("VmRSS")

    def recall(found):
        return float(np.mean([len(np.intersect1d(a, b)) / k for a, b in zip(found, truth, strict=True)]))

    result = {"method": method, "n_reference": n_reference, "n_query": n_query, "width": reference.shape[1]}
    start = time.perf_counter()
    if method == "scquery":
        index = NeighborIndex(reference, groups=types, seed=seed)
        result["build_s"] = time.perf_counter() - start
        start = time.perf_counter()
        index.nearest_distances  # noqa: B018 (computed on first use, saved with the bundle)
        result["leave_self_out_s"] = time.perf_counter() - start
        backend = index.backend
    elif method in PEERS:
        backend = PEERS[method].build(reference, seed=seed, n_threads=os.cpu_count())
        result["build_s"] = time.perf_counter() - start
        for width in backend.WIDTHS:  # the least width reaching the target (else the widest)
            backend.width = width
            if recall(backend.search(sample, k)[1]) >= TARGET_RECALL:
                break
    else:
        raise ValueError(f"unknown method {method!r}")
    start = time.perf_counter()
    found = backend.search(queries, k)[1]
    result["query_s"] = time.perf_counter() - start
    result["setting"] = backend.describe(k)  # scquery's: the nprobe this search used
    result["recall"] = recall(found[:RECALL_QUERIES])
    result["memory_gb"] = _status_gb("VmRSS") - baseline
    return result


class HnswlibSearch:
    """hnswlib's HNSW (M=16, ef_construction=100) as a backend; `width`: its `ef`."""

    WIDTHS = (16, 24, 32, 48, 64, 96, 128)

    def __init__(self, index):
        self.index, self.width = index, self.WIDTHS[0]

    @classmethod
    def build(cls, embeddings, *, seed, n_threads):
        import hnswlib

        index = hnswlib.Index(space="l2", dim=embeddings.shape[1])
        index.init_index(max_elements=len(embeddings), M=16, ef_construction=100, random_seed=seed)
        index.set_num_threads(n_threads)
        index.add_items(embeddings)
        return cls(index)

    def search(self, queries, k):
        self.index.set_ef(self.width)
        indices, squared = self.index.knn_query(queries, k)
        return squared**0.5, indices

    def describe(self, k):
        return str({"ef": self.width})


class FaissHNSWSearch(HnswlibSearch):
    """faiss's HNSW (M=16, efConstruction=100) as a backend; `width`: its `efSearch`."""

    @classmethod
    def build(cls, embeddings, *, seed, n_threads):
        import faiss

        index = faiss.IndexHNSWFlat(embeddings.shape[1], 16)
        index.hnsw.efConstruction = 100
        index.add(embeddings)
        return cls(index)

    def search(self, queries, k):
        self.index.hnsw.efSearch = self.width
        squared, indices = self.index.search(queries, k)
        return squared**0.5, indices


class PyNNDescentSearch(HnswlibSearch):
    """pynndescent (n_neighbors=30) as a backend; `width`: its search `epsilon`."""

    WIDTHS = (0.0, 0.05, 0.1, 0.2, 0.3)

    @classmethod
    def build(cls, embeddings, *, seed, n_threads):
        import pynndescent

        index = pynndescent.NNDescent(embeddings, n_neighbors=30, random_state=seed, n_jobs=n_threads)
        index.prepare()
        return cls(index)

    def search(self, queries, k):
        indices, distances = self.index.query(queries, k, epsilon=self.width)
        return distances, indices

    def describe(self, k):
        return str({"epsilon": self.width})


class FaissIVFSQ8Search(HnswlibSearch):
    """faiss IVF over `4 √n` lists of 8-bit scalar-quantized vectors, each query's `2 k` best
    candidates re-ranked by their exact distances (`IndexRefineFlat`), as a backend; `width`: its
    `nprobe`."""

    WIDTHS = (2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128)

    @classmethod
    def build(cls, embeddings, *, seed, n_threads):
        import faiss

        n_lists = round(4 * len(embeddings) ** 0.5)
        index = faiss.index_factory(embeddings.shape[1], f"IVF{n_lists},SQ8,RFlat")
        faiss.extract_index_ivf(index).cp.seed = seed
        index.train(embeddings)
        index.add(embeddings)
        index.k_factor = 2
        return cls(index)

    def search(self, queries, k):
        import faiss

        faiss.extract_index_ivf(self.index).nprobe = self.width
        squared, indices = self.index.search(queries, k)
        return squared**0.5, indices

    def describe(self, k):
        return str({"nprobe": self.width, "candidates": 2 * k})


#: The peers of the index benchmark, by method name.
PEERS = {
    "hnswlib": HnswlibSearch,
    "faiss-hnsw": FaissHNSWSearch,
    "faiss-ivf-sq8": FaissIVFSQ8Search,
    "pynndescent": PyNNDescentSearch,
}


def throughput_stage(
    *, n_cells, hidden_sizes, n_classes=10, batch_sizes=(256, 512, 1024), seed=0, with_train=False
):
    """Where training time goes, at each batch size, for the first pretraining layer and for
    fine-tuning, on `n_cells` synthetic cells (2,000 genes), all in this one process:

    - `peak_gflops`: one large square float32 matmul (4096², best of 3): the machine's bound;
    - `shape_gflops`: the same op at the network's layer shapes and this batch size;
    - per stage, cells/s of the step's matmuls alone (`matmuls`: forward and the gradients the step
      needs, chained), of Keras's fit on dense in-memory arrays (`in_memory`: adds the optimizer,
      activations, noise, loss and dispatch), and of scquery's fit on the sparse batches
      (`sparse`: adds the input pipeline), with scquery's compile options (`FIT_OPTIONS`);
    - with `with_train`, `train()` itself on the same cells (`SPEED_OPTIONS`: the 2nd epoch of each
      stage, every pretraining layer with its scaling, class weights and validation), and the peak
      measured again after it (`peak_after_gflops`): on a shared machine the two bracket the run.
    """
    import keras
    import numpy as np
    import scanpy as sc

    from scquery.batches import SparseBatches
    from scquery.callbacks import EpochTimer
    from scquery.classifier import build_classifier
    from scquery.config import TrainConfig
    from scquery.layers import DenseLayerAutoencoder
    from scquery.pretrain import FIT_OPTIONS, denoising_model

    from .speed import training_flops

    adata = synthetic_counts(n_cells, seed=seed)
    counts = adata.copy() if with_train else None
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    X, dense = adata.X, adata.X.toarray()
    y = adata.obs[LABEL_KEY].cat.codes.to_numpy().astype(np.int64)
    n_genes = X.shape[1]
    widths = [n_genes, *hidden_sizes]
    flops = training_flops(n_genes, hidden_sizes, n_classes)
    rng = np.random.default_rng(seed)

    def rate(a_shape, b_shape, repeats, clock=time.perf_counter):
        """GFLOP per second of `clock` (wall seconds, or `time.process_time`: CPU seconds)."""
        a = keras.ops.convert_to_tensor(rng.standard_normal(a_shape, dtype=np.float32))
        b = keras.ops.convert_to_tensor(rng.standard_normal(b_shape, dtype=np.float32))
        keras.ops.convert_to_numpy(keras.ops.matmul(a, b))
        best = 0.0
        for _ in range(3):
            start = clock()
            for _ in range(repeats):
                out = keras.ops.matmul(a, b)
            keras.ops.convert_to_numpy(out)
            best = max(best, 2.0 * a_shape[0] * a_shape[1] * b_shape[1] * repeats / (clock() - start))
        return best / 1e9

    def step_matmuls(shapes, batch_size, repeats=20, clock=time.perf_counter):
        """Cells per second of `clock` of a chain of matmuls `(m, k, n)` per batch (m: rows of the
        batch or weights)."""
        tensors = [
            (
                keras.ops.convert_to_tensor(rng.standard_normal((m, k), dtype=np.float32)),
                keras.ops.convert_to_tensor(rng.standard_normal((k, n), dtype=np.float32)),
            )
            for m, k, n in shapes
        ]
        for a, b in tensors:
            keras.ops.convert_to_numpy(keras.ops.matmul(a, b))
        best = 0.0
        for _ in range(3):
            start = clock()
            for _ in range(repeats):
                outs = [keras.ops.matmul(a, b) for a, b in tensors]
            keras.ops.convert_to_numpy(outs[-1])
            best = max(best, batch_size * repeats / (clock() - start))
        return best

    def epoch_rate(model, data, **fit):
        """Cells per wall second and per CPU second of the 2nd epoch."""
        history = model.fit(data, epochs=2, verbose=0, shuffle=False, callbacks=[EpochTimer()], **fit)
        return n_cells / history.history["seconds"][-1], n_cells / history.history["cpu_seconds"][-1]

    peak = (4096, 4096), (4096, 4096), 5
    result = {
        "n_cells": n_cells,
        "widths": widths,
        "peak_gflops": rate(*peak),
        "peak_cpu_gflops": rate(*peak, clock=time.process_time),
    }
    result.update(flops)
    rows = []
    for batch_size in batch_sizes:
        shape = [rate((batch_size, a), (a, b), 20) for a, b in zip(widths[:-1], widths[1:], strict=True)]
        w0 = (n_genes, hidden_sizes[0])
        # first DAE: encode x·W, decode h·Wᵀ; gradients: both of W, and of h (not of the input)
        pretrain_shapes = [(batch_size, *w0), (batch_size, w0[1], w0[0])]
        pretrain_shapes += [
            (w0[0], batch_size, w0[1]),
            (w0[1], batch_size, w0[0]),
            (batch_size, w0[0], w0[1]),
        ]
        head = [*widths, n_classes]
        finetune_shapes = []
        for i, (a, b) in enumerate(zip(head[:-1], head[1:], strict=True)):
            finetune_shapes += [(batch_size, a, b), (a, batch_size, b)] + ([(batch_size, b, a)] if i else [])
        row = {"batch_size": batch_size, "shape_gflops": shape}
        for stage, shapes in (("pretrain", pretrain_shapes), ("finetune", finetune_shapes)):
            row[f"{stage}_matmuls"] = step_matmuls(shapes, batch_size)
            row[f"{stage}_matmuls_cpu"] = step_matmuls(shapes, batch_size, clock=time.process_time)
        dae = DenseLayerAutoencoder([hidden_sizes[0]], activation="tanh", dropout=0.2, seed=seed)
        inputs = keras.Input((n_genes,))
        model = keras.Model(inputs, dae(inputs))
        model.compile(keras.optimizers.Adam(1e-3), loss="mse", **FIT_OPTIONS)
        row["pretrain_in_memory"], row["pretrain_in_memory_cpu"] = epoch_rate(
            model, dense, y=dense, batch_size=batch_size
        )
        dae = DenseLayerAutoencoder([hidden_sizes[0]], activation="tanh", dropout=0.2, seed=seed)
        model = denoising_model(dae, n_genes)  # pretraining's model: batches carry x only
        model.compile(keras.optimizers.Adam(1e-3), loss="mse", **FIT_OPTIONS)
        row["pretrain_sparse"], row["pretrain_sparse_cpu"] = epoch_rate(
            model, SparseBatches(X, batch_size=batch_size, seed=seed)
        )
        for name, data, fit in (
            ("finetune_in_memory", dense, {"y": y, "batch_size": batch_size}),
            ("finetune_sparse", SparseBatches(X, y, batch_size=batch_size, seed=seed), {}),
        ):
            config = TrainConfig(hidden_sizes=list(hidden_sizes))
            model = build_classifier(n_genes, n_classes, config, seed=seed)
            model.compile(keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy", **FIT_OPTIONS)
            row[name], row[f"{name}_cpu"] = epoch_rate(model, data, **fit)
        rows.append(row)
    result["batches"] = rows
    # pretraining layer 0 alone: 10 w FLOPs per cell (see `training_flops`)
    result["pretrain_layer0_flops_per_cell"] = 10 * n_genes * hidden_sizes[0]
    if with_train:
        from scquery.config import load_train_config
        from scquery.train import train

        config = load_train_config({**SPEED_OPTIONS, "hidden_sizes": list(hidden_sizes)})
        bundle = train(counts, label_key=LABEL_KEY, config=config, seed=seed, verbose=0)
        trained = n_cells * (1 - config.validation_fraction)
        result["train"] = {"n_genes": len(bundle.genes)}
        for clock, suffix in (("seconds", ""), ("cpu_seconds", "_cpu")):
            pretrain_epoch = sum(stage[clock][-1] for stage in bundle.history["pretrain"])
            result["train"][f"pretrain_cells_per_s{suffix}"] = n_cells / pretrain_epoch
            result["train"][f"finetune_cells_per_s{suffix}"] = (
                trained / bundle.history["classifier"][clock][-1]
            )
        result["peak_after_gflops"] = rate(*peak)
        result["peak_after_cpu_gflops"] = rate(*peak, clock=time.process_time)
    return result


#: Queries whose exact neighbours give the recall of an index.
RECALL_QUERIES = 1000


STAGES = {
    "generate": generate,
    "train": train_stage,
    "embed": embed_stage,
    "query": query_stage,
    "cli_query": cli_query_stage,
    "search_accuracy": search_accuracy_stage,
    "cli_extend": cli_extend_stage,
    "parallel": parallel_stage,
    "index": index_stage,
    "throughput": throughput_stage,
}


def peak_rss_gb():
    """This process's peak resident memory (VmHWM: unlike `ru_maxrss`, not inherited over exec)."""
    return _status_gb("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def _status_gb(field):
    """A memory field of /proc/self/status (VmRSS: now, VmHWM: peak) in GB; 0 where there is none."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(f"{field}:"):
                    return int(line.split()[1]) / 1024**2
    except OSError:
        pass
    return 0.0


def main(name, arguments):
    result = STAGES[name](**json.loads(arguments))
    result["peak_rss_gb"] = peak_rss_gb()
    print(json.dumps(result))


if __name__ == "__main__":
    main(*sys.argv[1:3])
