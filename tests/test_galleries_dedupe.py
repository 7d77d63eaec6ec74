"""Galleries are de-duplicated on load: exact repeats merged, the count recorded."""

from __future__ import annotations

import pandas as pd

from geoalign.data.galleries import load_gallery


def test_exact_duplicates_are_merged_and_counted(tmp_path):
    path = tmp_path / "g.csv"
    rows = {
        "lat": [48.8566, 45.764, 48.8566, 0.0, -0.0, 48.8566, 48.85661],
        "lon": [2.3522, 4.8357, 2.3522, 0.0, 0.0, 2.3522, 2.3522],
        "name": ["paris", "lyon", "paris-2", "origin", "origin-2", "paris-3", "near-paris"],
    }
    pd.DataFrame(rows).to_csv(path, index=False)
    g = load_gallery(path)
    assert g["name"].tolist() == ["paris", "lyon", "origin", "near-paris"]  # first one kept
    assert g.index.tolist() == [0, 1, 2, 3]
    assert g.attrs["duplicates_merged"] == 3
    assert "3 exact duplicate coordinates merged" in g.attrs["description"]
    assert "4 coordinates" in g.attrs["description"]


def test_dedupe_can_be_turned_off_and_unique_galleries_say_nothing(tmp_path):
    path = tmp_path / "g.csv"
    pd.DataFrame({"lat": [1.0, 1.0, 2.0], "lon": [3.0, 3.0, 4.0]}).to_csv(path, index=False)
    assert len(load_gallery(path, dedupe=False)) == 3
    unique = tmp_path / "u.csv"
    pd.DataFrame({"lat": [1.0, 2.0], "lon": [3.0, 4.0]}).to_csv(unique, index=False)
    g = load_gallery(unique)
    assert g.attrs["duplicates_merged"] == 0 and "merged" not in g.attrs["description"]
