"""The lower layers import nothing above them: errors/paths < geo < data < nn, and interpret,
downstream and baselines import no model, inference, evaluation, training or CLI module.

Every import is read from the source (module level and inside functions, where 264 of the
package's internal imports used to hide), so a lazy upward import fails here as surely as a
top-level one. The few upward imports still waiting for the model registry are listed in PENDING
with the reason; an entry that is no longer needed fails the test too, so the list only shrinks.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "geoalign"

# Layers from the bottom; a module may import its own layer and the ones below.
LOWER_LAYERS: tuple[tuple[str, ...], ...] = (
    ("errors", "paths", "_version"),
    ("geo",),
    ("data",),
    ("nn",),
)
# interpret, downstream and baselines sit above nn and beside evaluation; they must not reach up
# into the model/inference/evaluation/training/CLI code (they will load models via the registry).
UPPER_CONSUMERS = ("interpret", "downstream", "baselines")
HIGHER = (
    "models",
    "inference",
    "evaluation",
    "training",
    "cli",
    "geolocator",
    "zoo",
    "search",
    "gallery_cache",
)
ROOT = "geoalign"  # the top-level package: its lazy attributes reach the Geolocator
HIGHER += (ROOT,)
NOT_CHECKED = {"interpret.loading"}  # the lead's checkpoint loader, moving to models.registry

# (importing module, imported module): why it is still there.
PENDING: dict[tuple[str, str], str] = {
    ("baselines", "search"): "kNN baselines search features with GallerySearch (inference)",
    ("downstream.encoders", "zoo"): "loads the GeoCLIP location encoder: registry.load_model",
    ("interpret.data", "evaluation.descriptors"): "scene-label feature sets: feature-row loader",
    ("interpret.data", "gallery_cache"): "top-1 retrieval: the Locator's ranking",
    ("interpret.data", "search"): "top-1 retrieval: the Locator's ranking",
    ("interpret.explain", "geolocator"): "explain_images ranks candidates: the Locator's ranking",
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def internal_imports(path: Path, module: str | None = None) -> set[str]:
    """Every geoalign name `path` (module `module`) imports, at any depth (functions,
    TYPE_CHECKING blocks), relative imports resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = (module or _module_name(path)).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                module = ".".join(["geoalign", *base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            names = [module] + [f"{module}.{a.name}" for a in node.names]
        else:
            continue
        if isinstance(node, ast.ImportFrom) and names[0] == "geoalign":
            # `from geoalign import x`: x is a submodule, or a name of the top-level package
            names = names[1:] + [ROOT for a in node.names if _resolve(a.name) is None]
        for name in names:
            if name == ROOT or name.startswith("geoalign."):
                found.add(name if name == ROOT else name.removeprefix("geoalign."))
    return found


def _top(name: str) -> str:
    return name.split(".")[0]


def _resolve(name: str) -> str | None:
    """The module an imported name refers to (`geo.coords.validate_latlon` -> `geo.coords`)."""
    if name == ROOT:
        return ROOT
    parts = name.split(".")
    for k in range(len(parts), 0, -1):
        candidate = SRC.joinpath(*parts[:k])
        if candidate.with_suffix(".py").is_file() or (candidate / "__init__.py").is_file():
            return ".".join(parts[:k])
    return None


def graph() -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for path in sorted(SRC.rglob("*.py")):
        module = _module_name(path)
        out[module] = {m for n in internal_imports(path) if (m := _resolve(n)) and m != module}
    return out


def _layer_of(module: str) -> int | None:
    for i, layer in enumerate(LOWER_LAYERS):
        if _top(module) in layer:
            return i
    return None


def upward_imports() -> dict[tuple[str, str], str]:
    """(importer, imported) -> rule broken, for every module of the lower layers and consumers."""
    bad: dict[tuple[str, str], str] = {}
    for module, imported in graph().items():
        if module in NOT_CHECKED:
            continue
        own = _layer_of(module)
        for target in imported:
            if own is not None:
                layer = _layer_of(target)
                if layer is None or layer > own:
                    bad[(module, target)] = f"layer {LOWER_LAYERS[own]} imports {target}"
            elif _top(module) in UPPER_CONSUMERS and _top(target) in HIGHER:
                bad[(module, target)] = f"{_top(module)} imports {target}"
    return bad


def test_the_scanner_sees_imports_inside_functions_and_relative_ones(tmp_path):
    sample = SRC / "geo" / "priors.py"  # imports geo.places inside a function
    assert "geo.places" in {_resolve(n) for n in internal_imports(sample)}
    assert _resolve("geo.coords.validate_latlon") == "geo.coords"
    assert graph()["data.galleries"] >= {"data.tables", "geo.coords", "paths"}
    (tmp_path / "m.py").write_text(
        "from geoalign import __version__\nfrom geoalign import zoo\n"
        "def f():\n    from .coords import x\n"
    )
    assert internal_imports(tmp_path / "m.py", "geo.m") >= {ROOT, "zoo", "geo.coords"}
    (tmp_path / "n.py").write_text("from geoalign import zoo\n")
    assert internal_imports(tmp_path / "n.py", "geo.n") == {"zoo"}


def test_no_lower_layer_imports_a_higher_one():
    bad = {k: v for k, v in upward_imports().items() if k not in PENDING}
    assert not bad, "upward imports:\n" + "\n".join(
        f"  {a} -> {b}: {why}" for (a, b), why in sorted(bad.items())
    )


@pytest.mark.parametrize("edge", sorted(PENDING))
def test_pending_exceptions_are_still_needed(edge):
    assert edge in upward_imports(), f"{edge} no longer imported: drop it from PENDING"


if __name__ == "__main__":  # python tests/test_layering.py: the subpackage import graph
    from collections import Counter

    edges = Counter(
        (_top(a) or ROOT, _top(b))
        for a, targets in graph().items()
        for b in targets
        if _top(a) != _top(b)
    )
    for (a, b), n in sorted(edges.items()):
        print(f"{a:>14} -> {b:<14} {n}")
    for (a, b), why in sorted(upward_imports().items()):
        print(f"upward: {a} -> {b} ({PENDING.get((a, b), why)})")
