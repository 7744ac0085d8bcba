"""The evaluator against a straightforward per-query implementation of the same protocol, and re-ranking
against the published algorithm written one image at a time."""

import numpy as np
import pytest
import torch
from vehicle_diff.training.metrics import (
    evaluate_rank,
    k_reciprocal_rerank,
    order_keys,
    pairwise_distance,
    stable_smallest,
)

from vehicle_diff.testing import reference_eval


def compare(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=20, chunk_size=7):
    distmat = np.asarray(distmat, dtype=np.float32)  # the evaluator compares float32 distances
    ours = evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=max_rank, chunk_size=chunk_size)
    ap, cmc, inp = reference_eval(np.asarray(distmat), q_pids, g_pids, q_camids, g_camids, max_rank=max_rank)
    assert ours["mAP"] == pytest.approx(ap, abs=1e-6)
    assert ours["mINP"] == pytest.approx(inp, abs=1e-6)
    np.testing.assert_allclose(ours["cmc"], cmc, atol=1e-6)


@pytest.mark.parametrize("seed", range(5))
def test_matches_reference_on_random_data(seed):
    rng = np.random.default_rng(seed)
    q_pids, g_pids = rng.integers(0, 15, 40), rng.integers(0, 15, 120)
    q_cams, g_cams = rng.integers(0, 4, 40), rng.integers(0, 4, 120)
    compare(rng.random((40, 120)), q_pids, g_pids, q_cams, g_cams)


def test_negative_distances_and_float32_ties():
    rng = np.random.default_rng(3)
    distmat = rng.normal(size=(20, 50)).round(1)  # negative values and many ties
    compare(distmat, rng.integers(0, 5, 20), rng.integers(0, 5, 50), rng.integers(0, 2, 20), rng.integers(0, 2, 50))


def test_matches_reference_with_ties_and_queries_without_matches():
    rng = np.random.default_rng(7)
    distmat = rng.integers(0, 5, (30, 60)).astype(np.float64)  # many ties
    q_pids, g_pids = rng.integers(0, 8, 30), rng.integers(0, 6, 60)  # ids 6, 7 never in the gallery
    compare(distmat, q_pids, g_pids, rng.integers(0, 3, 30), rng.integers(0, 3, 60))


def test_junk_rule_removes_same_id_same_camera_only():
    distmat = np.array([[0.1, 0.2, 0.3]])
    # gallery 0: same id, same camera (junk); 1: other id; 2: same id, other camera
    result = evaluate_rank(distmat, np.array([1]), np.array([1, 2, 1]), np.array([0]), np.array([0, 0, 1]), max_rank=3)
    assert result["cmc"] == [0.0, 1.0, 1.0] and result["mAP"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="no query has a true match"):
        evaluate_rank(distmat, np.array([1]), np.array([1, 2, 3]), np.array([0]), np.array([0, 0, 1]))


def test_distance_matches_cdist():
    rng = torch.Generator().manual_seed(0)
    q, g = torch.randn(5, 8, generator=rng), torch.randn(7, 8, generator=rng)
    torch.testing.assert_close(pairwise_distance(q, g), torch.cdist(q, g) ** 2, atol=1e-5, rtol=1e-5)


def test_signed_zeros_tie_and_nan_ranks_last():
    row = torch.tensor([[0.5, -0.0, float("nan"), 0.0, -float("nan"), -1.0, float("inf"), -0.0]])
    order = torch.argsort(order_keys(row), dim=1).squeeze(0).tolist()
    assert order == np.argsort(row.numpy()[0], kind="stable").tolist() == [5, 1, 3, 7, 0, 6, 2, 4]
    rng = np.random.default_rng(11)
    distmat = rng.choice(np.array([0.0, -0.0, 1.0, np.nan, -np.nan, 0.5], dtype=np.float32), size=(25, 40))
    compare(distmat, rng.integers(0, 4, 25), rng.integers(0, 4, 40), rng.integers(0, 2, 25), rng.integers(0, 2, 40))


def test_stable_smallest_matches_a_stable_sort():
    rng = np.random.default_rng(5)
    values = rng.integers(0, 4, (30, 50)).astype(np.float32)  # many ties, some across the k-th place
    for k in (1, 7, 50):
        expected = np.argsort(values, axis=1, kind="stable")[:, :k]
        np.testing.assert_array_equal(stable_smallest(torch.from_numpy(values), k).numpy(), expected)


def reference_rerank(query, gallery, k1, k2, lambda_value):
    """Zhong et al. (CVPR 2017) as published, one image at a time, in float64, with stable sorts."""
    features = np.concatenate([query, gallery]).astype(np.float64)
    num_q, total = len(query), len(features)
    distance = ((features[:, None, :] - features[None, :, :]) ** 2).sum(axis=2)
    distance = distance / distance.max(axis=1, keepdims=True)  # each row by its maximum
    rank = np.argsort(distance, axis=1, kind="stable")

    def reciprocal(i, k):
        return np.array([j for j in rank[i, : k + 1] if i in rank[j, : k + 1]], dtype=int)

    weights = np.zeros((total, total))
    for i in range(total):
        first = reciprocal(i, k1)
        expansion = list(first)
        for candidate in first:
            candidate_set = reciprocal(candidate, int(np.around(k1 / 2)))
            if len(np.intersect1d(candidate_set, first)) > 2 / 3 * len(candidate_set):  # against the first set
                expansion += list(candidate_set)
        expansion = np.unique(expansion).astype(int)
        weight = np.exp(-distance[i, expansion])
        weights[i, expansion] = weight / weight.sum()
    if k2 != 1:
        weights = np.stack([weights[rank[i, :k2]].mean(axis=0) for i in range(total)])
    jaccard = np.zeros((num_q, total - num_q))
    for i in range(num_q):
        for g in range(total - num_q):
            shared = np.minimum(weights[i], weights[num_q + g]).sum()
            jaccard[i, g] = 1 - shared / (2 - shared)
    return jaccard * (1 - lambda_value) + distance[:num_q, num_q:] * lambda_value


@pytest.mark.parametrize(
    "values, k1, k2, lambda_value",
    [
        ("integer", 4, 2, 0.3),
        ("integer", 7, 6, 0.3),
        ("integer", 3, 3, 1.0),
        ("normal", 20, 6, 0.3),
        ("normal", 5, 1, 0.0),
        ("normal", 9, 4, 0.5),
    ],
)
def test_reranking_matches_the_published_algorithm(values, k1, k2, lambda_value):
    rng = np.random.default_rng(k1 * 10 + k2)
    if values == "integer":  # exact distances: many ties, broken by index on both sides
        features = rng.integers(-2, 3, (70, 6)).astype(np.float32)
    else:
        features = rng.normal(size=(70, 12)).astype(np.float32)
    features[50:55] = features[10:15]  # gallery copies of gallery images
    features[3] = features[40]  # a query that is also in the gallery
    features[60] = features[61] = features[62]  # three of a kind
    query, gallery = features[:15], features[15:]
    expected = reference_rerank(query, gallery, k1, k2, lambda_value)
    for block_size in (16, 1024):  # several blocks, and one
        ours = k_reciprocal_rerank(
            torch.from_numpy(query),
            torch.from_numpy(gallery),
            k1=k1,
            k2=k2,
            lambda_value=lambda_value,
            block_size=block_size,
        )
        assert ours.shape == (15, 55) and ours.dtype == torch.float32
        np.testing.assert_allclose(ours.numpy(), expected, atol=1e-5, rtol=0)


def test_reranking_improves_clustered_retrieval():
    rng = torch.Generator().manual_seed(0)
    centers = torch.randn(6, 16, generator=rng) * 3
    labels_g = torch.arange(6).repeat_interleave(5)
    gallery = centers[labels_g] + torch.randn(30, 16, generator=rng)
    labels_q = torch.arange(6)
    query = centers + torch.randn(6, 16, generator=rng)
    reranked = k_reciprocal_rerank(query, gallery, k1=4, k2=2, lambda_value=0.3)
    cams_q, cams_g = np.zeros(6), np.ones(30)
    before = evaluate_rank(pairwise_distance(query, gallery), labels_q, labels_g, cams_q, cams_g)
    after = evaluate_rank(reranked, labels_q, labels_g, cams_q, cams_g)
    assert after["cmc"][0] == 1.0 and after["mAP"] >= before["mAP"] - 1e-9
    with pytest.raises(ValueError, match="lambda_value"):
        k_reciprocal_rerank(query, gallery, lambda_value=1.5)
    with pytest.raises(ValueError, match="finite"):
        k_reciprocal_rerank(query * float("nan"), gallery)
