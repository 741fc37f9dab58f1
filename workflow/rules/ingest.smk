"""Ingest: read the user's files (scquery.io.read_many), or split the built-in data."""


rule default_data:
    """The built-in data: pbmc68k_reduced split into a reference and a held-out query (seeded,
    stratified by cell type; scquery.datasets.pbmc68k_split)."""
    output:
        reference="results/data/default/reference.h5ad",
        query="results/data/default/query.h5ad",
    log:
        "logs/default_data.log",
    benchmark:
        "logs/benchmarks/default_data.tsv"
    conda:
        "../../envs/scquery.yaml"
    threads: 1
    params:
        seed=config["seed"],
        query_fraction=config.get("default_data", {}).get("query_fraction", 0.3),
    script:
        "../scripts/default_data.py"


rule ingest_reference:
    """The user's reference files, merged into one AnnData (obs['dataset'] names the file)."""
    input:
        config["reference"]["files"],
    output:
        "results/data/reference.h5ad",
    log:
        "logs/ingest/reference.log",
    benchmark:
        "logs/benchmarks/ingest/reference.tsv"
    conda:
        "../../envs/scquery.yaml"
    threads: 1
    params:
        layer=config["reference"].get("layer"),
        use_raw=config["reference"].get("use_raw", False),
        genes_by_cells=config["reference"].get("genes_by_cells", False),
        label_key=config["reference"]["label_key"],
    script:
        "../scripts/ingest.py"


rule ingest_query:
    """One query dataset's files, merged into one AnnData."""
    input:
        lambda wildcards: QUERIES[wildcards.query],
    output:
        "results/data/queries/{query}.h5ad",
    log:
        "logs/ingest/{query}.log",
    benchmark:
        "logs/benchmarks/ingest/{query}.tsv"
    conda:
        "../../envs/scquery.yaml"
    threads: 1
    params:
        layer=config.get("query_input", {}).get("layer"),
        use_raw=config.get("query_input", {}).get("use_raw", False),
        genes_by_cells=config.get("query_input", {}).get("genes_by_cells", False),
        label_key=None,
    script:
        "../scripts/ingest.py"


rule ingest_unlabeled:
    """One unlabelled file or folder (pretraining only), read like the reference files."""
    input:
        lambda wildcards: UNLABELED[wildcards.unlabeled],
    output:
        "results/data/unlabeled/{unlabeled}.h5ad",
    log:
        "logs/ingest/unlabeled/{unlabeled}.log",
    benchmark:
        "logs/benchmarks/ingest/unlabeled/{unlabeled}.tsv"
    conda:
        "../../envs/scquery.yaml"
    threads: 1
    params:
        layer=config["reference"].get("layer"),
        use_raw=config["reference"].get("use_raw", False),
        genes_by_cells=config["reference"].get("genes_by_cells", False),
        label_key=None,
    script:
        "../scripts/ingest.py"
