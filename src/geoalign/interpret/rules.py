"""Global decision rules: which concepts set two countries apart in the model's concept space, and
the Sankey diagram of the concept-aware paper's Fig. 4.

For the images the model places in country A and those it places in country B (or, with
by="truth", the images taken there), each concept's prevalence is the share of images that have it
among their top-k concepts, and its activation level the mean top-k-sparse activation (zero where
it is not among the top k). The concepts whose prevalence differs most between the two countries,
in either direction, are the rules. Prevalence rather than mean activation ranks them because
every image has exactly k active concepts, so the differences balance between the two countries,
while raw scores can sit lower for one country across the board (scores may be negative).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from geoalign.errors import DataError
from geoalign.interpret.figures import save_figure
from geoalign.io_atomic import atomic_output


@dataclass
class DecisionRules:
    country_a: str
    country_b: str
    n_a: int
    n_b: int
    table: (
        pd.DataFrame
    )  # all concepts: concept, category, group, mean_a, mean_b, share_a, share_b, diff
    top: int

    @property
    def for_a(self) -> pd.DataFrame:
        t = self.table[self.table["diff"] > 0]
        return t.nlargest(self.top, "diff")

    @property
    def for_b(self) -> pd.DataFrame:
        t = self.table[self.table["diff"] < 0]
        return t.nsmallest(self.top, "diff")

    def rules(self) -> pd.DataFrame:
        a = self.for_a.assign(favours=self.country_a)
        b = self.for_b.assign(favours=self.country_b)
        return pd.concat([a, b], ignore_index=True)


def decision_rules(
    activations: np.ndarray,
    countries: np.ndarray,
    concepts: list[str],
    categories: list[str],
    groups: list[str],
    country_a: str,
    country_b: str,
    *,
    top: int = 8,
    min_images: int = 5,
) -> DecisionRules:
    """Rules between two countries from top-k-sparse activations [N, k] and a country per image."""
    countries = np.asarray(countries).astype(str)
    acts = np.asarray(activations, dtype=np.float64)
    in_a, in_b = countries == country_a, countries == country_b
    for code, mask in ((country_a, in_a), (country_b, in_b)):
        if mask.sum() < min_images:
            present = pd.Series(countries[countries != ""]).value_counts().head(12)
            listing = ", ".join(f"{c} ({n})" for c, n in present.items())
            raise DataError(
                f"only {int(mask.sum())} images for {code} (need {min_images}); most frequent: "
                f"{listing}"
            )
    table = pd.DataFrame(
        {
            "concept": concepts,
            "category": categories,
            "group": groups,
            "mean_a": acts[in_a].mean(0),
            "mean_b": acts[in_b].mean(0),
            "share_a": (acts[in_a] != 0).mean(0),
            "share_b": (acts[in_b] != 0).mean(0),
        }
    )
    table["diff"] = table["share_a"] - table["share_b"]
    return DecisionRules(country_a, country_b, int(in_a.sum()), int(in_b.sum()), table, top)


# --- Sankey diagrams -----------------------------------------------------------------------------------

COUNTRY_COLOURS = ("#d1495b", "#00798c", "#edae49", "#66a182", "#2e4057")


def _flows(rules: DecisionRules) -> tuple[list[str], np.ndarray]:
    r = rules.rules()
    flows = r[["share_a", "share_b"]].to_numpy(dtype=np.float64)
    return list(r["concept"]), np.clip(flows, 0, None)


def sankey_html(
    rules: DecisionRules, path: str | Path, names: dict[str, str] | None = None
) -> Path:
    """Interactive Sankey (plotly): concept -> country, band width = the concept's prevalence
    (share of that country's images with the concept among their top k)."""
    try:
        import plotly.graph_objects as go
    except ModuleNotFoundError as err:
        raise DataError("the HTML Sankey needs plotly: pip install plotly") from err
    labels, flows = _flows(rules)
    names = names or {}
    countries = [rules.country_a, rules.country_b]
    node_labels = labels + [f"{names.get(c, c)} ({c})" for c in countries]
    src, dst, val, col = [], [], [], []
    for i in range(len(labels)):
        for j in range(2):
            if flows[i, j] > 0:
                src.append(i)
                dst.append(len(labels) + j)
                val.append(float(flows[i, j]))
                rgb = COUNTRY_COLOURS[j].lstrip("#")
                r, g, b = (int(rgb[k : k + 2], 16) for k in (0, 2, 4))
                col.append(f"rgba({r},{g},{b},0.45)")
    fig = go.Figure(
        go.Sankey(
            node={
                "label": node_labels,
                "pad": 12,
                "color": ["#8c8c8c"] * len(labels) + list(COUNTRY_COLOURS[:2]),
            },
            link={"source": src, "target": dst, "value": val, "color": col},
        )
    )
    fig.update_layout(
        title=f"Concepts that separate {names.get(rules.country_a, rules.country_a)} and "
        f"{names.get(rules.country_b, rules.country_b)} (band = share of the country's photos "
        "with the concept among their top concepts)",
        font_size=13,
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as tmp:
        fig.write_html(str(tmp), include_plotlyjs=True)
    return path


def sankey_png(rules: DecisionRules, path: str | Path, names: dict[str, str] | None = None) -> Path:
    """Static Sankey drawn with matplotlib (no browser needed): concepts on the left, the two
    countries on the right, band widths proportional to each concept's prevalence there."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import PathPatch, Rectangle
    from matplotlib.path import Path as MPath

    labels, flows = _flows(rules)
    names = names or {}
    n = len(labels)
    if n == 0:
        raise DataError("no concept separates the two countries (all activations equal)")
    total = flows.sum()
    gap_l = 0.25 * total / max(n, 1)
    left_h = flows.sum(1)
    right_h = flows.sum(0)
    height = total + gap_l * (n - 1)
    gap_r = height - right_h.sum()
    fig, ax = plt.subplots(figsize=(10, 0.42 * n + 2.2))
    x0, x1, w = 0.0, 1.0, 0.035
    # left nodes, top to bottom; concepts favouring A first
    tops_l = height - np.concatenate([[0], np.cumsum(left_h + gap_l)[:-1]])
    tops_r = height - np.array([0.0, right_h[0] + gap_r])
    fill_r = tops_r.copy()
    favours = [0] * len(rules.for_a) + [1] * len(rules.for_b)
    for i in range(n):
        y_top = tops_l[i]
        ax.add_patch(Rectangle((x0 - w, y_top - left_h[i]), w, left_h[i], color="#7a7a7a"))
        side = COUNTRY_COLOURS[favours[i]]
        ax.text(x0 - w - 0.01, y_top - left_h[i] / 2, labels[i], ha="right", va="center",
                fontsize=10, color=side, fontweight="bold")  # fmt: skip
        y = y_top
        for j in range(2):
            f = flows[i, j]
            if f <= 0:
                continue
            ya0, ya1 = y, y - f
            yb0, yb1 = fill_r[j], fill_r[j] - f
            fill_r[j] -= f
            y -= f
            xm = (x0 + x1) / 2
            verts = [(x0, ya0), (xm, ya0), (xm, yb0), (x1, yb0), (x1, yb1), (xm, yb1),
                     (xm, ya1), (x0, ya1), (x0, ya0)]  # fmt: skip
            codes = [MPath.MOVETO, MPath.CURVE4, MPath.CURVE4, MPath.CURVE4, MPath.LINETO,
                     MPath.CURVE4, MPath.CURVE4, MPath.CURVE4, MPath.CLOSEPOLY]  # fmt: skip
            # the band to the country the concept favours is drawn strong, the other faint
            alpha = 0.55 if j == favours[i] else 0.15
            ax.add_patch(
                PathPatch(MPath(verts, codes), color=COUNTRY_COLOURS[j], alpha=alpha, lw=0)
            )
    for j, code in enumerate((rules.country_a, rules.country_b)):
        ax.add_patch(
            Rectangle((x1, tops_r[j] - right_h[j]), w, right_h[j], color=COUNTRY_COLOURS[j])
        )
        n_img = rules.n_a if j == 0 else rules.n_b
        ax.text(x1 + w + 0.01, tops_r[j] - right_h[j] / 2,
                f"{names.get(code, code)}\n({n_img} images)", ha="left", va="center",
                fontsize=12, fontweight="bold", color=COUNTRY_COLOURS[j])  # fmt: skip
    ax.set_xlim(-0.55, 1.4)
    ax.set_ylim(-0.02 * height, height * 1.02)
    ax.set_axis_off()
    ax.set_title(
        f"Concepts that separate {names.get(rules.country_a, rules.country_a)} and "
        f"{names.get(rules.country_b, rules.country_b)}\n"
        "band width = share of the country's photos with the concept among their top concepts\n"
        "label colour and strong band = the country the concept favours",
        fontsize=11,
    )
    return save_figure(fig, path)
