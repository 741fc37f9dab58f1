"""Embed: each query's cells in the model's embedding space (obsm['X_scquery'])."""


rule embed:
    input:
        data=query_data,
        bundle=rules.finetune.output[0],
        gene_map=gene_map_input,
    output:
        "results/embedding/{query}.h5ad",
    log:
        "logs/embed/{query}.log",
    benchmark:
        "logs/benchmarks/embed/{query}.tsv"
    conda:
        "../../envs/scquery.yaml"
    threads: 1
    params:
        inputs={
            key: value
            for key, value in config["query"].items()
            if key == "min_overlap"
        },
        values=lambda wildcards: QUERY_VALUES if QUERIES[wildcards.query] else {},
        genes=query_genes,
    script:
        "../scripts/embed.py"
