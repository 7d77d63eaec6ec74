"""`geoalign downstream`: compare location encoders on real geospatial tasks (probes on frozen features)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from geoalign.cli.common import console, fail, print_result, progress_bar

downstream_app = typer.Typer(
    help="Location embeddings on downstream tasks: country, temperature, Köppen, elevation, "
    "population.",
    no_args_is_help=True,
)

DEFAULT_OUT = Path("reports/downstream")


@downstream_app.command("run")
def run(
    tasks: str = typer.Option("all", "--tasks", help="'all' or a comma list of task names."),
    encoders: str = typer.Option(
        "geoclip,raw-latlon,untrained,rff-only",
        "--encoders",
        help="Comma list: built-in names or checkpoint folders (e.g. runs/concept/last).",
    ),
    out: Path = typer.Option(
        DEFAULT_OUT, "--out", "-o", help="Folder for results.json, maps, report."
    ),
    probes: str = typer.Option("mlp,linear", "--probes", help="Probe kinds: mlp, linear."),
    n_points: int | None = typer.Option(
        None, "--n-points", min=1, help="Land points sampled per task."
    ),
    seeds: int | None = typer.Option(None, "--seeds", help="Probe seeds for the final scores."),
    trials_mlp: int | None = typer.Option(
        None, "--trials-mlp", help="Random-search draws, MLP probe."
    ),
    trials_linear: int | None = typer.Option(None, "--trials-linear", help="Draws, linear probe."),
    seed: int = typer.Option(0, "--seed", help="Seed of points, split and search draws."),
    jobs: int | None = typer.Option(
        None, "--jobs", min=1, help="Worker processes (default: CPU cores)."
    ),
    device: str = typer.Option("cpu", "--device", help="Device for the probes (cpu, cuda)."),
    cache_dir: Path | None = typer.Option(None, "--cache-dir", help="Task/embedding cache folder."),
    quick: bool = typer.Option(False, "--quick", help="Small, fast run (tests, smoke checks)."),
    no_report: bool = typer.Option(False, "--no-report", help="Skip writing the report."),
    resume: bool = typer.Option(
        False,
        "--resume",
        help="Keep units already in --out whose settings, points and weights match.",
    ),
) -> None:
    """Run every task × encoder × probe under the same splits and search budget; write a report."""
    from geoalign.downstream.encoders import parse_encoder_list
    from geoalign.downstream.experiment import PROBES, BenchmarkConfig, run_benchmark
    from geoalign.downstream.report import render_report
    from geoalign.downstream.tasks import resolve_task_names
    from geoalign.errors import GeoalignError

    try:
        task_names = resolve_task_names(tasks)
        encoder_names = parse_encoder_list(encoders)
        probe_kinds = [p.strip() for p in probes.split(",") if p.strip()]
        bad = [p for p in probe_kinds if p not in PROBES]
        if bad or not probe_kinds:
            fail(f"unknown probe kind(s) {bad}: choose from {list(PROBES)}")
        overrides = {"probes": probe_kinds, "seed": seed, "device": device}
        if n_points is not None:
            overrides["n_points"] = n_points
        if seeds is not None:
            overrides["n_seeds"] = seeds
        if jobs is not None:
            overrides["jobs"] = jobs
        elif device != "cpu":
            overrides["jobs"] = 1  # one process owns the accelerator
        if quick:
            config = BenchmarkConfig.quick_config(task_names, encoder_names, **overrides)
        else:
            config = BenchmarkConfig(tasks=task_names, encoders=encoder_names, **overrides)
        if trials_mlp is not None:
            config.trials["mlp"] = trials_mlp
        if trials_linear is not None:
            config.trials["linear"] = trials_linear
        for name, n in config.trials.items():
            if name in config.probes and n < 1:
                fail(f"--trials-{name} must be at least 1")
        with progress_bar() as bar:
            job = bar.add_task("downstream", total=None)

            def report(message: str, done: int, total: int) -> None:
                bar.update(job, completed=done, total=total, description=message[:60])

            results = run_benchmark(
                config, out, cache_dir=cache_dir, progress=report, resume=resume
            )
        if not no_report:
            path = render_report(out)
            console.print(f"report: {path}")
    except GeoalignError as err:
        fail(str(err))
    console.print(f"results: {out / 'results.json'} ({results['total_seconds'] / 60:.1f} min)")


@downstream_app.command("report")
def report(
    results_dir: Path = typer.Option(DEFAULT_OUT, "--results", help="Folder with results.json."),
    no_maps: bool = typer.Option(False, "--no-maps", help="Tables only."),
) -> None:
    """Render the markdown report (tables, maps, the papers' numbers) from a finished run."""
    from geoalign.downstream.report import render_report
    from geoalign.errors import GeoalignError

    try:
        with console.status("rendering report ..."):
            path = render_report(results_dir, maps=not no_maps)
    except GeoalignError as err:
        fail(str(err))
    console.print(f"report: {path}")


@downstream_app.command("tasks")
def list_tasks(
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of tables."),
) -> None:
    """List the tasks, what they predict and which data package each reads."""
    from rich.table import Table

    from geoalign.downstream.encoders import ENCODER_DESCRIPTIONS
    from geoalign.downstream.tasks import TASKS

    if as_json:
        tasks = [{"task": t.name, "kind": t.kind, "target": t.target} for t in TASKS.values()]
        encoders = [{"encoder": n, "description": d} for n, d in ENCODER_DESCRIPTIONS.items()]
        typer.echo(json.dumps({"tasks": tasks, "encoders": encoders}, ensure_ascii=False))
        return

    table = Table("task", "kind", "target")
    for spec in TASKS.values():
        table.add_row(spec.name, spec.kind, spec.target)
    print_result(table)
    enc = Table("encoder", "what it is")
    for name, text in ENCODER_DESCRIPTIONS.items():
        enc.add_row(name, text)
    print_result(enc)


def register(app: typer.Typer) -> None:
    app.add_typer(downstream_app, name="downstream")
