"""The report (snakemake --report report.html): headline numbers on its first page, then per query
the scores per cell type, the confusion matrix, the UMAP and the summary; the model's training curves
and reference UMAP."""


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
        "../../envs/scquery.yaml"
    threads: 1
    params:
        seed=config["seed"],
        max_cells=REPORT_MAX_CELLS,
    script:
        "../scripts/report_model.py"


rule report_query:
    """One query's headline scores, UMAP with the reference, summary, and when its cell types are
    known (query_label_key), its scores per type and confusion matrix."""
    input:
        data=rules.query.output.data,
        summary=rules.query.output.summary,
        bundle=rules.finetune.output[0],
    output:
        scores="results/report/{query}_scores.json",
        umap=query_report(
            "results/report/{query}_umap.png", "query_umap.rst", "3. UMAP"
        ),
        summary_table=query_report(
            "results/report/{query}_summary.html", "summary.rst", "4. summary table"
        ),
        summary_plot=query_report(
            "results/report/{query}_summary.png", "summary_plot.rst", "5. summary bars"
        ),
        per_type=(
            query_report(
                "results/report/{query}_per_type.html",
                "per_type.rst",
                "1. scores per type",
            )
            if config["query_label_key"]
            else []
        ),
        confusion=(
            query_report(
                "results/report/{query}_confusion.png",
                "confusion.rst",
                "2. confusion matrix",
            )
            if config["query_label_key"]
            else []
        ),
    log:
        "logs/report/{query}.log",
    benchmark:
        "logs/benchmarks/report/{query}.tsv"
    conda:
        "../../envs/scquery.yaml"
    threads: 1
    params:
        label_key=config["query_label_key"],
        seed=config["seed"],
        max_cells=REPORT_MAX_CELLS,
    script:
        "../scripts/report_query.py"


rule report_overview:
    """The headline table of the report's first page: the model, and per query its cells, types,
    share Unknown and, when its cell types are known, accuracy and macro-F1; the same per query as
    one line of results/report/scores.txt (`make run` ends by printing it)."""
    input:
        bundle=rules.finetune.output[0],
        scores=expand("results/report/{query}_scores.json", query=QUERIES),
    output:
        table=report(
            "results/report/overview.html",
            caption="../report/overview.rst",
            category="Overview",
            labels={"figure": "headline numbers"},
        ),
        headline="results/report/scores.txt",
    log:
        "logs/report/overview.log",
    benchmark:
        "logs/benchmarks/report/overview.tsv"
    conda:
        "../../envs/scquery.yaml"
    threads: 1
    script:
        "../scripts/report_overview.py"
