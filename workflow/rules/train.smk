"""Training in two stages: greedy denoising pretraining of the encoder, then fine-tuning of the
classifier into the model bundle.

Preprocessing (QC, normalization, gene selection) has no rule of its own: it is part of
`scquery.train.pretrain_reference` and `scquery.train.train`, which both derive it from the raw
reference with the same options, and its record is stored in the bundle (bundle.json: `preprocess`).
"""

TRAIN_RESOURCES = dict(
    mem_mb=resources_of("train", "mem_mb", 16000),
    runtime=resources_of("train", "runtime", 240),
    gpu=resources_of("train", "gpu", 0),
)


rule pretrain:
    """Greedy layer-wise pretraining of tied denoising autoencoders: the encoder's weights."""
    input:
        REFERENCE,
    output:
        weights="results/pretrain/encoder_weights.npz",
        history="results/pretrain/history.json",
    log:
        "logs/pretrain.log",
    benchmark:
        "logs/benchmarks/pretrain.tsv"
    conda:
        "../envs/scquery.yaml"
    threads: resources_of("train", "threads", 2)
    resources:
        **TRAIN_RESOURCES,
    params:
        label_key=config["reference"]["label_key"],
        train=config["train"],
        seed=config["seed"],
        values=REFERENCE_VALUES,
    script:
        "../scripts/pretrain.py"


rule finetune:
    """Fine-tune the classifier from the pretrained encoder; write the model bundle."""
    input:
        unpack(finetune_input),
    output:
        directory("results/model"),
    log:
        "logs/finetune.log",
    benchmark:
        "logs/benchmarks/finetune.tsv"
    conda:
        "../envs/scquery.yaml"
    threads: resources_of("train", "threads", 2)
    resources:
        **TRAIN_RESOURCES,
    params:
        label_key=config["reference"]["label_key"],
        train=config["train"],
        seed=config["seed"],
        values=REFERENCE_VALUES,
    script:
        "../scripts/finetune.py"
