"""Query: each query cell's nearest reference cells, the predicted cell type and its confidence.

`scquery.query.query` embeds the cells itself (with the classifier's probabilities, in one pass), so
this rule reads the ingested query and runs beside the embed rule rather than after it; its output
holds the same `obsm['X_scquery']` too.
"""


rule query:
    input:
        data=query_data,
        bundle=rules.finetune.output[0],
        gene_map=gene_map_input,
    output:
        data="results/query/{query}.h5ad",
        matches="results/query/{query}_matches.tsv.gz",
        summary="results/report/{query}_summary.tsv",
    log:
        "logs/query/{query}.log",
    benchmark:
        "logs/benchmarks/query/{query}.tsv"
    conda:
        "../../envs/scquery.yaml"
    threads: 1
    params:
        query=config["query"],
        values=lambda wildcards: QUERY_VALUES if QUERIES[wildcards.query] else {},
        genes=query_genes,
        label_key=config["query_label_key"],
    script:
        "../scripts/query.py"
