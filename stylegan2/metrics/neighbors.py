"""Exact nearest-neighbour search on the CPU, in chunks so memory stays bounded.

A chunk of queries against a chunk of references is one [q, r] distance block (torch.cdist), so
peak memory is chunk * ref_chunk floats whatever N is; the full OASIS training split (~10k
slices) against thousands of fakes is then a few seconds of matrix products.
"""
from __future__ import annotations

import numpy as np
import torch


def _as_tensor(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    """[N, ...] -> [N, D] on the CPU. uint8 stays uint8 (chunks become float32 one at a time: the
    full OASIS training split as float32 pixels would be about 3 GB); float64 stays float64; any
    other dtype becomes float32."""
    t = torch.as_tensor(x).cpu()
    t = t.reshape(t.shape[0], -1)
    return t if t.dtype in (torch.uint8, torch.float64) else t.float()


def _compute_dtype(a: torch.Tensor, b: torch.Tensor) -> torch.dtype:
    return torch.float64 if torch.float64 in (a.dtype, b.dtype) else torch.float32


def kth_nearest(query: np.ndarray | torch.Tensor, ref: np.ndarray | torch.Tensor, k: int = 1, *,
                exclude_self: bool = False, self_index: np.ndarray | None = None, chunk: int = 1024,
                ref_chunk: int = 8192) -> tuple[np.ndarray, np.ndarray]:
    """For each query row, the Euclidean distance to its k-th nearest reference row and that row's
    index.

    query [Q, ...], ref [R, ...]: flattened to vectors (pixels or features; any dtype, uint8
        kept as such in memory and converted a chunk at a time).
    exclude_self: query and ref are the same set; row i never counts as its own neighbour (by
        index, so an exact duplicate elsewhere in the set still does, as it should).
    self_index: int [Q], the ref row that is query i itself (queries drawn from ref), excluded
        like exclude_self does, without copying ref into a reordered set.
    Returns (distances float64 [Q], indices int64 [Q]).
    """
    q_all, r_all = _as_tensor(query), _as_tensor(ref)
    dtype = _compute_dtype(q_all, r_all)
    if exclude_self:
        self_index = np.arange(q_all.shape[0])
    skip = None if self_index is None else torch.as_tensor(np.asarray(self_index), dtype=torch.int64)
    n_ref = r_all.shape[0] - (0 if skip is None else 1)
    if k < 1 or k > n_ref:
        raise ValueError(f"k must be in [1, {n_ref}] for {r_all.shape[0]} reference rows, got {k}")
    dist_out = np.empty(q_all.shape[0])
    idx_out = np.empty(q_all.shape[0], dtype=np.int64)
    for q0 in range(0, q_all.shape[0], chunk):
        q = q_all[q0:q0 + chunk].to(dtype)
        best_d = torch.full((q.shape[0], 0), 0.0, dtype=dtype)
        best_i = torch.zeros((q.shape[0], 0), dtype=torch.int64)
        for r0 in range(0, r_all.shape[0], ref_chunk):
            d = torch.cdist(q, r_all[r0:r0 + ref_chunk].to(dtype), compute_mode="donot_use_mm_for_euclid_dist"
                            if dtype == torch.float64 else "use_mm_for_euclid_dist_if_necessary")
            idx = torch.arange(r0, r0 + d.shape[1]).expand(q.shape[0], -1)
            if skip is not None:
                d = d.masked_fill(idx == skip[q0:q0 + q.shape[0], None], float("inf"))
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
    dtype = _compute_dtype(q_all, c_all)
    r_all = torch.as_tensor(radii).to(dtype).reshape(-1)
    out = np.zeros(q_all.shape[0], dtype=bool)
    for q0 in range(0, q_all.shape[0], chunk):
        q = q_all[q0:q0 + chunk].to(dtype)
        hit = torch.zeros(q.shape[0], dtype=torch.bool)
        for c0 in range(0, c_all.shape[0], ref_chunk):
            d = torch.cdist(q, c_all[c0:c0 + ref_chunk].to(dtype))
            hit |= (d <= r_all[c0:c0 + ref_chunk][None, :]).any(dim=1)
        out[q0:q0 + q.shape[0]] = hit.numpy()
    return out
