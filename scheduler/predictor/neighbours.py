"""Exact top-k cosine neighbour search over unit-normalised embeddings, in memory-bounded chunks."""
from __future__ import annotations

import numpy as np


def top_k_neighbours(
    queries: np.ndarray, base: np.ndarray, k: int, *, exclude: np.ndarray | None = None, chunk_rows: int = 2048
) -> tuple[np.ndarray, np.ndarray]:
    """Indices and cosine similarities (both (N, k), most similar first) of each query's k nearest.

    ``exclude`` (N,) names, per query, a base row to leave out of its neighbours (-1: none): the
    query's own row when it is in the base, which gives leave-one-out estimates on training rows.
    """
    k = min(k, base.shape[0] - (1 if exclude is not None and (exclude >= 0).any() else 0))
    if k <= 0:
        raise ValueError("not enough base rows for a neighbour search")
    n = queries.shape[0]
    idx = np.empty((n, k), dtype=np.int64)
    sim = np.empty((n, k), dtype=np.float32)
    nb = base.shape[0]
    for start in range(0, n, chunk_rows):
        stop = min(start + chunk_rows, n)
        s = queries[start:stop] @ base.T
        if exclude is not None:
            rows = np.flatnonzero(exclude[start:stop] >= 0)
            s[rows, exclude[start:stop][rows]] = -np.inf
        # The k-th largest value per row by np.partition (cheaper than argpartition), then the
        # entries at or above it: np.nonzero yields them row by row, so each row's first k are
        # its top k (ties broken by column order).
        kth = np.partition(s, nb - k, axis=1)[:, nb - k] if k < nb else s.min(axis=1)
        r, c = np.nonzero(s >= kth[:, None])
        first = np.searchsorted(r, np.arange(stop - start))
        take = first[:, None] + np.arange(k)[None, :]
        part, part_sim = c[take], s[r[take], c[take]]
        order = np.argsort(-part_sim, axis=1, kind="stable")
        idx[start:stop] = np.take_along_axis(part, order, axis=1)
        sim[start:stop] = np.take_along_axis(part_sim, order, axis=1)
    return idx, sim


def neighbour_mean(values: np.ndarray, idx: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Weighted sum and weight total of ``values`` (Nb, M, nan = unobserved) over each row's neighbours.

    Returns (sum (N, M), weight (N, M)); unobserved neighbour outcomes carry no weight.
    """
    # Fill and mask the (Nb, M) base once, then gather: cheaper than cleaning the (N, k, M) gather.
    filled = np.nan_to_num(values, nan=0.0)
    observed = (~np.isnan(values)).astype(filled.dtype)
    return np.einsum("nk,nkm->nm", weights, filled[idx]), np.einsum("nk,nkm->nm", weights, observed[idx])
