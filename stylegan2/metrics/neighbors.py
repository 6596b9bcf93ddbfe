"""Exact nearest-neighbour search on the CPU, in chunks so memory stays bounded.

A chunk of queries against a chunk of references is one [q, r] distance block (torch.cdist), so
peak memory is chunk * ref_chunk floats whatever N is; the full OASIS training split (~10k
slices) against thousands of fakes is then a few seconds of matrix products.
"""
from __future__ import annotations

import numpy as np
import torch


def _as_tensor(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(x)
    return t.reshape(t.shape[0], -1).to(torch.float64 if t.dtype == torch.float64 else torch.float32).cpu()


def kth_nearest(query: np.ndarray | torch.Tensor, ref: np.ndarray | torch.Tensor, k: int = 1, *,
                exclude_self: bool = False, chunk: int = 1024, ref_chunk: int = 8192
                ) -> tuple[np.ndarray, np.ndarray]:
    """For each query row, the Euclidean distance to its k-th nearest reference row and that row's
    index.

    query [Q, ...], ref [R, ...]: flattened to vectors (pixels or features).
    exclude_self: query and ref are the same set; row i never counts as its own neighbour (by
        index, so an exact duplicate elsewhere in the set still does, as it should).
    Returns (distances float64 [Q], indices int64 [Q]).
    """
    q_all, r_all = _as_tensor(query), _as_tensor(ref)
    dtype = torch.promote_types(q_all.dtype, r_all.dtype)
    q_all, r_all = q_all.to(dtype), r_all.to(dtype)
    n_ref = r_all.shape[0] - (1 if exclude_self else 0)
    if k < 1 or k > n_ref:
        raise ValueError(f"k must be in [1, {n_ref}] for {r_all.shape[0]} reference rows, got {k}")
    dist_out = np.empty(q_all.shape[0])
    idx_out = np.empty(q_all.shape[0], dtype=np.int64)
    for q0 in range(0, q_all.shape[0], chunk):
        q = q_all[q0:q0 + chunk]
        best_d = torch.full((q.shape[0], 0), 0.0, dtype=dtype)
        best_i = torch.zeros((q.shape[0], 0), dtype=torch.int64)
        for r0 in range(0, r_all.shape[0], ref_chunk):
            d = torch.cdist(q, r_all[r0:r0 + ref_chunk], compute_mode="donot_use_mm_for_euclid_dist"
                            if dtype == torch.float64 else "use_mm_for_euclid_dist_if_necessary")
            idx = torch.arange(r0, r0 + d.shape[1]).expand(q.shape[0], -1)
            if exclude_self:
                rows = torch.arange(q0, q0 + q.shape[0])[:, None]
                d = d.masked_fill(idx == rows, float("inf"))
            # Keep only the k best so far: merging per block keeps memory at [chunk, k + ref_chunk].
            d = torch.cat([best_d, d], dim=1)
            idx = torch.cat([best_i, idx], dim=1)
            best_d, pos = d.topk(min(k, d.shape[1]), dim=1, largest=False, sorted=True)
            best_i = idx.gather(1, pos)
        dist_out[q0:q0 + q.shape[0]] = best_d[:, k - 1].double().numpy()
        idx_out[q0:q0 + q.shape[0]] = best_i[:, k - 1].numpy()
    return dist_out, idx_out


def within_any_ball(query: np.ndarray | torch.Tensor, centres: np.ndarray | torch.Tensor,
                    radii: np.ndarray | torch.Tensor, *, chunk: int = 1024, ref_chunk: int = 8192) -> np.ndarray:
    """Whether each query row lies in at least one ball: ||query_i - centres_j|| <= radii_j.

    query [Q, D], centres [R, D], radii [R] -> bool numpy [Q]. The k-NN manifold test of
    improved precision and recall (Kynkaanniemi et al. 2019).
    """
    q_all, c_all = _as_tensor(query), _as_tensor(centres)
    dtype = torch.promote_types(q_all.dtype, c_all.dtype)
    q_all, c_all = q_all.to(dtype), c_all.to(dtype)
    r_all = torch.as_tensor(radii).to(dtype).reshape(-1)
    out = np.zeros(q_all.shape[0], dtype=bool)
    for q0 in range(0, q_all.shape[0], chunk):
        q = q_all[q0:q0 + chunk]
        hit = torch.zeros(q.shape[0], dtype=torch.bool)
        for c0 in range(0, c_all.shape[0], ref_chunk):
            d = torch.cdist(q, c_all[c0:c0 + ref_chunk])
            hit |= (d <= r_all[c0:c0 + ref_chunk][None, :]).any(dim=1)
        out[q0:q0 + q.shape[0]] = hit.numpy()
    return out
