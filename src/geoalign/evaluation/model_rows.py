"""Report rows of one in-memory model, optionally calibrated on held-out rows first: the
quickstart's one call into the evaluation harness, shared by its GeoCLIP, concept-aware and
GeoSURGE rows (each method's trainer imports it from here, not from the quickstart)."""

from __future__ import annotations

from typing import Any


def model_rows(
    model: Any,
    test_x: Any,
    test_y: Any,
    gallery: Any,
    name: str,
    modes: Any,
    radius_km: float,
    validation: tuple[Any, Any] | None = None,
) -> list[Any]:
    """Report rows of any model on the test descriptors (the eval section's modes): the
    quickstart's one call into the evaluation harness. With `validation` rows the model's
    distribution is calibrated on them first (`inference.calibration`); the first row carries
    the probabilistic measures, calibrated, with the uncalibrated ones beside them."""
    from geoalign.evaluation.harness import evaluate_model
    from geoalign.inference.locator import Geolocator

    geo = Geolocator(model, gallery=gallery if model.ranks == "gallery" else None, cache=False)
    kwargs = {"name": name, "radius_km": radius_km}
    if validation is None:
        return evaluate_model(geo, test_x, test_y, modes=list(modes), **kwargs)
    from geoalign.inference.calibration import fit_calibration

    (raw,) = evaluate_model(geo, test_x, test_y, modes=["top1"], probabilistic=True, **kwargs)
    cal = fit_calibration(
        geo, *validation, fitted_on=f"{len(validation[1]):,} held-out training rows"
    )
    geo.set_calibration(cal)
    try:
        rows = evaluate_model(geo, test_x, test_y, modes=list(modes), probabilistic=True, **kwargs)
    finally:
        geo.set_calibration(None)
    rows[0].probabilistic["uncalibrated"] = {
        k: raw.probabilistic[k]
        for k in (
            "reliability",
            "calibration_error",
            "verify_false_alarm@0.05",
            "median_area90_km2",
        )
    }
    rows[0].probabilistic["calibration"] = cal.to_dict()
    return rows
