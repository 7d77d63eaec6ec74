"""The published MP-16 partitions (cells_50_{5000,2000,1000}): token repair, rules, nesting, and
our builder on a synthetic sample drawn from them."""

import numpy as np
import pandas as pd
import pytest
import s2geometry as s2

from _shared import mp16_cells  # noqa: E402
from geoalign.errors import DataError
from geoalign.geo.cells import (
    CellHierarchy,
    PartitionRules,
    read_cell_csv,
    read_cell_csvs,
    sample_in_cells,
    write_cell_csv,
)
from geoalign.geo.s2.reference import spreadsheet_token_candidates

FILES = [mp16_cells(t) for t in (5000, 2000, 1000)]  # shipped in tests/data


@pytest.mark.parametrize(
    ("raw", "original"),
    [
        ("4780000", "478e4"),  # "478e4" read as 4.78 million
        ("4.7E+064", "47e063"),  # 4.7e64 = 47e63; the exponent may have had leading zeros
        ("994", "0994"),  # leading zero stripped
        ("8E+095", "80e94"),
        ("0", "0e37"),
        ("477000000000", "477e9"),
    ],
)
def test_candidates_contain_the_original(raw, original):
    assert original in spreadsheet_token_candidates(raw)


def test_candidates_of_plain_tokens():
    assert spreadsheet_token_candidates("89c6c74") == []  # text, never a number
    assert "0f" not in spreadsheet_token_candidates("f")


@pytest.fixture(scope="module")
def mp16():
    return read_cell_csvs(FILES)


def test_mp16_tokens_repaired_and_valid(mp16):
    hierarchy, repairs = mp16
    raw = {f.name: pd.read_csv(f, dtype={"hex_id": str}) for f in FILES}
    for name, df in raw.items():
        tokens = df["hex_id"].tolist()
        parsed = [s2.S2CellId.FromToken(t) for t in tokens]
        broken = sum(
            not c.is_valid() or c.ToToken() != t for c, t in zip(parsed, tokens, strict=True)
        )
        fixes = repairs[name]
        assert (
            broken > 0 and len(fixes) >= broken
        )  # the files as published do contain mangled tokens
        assert sum(r.token is not None for r in fixes) / len(fixes) > 0.97
    by_tau = {p.tau_max: p for p in hierarchy.partitions}
    assert {t: len(p) for t, p in by_tau.items()} == {5000: 3298, 2000: 7199, 1000: 12888}
    for tau, part in by_tau.items():
        df = raw[mp16_cells(tau).name].set_index("class_label")
        # every kept token parses with s2geometry, holds its mean location, and keeps its label
        for k in range(0, len(part), 97):
            cell = s2.S2CellId.FromToken(part.tokens[k])
            assert cell.is_valid() and cell.id() == int(part.cell_ids[k])
            ll = s2.S2LatLng.FromDegrees(part.lat_mean[k], part.lon_mean[k])
            assert s2.S2Cell(cell).Contains(ll.ToPoint())
            assert df.loc[part.labels[k], "imgs_per_cell"] == part.counts[k]
        assert part.overlaps().size == 0


def test_mp16_rules_and_nesting(mp16):
    hierarchy, _ = mp16
    for part in hierarchy.partitions:
        # GeoEstimation rules: start at level 2, drop <= 50, exceed tau_max only at level 30
        assert part.counts.min() == 51
        assert part.levels.min() == 2
        assert (part.levels[part.counts > part.tau_max] == 30).all()
    for report in hierarchy.nesting():
        assert report.nested, report
    # a cell small enough for the finer tau appears unchanged in the finer file
    p5, p2, p1 = hierarchy.partitions
    small = p5.counts <= 2000
    assert np.isin(p5.cell_ids[small], p2.cell_ids).mean() > 0.99


def test_unrepaired_read_names_the_row(tmp_path):
    path = tmp_path / "cells_50_100.csv"
    path.write_text(
        "class_label,hex_id,imgs_per_cell,latitude_mean,longitude_mean\n"
        "0,47e671,60,48.85,2.35\n"
        "1,8080,70,40.0,-100.0\n"
    )
    with pytest.raises(DataError, match="row 2: hex_id '8080'"):
        read_cell_csv(path, repair=False)
    part, fixes = read_cell_csv(path)
    assert len(part) == 1 and fixes[0].row == 2 and fixes[0].token is None
    bad = tmp_path / "x.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(DataError, match="missing columns"):
        read_cell_csv(bad)


def test_builder_reproduces_mp16_counts_on_synthetic_sample(mp16, tmp_path):
    """Points drawn inside the tau=1000 cells (their counts, uniform within each cell): our builder
    with the GeoEstimation rules lands within a few percent of the published cell counts."""
    hierarchy, _ = mp16
    fine = hierarchy.partitions[-1]
    rng = np.random.default_rng(0)
    scale = 0.1  # a tenth of MP-16 keeps the test fast; tau scales with it
    counts = rng.binomial(fine.counts, scale)
    lat, lon = sample_in_cells(fine.cell_ids, counts, rng)
    taus = (500, 200, 100)
    built = CellHierarchy.build(lat, lon, taus, PartitionRules.geoestimation(tau_min=5))
    for ours, theirs in zip(built.partitions, hierarchy.partitions, strict=True):
        assert abs(len(ours) - len(theirs)) / len(theirs) < 0.12, (len(ours), len(theirs))
    write_cell_csv(built.partitions[0], tmp_path / "cells_5_500.csv")
    again, fixes = read_cell_csv(tmp_path / "cells_5_500.csv")
    assert not fixes and np.array_equal(again.cell_ids, built.partitions[0].cell_ids)
