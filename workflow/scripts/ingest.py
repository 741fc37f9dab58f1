"""Read and merge one dataset's files (scquery.io.read_many) into one h5ad."""

from common import log_to

log_to(snakemake.log[0])

from scquery.io import read_many  # noqa: E402
from scquery.labels import check_labels  # noqa: E402
from scquery.outputs import write_h5ad  # noqa: E402
from scquery.preprocessing.scales import describe_values, detect_values  # noqa: E402
from scquery.values import select_values  # noqa: E402

adata = read_many(
    list(snakemake.input),
    layer=snakemake.params.layer,
    use_raw=snakemake.params.use_raw,
    genes_by_cells=snakemake.params.genes_by_cells,
)
if snakemake.params.label_key:
    check_labels(adata, snakemake.params.label_key, source=", ".join(snakemake.input), allow_missing=True)
write_h5ad(adata, snakemake.output[0])
values = select_values(adata, layer=snakemake.params.layer, use_raw=snakemake.params.use_raw).X
print(f"{adata.n_obs:,} cells × {adata.n_vars:,} genes ({describe_values(detect_values(values))})")
