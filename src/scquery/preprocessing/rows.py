"""A processed reference's rows, made on demand from its values (`ReferenceRows`): each batch of
training reads its cells and normalizes them as the whole would be (every step is row by row), so
training holds a batch, not the matrix, and an in-memory AnnData gives the same values, hence the
same model.
"""

import warnings

import numpy as np
import scipy.sparse as sp

from ..batches import RowSource, read_rows
from ..values import CSRDataset
from .align import selection_matrix
from .scales import normalize_parts

#: A block of a pass holds at most this many rows, and this many stored values.
BLOCK_ROWS, BLOCK_VALUES = 16_384, 1 << 20


class ReferenceRows(RowSource):
    """The processed rows of a reference (log-normalized, on the chosen genes), made on demand
    from its values `X` (CSR float32 or a backed CSR dataset): row i is the kept cell `cells[i]`;
    `datasets` (each cell's, or None) and `parts` (per dataset, what its values are) say how each
    row is normalized, `sources` which of its genes are taken."""

    def __init__(self, X, cells, datasets, parts, target_sum, sources, source):
        self.X, self.cells, self.datasets, self.parts = X, np.asarray(cells), datasets, parts
        self.target_sum, self.source = target_sum, source
        sources = np.asarray(sources)
        every_gene = len(sources) == X.shape[1] and np.array_equal(sources, np.arange(X.shape[1]))
        self.selection = None if every_gene else selection_matrix(sources, X.shape[1])
        self.shape = (len(self.cells), len(sources))

    def __getitem__(self, rows):
        if isinstance(rows, slice):
            rows = np.arange(*rows.indices(self.shape[0]))
        raw = self.cells[np.asarray(rows)]
        order = np.argsort(raw, kind="stable")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # said once, when the reference was fitted
            block = normalized_block(
                self.X, raw[order], self.datasets, self.parts, self.target_sum, self.source
            )
        processed = (
            block if self.selection is None else sp.csr_matrix(block @ self.selection, dtype=np.float32)
        )
        processed.sort_indices()
        return processed[np.argsort(order)] if np.any(np.diff(order) < 0) else processed

    def materialize(self, block_rows=BLOCK_ROWS):
        """All rows as one CSR float32 matrix (for data that fits in memory)."""
        blocks = [self[start : start + block_rows] for start in range(0, self.shape[0], block_rows)]
        if not blocks:
            return sp.csr_matrix(self.shape, dtype=np.float32)
        return sp.csr_matrix(sp.vstack(blocks, format="csr"), dtype=np.float32)


def raw_rows(X, rows):
    """The rows `rows` (a slice, or sorted indices) of the values `X` as CSR float32: a backed
    dataset's read run by run (`scquery.batches.read_rows`)."""
    if isinstance(X, CSRDataset):
        if isinstance(rows, slice):
            rows = np.arange(*rows.indices(X.shape[0]))
        return sp.csr_matrix(read_rows(X, rows), dtype=np.float32)
    return X[rows]


def normalized_block(X, raw, datasets, parts, target_sum, source):
    """The log-normalized values (every gene) of the rows `raw` (a slice or sorted indices) of `X`."""
    block = raw_rows(X, raw)
    positions = np.arange(*raw.indices(X.shape[0])) if isinstance(raw, slice) else raw
    found = block_parts(datasets, positions, parts)
    return normalize_parts(block, found, target_sum, source)[0] if found else block


def block_parts(datasets, raw, parts):
    """`normalize_parts`'s parts for the raw rows `raw` (indices): their positions per dataset."""
    if datasets is None:
        return {None: (np.arange(len(raw)), parts[None])}
    names = datasets[raw]
    found = {name: (np.flatnonzero(names == name), values) for name, values in parts.items()}
    return {name: part for name, part in found.items() if part[0].size}
