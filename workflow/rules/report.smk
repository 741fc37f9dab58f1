"""Report figures (snakemake --report report.html): training curves, UMAPs, confusion matrices."""


rule report_model:
    """Training curves (bundle history) and the UMAP of the reference embedding by cell type."""
    input:
        bundle=rules.finetune.output[0],
    output:
        curves=report(
            "results/report/training_curves.png",
            caption="../report/training_curves.rst",
            category="Model",
            labels={"figure": "training curves"},
        ),
        umap=report(
            "results/report/reference_umap.png",
            caption="../report/reference_umap.rst",
            category="Model",
            labels={"figure": "reference UMAP"},
        ),
    log:
        "logs/report/model.log",
    benchmark:
        "logs/benchmarks/report/model.tsv"
    conda:
        "../envs/scquery.yaml"
    threads: 1
    resources:
        mem_mb=resources_of("default", "mem_mb", 4000),
        runtime=resources_of("default", "runtime", 30),
    params:
        seed=config["seed"],
    script:
        "../scripts/report_model.py"


rule report_query:
    """The UMAP of the reference and one query, and its confusion matrix when labels are known."""
    input:
        data=rules.query.output.data,
        bundle=rules.finetune.output[0],
    output:
        umap=report(
            "results/report/{query}_umap.png",
            caption="../report/query_umap.rst",
            category="Queries",
            subcategory="{query}",
            labels={"dataset": "{query}", "figure": "UMAP"},
        ),
        confusion=(
            report(
                "results/report/{query}_confusion.png",
                caption="../report/confusion.rst",
                category="Queries",
                subcategory="{query}",
                labels={"dataset": "{query}", "figure": "confusion matrix"},
            )
            if config["query_label_key"]
            else []
        ),
    log:
        "logs/report/{query}.log",
    benchmark:
        "logs/benchmarks/report/{query}.tsv"
    conda:
        "../envs/scquery.yaml"
    threads: 1
    resources:
        mem_mb=resources_of("default", "mem_mb", 4000),
        runtime=resources_of("default", "runtime", 30),
    params:
        label_key=config["query_label_key"],
        seed=config["seed"],
    script:
        "../scripts/report_query.py"
