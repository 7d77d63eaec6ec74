"""Concept similarity maps: how strongly each place's location embedding expresses a concept, over a
grid or averaged over regions, and its Pearson correlation with a reference table (the concept-aware
paper's Fig. 5: "forest" over U.S. states against forest cover, ρ = 0.65 vs 0.35 for GeoCLIP).

The similarity of location x to concept c is the model's concept score z_loc,c = x̂ᵀB_c when c is in
the model's concept set. Any other text (and any model without a concept basis, such as GeoCLIP)
goes the way GeoCLIP maps text queries: text encoder -> image head (or the learned projection for
non-CLIP encoders) -> cosine with the location embedding.

Regions: "countries" (every country, points on a world land grid), "<CC>-states" / "<CC>-regions"
(the admin-1 regions of one country, e.g. US-states), or "grid" (no aggregation). Points are on a
grid of roughly `spacing_km`, kept where they fall inside the country polygons (Natural Earth), and
assigned to admin-1 regions through the nearest GeoNames place of the same country.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from geoalign.errors import DataError
from geoalign.interpret.figures import save_figure

KM_PER_DEG = 111.195


# --- concept directions ------------------------------------------------------------------------------


def concept_similarity(
    model: Any,
    concept: str,
    latlon: np.ndarray,
    *,
    text_encoder: Any = None,
    batch_size: int = 8192,
) -> tuple[np.ndarray, str]:
    """Similarity of each location to the concept, and how it was computed (for the report)."""
    param = next(model.parameters())
    coords = torch.as_tensor(np.asarray(latlon), dtype=torch.float32)
    with torch.inference_mode():
        loc = torch.cat(
            [model.encode_locations(c.to(param.device)).float() for c in coords.split(batch_size)]
        )
        cset = getattr(model, "concept_set", None)
        if cset is not None and concept in cset:
            j = cset.index(concept)
            sims = model.location_concepts(loc)[:, j]
            how = f"concept score z_loc of {cset.names[j]!r} (learned basis B = E + Δ)"
        else:
            direction = text_direction(model, concept, text_encoder)
            sims = F.normalize(loc, dim=-1) @ direction.to(loc)
            how = f"cosine with the text query {concept!r} mapped into the location space"
    return sims.cpu().numpy().astype(np.float64), how


def text_direction(model: Any, text: str, text_encoder: Any) -> torch.Tensor:
    """A free text mapped into the location space: CLIP text -> image head (GeoCLIP's text queries),
    or the concept basis' learned projection for sentence encoders."""
    if text_encoder is None:
        raise DataError(
            f"{text!r} is not one of the model's concepts: a text encoder is needed to map it "
            "(--text-encoder clip-vit-l14, or the one the model was trained with)"
        )
    basis = getattr(model, "basis", None)
    template = model.concept_set.template if getattr(model, "concept_set", None) else "{}"
    emb = text_encoder.encode([template.format(text)]).float()
    param = next(model.parameters())
    with torch.inference_mode():
        if basis is not None and basis.projection is not None:
            if emb.shape[1] != basis.projection.in_features:
                raise DataError(
                    f"the text encoder gives {emb.shape[1]}-d embeddings; the model's concept "
                    f"projection reads {basis.projection.in_features}-d (use the model's encoder: "
                    f"{model.concept_config.text_encoder})"
                )
            out = basis.projection(F.normalize(emb, dim=-1).to(param.device))
        else:
            head_in = model.image_head.config.in_dim
            if emb.shape[1] != head_in:
                raise DataError(
                    f"the text encoder gives {emb.shape[1]}-d embeddings but the image head reads "
                    f"{head_in}-d: use the CLIP text tower of the model's backbone"
                )
            out = model.image_head(emb.to(param.device))
    return F.normalize(out[0].float(), dim=-1)


# --- sample points and regions -----------------------------------------------------------------------


def grid_in(geometry: Any, spacing_km: float) -> np.ndarray:
    """Points [n, 2] (lat, lon) about `spacing_km` apart inside a (multi)polygon in lon/lat degrees,
    generated per polygon part so that a country spanning the date line stays cheap."""
    import shapely

    parts = shapely.get_parts(np.atleast_1d(geometry))
    dlat = spacing_km / KM_PER_DEG
    out = []
    for part in parts:
        minx, miny, maxx, maxy = part.bounds
        lats = np.arange(math.floor(miny / dlat) * dlat + dlat / 2, maxy, dlat)
        for lat in lats:
            dlon = dlat / max(math.cos(math.radians(lat)), 0.05)
            lons = np.arange(math.floor(minx / dlon) * dlon + dlon / 2, maxx, dlon)
            if len(lons) == 0:
                continue
            inside = shapely.contains_xy(part, lons, np.full_like(lons, lat))
            if inside.any():
                out.append(np.stack([np.full(inside.sum(), lat), lons[inside]], axis=1))
    return np.concatenate(out) if out else np.zeros((0, 2))


@dataclass
class RegionPoints:
    latlon: np.ndarray  # [n, 2]
    region: np.ndarray  # [n] region key (country code or admin-1 name; '' = none)
    kind: str  # "countries", "admin1" or "grid"
    country: str | None = None  # for admin1


def region_points(spec: str, spacing_km: float | None = None) -> RegionPoints:
    """Sample points for a region spec: countries, <CC>-states / <CC>-regions, or grid."""
    from geoalign.geo.regions import load_countries

    atlas = load_countries()
    spec = spec.strip()
    m = re.fullmatch(r"([A-Za-z]{2,3})[-_/ ](states|regions|provinces|admin1|admin-1)", spec)
    if m:
        idx = atlas.resolve(m[1])
        code = atlas.countries[int(idx[0])].code
        pts = grid_in(atlas.geometries[idx], spacing_km or 40.0)
        from geoalign.geo.places import default as places

        codes, regions = places().regions_of(pts)
        keep = (codes == code) & (regions != "")
        return RegionPoints(pts[keep], regions[keep].astype(object), "admin1", code)
    if spec.lower() in {"countries", "world"}:
        pts = grid_in(atlas.geometries, spacing_km or 100.0)
        codes = atlas.country_codes(pts)
        keep = codes != ""
        return RegionPoints(pts[keep], codes[keep].astype(object), "countries")
    if spec.lower() == "grid":
        pts = grid_in(atlas.geometries, spacing_km or 150.0)
        return RegionPoints(pts, np.array([""] * len(pts), dtype=object), "grid")
    raise DataError(
        f"unknown region spec {spec!r}: use countries, grid, or COUNTRY-states (e.g. US-states, "
        "DE-states, CN-provinces)"
    )


def aggregate(points: RegionPoints, values: np.ndarray) -> pd.DataFrame:
    """Mean value per region: region, similarity, points (and name, for countries)."""
    frame = pd.DataFrame({"region": points.region, "value": values})
    out = frame.groupby("region", sort=True)["value"].agg(["mean", "size"]).reset_index()
    out = out.rename(columns={"mean": "similarity", "size": "points"})
    if points.kind == "countries":
        from geoalign.interpret.cbm import country_name

        out.insert(1, "name", [country_name(c) for c in out["region"]])
    return out


# --- reference tables --------------------------------------------------------------------------------


def _pick_columns(frame: pd.DataFrame, region_col: str | None, value_col: str | None, source: str):
    if region_col is None:
        named = [c for c in frame.columns if c.strip().lower() in
                 {"region", "state", "name", "country", "code", "province"}]  # fmt: skip
        text = [c for c in frame.columns if frame[c].dtype == object]
        region_col = (named or text or [None])[0]
    if value_col is None:
        numeric = [
            c for c in frame.columns if c != region_col and pd.api.types.is_numeric_dtype(frame[c])
        ]
        value_col = numeric[0] if numeric else None
    for role, col in (("region", region_col), ("value", value_col)):
        if col is None or col not in frame.columns:
            raise DataError(
                f"{source}: cannot tell which column holds the {role} (columns: "
                f"{list(frame.columns)}); name it with --{role}-column"
            )
    return region_col, value_col


def _region_key(points: RegionPoints, name: str) -> str | None:
    """The region key (as in `aggregate`) a reference row names, or None."""
    from geoalign.geo.regions import load_countries, normalize_name

    name = str(name).strip()
    if not name:
        return None
    if points.kind == "countries":
        try:
            idx = load_countries().resolve(name)
        except Exception:
            return None
        return load_countries().countries[int(idx[0])].code
    if points.kind == "admin1":
        from geoalign.geo.places import default as places

        known = {normalize_name(r): r for r in set(points.region)}
        key = normalize_name(name)
        if key in known:
            return known[key]
        try:
            code, region = places().resolve_region(
                name if re.fullmatch(r"[A-Za-z]{2}-\w{1,3}", name) else f"{points.country}/{name}"
            )
        except Exception:
            return None
        return region if code == points.country else None
    return None


def compare_reference(
    regions: pd.DataFrame,
    points: RegionPoints,
    reference: str | Path,
    *,
    region_col: str | None = None,
    value_col: str | None = None,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Join the region similarities with a reference table; Pearson ρ and its p-value."""
    from scipy.stats import pearsonr

    path = Path(reference)
    if not path.is_file():
        raise DataError(f"reference table {path} not found")
    sep = "\t" if path.suffix.lower() == ".tsv" else ","
    ref = pd.read_csv(path, sep=sep)
    rcol, vcol = _pick_columns(ref, region_col, value_col, str(path))
    values = pd.to_numeric(ref[vcol], errors="coerce")
    bad = values.isna() & ref[vcol].notna()
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise DataError(f"{path}: row {i + 2}: {vcol} = {ref[vcol].iloc[i]!r} is not a number")
    keys = [_region_key(points, n) for n in ref[rcol]]
    joined = pd.DataFrame({"reference_name": ref[rcol], "region": keys, "reference": values})
    unmatched = joined.loc[joined["region"].isna(), "reference_name"].astype(str).tolist()
    joined = joined.dropna(subset=["region", "reference"]).merge(regions, on="region", how="left")
    no_points = joined.loc[joined["similarity"].isna(), "reference_name"].astype(str).tolist()
    joined = joined.dropna(subset=["similarity"])
    if len(joined) < 3:
        raise DataError(
            f"{path}: only {len(joined)} reference rows match a region with sample points "
            f"(unmatched names: {', '.join(unmatched[:10]) or 'none'})"
        )
    rho, p = pearsonr(joined["similarity"], joined["reference"])
    stats = {
        "pearson_r": float(rho),
        "p_value": float(p),
        "n_regions": int(len(joined)),
        "unmatched": unmatched,
        "without_points": no_points,
        "value_column": vcol,
        "region_column": rcol,
    }
    return joined, stats


# --- the figure ---------------------------------------------------------------------------------------


def _unwrap_longitudes(lon: np.ndarray) -> np.ndarray:
    """Move the widest empty longitude band to the map's edge, so that a region crossing the date
    line (Alaska's Aleutians, Fiji, Chukotka) is drawn in one piece; a world grid is unchanged."""
    u = np.unique(lon)
    if len(u) < 2:
        return lon
    gaps = np.diff(u)
    wrap = u[0] + 360.0 - u[-1]
    if gaps.max() <= max(wrap, 60.0):  # no wide empty band inside: nothing to move
        return lon
    cut = u[int(np.argmax(gaps)) + 1]
    return np.where(lon >= cut, lon - 360.0, lon)


def plot_concept_map(
    points: RegionPoints,
    point_values: np.ndarray,
    concept: str,
    path: str | Path,
    *,
    regions: pd.DataFrame | None = None,
    joined: pd.DataFrame | None = None,
    stats: dict[str, Any] | None = None,
    model_name: str = "",
) -> Path:
    """Map of the similarity (each point coloured by its region's mean, or its own value on a grid)
    and, with a reference, the scatter of similarity against the reference with ρ."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lat, lon = points.latlon[:, 0], _unwrap_longitudes(points.latlon[:, 1])
    if regions is not None and points.kind != "grid":
        lookup = dict(zip(regions["region"], regions["similarity"], strict=True))
        shown = np.array([lookup.get(r, np.nan) for r in points.region])
        label = f"mean similarity of the region to “{concept}”"
    else:
        shown, label = point_values, f"similarity to “{concept}”"
    ncols = 2 if joined is not None else 1
    fig, axes = plt.subplots(1, ncols, figsize=(7.5 * ncols, 5.2),
                             gridspec_kw={"width_ratios": [1.6, 1] if ncols == 2 else [1]})  # fmt: skip
    axes = np.atleast_1d(axes)
    ax = axes[0]
    sc = ax.scatter(lon, lat, c=shown, s=1.0, cmap="viridis", marker="s", linewidths=0)
    ax.set_aspect(1 / max(math.cos(math.radians(float(np.mean(lat)))), 0.2))
    ax.set_xlabel("longitude")
    ax.set_ylabel("latitude")
    # squares as large as the grid spacing, so that regions read as filled areas
    fig.canvas.draw()
    rows = np.unique(lat)
    step = np.median(np.diff(rows)) if len(rows) > 1 else 1.0
    # longitude steps widen with latitude (the grid keeps ~constant km): size for the wide rows
    lon_steps = [np.median(np.diff(np.sort(lon[lat == r]))) for r in rows if (lat == r).sum() > 1]
    lon_step = float(np.percentile(lon_steps, 75)) if lon_steps else step
    (x0, y0), (x1, y1) = ax.transData.transform([(0.0, 0.0), (lon_step, step)])
    side_pt = max(abs(x1 - x0), abs(y1 - y0)) * 72.0 / fig.dpi
    sc.set_sizes([max(1.0, 1.1 * side_pt) ** 2])
    fig.colorbar(sc, ax=ax, shrink=0.8, label=label)
    ax.set_title(
        f"“{concept}” similarity map{f' ({model_name})' if model_name else ''}", fontsize=12
    )
    if joined is not None and stats is not None:
        ax = axes[1]
        x, y = joined["similarity"].to_numpy(), joined["reference"].to_numpy()
        ax.scatter(x, y, s=22, color="#2e8b57", alpha=0.8)
        slope, icpt = np.polyfit(x, y, 1)
        xs = np.linspace(x.min(), x.max(), 50)
        ax.plot(xs, slope * xs + icpt, color="#333333", lw=1)
        for _, r in joined.nlargest(3, "reference").iterrows():
            ax.annotate(str(r["reference_name"]), (r["similarity"], r["reference"]), fontsize=8,
                        xytext=(3, 3), textcoords="offset points")  # fmt: skip
        p = stats["p_value"]
        ax.set_title(
            f"Pearson ρ = {stats['pearson_r']:.3f} (p {'< 0.001' if p < 1e-3 else f'= {p:.3f}'}, "
            f"n = {stats['n_regions']})",
            fontsize=12,
        )
        ax.set_xlabel(f"mean similarity to “{concept}”")
        ax.set_ylabel(str(stats["value_column"]))
        ax.spines[["top", "right"]].set_visible(False)
    return save_figure(fig, path)
