"""Several training runs of one config with consecutive seeds, summarised as mean ± std per metric
("average over three runs", as the papers report): `geoalign train CONFIG --seeds N`.

Each seed trains into `<out_dir>/seed-<s>` and is evaluated as the config's `eval` section says;
the summary is computed from the per-seed report tables (`geoalign.evaluation.report.table`), so
it holds exactly the numbers of the per-seed reports, and is written to `<out_dir>/summary/`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from geoalign.io_atomic import atomic_output

if TYPE_CHECKING:
    from geoalign.evaluation.harness import Evaluation

METRICS_DIGITS = {"median_km": 0, "geoscore": 0}  # the rest (accuracies, %) with one decimal


def seed_runs(base_seed: int, n: int, out_dir: str | Path) -> list[tuple[int, Path]]:
    """(seed, run folder) of each of the n runs: seeds s, s+1, ..., folders <out>/seed-<s>."""
    if n < 1:
        raise ValueError(f"--seeds needs at least 1 run, got {n}")
    return [(base_seed + i, Path(out_dir) / f"seed-{base_seed + i}") for i in range(n)]


def summarize(evaluations: dict[int, Evaluation]) -> pd.DataFrame:
    """One row per method (models and baselines, not the published rows): the mean and the
    sample standard deviation (0 for one run) of every metric over the seeds' evaluations."""
    from geoalign.evaluation.report import ACC_KEYS, table

    metrics = [*ACC_KEYS, "median_km", "geoscore"]
    frames = []
    for seed, ev in evaluations.items():
        frame = table(ev, published=[])
        frames.append(frame[frame["kind"] != "published"].assign(seed=seed))
    runs = pd.concat(frames, ignore_index=True)
    order = list(dict.fromkeys(runs["method"]))
    grouped = runs.groupby("method", sort=False)
    mean = grouped[metrics].mean()
    std = grouped[metrics].std(ddof=1).fillna(0.0)
    out = pd.DataFrame({"method": order})
    out["kind"] = [grouped.get_group(m)["kind"].iloc[0] for m in order]
    out["runs"] = [len(grouped.get_group(m)) for m in order]
    for key in metrics:
        out[f"{key}_mean"] = [float(mean.loc[m, key]) for m in order]
        out[f"{key}_std"] = [float(std.loc[m, key]) for m in order]
    return out


def summary_markdown(frame: pd.DataFrame, seeds: list[int], benchmark: str) -> str:
    from geoalign.evaluation.report import ACC_KEYS

    metrics = [*ACC_KEYS, "median_km", "geoscore"]
    head = "| method | runs | " + " | ".join(m.removeprefix("acc@") for m in metrics) + " |"
    lines = [
        f"# {benchmark}: mean ± std over {len(seeds)} runs (seeds {', '.join(map(str, seeds))})",
        "",
        "Accuracy in % within each distance; std is the sample standard deviation over runs.",
        "",
        head,
        "|---|---:|" + "---:|" * len(metrics),
    ]
    for _, r in frame.iterrows():
        cells = []
        for key in metrics:
            digits = METRICS_DIGITS.get(key, 1)
            cells.append(f"{r[f'{key}_mean']:,.{digits}f} ± {r[f'{key}_std']:,.{digits}f}")
        name = f"**{r['method']}**" if r["kind"] == "model" else r["method"]
        lines.append(f"| {name} | {r['runs']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_summary(
    evaluations: dict[int, Evaluation], out_dir: str | Path
) -> tuple[pd.DataFrame, dict[str, Path]]:
    """summary.md and summary.json in <out_dir>/summary; returns the frame and the paths."""
    frame = summarize(evaluations)
    seeds = sorted(evaluations)
    benchmark = next(iter(evaluations.values())).benchmark
    out = Path(out_dir) / "summary"
    out.mkdir(parents=True, exist_ok=True)
    paths = {"markdown": out / "summary.md", "json": out / "summary.json"}
    with atomic_output(paths["markdown"]) as tmp:
        tmp.write_text(summary_markdown(frame, seeds, benchmark))
    payload = {"benchmark": benchmark, "seeds": seeds, "rows": frame.to_dict(orient="records")}
    with atomic_output(paths["json"]) as tmp:
        tmp.write_text(json.dumps(payload, indent=2, default=float))
    return frame, paths
