"""Re-ID metrics: CMC, mAP and mINP under the standard protocol, and k-reciprocal re-ranking.

Protocol (Market-1501 / VeRi-776): for each query, gallery entries with the same identity *and* the same camera
are junk and removed from its ranking; a query with no remaining true match is left out; an error is raised
when none remains.
"""

from __future__ import annotations

import torch

INT64_MAX = torch.iinfo(torch.int64).max


def order_keys(distmat: torch.Tensor) -> torch.Tensor:
    """int64 keys that order each row exactly like a stable sort of its float32 distances: the float's bits
    (made monotonic for negatives) in the high half, the gallery index in the low half. No two keys tie;
    -0.0 and +0.0 rank as equal (gallery order decides) and NaN ranks last, as in NumPy's sort."""
    values = distmat.float()
    values = torch.where(values == 0, 0.0, values)  # -0.0 ties with +0.0
    values = torch.where(torch.isnan(values), torch.nan, values)  # every NaN positive: after +inf
    bits = values.contiguous().view(torch.int32)
    bits = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits)
    return bits.long() * (1 << 32) + torch.arange(distmat.shape[1], device=distmat.device)


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


def stable_smallest(values: torch.Tensor, k: int) -> torch.Tensor:
    """Column indices of the k smallest entries of each row, in the order of a stable sort (ties by index), for
    finite values: a `topk` for the k-th value, then the entries below it and the first of those equal to it."""
    threshold = torch.topk(values, k, dim=1, largest=False, sorted=False).values.max(dim=1, keepdim=True).values
    chosen = values < threshold
    tied = values == threshold
    room = k - chosen.sum(dim=1)
    crowded = torch.nonzero(tied.sum(dim=1) > room).squeeze(1)  # rows whose ties at the threshold do not all fit
    tied[crowded] &= torch.cumsum(tied[crowded], dim=1) <= room[crowded, None]
    index = torch.nonzero(chosen | tied)[:, 1].view(-1, k)  # ascending column order within each row
    order = torch.sort(values.gather(1, index), dim=1, stable=True).indices
    return index.gather(1, order)


def _entries_of(pointers: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For a row-sorted sparse matrix with row pointers `pointers`: the positions of every entry of `rows` (in
    order) and, for each, which element of `rows` it belongs to."""
    counts = pointers[rows + 1] - pointers[rows]
    owner = torch.repeat_interleave(torch.arange(len(rows), device=rows.device), counts)
    first = torch.cumsum(counts, 0) - counts
    return pointers[rows][owner] + torch.arange(len(owner), device=rows.device) - first[owner], owner


def _sum_duplicates(rows, cols, values, num_cols: int):
    """Entries (row, col, value) with the values of equal (row, col) added, sorted by row then column."""
    keys, inverse = torch.unique(rows * num_cols + cols, return_inverse=True)
    summed = torch.zeros(len(keys), dtype=values.dtype, device=values.device).index_add_(0, inverse, values)
    return keys // num_cols, keys % num_cols, summed


def _row_pointers(sorted_rows: torch.Tensor, num_rows: int) -> torch.Tensor:
    counts = torch.bincount(sorted_rows, minlength=num_rows)
    return torch.cat([counts.new_zeros(1), torch.cumsum(counts, 0)])


def k_reciprocal_rerank(
    query_features: torch.Tensor,
    gallery_features: torch.Tensor,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
    *,
    block_size: int = 1024,
    progress: bool = False,
) -> torch.Tensor:
    """Re-ranking with k-reciprocal encoding (Zhong et al., CVPR 2017), as in the authors' code: a query x
    gallery distance (1 - lambda) * Jaccard + lambda * original.

    Over the union of queries and gallery: squared euclidean distances, each row divided by its maximum; the
    k1-reciprocal set R(i) of every image; each candidate c in R(i) adds its round(k1/2)-reciprocal set R'(c)
    when more than 2/3 of R'(c) lies in R(i); weights exp(-distance) over the expanded set, normalised to sum
    1; local query expansion (the mean of the weight vectors of the k2 nearest neighbours); the Jaccard
    distance 1 - sum(min) / (2 - sum(min)). Ties rank in index order, like a stable sort.

    Memory stays O(N * k1^2) besides the features and the query x gallery output: distances are computed in
    float32 blocks of rows and never kept whole; the weights are sparse, and the Jaccard sums visit only the
    pairs that share a neighbour (inverted index). Identical features get bit-identical distances, so
    duplicate images tie exactly. Runs on the features' device.
    """
    if k1 < 1 or k2 < 1:
        raise ValueError(f"k1 and k2 must be >= 1 (got k1={k1}, k2={k2})")
    if not 0 <= lambda_value <= 1:
        raise ValueError(f"lambda_value must be in [0, 1] (got {lambda_value})")
    features = torch.cat([query_features, gallery_features]).float()
    if features.ndim != 2 or not torch.isfinite(features).all():
        raise ValueError("features must be finite (n, d) matrices")
    from tqdm.auto import tqdm

    device, num_q, total = features.device, len(query_features), len(features)
    num_g = total - num_q
    width, half_width = min(k1 + 1, total), min(int(round(k1 / 2)) + 1, total)
    k2 = min(k2, total)
    unique, inverse = torch.unique(features, dim=0, return_inverse=True)
    if len(unique) == total:  # no duplicates: keep the original order, no column gather
        unique, inverse = features, torch.arange(total, device=device)
    squares = (unique * unique).sum(1)
    bar = tqdm(total=len(unique) + num_q, desc="re-ranking", unit="img", disable=not progress)

    # 1. per image: its nearest `width` neighbours (stable order) and its row maximum; the query x gallery block
    neighbours_u = torch.empty(len(unique), width, dtype=torch.long, device=device)
    row_max_u = torch.empty(len(unique), device=device)
    original = torch.empty(num_q, num_g, device=device)
    query_rows = inverse[:num_q]
    for start in range(0, len(unique), block_size):
        block = slice(start, start + block_size)
        distance = torch.addmm(squares[None, :], unique[block], unique.T, alpha=-2).add_(squares[block, None])
        distance = distance.clamp_(min=0) if len(unique) == total else distance.clamp_(min=0)[:, inverse]
        row_max_u[block] = distance.max(dim=1).values.clamp_(min=torch.finfo(torch.float32).tiny)
        distance /= row_max_u[block, None]
        neighbours_u[block] = stable_smallest(distance, width)
        here = torch.nonzero((query_rows >= start) & (query_rows < start + block_size)).squeeze(1)
        original[here] = distance[query_rows[here] - start, num_q:]
        bar.update(distance.shape[0])
        del distance
    neighbours, row_max = neighbours_u[inverse], row_max_u[inverse]

    # 2. k-reciprocal sets: j in R(i, k) when each is among the other's k + 1 nearest
    def reciprocal(k_width: int) -> torch.Tensor:
        nearest = neighbours[:, :k_width]
        mask = torch.empty(total, k_width, dtype=torch.bool, device=device)
        for start in range(0, total, 4096):
            rows = torch.arange(start, min(start + 4096, total), device=device)
            mask[rows] = (nearest[nearest[rows]] == rows[:, None, None]).any(dim=2)
        return mask

    in_set, in_half_set = reciprocal(width), reciprocal(half_width)

    # 3. expansion against the first set R(i), then weights over the expanded set
    rows_v, cols_v, values_v = [], [], []
    for start in range(0, total, block_size):
        rows = torch.arange(start, min(start + block_size, total), device=device)
        candidates, candidate_ok = neighbours[rows], in_set[rows]  # R(i): candidates[candidate_ok]
        half_sets, half_ok = neighbours[candidates, :half_width], in_half_set[candidates]  # R'(c) per candidate
        in_first = ((half_sets[..., None] == candidates[:, None, None, :]) & candidate_ok[:, None, None, :]).any(3)
        overlap, size = (in_first & half_ok).sum(2), half_ok.sum(2)
        accepted = candidate_ok & (overlap.double() > size.double() * (2 / 3))
        members = torch.cat(
            [
                candidates.masked_fill(~candidate_ok, total),
                half_sets.masked_fill(~(half_ok & accepted[..., None]), total).flatten(1),
            ],
            dim=1,
        )
        members = members.sort(dim=1).values
        keep = members < total
        keep[:, 1:] &= members[:, 1:] != members[:, :-1]
        owner, position = torch.nonzero(keep, as_tuple=True)
        row, col = rows[owner], members[owner, position]
        a, b = inverse[row], inverse[col]
        dot = torch.cat([(unique[a[i : i + 8192]] * unique[b[i : i + 8192]]).sum(1) for i in range(0, len(a), 8192)])
        weight = torch.exp(-(squares[a] + squares[b] - 2 * dot).clamp_(min=0) / row_max[row])
        norm = torch.zeros(len(rows), device=device).index_add_(0, owner, weight)
        rows_v.append(row)
        cols_v.append(col)
        values_v.append(weight / norm[owner])
    rows_v, cols_v, values_v = torch.cat(rows_v), torch.cat(cols_v), torch.cat(values_v)  # row-sorted, unique

    # 4. local query expansion: V[i] <- mean of V[j] over the k2 nearest j of i
    if k2 > 1:
        pointers = _row_pointers(rows_v, total)
        sources = neighbours[:, :k2].flatten()
        position, owner = _entries_of(pointers, sources)
        rows_v, cols_v, values_v = _sum_duplicates(owner // k2, cols_v[position], values_v[position] / k2, total)

    # 5. Jaccard sums over the pairs (query, gallery) that share a column: an inverted index of the gallery rows
    is_query = rows_v < num_q
    q_rows, q_cols, q_values = rows_v[is_query], cols_v[is_query], values_v[is_query]
    g_order = torch.argsort(cols_v[~is_query], stable=True)
    g_cols, g_rows = cols_v[~is_query][g_order], rows_v[~is_query][g_order] - num_q
    g_values = values_v[~is_query][g_order]
    g_pointers = _row_pointers(g_cols, total)
    q_pointers = _row_pointers(q_rows, num_q)
    pairs_per_query = torch.zeros(num_q, dtype=torch.long, device=device).index_add_(
        0, q_rows, g_pointers[q_cols + 1] - g_pointers[q_cols]
    )
    cumulative = torch.cumsum(pairs_per_query, 0).tolist()
    jaccard = torch.empty(num_q, num_g, device=device)
    first = 0
    while first < num_q:
        done = cumulative[first - 1] if first else 0
        last = first + 1
        while last < min(num_q, first + 256) and cumulative[last] - done <= 1 << 22:
            last += 1
        entries = torch.arange(int(q_pointers[first]), int(q_pointers[last]), device=device)
        position, owner = _entries_of(g_pointers, q_cols[entries])
        shared = torch.minimum(q_values[entries][owner], g_values[position]).double()
        flat = (q_rows[entries][owner] - first) * num_g + g_rows[position]
        intersection = torch.zeros((last - first) * num_g, dtype=torch.float64, device=device).index_add_(
            0, flat, shared
        )
        intersection = intersection.view(last - first, num_g)
        jaccard[first:last] = (1 - intersection / (2 - intersection)).float()
        bar.update(last - first)
        first = last
    bar.close()
    return jaccard * (1 - lambda_value) + original * lambda_value
