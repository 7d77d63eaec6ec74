"""Explanations and global analyses: the concept bottleneck, decision rules, error bins, concept maps,
embedding plots, with planted structure whose answer is known."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from geoalign.interpret.cbm import ConceptBottleneck
from geoalign.interpret.elastic_net import fit_elastic_net, sparse_multinomial_path
from geoalign.interpret.error_bins import activation_by_error_bin, format_table3, top_bottom
from geoalign.interpret.rules import decision_rules, sankey_png


def planted_countries(n: int = 900, k: int = 12, seed: int = 0):
    """Concept activations where country i is marked by concept 2i (strong) and 2i+1 (weak)."""
    rng = np.random.default_rng(seed)
    classes = np.array(["FR", "JP", "BR"])
    y = classes[rng.integers(0, 3, n)]
    a = rng.normal(0, 0.02, size=(n, k)).astype(np.float32)
    for i, c in enumerate(classes):
        a[y == c, 2 * i] += 0.15
        a[y == c, 2 * i + 1] += 0.05
    names = [f"c{j}" for j in range(k)]
    return a, y, names


def test_elastic_net_path_stops_at_the_target_sparsity_and_refit_keeps_the_support():
    import torch

    a, y, _ = planted_countries()
    x = torch.from_numpy((a - a.mean(0)) / a.std(0))
    labels = torch.tensor([{"FR": 0, "JP": 1, "BR": 2}[c] for c in y])
    kwargs = dict(l1_ratio=0.99, path_steps=20, iters_per_step=150)
    w, b, lam = sparse_multinomial_path(x, labels, 3, target_nonzero=2, refit_ridge=None, **kwargs)
    assert float((w != 0).sum(1).float().mean()) >= 2 and (w == 0).any()
    assert lam < float("inf") and b.shape == (3,)
    # each class keeps its strong planted concept (2i) with a positive weight
    assert all(w[i, 2 * i] > 0 for i in range(3))
    mask = (w != 0).to(w.dtype)
    w2, _ = fit_elastic_net(x, labels, 3, 1e-3, 0.0, w, b, 0.1, 50, support=mask)
    assert torch.equal(w2 == 0, w == 0)  # the relaxed refit never leaves the chosen support
    w3, _, _ = sparse_multinomial_path(x, labels, 3, target_nonzero=2, refit_ridge=1e-3, **kwargs)
    assert torch.equal(w3 == 0, w == 0)


def test_cbm_learns_planted_concepts_sparsely(tmp_path):
    a, y, names = planted_countries()
    y = y.copy()
    y[:20] = ""  # unlabelled rows (at sea) are skipped
    cbm = ConceptBottleneck.fit(
        a, y, names, ["cat"] * len(names), target_nonzero=3, min_per_class=10
    )
    assert cbm.classes == ["BR", "FR", "JP"]
    assert cbm.metrics["val_accuracy"] > 0.95 > cbm.metrics["val_majority_baseline"]
    assert cbm.metrics["nonzero_per_class"] <= 6  # sparse: a few concepts per country
    fr = cbm.classes.index("FR")
    # FR's strongest positive weight is on its planted concept c0
    assert int(np.argmax(cbm.weight[fr])) == 0
    row = a[np.flatnonzero(y == "FR")[0]]
    contrib = cbm.contributions(row, fr)
    assert np.abs(contrib).sum() == pytest.approx(1.0, abs=1e-6)
    assert int(np.argmax(contrib)) == 0
    cbm.save(tmp_path / "cbm")
    again = ConceptBottleneck.load(tmp_path / "cbm")
    np.testing.assert_allclose(again.predict_proba(a[:50]), cbm.predict_proba(a[:50]), atol=1e-6)


def test_cbm_needs_two_classes():
    from geoalign.errors import DataError

    a = np.zeros((30, 4), np.float32)
    with pytest.raises(DataError, match="at least 2 classes"):
        ConceptBottleneck.fit(a, np.array(["FR"] * 30), list("abcd"), ["x"] * 4)


def test_decision_rules_find_the_planted_concepts(tmp_path):
    a, y, names = planted_countries(k=12)
    sparse = np.where(a > 0.03, a, 0.0)
    rules = decision_rules(sparse, y, names, ["c"] * 12, ["natural"] * 12, "FR", "JP", top=2)
    assert list(rules.for_a["concept"]) == ["c0", "c1"]
    assert list(rules.for_b["concept"]) == ["c2", "c3"]
    fr = y == "FR"
    row = rules.table.set_index("concept").loc["c0"]
    assert row["mean_a"] == pytest.approx(sparse[fr, 0].mean())
    assert row["share_a"] == pytest.approx((sparse[fr, 0] != 0).mean())
    png = sankey_png(rules, tmp_path / "s.png", {"FR": "France", "JP": "Japan"})
    assert png.stat().st_size > 10_000
    from geoalign.errors import DataError

    with pytest.raises(DataError, match="only 0 images for DE"):
        decision_rules(sparse, y, names, ["c"] * 12, ["n"] * 12, "FR", "DE")


def test_activation_by_error_bin_matches_direct_medians():
    rng = np.random.default_rng(3)
    n, k = 400, 6
    acts = np.where(rng.random((n, k)) < 0.5, rng.random((n, k)), 0.0)
    dist = rng.uniform(0, 1000, n)
    names = [f"c{j}" for j in range(k)]
    table = activation_by_error_bin(acts, dist, names, min_count=5)
    assert set(table["bin"]) == {"[0–25) km", "[25–200) km", "[200–750) km"}
    in_bin = (dist >= 25) & (dist < 200)
    col = acts[in_bin, 4]
    expected = np.median(col[col != 0])
    got = table[(table["bin"] == "[25–200) km") & (table["concept"] == "c4")]["ms"].item()
    assert got == pytest.approx(expected)
    top, low = top_bottom(table, 3)["[200–750) km"]
    assert len(top) == 3 and top["ms"].is_monotonic_decreasing
    assert low["ms"].max() <= top["ms"].min()
    md = format_table3(table, 3)
    assert md.count("\n") == 4 and "c" in md  # header, separator, 3 rows


def test_region_points_and_reference_correlation(tmp_path):
    from geoalign.interpret.concept_maps import aggregate, compare_reference, region_points

    pts = region_points("US-states", spacing_km=150)
    states = set(pts.region)
    assert {"California", "Texas", "Colorado"} <= states
    assert 40 <= len(states) <= 51
    # a value that rises northward: its state means must correlate with the states' latitude
    values = pts.latlon[:, 0]
    regions = aggregate(pts, values)
    lat_by_state = regions.set_index("region")["similarity"]
    ref = pd.DataFrame(
        {
            "state": list(lat_by_state.index) + ["Atlantis"],
            "forest_pct": list(lat_by_state.to_numpy() * 2.0 + 1.0) + [50.0],
        }
    )
    ref.to_csv(tmp_path / "ref.csv", index=False)
    joined, stats = compare_reference(regions, pts, tmp_path / "ref.csv")
    assert stats["pearson_r"] == pytest.approx(1.0, abs=1e-9)
    assert stats["unmatched"] == ["Atlantis"]
    assert stats["n_regions"] == len(lat_by_state)
    # ISO 3166-2 codes work as region names too
    pd.DataFrame({"code": ["US-CA", "US-TX", "US-CO", "US-ME"], "v": [1.0, 2.0, 3.0, 5.0]}).to_csv(
        tmp_path / "iso.csv", index=False
    )
    joined, stats = compare_reference(regions, pts, tmp_path / "iso.csv")
    assert set(joined["region"]) == {"California", "Texas", "Colorado", "Maine"}


def test_embedding_clusters_and_plots(tmp_path):
    from geoalign.interpret.embedding_plots import (
        joint_embedding_plot,
        kmeans,
        modality_gap,
        plot_clusters,
        reduce_2d,
        summarize_clusters,
    )

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 16)) * 3
    labels = rng.integers(0, 3, 240)
    emb = centres[labels] + rng.normal(size=(240, 16)) * 0.3
    clusters = kmeans(emb, 3)
    # k-means recovers the planted groups up to relabelling
    agree = pd.crosstab(clusters, labels).max(axis=1).sum() / len(labels)
    assert agree > 0.95
    xy = reduce_2d(emb, "pca")
    countries = np.array(["FR", "JP", "BR"])[labels]
    acts = np.eye(3)[labels] * 0.1
    summaries = summarize_clusters(clusters, countries, acts, ["a", "b", "c"])
    assert all(s.countries[0][1] > 0.9 for s in summaries)
    latlon = np.column_stack([rng.uniform(-60, 70, 240), rng.uniform(-180, 180, 240)])
    png = plot_clusters(xy, clusters, latlon, summaries, tmp_path / "c.png")
    assert png.stat().st_size > 10_000
    gap = modality_gap(emb, emb, emb[:5])
    assert gap["paired_image_location_cosine"] == pytest.approx(1.0, abs=1e-5)
    assert gap["gap_image_location"] == pytest.approx(0.0, abs=1e-6)
    path, _ = joint_embedding_plot(
        emb, emb + 0.1, centres, ["x", "y", "z"], tmp_path / "j.png", method="pca"
    )
    assert path.stat().st_size > 10_000
