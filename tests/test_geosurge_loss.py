"""GeoSURGE's hierarchical InfoNCE and hierarchical inference against hand and brute-force values."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from geoalign.geo.cells import CellHierarchy, PartitionRules, contains
from geoalign.losses import hierarchical_classification_loss, hierarchical_info_nce
from geoalign.nn.geocells import GeographicEmbeddings, hierarchical_log_scores


def _nce(pos: float, others: list[float], tau: float) -> float:
    """-log softmax of the positive among the candidates, written out."""
    den = math.exp(pos / tau) + sum(math.exp(o / tau) for o in others)
    return -math.log(math.exp(pos / tau) / den)


S2 = 1 / math.sqrt(2)
VISUAL = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0]])  # normalised inside the loss
TABLES = [
    torch.tensor([[1.0, 0.0], [0.0, 1.0]]),
    torch.tensor([[2.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]),
]
SCALES = torch.log(torch.tensor([1 / 0.5, 1 / 0.25]))  # tau 0.5 and 0.25


def test_info_nce_equals_hand_computation_with_all_cells():
    labels = torch.tensor([[0, 0], [1, 2], [0, -1]])  # image 3 has no cell at level 1
    out = hierarchical_info_nce(VISUAL, TABLES, SCALES, labels, negatives="all")
    level0 = (_nce(1, [0], 0.5) + _nce(1, [0], 0.5) + _nce(S2, [S2], 0.5)) / 3
    level1 = (_nce(1, [0, -1], 0.25) + _nce(0, [0, 1], 0.25)) / 2
    assert out.per_level.tolist() == pytest.approx([level0, level1], rel=1e-6)
    assert float(out.total) == pytest.approx(level0 + level1, rel=1e-6)
    assert out.counts.tolist() == [3, 2]


def test_batch_negatives_are_the_distinct_cells_present():
    # Level 0: images 1 and 3 share cell 0 -> candidates {0, 1}, each once.
    # Level 1: cells {0, 2} present (cell 1 absent, image 3 ignored) -> cell 1 is no negative.
    labels = torch.tensor([[0, 0], [1, 2], [0, -1]])
    out = hierarchical_info_nce(VISUAL, TABLES, SCALES, labels, negatives="batch")
    level0 = (_nce(1, [0], 0.5) + _nce(1, [0], 0.5) + _nce(S2, [S2], 0.5)) / 3
    level1 = (_nce(1, [-1], 0.25) + _nce(0, [0], 0.25)) / 2
    assert out.per_level.tolist() == pytest.approx([level0, level1], rel=1e-6)
    # Candidates from a larger (global) batch add their cells as negatives.
    cand = torch.tensor([[0, 0], [1, 2], [0, 1]])
    wider = hierarchical_info_nce(VISUAL, TABLES, SCALES, labels, candidate_labels=cand)
    level1_all = (_nce(1, [0, -1], 0.25) + _nce(0, [0, 1], 0.25)) / 2
    assert float(wider.per_level[1]) == pytest.approx(level1_all, rel=1e-6)


def test_level_without_any_label_contributes_zero_and_keeps_gradients():
    v = VISUAL.clone().requires_grad_(True)
    labels = torch.tensor([[0, -1], [1, -1], [0, -1]])
    out = hierarchical_info_nce(v, TABLES, SCALES, labels)
    assert float(out.per_level[1].detach()) == 0 and out.counts.tolist() == [3, 0]
    out.total.backward()
    assert v.grad is not None


def test_classifier_loss_equals_hand_cross_entropy():
    logits = [
        torch.tensor([[2.0, 0.0], [0.0, 1.0]]),
        torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]]),
    ]
    labels = torch.tensor([[0, 2], [1, -1]])
    out = hierarchical_classification_loss(logits, labels)
    level0 = (_nce(2, [0], 1) + _nce(1, [0], 1)) / 2
    assert out.per_level.tolist() == pytest.approx([level0, _nce(3, [1, 2], 1)], rel=1e-6)


def test_levels_are_trained_separately():
    torch.manual_seed(0)
    geo = GeographicEmbeddings((3, 5, 7), dim=4)
    labels = torch.tensor([[0, 1, 2], [2, 4, 6], [1, 0, 3]])
    out = geo.loss(torch.randn(3, 4), labels)
    out.per_level[1].backward()
    grads = [t.weight.grad for t in geo.tables]
    assert grads[0] is None or not grads[0].any()
    assert grads[2] is None or not grads[2].any()
    assert grads[1].abs().sum() > 0
    assert geo.logit_scales.grad.tolist()[0] == 0 and geo.logit_scales.grad.tolist()[1] != 0
    assert torch.allclose(1 / geo.scales().exp(), torch.full((3,), 0.07))


# --- hierarchical inference ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hierarchy():
    rng = np.random.default_rng(0)
    centers = rng.uniform([-60, -170], [70, 170], size=(25, 2))
    pts = centers[rng.integers(0, 25, 4000)] + rng.normal(0, 3, (4000, 2))
    return CellHierarchy.build(
        pts[:, 0], pts[:, 1], tau_max=(1500, 600, 200, 80), rules=PartitionRules(tau_min=15)
    ), pts


def test_hierarchy_invariants_used_by_inference(hierarchy):
    h, pts = hierarchy
    assert h.sizes == sorted(h.sizes) and len(h) == 4
    fine = h.partitions[-1]
    for k in range(3):
        parent = h.parents[-1][:, k]
        assert (parent >= 0).all()  # built hierarchies nest: every finest cell has every parent
        assert contains(h.partitions[k].cell_ids[parent], fine.cell_ids).all()
    labels = h.assign(pts[:, 0], pts[:, 1])
    has_fine = labels[:, -1] >= 0
    assert np.array_equal(labels[has_fine, :-1], h.parents[-1][labels[has_fine, -1]])


def test_inference_equals_brute_force_product_over_the_tree(hierarchy):
    h, _ = hierarchy
    g = torch.Generator().manual_seed(1)
    logits = [torch.randn(2, n, generator=g) * 3 for n in h.sizes]
    parents = torch.from_numpy(h.parents[-1])
    fast = hierarchical_log_scores(logits, parents).exp()
    probs = [torch.softmax(x, -1).tolist() for x in logits]
    for b in range(2):
        for r in range(h.sizes[-1]):
            chain = h.chain(np.array([r]))[0]  # class index at every level, coarse to fine
            expected = math.prod(probs[k][b][int(c)] for k, c in enumerate(chain))
            assert float(fast[b, r]) == pytest.approx(expected, rel=1e-4)


def test_missing_parent_takes_the_uniform_probability():
    logits = [torch.tensor([[0.0, 2.0, 1.0]]), torch.tensor([[1.0, 0.0]])]
    parents = torch.tensor([[1], [-1]])
    out = hierarchical_log_scores(logits, parents).exp()[0]
    p0, p1 = torch.softmax(logits[0][0], 0), torch.softmax(logits[1][0], 0)
    assert out.tolist() == pytest.approx([float(p0[1] * p1[0]), float(p1[1]) / 3], rel=1e-6)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 30), scale=st.floats(0.1, 50))
def test_single_level_inference_is_the_softmax(n, scale):
    x = torch.linspace(-1, 1, n)[None] * scale
    out = hierarchical_log_scores([x], torch.zeros(n, 0, dtype=torch.long))
    torch.testing.assert_close(out, torch.log_softmax(x, -1))
