"""Training in two stages: greedy denoising pretraining of the encoder, then fine-tuning of the
classifier into the model bundle.

Preprocessing (QC, normalization, gene selection) has no rule of its own: it is part of
`scquery.train.pretrain` and `scquery.train.train`, which both derive it from the raw reference
with the same options, and its record is stored in the bundle (bundle.json: `preprocess`).
Pretraining sees every reference cell (labelled or not) and the `unlabeled` datasets; fine-tuning
sees the labelled cells only.
"""


rule pretrain:
    """Greedy layer-wise pretraining of tied denoising autoencoders on all reference cells and the
    unlabelled datasets: the encoder's weights."""
    input:
        reference=REFERENCE,
        unlabeled=expand("results/data/unlabeled/{unlabeled}.h5ad", unlabeled=UNLABELED),
    output:
        weights="results/pretrain/encoder_weights.npz",
        history="results/pretrain/history.json",
    log:
        "logs/pretrain.log",
    benchmark:
        "logs/benchmarks/pretrain.tsv"
    conda:
        "../../envs/scquery.yaml"
    threads: 2
    params:
        train=config["train"],
        seed=config["seed"],
        values=REFERENCE_VALUES,
        label_key=config["reference"]["label_key"],
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
        "../../envs/scquery.yaml"
    threads: 2
    params:
        label_key=config["reference"]["label_key"],
        train=config["train"],
        seed=config["seed"],
        values=REFERENCE_VALUES,
    script:
        "../scripts/finetune.py"
