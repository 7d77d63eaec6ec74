"""Vectorised S2 cell ids: lat/lon -> leaf cell ids, parents, levels, tokens, centres, corners.

Why hand-written: the maintained `s2geometry` Python bindings (SWIG) convert one point per call;
4.7M MP-16 coordinates x 7 partition levels means ~33M Python-level calls (minutes), while the
same arithmetic on numpy arrays takes seconds. The code follows the reference C++ implementation
step by step (S2LatLng::ToPoint, S2::XYZtoFaceUV, the quadratic UV->ST projection, STtoIJ and the
Hilbert-curve lookup tables of S2CellId::FromFaceIJ / ToFaceIJOrientation), so the ids are the same
bits; tests/test_cells_ids.py checks every function against `s2geometry`.

Cell ids are numpy uint64 arrays. A leaf (level 30) cell is ~1 cm wide.
"""

from __future__ import annotations

from functools import cache

import numpy as np

from geoalign.errors import DataError, shown

MAX_LEVEL = 30
_POS_BITS = 2 * MAX_LEVEL + 1
_LIMIT_IJ = 1 << MAX_LEVEL
_LOOKUP_BITS = 4
_SWAP, _INVERT = 1, 2
# Hilbert curve: for each orientation, the (i, j) sub-square (as 2*i + j) visited at position k,
# and how the orientation changes when descending into position k (S2's kPosToIJ/kPosToOrientation).
_POS_TO_IJ = ((0, 1, 3, 2), (0, 2, 3, 1), (3, 2, 0, 1), (3, 1, 0, 2))
_POS_TO_ORIENTATION = (_SWAP, 0, 0, _INVERT | _SWAP)
_VALID_LSB_MASK = np.uint64(0x1555555555555555)
_U64 = np.uint64


@cache
def _lookup_tables() -> tuple[np.ndarray, np.ndarray]:
    """S2's 4-levels-at-a-time Hilbert tables: (ij, orientation) <-> (pos, orientation)."""
    size = 1 << (2 * _LOOKUP_BITS + 2)
    lookup_pos = np.zeros(size, dtype=np.int64)
    lookup_ij = np.zeros(size, dtype=np.int64)

    def init(level: int, i: int, j: int, orig: int, pos: int, orientation: int) -> None:
        if level == _LOOKUP_BITS:
            ij = (i << _LOOKUP_BITS) + j
            lookup_pos[(ij << 2) + orig] = (pos << 2) + orientation
            lookup_ij[(pos << 2) + orig] = (ij << 2) + orientation
            return
        r = _POS_TO_IJ[orientation]
        for k in range(4):
            init(
                level + 1,
                (i << 1) + (r[k] >> 1),
                (j << 1) + (r[k] & 1),
                orig,
                (pos << 2) + k,
                orientation ^ _POS_TO_ORIENTATION[k],
            )

    for orientation in range(4):
        init(0, 0, 0, orientation, 0, orientation)
    lookup_pos.flags.writeable = False
    lookup_ij.flags.writeable = False
    return lookup_pos, lookup_ij


# --------------------------------------------------------------------------- lat/lon -> leaf ids


def _latlon_to_xyz(lat_deg: np.ndarray, lon_deg: np.ndarray) -> tuple[np.ndarray, ...]:
    # Same operation order as S1Angle::Degrees and S2LatLng::ToPoint, so the floats agree bit for bit.
    phi = lat_deg * (np.pi / 180.0)
    theta = lon_deg * (np.pi / 180.0)
    cosphi = np.cos(phi)
    return np.cos(theta) * cosphi, np.sin(theta) * cosphi, np.sin(phi)


def _xyz_to_face_uv(x, y, z) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    ax, ay, az = np.abs(x), np.abs(y), np.abs(z)
    # Vector3::LargestAbsComponent, including its tie-breaking.
    axis = np.where(ax > ay, np.where(ax > az, 0, 2), np.where(ay > az, 1, 2))
    comp = np.choose(axis, (x, y, z))
    face = axis + 3 * (comp < 0)
    # S2::ValidFaceXYZtoUV for the six faces.
    num_u = np.choose(face, (y, -x, -x, z, z, -y))
    num_v = np.choose(face, (z, z, -y, y, -x, -x))
    den = np.choose(face, (x, y, z, x, y, z))
    with np.errstate(divide="ignore", invalid="ignore"):
        return face.astype(np.int64), num_u / den, num_v / den


def _uv_to_st(u: np.ndarray) -> np.ndarray:
    # S2's default quadratic projection.
    pos = u >= 0
    out = np.empty_like(u)
    out[pos] = 0.5 * np.sqrt(1.0 + 3.0 * u[pos])
    out[~pos] = 1.0 - 0.5 * np.sqrt(1.0 - 3.0 * u[~pos])
    return out


def _st_to_uv(s: np.ndarray) -> np.ndarray:
    return np.where(
        s >= 0.5,
        (1.0 / 3.0) * (4.0 * s * s - 1.0),
        (1.0 / 3.0) * (1.0 - 4.0 * (1.0 - s) * (1.0 - s)),
    )


def _st_to_ij(s: np.ndarray) -> np.ndarray:
    # S2::STtoIJ: round(kLimitIJ * s - 0.5) clamped; kLimitIJ * s is exact (power of two), so this
    # is floor(kLimitIJ * s).
    return np.clip(np.floor(_LIMIT_IJ * s), 0, _LIMIT_IJ - 1).astype(np.int64)


def face_ij_to_ids(face: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Leaf cell ids from face and leaf (i, j) coordinates (S2CellId::FromFaceIJ)."""
    lookup_pos, _ = _lookup_tables()
    face = np.asarray(face, dtype=np.int64)
    i = np.asarray(i, dtype=np.int64)
    j = np.asarray(j, dtype=np.int64)
    n = face.astype(_U64) << _U64(_POS_BITS - 1)
    bits = face & _SWAP
    mask = (1 << _LOOKUP_BITS) - 1
    for k in range(7, -1, -1):
        shift = k * _LOOKUP_BITS
        bits = bits + (((i >> shift) & mask) << (_LOOKUP_BITS + 2)) + (((j >> shift) & mask) << 2)
        bits = lookup_pos[bits]
        n |= (bits >> 2).astype(_U64) << _U64(2 * shift)
        bits = bits & (_SWAP | _INVERT)
    return n * _U64(2) + _U64(1)


def latlon_to_cell_ids(
    lat, lon, level: int = MAX_LEVEL, *, chunk_size: int = 1 << 20, progress=None
) -> np.ndarray:
    """S2 cell ids (uint64) of the cells at `level` that contain each (lat, lon) in degrees.

    Equals `S2CellId(S2LatLng.FromDegrees(lat, lon)).parent(level).id()`. Inputs are not
    validated here (use geoalign.geo.coords.validate_latlon first); NaNs give meaningless ids.
    `progress`, if given, is called with the number of points done after each chunk.
    """
    _check_level(level)
    lat = np.asarray(lat, dtype=np.float64).reshape(-1)
    lon = np.asarray(lon, dtype=np.float64).reshape(-1)
    if lat.shape != lon.shape:
        raise ValueError(f"{lat.size} latitudes but {lon.size} longitudes")
    out = np.empty(lat.size, dtype=_U64)
    for start in range(0, lat.size, chunk_size):
        sl = slice(start, start + chunk_size)
        face, u, v = _xyz_to_face_uv(*_latlon_to_xyz(lat[sl], lon[sl]))
        ids = face_ij_to_ids(face, _st_to_ij(_uv_to_st(u)), _st_to_ij(_uv_to_st(v)))
        out[sl] = ids if level == MAX_LEVEL else parent_ids(ids, level)
        if progress is not None:
            progress(min(start + chunk_size, lat.size))
    return out


# --------------------------------------------------------------------------- bit operations


def _check_level(level: int) -> None:
    if not 0 <= int(level) <= MAX_LEVEL:
        raise ValueError(f"S2 level must be in [0, {MAX_LEVEL}], got {level}")


def lsb_for_level(level: int) -> np.uint64:
    """The lowest set bit of every cell id at `level`."""
    _check_level(level)
    return _U64(1) << _U64(2 * (MAX_LEVEL - level))


def lowest_set_bit(ids: np.ndarray) -> np.ndarray:
    ids = np.asarray(ids, dtype=_U64)
    return ids & (~ids + _U64(1))


def is_valid_id(ids) -> np.ndarray:
    """S2CellId::is_valid: face < 6 and the lowest set bit sits at an even position."""
    ids = np.asarray(ids, dtype=_U64)
    return ((ids >> _U64(_POS_BITS)) < 6) & ((lowest_set_bit(ids) & _VALID_LSB_MASK) != 0)


def cell_levels(ids) -> np.ndarray:
    """Level (0..30) of each valid cell id."""
    lsb = lowest_set_bit(ids)
    # frexp of a power of two is exact: exponent - 1 == position of the set bit.
    position = np.frexp(lsb.astype(np.float64))[1] - 1
    return (MAX_LEVEL - position // 2).astype(np.int64)


def cell_faces(ids) -> np.ndarray:
    return (np.asarray(ids, dtype=_U64) >> _U64(_POS_BITS)).astype(np.int64)


def parent_ids(ids, level: int) -> np.ndarray:
    """Ancestor at `level` of each cell (S2CellId::parent); cells must be at `level` or finer."""
    ids = np.asarray(ids, dtype=_U64)
    new_lsb = lsb_for_level(level)
    return (ids & (~new_lsb + _U64(1))) | new_lsb


def range_min(ids) -> np.ndarray:
    """First leaf id inside each cell (cells are contiguous id ranges of leaves)."""
    ids = np.asarray(ids, dtype=_U64)
    return ids - (lowest_set_bit(ids) - _U64(1))


def range_max(ids) -> np.ndarray:
    """Last leaf id inside each cell."""
    ids = np.asarray(ids, dtype=_U64)
    return ids + (lowest_set_bit(ids) - _U64(1))


def contains(cells, ids) -> np.ndarray:
    """Whether each cell in `cells` contains the cell (or leaf) in `ids` (broadcasting)."""
    return (range_min(cells) <= range_min(ids)) & (range_max(ids) <= range_max(cells))


# --------------------------------------------------------------------------- tokens


def ids_to_tokens(ids) -> list[str]:
    """S2 tokens (hex id without trailing zeros; "X" for id 0), as S2CellId::ToToken."""
    return [format(int(x), "016x").rstrip("0") or "X" for x in np.asarray(ids, dtype=_U64)]


def tokens_to_ids(tokens, *, source: str = "tokens") -> np.ndarray:
    """Cell ids from S2 tokens; raises DataError naming the first invalid token and its index."""
    tokens = list(tokens)
    out = np.zeros(len(tokens), dtype=_U64)
    for k, token in enumerate(tokens):
        text = str(token).strip()
        try:
            # Tokens never end in "0": "4770" is not a token but a number (spreadsheets do this).
            if not 0 < len(text) <= 16 or text.endswith("0"):
                raise ValueError
            out[k] = int(text.ljust(16, "0"), 16)
        except ValueError:
            raise DataError(f"{source}: index {k}: {shown(token)} is not an S2 token") from None
    bad = ~is_valid_id(out)
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        raise DataError(
            f"{source}: index {k}: {shown(tokens[k])} is not a valid S2 cell token"
            f" ({int(bad.sum())} invalid in total)"
        )
    return out


# --------------------------------------------------------------------------- geometry


def ids_to_face_ij(ids) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Face and (i, j) of the lower-left leaf of each cell (inverse Hilbert walk)."""
    _, lookup_ij = _lookup_tables()
    ids = np.asarray(ids, dtype=_U64)
    face = cell_faces(ids)
    bits = face & _SWAP
    i = np.zeros(ids.shape, dtype=np.int64)
    j = np.zeros(ids.shape, dtype=np.int64)
    leaf = range_min(ids)
    for k in range(7, -1, -1):
        nbits = MAX_LEVEL - 7 * _LOOKUP_BITS if k == 7 else _LOOKUP_BITS
        chunk = (leaf >> _U64(2 * k * _LOOKUP_BITS + 1)) & _U64((1 << (2 * nbits)) - 1)
        bits = bits + (chunk.astype(np.int64) << 2)
        bits = lookup_ij[bits]
        i += (bits >> (_LOOKUP_BITS + 2)) << (k * _LOOKUP_BITS)
        j += ((bits >> 2) & ((1 << _LOOKUP_BITS) - 1)) << (k * _LOOKUP_BITS)
        bits = bits & (_SWAP | _INVERT)
    # The first leaf in Hilbert order is some corner of the cell; clear the low bits for lower-left.
    keep = ~((np.left_shift(1, MAX_LEVEL - cell_levels(ids))) - 1)
    return face, i & keep, j & keep


def _face_uv_to_latlon(face, u, v) -> tuple[np.ndarray, np.ndarray]:
    one = np.ones_like(u)
    x = np.choose(face, (one, -u, -u, -one, v, v))
    y = np.choose(face, (u, one, -v, -v, -one, u))
    z = np.choose(face, (v, v, one, -u, -u, -one))
    lat = np.degrees(np.arctan2(z, np.hypot(x, y)))
    lon = np.degrees(np.arctan2(y, x))
    return lat, lon


def _cell_st_bounds(ids) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    face, i, j = ids_to_face_ij(ids)
    size = np.left_shift(1, MAX_LEVEL - cell_levels(ids))
    return face, i / _LIMIT_IJ, j / _LIMIT_IJ, (i + size) / _LIMIT_IJ, (j + size) / _LIMIT_IJ


def cell_centers(ids) -> tuple[np.ndarray, np.ndarray]:
    """(lat, lon) in degrees of each cell's centre (S2CellId::ToLatLng)."""
    face, s0, t0, s1, t1 = _cell_st_bounds(ids)
    return _face_uv_to_latlon(face, _st_to_uv((s0 + s1) / 2), _st_to_uv((t0 + t1) / 2))


def cell_vertices(ids) -> np.ndarray:
    """(M, 4, 2) lat/lon of the corners in S2Cell::GetVertex order (counter-clockwise)."""
    face, s0, t0, s1, t1 = _cell_st_bounds(ids)
    s = np.stack([s0, s1, s1, s0], axis=1)
    t = np.stack([t0, t0, t1, t1], axis=1)
    lat, lon = _face_uv_to_latlon(face[:, None], _st_to_uv(s), _st_to_uv(t))
    return np.stack([lat, lon], axis=-1)


def cell_polygons(ids, points_per_edge: int = 8) -> np.ndarray:
    """(M, 4 * points_per_edge + 1, 2) closed lat/lon rings of cell boundaries, for maps.

    Cell edges are great-circle arcs, i.e. straight lines in (u, v): sampling them in (u, v) gives
    faithful outlines of big cells. Longitudes are unwrapped along each ring so that a cell crossing
    the antimeridian stays one polygon (values may leave [-180, 180), which web maps accept).
    """
    face, s0, t0, s1, t1 = _cell_st_bounds(ids)
    u0, v0, u1, v1 = (_st_to_uv(a)[:, None] for a in (s0, t0, s1, t1))
    f = np.linspace(0.0, 1.0, points_per_edge, endpoint=False)[None, :]
    ones = np.ones_like(f)
    # bottom (v0) left->right, right (u1) up, top (v1) right->left, left (u0) down.
    us = np.concatenate([u0 + (u1 - u0) * f, u1 * ones, u1 + (u0 - u1) * f, u0 * ones], axis=1)
    vs = np.concatenate([v0 * ones, v0 + (v1 - v0) * f, v1 * ones, v1 + (v0 - v1) * f], axis=1)
    lat, lon = _face_uv_to_latlon(face[:, None], us, vs)
    lon = np.degrees(np.unwrap(np.radians(lon), axis=1))
    ring = np.stack([lat, lon], axis=-1)
    return np.concatenate([ring, ring[:, :1]], axis=1)
