"""Published accuracies (% within 1 / 25 / 200 / 750 / 2500 km), for side-by-side reports.

Transcribed from the papers in the project's reference set: GeoCLIP (NeurIPS 2023) Tables 1-3,
the concept-aware alignment paper (arXiv 2509.01910) Table 1, and GeoSURGE Tables I-V. Keys are
benchmark names of `geoalign.data.benchmarks`.
"""

from __future__ import annotations

from dataclasses import dataclass

GEOCLIP = "GeoCLIP (NeurIPS 2023)"
CONCEPT = "Concept-aware alignment (arXiv 2509.01910)"
GEOSURGE = "GeoSURGE (Daruna et al.)"


@dataclass(frozen=True)
class Published:
    method: str
    source: str
    table: str
    acc: tuple[float, float, float, float, float]


def _rows(source: str, table: str, rows: dict[str, tuple]) -> list[Published]:
    return [Published(m, source, table, tuple(float(v) for v in acc)) for m, acc in rows.items()]


PUBLISHED: dict[str, list[Published]] = {
    "im2gps3k": [
        *_rows(
            GEOCLIP,
            "Table 1(a)",
            {
                "[L]kNN, σ=4 (Vo et al.)": (7.2, 19.4, 26.9, 38.9, 55.9),
                "PlaNet": (8.5, 24.8, 34.3, 48.4, 64.6),
                "ISNs": (10.5, 28.0, 36.6, 49.7, 66.0),
                "GeoDecoder": (12.8, 33.5, 45.9, 61.0, 76.1),
                "GeoCLIP": (14.11, 34.47, 50.65, 69.67, 83.82),
            },
        ),
        *_rows(GEOCLIP, "Table 3(b)", {"C (w/ H)": (11.4, 34.3, 49.4, 67.4, 80.8)}),
        *_rows(CONCEPT, "Table 1", {"Concept-aware": (13.2, 34.0, 49.8, 68.2, 83.5)}),
        *_rows(GEOSURGE, "Table II", {"GeoSURGE": (17.2, 42.5, 58.1, 74.6, 87.6)}),
    ],
    "im2gps": _rows(
        GEOSURGE,
        "Table I",
        {
            "[L]kNN": (14.4, 33.3, 47.7, 61.6, 73.4),
            "ISNs": (16.9, 43.0, 51.9, 66.7, 80.2),
            "GeoSURGE": (27.0, 54.4, 70.0, 84.4, 93.2),
        },
    ),
    "yfcc4k": _rows(
        GEOSURGE,
        "Table III",
        {
            "[L]kNN": (2.3, 5.7, 11.0, 23.5, 42.0),
            "ISNs": (6.7, 16.5, 24.2, 37.5, 54.9),
            "GeoSURGE": (19.9, 33.6, 48.7, 67.4, 82.0),
        },
    ),
    "yfcc26k": _rows(
        GEOSURGE,
        "Table IV",
        {
            "ISNs": (5.3, 12.3, 19.0, 31.9, 50.7),
            "GeoCLIP": (11.6, 22.2, 36.7, 57.5, 76.0),
            "GeoSURGE": (17.8, 31.5, 45.1, 64.3, 79.3),
        },
    ),
    "gws15k": [
        *_rows(
            GEOCLIP,
            "Table 1(b)",
            {"ISNs": (0.05, 0.6, 4.2, 15.5, 38.5), "GeoCLIP": (0.6, 3.1, 16.9, 45.7, 74.1)},
        ),
        *_rows(GEOSURGE, "Table V", {"GeoSURGE": (1.0, 4.6, 21.9, 54.7, 80.8)}),
    ],
}

# GeoCLIP's own ablations and limited-data runs on Im2GPS3k, keyed by the config that reproduces them.
GEOCLIP_ABLATIONS: dict[str, Published] = {
    p.method: p
    for p in [
        *_rows(
            GEOCLIP,
            "Table 3(a)",
            {
                "MLP (baseline)": (0.13, 11.01, 41.68, 67.83, 83.28),
                "+EEP": (0.23, 17.08, 45.61, 68.8, 82.98),
                "+EEP +RFF": (5.37, 32.03, 49.42, 68.4, 82.98),
                "+EEP +RFF +DQ": (9.84, 33.1, 49.28, 69.07, 83.35),
            },
        ),
        *_rows(
            GEOCLIP,
            "Table 3(b)",
            {
                "GeoCLIP (Coarse)": (1.07, 24.66, 49.18, 69.47, 83.75),
                "GeoCLIP (Medium)": (9.84, 33.1, 49.28, 69.07, 83.35),
                "GeoCLIP (Fine)": (13.61, 33.43, 47.78, 65.1, 80.95),
                "GeoCLIP (w/ H)": (14.11, 34.47, 50.65, 69.67, 83.82),
            },
        ),
        *_rows(
            GEOCLIP,
            "Table 2",
            {
                "GeoCLIP, 20% data": (13.1, 32.6, 49.0, 69.2, 83.8),
                "GeoCLIP, 10% data": (12.1, 31.9, 48.9, 69.1, 83.6),
                "GeoCLIP, 5% data": (10.8, 31.1, 48.7, 67.6, 83.2),
            },
        ),
    ]
}


# GeoCLIP Table 5 (Im2GPS3k): the gallery restricted, per query, to within a radius of the true
# location (prior knowledge of the continent / country / state / city).
PRIOR_RADIUS = {
    2500.0: Published("GeoCLIP, gallery within 2500 km (continent)", GEOCLIP, "Table 5",
                      (15.02, 37.70, 55.39, 78.11, 100.0)),
    750.0: Published("GeoCLIP, gallery within 750 km (country)", GEOCLIP, "Table 5",
                     (15.85, 41.18, 63.33, 100.0, 100.0)),
    200.0: Published("GeoCLIP, gallery within 200 km (state)", GEOCLIP, "Table 5",
                     (18.82, 52.12, 100.0, 100.0, 100.0)),
    25.0: Published("GeoCLIP, gallery within 25 km (city)", GEOCLIP, "Table 5",
                    (26.15, 100.0, 100.0, 100.0, 100.0)),
}  # fmt: skip


def published_for(benchmark: str | None, prior_radii_km: tuple[float, ...] = ()) -> list[Published]:
    """Published rows for a benchmark name or alias ([] when none or unknown); with prior
    radii, GeoCLIP's Table 5 rows for them (Im2GPS3k only)."""
    if not benchmark:
        return []
    try:
        from geoalign.data.benchmarks import get_benchmark

        key = get_benchmark(benchmark).name
    except Exception:  # a manifest or feature file: no published numbers
        key = benchmark.strip().lower()
    rows = list(PUBLISHED.get(key, []))
    if key == "im2gps3k":
        rows += [PRIOR_RADIUS[float(r)] for r in prior_radii_km if float(r) in PRIOR_RADIUS]
    return rows
