"""Re-ID metrics: CMC, mAP and mINP under the standard protocol, and k-reciprocal re-ranking.

Protocol (Market-1501 / VeRi-776): for each query, gallery entries with the same identity *and* the same camera
are junk and removed from its ranking; a query with no remaining true match is left out; an error is raised
when none remains.
"""

from __future__ import annotations

import numpy as np
import torch

INT64_MAX = torch.iinfo(torch.int64).max


def order_keys(distmat: torch.Tensor) -> torch.Tensor:
    """int64 keys that order each row exactly like a stable sort of its float32 distances: the float's bits
    (made monotonic for negatives) in the high half, the gallery index in the low half. No two keys tie."""
    bits = distmat.float().contiguous().view(torch.int32)
    bits = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits)
    return bits.long() * (1 << 32) + torch.arange(distmat.shape[1])


def evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank: int = 50, chunk_size: int = 64) -> dict:
    """mAP, CMC (ranks 1..max_rank) and mINP of a query x gallery distance matrix (compared in float32; ties
    keep gallery order, as a stable sort would).

    No row is sorted: only the ranks of the true matches matter. For a chunk of queries, the matches' keys are
    picked with `topk` (a few dozen per query) and every kept non-match is counted into the gap between two
    consecutive matches with one `searchsorted`; the rank of match k is then k + the non-matches before it.
    """
    distmat = torch.as_tensor(distmat)
    q_pids, g_pids = torch.as_tensor(q_pids), torch.as_tensor(g_pids)
    q_camids, g_camids = torch.as_tensor(q_camids), torch.as_tensor(g_camids)
    max_rank = min(max_rank, distmat.shape[1])
    cmc_hits = torch.zeros(max_rank, dtype=torch.float64)
    ap_sum = inp_sum = 0.0
    valid_queries = 0
    for start in range(0, distmat.shape[0], chunk_size):
        rows = slice(start, start + chunk_size)
        same_id = g_pids[None, :] == q_pids[rows, None]
        junk = same_id & (g_camids[None, :] == q_camids[rows, None])
        matches = same_id & ~junk
        num_rel = matches.sum(dim=1)
        has_match = num_rel > 0
        if not has_match.any():
            continue
        keys = order_keys(distmat[rows][has_match])
        matches, junk, num_rel = matches[has_match], junk[has_match], num_rel[has_match]
        most = int(num_rel.max())
        match_keys = torch.topk(keys.masked_fill(~matches, INT64_MAX), most, dim=1, largest=False).values
        non_match_keys = keys.masked_fill_(matches | junk, INT64_MAX)  # kept non-matches only
        gap = torch.searchsorted(match_keys, non_match_keys)  # number of matches ranked before each entry
        per_gap = torch.zeros(len(gap), most + 1, dtype=torch.int64).scatter_add_(1, gap, torch.ones_like(gap))
        k = torch.arange(most)
        rank = torch.cumsum(per_gap, dim=1)[:, :most] + k  # 0-based rank of match k among kept entries
        is_match = k[None, :] < num_rel[:, None]
        cmc_hits += (rank[:, :1] <= torch.arange(max_rank)[None, :]).sum(dim=0).double()
        ap_sum += (torch.where(is_match, (k + 1) / (rank + 1), 0.0).sum(dim=1) / num_rel).sum().item()
        hardest = rank.gather(1, (num_rel - 1)[:, None]).squeeze(1)
        inp_sum += (num_rel / (hardest + 1)).sum().item()
        valid_queries += int(has_match.sum())
    if valid_queries == 0:
        raise ValueError("no query has a true match in the gallery (after removing same-camera matches)")
    return {
        "mAP": ap_sum / valid_queries,
        "cmc": (cmc_hits / valid_queries).tolist(),
        "mINP": inp_sum / valid_queries,
        "num_valid_queries": valid_queries,
    }


def pairwise_distance(query: torch.Tensor, gallery: torch.Tensor, metric: str = "euclidean") -> torch.Tensor:
    """Squared euclidean (expanded: ||q||^2 + ||g||^2 - 2 q.g, one matmul) or cosine distance."""
    if metric == "cosine":
        return 1 - torch.nn.functional.normalize(query, dim=1) @ torch.nn.functional.normalize(gallery, dim=1).T
    squares = (query * query).sum(1, keepdim=True) + (gallery * gallery).sum(1)[None, :]
    return (squares - 2 * query @ gallery.T).clamp_(min=0)


def k_reciprocal_rerank(
    query: torch.Tensor, gallery: torch.Tensor, k1: int = 20, k2: int = 6, lambda_value: float = 0.3
) -> torch.Tensor:
    """Re-ranking with k-reciprocal encoding (Zhong et al., CVPR 2017): a query x gallery distance mixing the
    Jaccard distance of expanded k-reciprocal neighbour sets with the original distance (weight lambda)."""
    features = torch.cat([query, gallery]).double()
    num_q, total = query.shape[0], features.shape[0]
    original = pairwise_distance(features, features)
    original = original / original.max(dim=0).values.clamp(min=1e-12)  # each column scaled to [0, 1]
    ranking = torch.argsort(original, dim=1, stable=True)
    neighbours = ranking[:, : k1 + 1]

    def reciprocal(index: int, k: int) -> torch.Tensor:
        forward = ranking[index, : k + 1]
        backward = ranking[forward, : k + 1]
        return forward[(backward == index).any(dim=1)]

    weights = torch.zeros(total, total, dtype=torch.float64)
    half = int(round(k1 / 2))
    for index in range(total):
        expansion = reciprocal(index, k1)
        for candidate in expansion.tolist():
            candidate_set = reciprocal(candidate, half)
            if len(np.intersect1d(candidate_set.numpy(), expansion.numpy())) > 2 / 3 * len(candidate_set):
                expansion = torch.cat([expansion, candidate_set])
        expansion = torch.unique(expansion)
        weight = torch.exp(-original[index, expansion])
        weights[index, expansion] = weight / weight.sum()
    if k2 > 1:  # local query expansion
        weights = weights[neighbours[:, :k2]].mean(dim=1)
    # Jaccard distance between the (soft) neighbour sets of each query and each gallery entry; only the
    # query's non-zero neighbours contribute to the intersection
    gallery_weights = weights[num_q:]
    jaccard = torch.empty(num_q, total - num_q, dtype=torch.float64)
    for index in range(num_q):
        columns = torch.nonzero(weights[index]).squeeze(1)
        intersection = torch.minimum(weights[index, columns][None, :], gallery_weights[:, columns]).sum(dim=1)
        jaccard[index] = 1 - intersection / (2 - intersection)
    return (jaccard * (1 - lambda_value) + original[:num_q, num_q:] * lambda_value).float()
