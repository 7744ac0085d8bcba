"""The evaluator against a straightforward per-query implementation of the same protocol."""

import numpy as np
import pytest
import torch

from training.metrics import evaluate_rank, k_reciprocal_rerank, pairwise_distance


def reference_eval(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=50, kind="stable"):
    """One query at a time, as re-ID toolkits write it (a stable sort keeps ties in gallery order; the benchmark
    times it with NumPy's default, faster sort)."""
    all_cmc, all_ap, all_inp = [], [], []
    for q in range(distmat.shape[0]):
        order = np.argsort(distmat[q], kind=kind)
        remove = (g_pids[order] == q_pids[q]) & (g_camids[order] == q_camids[q])
        matches = (g_pids[order] == q_pids[q])[~remove].astype(np.float64)
        if not matches.any():
            continue
        cmc = matches.cumsum()
        cmc[cmc > 1] = 1
        padded = np.ones(max_rank)
        padded[: min(max_rank, len(cmc))] = cmc[:max_rank]
        all_cmc.append(padded)
        positions = np.where(matches == 1)[0]
        all_inp.append(matches.sum() / (positions.max() + 1))
        precision = matches.cumsum() / (np.arange(len(matches)) + 1)
        all_ap.append((precision * matches).sum() / matches.sum())
    return np.mean(all_ap), np.mean(all_cmc, axis=0), np.mean(all_inp)


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


def test_reranking_properties_on_clustered_features():
    rng = torch.Generator().manual_seed(0)
    centers = torch.randn(6, 16, generator=rng) * 3
    labels_g = torch.arange(6).repeat_interleave(5)
    gallery = centers[labels_g] + torch.randn(30, 16, generator=rng)
    labels_q = torch.arange(6)
    query = centers + torch.randn(6, 16, generator=rng)
    reranked = k_reciprocal_rerank(query, gallery, k1=4, k2=2, lambda_value=0.3)
    assert reranked.shape == (6, 30) and torch.isfinite(reranked).all()
    cams_q, cams_g = np.zeros(6), np.ones(30)
    before = evaluate_rank(pairwise_distance(query, gallery), labels_q, labels_g, cams_q, cams_g)
    after = evaluate_rank(reranked, labels_q, labels_g, cams_q, cams_g)
    assert after["cmc"][0] == 1.0 and after["mAP"] >= before["mAP"] - 1e-9
    only_original = k_reciprocal_rerank(query, gallery, k1=4, k2=2, lambda_value=1.0)
    full = pairwise_distance(torch.cat([query, gallery]).double(), torch.cat([query, gallery]).double())
    expected = (full / full.max(dim=0).values)[:6, 6:].float()
    torch.testing.assert_close(only_original, expected)
