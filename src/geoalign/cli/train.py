"""`geoalign train CONFIG`: train GeoCLIP from a YAML config (see configs/geoclip/)."""

from __future__ import annotations

from pathlib import Path

import typer

from geoalign.cli.common import console, fail


def train(
    config: Path = typer.Argument(..., help="YAML config, e.g. configs/geoclip/mp16.yaml."),
    set_: list[str] = typer.Option(
        [], "--set", "-s", help="Override a config value: --set optim.lr=1e-4 (repeatable)."
    ),
    out: Path = typer.Option(None, "--out", "-o", help="Run folder (overrides trainer.out_dir)."),
    resume: bool = typer.Option(
        True,
        help="Resume from <out>/checkpoints/last.ckpt when it exists, whatever the config's "
        "trainer.resume says (a trainer.resume path is kept); --no-resume starts fresh.",
    ),
    evaluate: bool = typer.Option(
        True,
        "--eval/--no-eval",
        help="Evaluate the trained model as the config's eval section says (report in <out>/eval).",
    ),
    seeds: int = typer.Option(
        1,
        "--seeds",
        min=1,
        help="Train N runs with seeds s, s+1, ... (s: trainer.seed) into <out>/seed-<s>, evaluate "
        "each, and write the mean ± std per metric to <out>/summary/.",
    ),
) -> None:
    """Train (or resume) a run. Several processes: torchrun --nproc_per_node N $(which geoalign)
    train CONFIG (CPU processes use gloo, GPUs NCCL; nodes via torchrun's --nnodes)."""
    try:
        import lightning  # noqa: F401
    except ImportError:
        fail("training needs lightning: pip install 'geoalign[train]'")
    from geoalign.training.config import resolve_config

    config = resolve_config(config)  # configs/... names the packaged file outside the repository

    overrides = list(set_)
    if out is not None:
        overrides.append(f"trainer.out_dir={out}")
    if not resume:
        overrides.append("trainer.resume=null")
    elif not any(o.startswith("trainer.resume=") for o in set_):
        overrides.append(f"trainer.resume={_resume_setting(config)}")
    if not evaluate:
        overrides.append("eval.after_training=false")
    if seeds == 1:
        _train_one(config, overrides)
        return
    _train_seeds(config, overrides, seeds)


def _typed(config: Path, overrides: list[str]):
    """The typed config of any method (GeoSURGE, concept-aware: its GeoCLIP part, GeoCLIP)."""
    from geoalign.training.concept import load_concept_config
    from geoalign.training.config import config_method, load_config
    from geoalign.training.geosurge import load_geosurge_config

    method = config_method(config)
    if method == "geosurge":
        return load_geosurge_config(config, overrides)
    if method == "concept":
        return load_concept_config(config, overrides).train
    return load_config(config, overrides)


def _train_seeds(config: Path, overrides: list[str], n: int) -> None:
    """--seeds N: one run per seed, each evaluated, then the summary (mean ± std) on stdout."""
    from geoalign.training.seeds import seed_runs, write_summary

    base = _typed(config, overrides)
    root = Path(base.trainer.out_dir)
    evaluations = {}
    for seed, run_dir in seed_runs(base.trainer.seed, n, root):
        console.print(f"[cyan]•[/] seed {seed}: {run_dir}")
        run = _train_one(config, [*overrides, f"trainer.seed={seed}", f"trainer.out_dir={run_dir}"])
        if run is not None:
            evaluations[seed] = run.evaluation
    if len(evaluations) < n:
        if evaluations or base.eval.after_training:
            console.print(
                f"no summary: {n - len(evaluations)} of {n} runs were not evaluated (see above)"
            )
        return
    frame, paths = write_summary(evaluations, root)
    typer.echo(paths["markdown"].read_text())
    console.print(f"summary: [bold]{paths['markdown']}[/] ({len(frame)} methods)")


def _train_one(config: Path, overrides: list[str]):
    """Train one run and evaluate it as its eval section says; the EvaluationRun or None."""
    from geoalign.training.config import config_method, load_config
    from geoalign.training.run import train as run

    method = config_method(config)
    if method == "geosurge":
        from geoalign.training.geosurge import load_geosurge_config, train_geosurge

        gs = load_geosurge_config(config, overrides)
        _check_eval(gs)
        console.print(f"[cyan]•[/] {gs.name}: reproduces {gs.reproduces}")
        done = train_geosurge(gs)
        if done.trained_steps == 0:
            _already_complete(done.global_step, done.last_dir)
        else:
            console.print(
                f"[green]done[/]: {done.global_step} steps, {done.epochs} epochs in "
                f"{done.seconds:.0f} s; best {gs.optim.monitor} = {done.best}; model: "
                f"[bold]{done.last_dir}[/] (best: {done.best_dir})"
            )
        return _evaluate(gs, done.best_dir if done.best_dir.is_dir() else done.last_dir)
    if method == "concept":  # GeoCLIP's harness + the concept module
        from geoalign.training.concept import load_concept_config, train_concept

        crun = load_concept_config(config, overrides)
        _check_eval(crun.train)
        console.print(f"[cyan]•[/] {crun.train.name}: reproduces {crun.train.reproduces}")
        result = train_concept(crun)
        if result.trained_steps == 0:
            _already_complete(result.global_step, result.export_dir)
        else:
            console.print(
                f"[green]done[/]: {result.global_step} steps in {result.seconds:.0f} s; model: "
                f"[bold]{result.export_dir}[/]"
                + (
                    f" (concept bottleneck in {result.export_dir / 'cbm'})"
                    if (result.export_dir / "cbm").is_dir()
                    else ""
                )
            )
        return _evaluate(crun.train, result.export_dir)
    cfg = load_config(config, overrides)
    _check_eval(cfg)
    console.print(f"[cyan]•[/] {cfg.name}: reproduces {cfg.reproduces}")
    result = run(cfg)
    if result.trained_steps == 0:
        _already_complete(result.global_step, result.export_dir)
    else:
        rate = f"{result.samples_per_s:,.0f} samples/s" if result.samples_per_s else "n/a"
        console.print(
            f"[green]done[/]: {result.trained_steps} steps in {result.seconds:.0f} s ({rate}); "
            f"{result.global_step} in all; model: [bold]{result.export_dir}[/]"
        )
    _calibrate(cfg, result.export_dir, result.trained_steps)
    return _evaluate(cfg, result.export_dir)


def _calibrate(cfg, export_dir: Path, trained_steps: int) -> None:
    """Calibrate the exported model on the config's validation split (rank 0 only), unless a
    finished run already stored one."""
    from lightning.pytorch.utilities import rank_zero_only

    from geoalign.training.calibrate_after import calibrate_after_training, has_calibration

    if getattr(rank_zero_only, "rank", 0) != 0:
        return
    if trained_steps == 0 and has_calibration(export_dir):
        return
    calibrate_after_training(cfg, export_dir, say=lambda m: console.print(f"[cyan]•[/] {m}"))


def _resume_setting(config: Path) -> str:
    """What --resume means for this config: its trainer.resume checkpoint path when it names
    one, else "auto" (last.ckpt when present) -- also over the quickstart's `resume: null`."""
    from geoalign.training.config import read_config_yaml

    given = (read_config_yaml(config).get("trainer") or {}).get("resume")
    return given if isinstance(given, str) and given not in ("auto", "none") else "auto"


def _eval_queries(cfg) -> str | None:
    """The test queries the after-training evaluation reads (as evaluate_after_training picks
    them): eval.queries, or the benchmark's scene labels for a run trained on scene labels."""
    from geoalign.evaluation.run import after_training_queries

    return after_training_queries(cfg)


def _check_eval(cfg) -> None:
    """The after-training evaluation can run, checked before training starts (not hours later):
    eval.images must hold the benchmark's photos, and eval.ten_crop (the papers' ten-crop
    evaluation) is honoured, never dropped: photos are read as ten crops, feature queries must
    hold the crops, and ten_crop with nothing to evaluate is an error naming the key."""
    e = cfg.eval
    if not e.after_training:
        return
    if e.images:
        from geoalign.evaluation.run import missing_eval_photos

        problem = missing_eval_photos(e.images, e.benchmark)
        if problem:
            what = f"the {e.benchmark} photos" if e.benchmark else "its photos"
            fail(
                f"eval.images {e.images}: {problem}; the evaluation after training reads {what}: "
                "get them (`geoalign data benchmark NAME FOLDER` lists what is missing), point "
                "--set eval.images=FOLDER at them, or train without evaluating (--no-eval)"
            )
        return
    spec = _eval_queries(cfg)
    if e.ten_crop and not spec:
        fail(
            "eval.ten_crop: true, but nothing is evaluated after training: set eval.images (the "
            "benchmark's photos) or eval.queries, or eval.ten_crop=false"
        )
    if not (e.ten_crop and spec):
        return
    from geoalign.errors import GeoalignError
    from geoalign.evaluation.queries import resolve

    try:
        crops = resolve(spec, max_rows=1, seed=cfg.trainer.seed).features.dim() == 3
    except GeoalignError as err:
        fail(f"eval.queries {spec}: {err}")
    if not crops:
        fail(
            f"eval.ten_crop: ten-crop needs photo queries, and eval.queries {spec} holds one "
            "crop's features per photo: point eval.images at the benchmark's photos, give "
            "features stored per crop (`features extract --ten-crop`), or set eval.ten_crop=false"
        )


def _already_complete(steps: int, model_dir: Path) -> None:
    """After the trainer's "already complete" line: what the finished run left."""
    console.print(f"{steps} steps, trained before; model: [bold]{model_dir}[/]")


def _evaluate(cfg, model_dir: Path):
    """The config's after-training evaluation, in the rank-0 process only (its EvaluationRun;
    None elsewhere or when the config asks for none)."""
    from lightning.pytorch.utilities import rank_zero_only

    if getattr(rank_zero_only, "rank", 0) != 0:
        return None
    from geoalign.cli.quickstart import print_table
    from geoalign.evaluation.report import table
    from geoalign.evaluation.run import evaluate_after_training

    run = evaluate_after_training(cfg, model_dir, say=lambda m: console.print(f"[cyan]•[/] {m}"))
    if run is not None:
        ev = run.evaluation
        print_table(table(ev), f"{ev.benchmark}: {len(ev.truth):,} queries, gallery {ev.gallery}")
        console.print(f"report: [bold]{run.paths['markdown']}[/]")
    return run


def register(app: typer.Typer) -> None:
    app.command("train")(train)
