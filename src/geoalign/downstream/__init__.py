"""Location embeddings on downstream geospatial tasks, measured on real reference data.

    from geoalign.downstream import LocationProbe, load_task, get_encoder, embed
    task = load_task("temperature")
    X = embed(get_encoder("geoclip"), task.latlon)
    probe = LocationProbe("regression").fit(X[task.mask("train")], task.y[task.mask("train")])
    probe.score(X[task.mask("test")], task.y[task.mask("test")])   # R²

Any callable latlon [N, 2] -> emb [N, D] can be compared: wrap it in `CallableEmbedder`, or pass a
geoalign checkpoint folder to `get_encoder`.
"""

from geoalign.downstream.encoders import (
    ENCODERS,
    CallableEmbedder,
    LocationEmbedder,
    embed,
    get_encoder,
    register_encoder,
)
from geoalign.downstream.experiment import BenchmarkConfig, run_benchmark
from geoalign.downstream.probes import LocationProbe, SearchSpace, random_search
from geoalign.downstream.report import render_report
from geoalign.downstream.tasks import TASKS, Task, build_task, load_task

__all__ = [
    "ENCODERS",
    "TASKS",
    "BenchmarkConfig",
    "CallableEmbedder",
    "LocationEmbedder",
    "LocationProbe",
    "SearchSpace",
    "Task",
    "build_task",
    "embed",
    "get_encoder",
    "load_task",
    "random_search",
    "register_encoder",
    "render_report",
    "run_benchmark",
]
