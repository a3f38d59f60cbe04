"""Rows of sparse vectors in compressed-sparse-row (CSR) columns: how the offline store keeps pooled SAE features.

A matrix of ``n`` rows is three flat tensors: ``offsets (n + 1,)`` with row ``r``'s entries at
``offsets[r]:offsets[r + 1]``, and ``indices`` / ``values`` holding each entry's column and value. A pooled
feature vector has a few hundred non-zeros among tens of thousands of features, so this is ~100× smaller than
the dense rows. Predictions carry per-row ``counts`` instead of offsets, so batches concatenate as they come.
"""

from __future__ import annotations

import torch
from torch import Tensor


def sparse_rows(dense: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The non-zeros of ``dense (rows, width)``: per-row ``counts`` (long), column ``indices`` (int32) and
    ``values``, row by row in column order."""
    rows, columns = (dense != 0).nonzero(as_tuple=True)
    counts = torch.bincount(rows, minlength=dense.shape[0])
    return counts, columns.int(), dense[rows, columns]


def offsets_of(counts: Tensor) -> Tensor:
    """Row offsets ``(n + 1,)`` from per-row counts ``(n,)``."""
    return torch.cat([counts.new_zeros(1), counts.cumsum(0)])


def select_rows(offsets: Tensor, indices: Tensor, values: Tensor, rows: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The CSR columns ``(offsets, indices, values)`` of the rows ``rows`` (in that order)."""
    _, positions, counts = _entries(offsets, rows)
    return offsets_of(counts), indices[positions], values[positions]


def dense_rows(offsets: Tensor, indices: Tensor, values: Tensor, rows: Tensor, width: int) -> Tensor:
    """The rows ``rows`` of a CSR matrix as a dense ``(len(rows), width)`` tensor."""
    row_ids, positions, _ = _entries(offsets, rows)
    dense = values.new_zeros(len(rows), width)
    dense[row_ids, indices[positions].long()] = values[positions]
    return dense


def _entries(offsets: Tensor, rows: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """For the entries of ``rows``: their output row, their position in ``indices`` / ``values``, and the
    count of each row. Entry ``j`` of output row ``i`` sits at ``offsets[rows[i]] + j``."""
    starts = offsets[rows]
    counts = offsets[rows + 1] - starts
    row_ids = torch.repeat_interleave(torch.arange(len(rows)), counts)
    shift = torch.repeat_interleave(counts.cumsum(0) - counts - starts, counts)
    return row_ids, torch.arange(len(row_ids)) - shift, counts
