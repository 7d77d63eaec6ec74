"""Explanations of single photos: their top concept activations, the countries the concept
bottleneck (`cbm.py`) reads from them with each concept's contribution, the model's candidate
locations, and the chart that shows all three."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from geoalign.errors import DataError
from geoalign.interpret.cbm import ConceptBottleneck, country_name
from geoalign.interpret.figures import save_figure
from geoalign.nn.concept_basis import top_k_sparse

EXPLANATION_SCHEMA = "geoalign.explanation/v1"  # `geoalign explain --json` and POST /v1/explain

# --- explanations of single images -----------------------------------------------------------------


@dataclass
class ConceptScore:
    concept: str
    category: str
    group: str
    activation: float
    weight: float | None = None
    contribution: float | None = None


@dataclass
class Explanation:
    source: str
    candidates: list[dict[str, Any]]
    activations: list[ConceptScore]  # top-k activations, largest first
    country: dict[str, Any] | None = None  # CBM prediction: code, name, prob, alternatives
    contributions: list[ConceptScore] = field(default_factory=list)  # by |contribution|
    notes: list[str] = field(default_factory=list)
    truth: tuple[float, float] | None = None  # known location (benchmark rows), for the chart
    truth_place: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": EXPLANATION_SCHEMA,
            "source": self.source,
            "location": self.candidates,
            "country": self.country,
            "concept_activations": [asdict(c) for c in self.activations],
            "concept_contributions": [asdict(c) for c in self.contributions],
            "notes": self.notes,
            **(
                {"truth": {"lat": self.truth[0], "lon": self.truth[1], "place": self.truth_place}}
                if self.truth
                else {}
            ),
        }


def explain_scores(
    model: Any,
    scores: np.ndarray,
    *,
    sources: list[str],
    candidates: list[list[dict[str, Any]]] | None = None,
    cbm: ConceptBottleneck | None = None,
    top_k: int | None = None,
    n_contributions: int = 10,
) -> list[Explanation]:
    """Explanations from dense concept scores [N, k] (see `concept_scores`)."""
    s = model.concept_set
    k = model.concept_config.top_k if top_k is None else top_k
    sparse = top_k_sparse(torch.from_numpy(np.asarray(scores, np.float32)), k).numpy()
    out = []
    for i, src in enumerate(sources):
        kept = np.flatnonzero(sparse[i] != 0)  # the top k (scores may be negative)
        order = kept[np.argsort(-sparse[i, kept], kind="stable")]
        acts = [
            ConceptScore(
                s.names[j], s.concepts[j].category, s.concepts[j].group, float(sparse[i, j])
            )
            for j in order
        ]
        exp = Explanation(src, candidates[i] if candidates else [], acts)
        if cbm is None:
            exp.notes.append(
                "no country concept bottleneck next to the model: fit one with `geoalign explain "
                "fit-cbm` to see which concepts drive the country"
            )
        else:
            if cbm.concepts != s.names:
                raise DataError("the concept bottleneck was fitted for another concept list")
            proba = cbm.predict_proba(scores[i : i + 1])[0]
            best = np.argsort(-proba)[:3]
            c = int(best[0])
            exp.country = {
                "code": cbm.classes[c],
                "name": country_name(cbm.classes[c]),
                "prob": float(proba[c]),
                "alternatives": [
                    {"code": cbm.classes[int(j)], "prob": float(proba[int(j)])} for j in best[1:]
                ],
                "cbm_val_accuracy": cbm.metrics.get("val_accuracy"),
            }
            contrib = cbm.contributions(scores[i], c)
            for j in np.argsort(-np.abs(contrib), kind="stable")[:n_contributions]:
                if contrib[j] == 0:
                    break
                exp.contributions.append(
                    ConceptScore(
                        s.names[j],
                        s.concepts[j].category,
                        s.concepts[j].group,
                        float(scores[i, j]),
                        float(cbm.weight[c, j]),
                        float(contrib[j]),
                    )
                )
        out.append(exp)
    return out


def explanation_record(exp: Explanation, model: str, chart: str | None = None) -> dict[str, Any]:
    """The JSON of one explanation, the same from `geoalign explain --json` and the service:
    `to_dict()` plus the model it came from, and the chart's path when one was written."""
    return {**exp.to_dict(), **({"chart": chart} if chart is not None else {}), "model": model}


# --- the chart ---------------------------------------------------------------------------------------

GROUP_COLOURS = {"natural": "#2e8b57", "human": "#c0622f"}
OTHER_COLOUR = "#5b6c8f"


def _percent(p: float) -> str:
    """Gallery probabilities are small over 100K places: keep two significant digits."""
    return f"{100 * p:.2g}%"


def _short(text: str, n: int = 28) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def plot_explanation(
    exp: Explanation, path: str | Path, *, image: Any = None, n_activations: int = 12
) -> Path:
    """A one-page chart: the photo (if given), where the model puts it, the strongest concepts, and
    each concept's share of the country decision. PNG, SVG or PDF by the file suffix."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    panels = (1 if image is not None else 0) + 1 + (1 if exp.contributions else 0)
    widths = ([1.1] if image is not None else []) + [1.0] + ([1.15] if exp.contributions else [])
    fig, axes = plt.subplots(
        1, panels, figsize=(5.2 * panels + 0.6, 5.6), gridspec_kw={"width_ratios": widths}
    )
    axes = np.atleast_1d(axes)
    ax_i = 0
    if image is not None:
        ax = axes[ax_i]
        ax.imshow(image)
        ax.set_axis_off()
        ax.set_title(_short(Path(exp.source).name, 40), fontsize=11)
        ax_i += 1

    # concept activations (top-k of z_img)
    ax = axes[ax_i]
    acts = exp.activations[:n_activations][::-1]
    if acts:
        vals = [a.activation for a in acts]
        colours = [GROUP_COLOURS.get(a.group, OTHER_COLOUR) for a in acts]
        ax.barh(range(len(acts)), vals, color=colours)
        ax.set_yticks(range(len(acts)), [f"{_short(a.concept)}  ({a.category})" for a in acts])
        lo = min(0.0, min(vals))
        ax.set_xlim(lo * 1.15 if lo < 0 else 0, max(vals) * 1.18 if max(vals) > 0 else 1)
        for y, v in enumerate(vals):
            ax.text(v, y, f" {v:.3f}", va="center", fontsize=8, color="#333333")
    ax.set_title("Strongest concepts in the photo", fontsize=12)
    ax.set_xlabel("concept activation (image projection onto the concept basis)")
    groups = sorted({a.group for a in acts if a.group in GROUP_COLOURS})
    if groups:  # below the axis, never on top of the bars
        ax.legend(
            handles=[Patch(color=GROUP_COLOURS[g], label=f"{g} geography") for g in groups],
            loc="upper center",
            bbox_to_anchor=(0.5, -0.11),
            ncol=len(groups),
            fontsize=9,
            frameon=False,
        )
    ax.spines[["top", "right"]].set_visible(False)
    ax_i += 1

    if exp.contributions:
        ax = axes[ax_i]
        items = exp.contributions[::-1]
        vals = [100 * (c.contribution or 0.0) for c in items]
        colours = ["#2f6db5" if v >= 0 else "#c23b3b" for v in vals]
        ax.barh(range(len(items)), vals, color=colours)
        ax.set_yticks(range(len(items)), [_short(c.concept) for c in items])
        ax.axvline(0, color="#444444", lw=0.8)
        span = max(abs(v) for v in vals) if vals else 1
        ax.set_xlim(-span * 1.35 if min(vals) < 0 else 0, span * 1.35)
        for y, v in enumerate(vals):
            ax.text(
                v, y, f" {v:+.0f}% " if abs(v) >= 1 else f" {v:+.1f}% ", va="center",
                ha="left" if v >= 0 else "right", fontsize=8, color="#333333",
            )  # fmt: skip
        country = exp.country or {}
        shown = sum(abs(v) for v in vals)  # the shares of all concepts add up to 100%
        ax.set_title(
            f"Concept bottleneck: {country.get('name', '?')} ({100 * country.get('prob', 0):.0f}%)"
            f"\nwhich concepts pushed that country decision (these {len(vals)}: {shown:.0f}%)",
            fontsize=12,
        )
        ax.xaxis.set_major_locator(MaxNLocator(nbins=6, steps=[1, 2, 5, 10]))  # no 2.5% ticks
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}%"))
        ax.set_xlabel("share of the country decision (blue: for, red: against)")
        ax.spines[["top", "right"]].set_visible(False)

    title = "Concept explanation"
    if exp.candidates:
        c0 = exp.candidates[0]
        place = c0.get("place") or {}
        where = ", ".join(p for p in (place.get("city"), place.get("country_name")) if p)
        title = (
            f"Predicted location: {where + ' ' if where else ''}({c0['lat']:.3f}, {c0['lon']:.3f}), "
            f"p = {_percent(c0['prob'])}"
        )
    if exp.truth is not None:
        where = f"{exp.truth_place} " if exp.truth_place else ""
        title += f"\ntrue location: {where}({exp.truth[0]:.3f}, {exp.truth[1]:.3f})"
    fig.suptitle(title, fontsize=13, fontweight="bold")
    return save_figure(fig, path)


# --- from photos or feature rows to explanations --------------------------------------------------------


def ranked_candidates(
    model: Any,
    image_emb: np.ndarray,
    gallery: str,
    *,
    top_k: int = 5,
    places: bool = True,
    geolocator: Any = None,
    calibration: Any = None,
) -> list[list[dict[str, Any]]]:
    """Top-k gallery locations per image embedding (GeoCLIP's retrieval), with place names and
    the probabilities `geoalign predict` gives (the checkpoint's `calibration` applied).

    `geolocator`: one already built over `model`, its gallery and calibration (the service
    keeps one), so the gallery is not embedded again; `gallery` is then not read."""
    if geolocator is None:
        from geoalign.data.galleries import load_gallery
        from geoalign.inference.locator import Geolocator

        geolocator = Geolocator(model, gallery=load_gallery(gallery), calibration=calibration)
    geo = geolocator
    emb = F.normalize(torch.as_tensor(image_emb).float(), dim=-1)
    ranked = geo.rank(emb, top_k=top_k, places=places)
    return [
        [{"lat": c.lat, "lon": c.lon, "prob": c.prob, "place": c.place} for c in cands]
        for cands in ranked
    ]


def explain_features(
    model: Any,
    features: np.ndarray,
    sources: list[str],
    *,
    gallery: str = "geoclip-100k",
    cbm: ConceptBottleneck | None = None,
    top_k: int | None = None,
    n_candidates: int = 5,
    geolocator: Any = None,
    calibration: Any = None,
) -> list[Explanation]:
    """Explanations for backbone feature rows (precomputed features, scene-label descriptors);
    `geolocator` and `calibration` as in `ranked_candidates`."""
    from geoalign.interpret.data import image_embeddings

    emb = image_embeddings(model, features)
    with torch.inference_mode():
        scores = model.image_concepts(torch.from_numpy(emb)).float().numpy()
    cands = ranked_candidates(
        model, emb, gallery, top_k=n_candidates, geolocator=geolocator, calibration=calibration
    )
    return explain_scores(model, scores, sources=sources, candidates=cands, cbm=cbm, top_k=top_k)


def explain_images(
    model: Any,
    backbone: Any,
    inputs: list[Any],
    *,
    gallery: str = "geoclip-100k",
    cbm: ConceptBottleneck | None = None,
    top_k: int | None = None,
    batch_size: int = 16,
    calibration: Any = None,
) -> tuple[list[Explanation], list[Any], list[tuple[str, str]]]:
    """Explanations for photos: (explanations, the photos as PIL images, unreadable (path, why))."""
    from geoalign.data.images import iter_image_batches, load_image

    if backbone.embed_dim != model.image_head.config.in_dim:
        raise DataError(
            f"the backbone {backbone.name!r} gives {backbone.embed_dim}-d features but the model's "
            f"image head reads {model.image_head.config.in_dim}-d (use the backbone it was trained on)"
        )
    feats, names, errors = [], [], []
    with torch.inference_mode():
        for batch in iter_image_batches(inputs, backbone.transform, batch_size=batch_size):
            if batch.pixel_values is not None:
                feats.append(backbone(batch.pixel_values).float().cpu())
                names += list(batch.names)
            errors += [(e.path, e.reason) for e in batch.errors]
    if not feats:
        return [], [], errors
    exps = explain_features(
        model,
        torch.cat(feats).numpy(),
        names,
        gallery=gallery,
        cbm=cbm,
        top_k=top_k,
        calibration=calibration,
    )
    images = []
    for name in names:
        try:
            images.append(load_image(name))
        except Exception:  # in-memory inputs have no path to reload; the chart goes without
            images.append(None)
    return exps, images, errors
