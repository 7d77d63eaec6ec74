"""S2 geocells for GeoSURGE-style partition hierarchies: the public entry point.

    from geoalign.geo.cells import CellHierarchy
    cells = CellHierarchy.build(lat, lon, tau_max=(25000, 10000, 5000, 2000, 1000, 750, 500))
    labels = cells.assign(lat, lon)          # (N, 7) class index per level, -1 in dropped regions
    cells.save("cells/"); CellHierarchy.load("cells/")

The work is done in geoalign.geo.s2 (ids: vectorised cell ids; partition: one level; hierarchy:
nesting levels, assignment, files; reference: the published MP-16 cell files).
"""

from geoalign.geo.s2.hierarchy import DEFAULT_TAU_MAX, CellHierarchy, NestingReport, nesting_report
from geoalign.geo.s2.ids import (
    MAX_LEVEL,
    cell_centers,
    cell_levels,
    cell_polygons,
    cell_vertices,
    contains,
    ids_to_tokens,
    is_valid_id,
    latlon_to_cell_ids,
    parent_ids,
    range_max,
    range_min,
    tokens_to_ids,
)
from geoalign.geo.s2.partition import Partition, PartitionRules
from geoalign.geo.s2.reference import (
    TokenRepair,
    read_cell_csv,
    read_cell_csvs,
    sample_in_cells,
    write_cell_csv,
)

__all__ = [
    "DEFAULT_TAU_MAX",
    "MAX_LEVEL",
    "CellHierarchy",
    "NestingReport",
    "Partition",
    "PartitionRules",
    "TokenRepair",
    "cell_centers",
    "cell_levels",
    "cell_polygons",
    "cell_vertices",
    "contains",
    "ids_to_tokens",
    "is_valid_id",
    "latlon_to_cell_ids",
    "nesting_report",
    "parent_ids",
    "range_max",
    "range_min",
    "read_cell_csv",
    "read_cell_csvs",
    "sample_in_cells",
    "tokens_to_ids",
    "write_cell_csv",
]
