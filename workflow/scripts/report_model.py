"""Report figures of the model: training curves (bundle history) and the reference UMAP."""

from common import log_to

log_to(snakemake.log[0])

import matplotlib  # noqa: E402

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import scanpy as sc  # noqa: E402

from scquery.bundle import load_bundle  # noqa: E402

bundle = load_bundle(snakemake.input.bundle)
pretrain, classifier = bundle.history["pretrain"], bundle.history["classifier"]

panels = (["pretrain"] if pretrain else []) + ["loss", "accuracy"]
fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.8), squeeze=False)
axes = dict(zip(panels, axes[0], strict=True))
if pretrain:
    for stage in pretrain:
        losses = [stage["initial_loss"], *stage["loss"]]
        axes["pretrain"].plot(range(len(losses)), losses, marker=".", label=stage["stage"])
    axes["pretrain"].set(title="Greedy denoising pretraining", xlabel="epoch", ylabel="reconstruction MSE")
    axes["pretrain"].legend(fontsize="small")
for metric in ("loss", "accuracy"):
    for key, style in ((metric, "-"), (f"val_{metric}", "--")):
        if key in classifier:
            values = classifier[key]
            axes[metric].plot(range(1, len(values) + 1), values, style, marker=".", label=key)
    axes[metric].set(title=f"Classifier {metric}", xlabel="epoch", ylabel=metric)
    axes[metric].legend(fontsize="small")
fig.tight_layout()
fig.savefig(snakemake.output.curves, dpi=120)

reference = bundle.reference.copy()
sc.pp.neighbors(reference, use_rep="X_scquery", random_state=snakemake.params.seed)
sc.tl.umap(reference, random_state=snakemake.params.seed)
titles = {"label": "reference: cell type", "dataset": "reference: dataset"}
colors = ["label"] + (["dataset"] if reference.obs["dataset"].nunique() > 1 else [])
fig = sc.pl.umap(
    reference,
    color=colors,
    title=[titles[c] for c in colors],
    show=False,
    return_fig=True,
    wspace=0.6,
)
fig.savefig(snakemake.output.umap, dpi=120, bbox_inches="tight")
