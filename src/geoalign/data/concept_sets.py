"""Concept sets: named lists of human-readable concepts with categories, bundled or the user's own.

A concept set is the vocabulary of the concept-aware model (its basis B has one column per concept)
and of every explanation built on it. Two sets ship with geoalign (`list_concept_sets`):

- ``geography``: the geography-driven set of the concept-aware paper's method, written for this
  project (natural geography: climate, landforms, vegetation, water, animals; human geography:
  architecture, settlements, transport, signage and scripts, dress, food, religion, economy,
  society), including every concept the paper prints;
- ``general``: an everyday caption vocabulary with no geographic selection, the control of the
  paper's concept-set ablation (its Table 4; see `splice_select` for the SpLiCE selection).

A user's own set is a YAML file with the bundled schema, a CSV/TSV with a ``concept`` column (and
optionally ``category``, ``group``, ``prompt``), or a text file with one concept per line and
optional ``[category]`` section headers.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import numpy as np

from geoalign.errors import DataError
from geoalign.io_atomic import atomic_output

BUNDLED = {"geography": "geography.yaml", "general": "general.yaml"}
DEFAULT_SET = "geography"
DEFAULT_TEMPLATE = "a photo of {}."
DEFAULT_CATEGORY = "uncategorised"
_MAX_NAME = 80
SelectStrategy = Literal["balanced", "first"]


def clean_name(raw: Any) -> str:
    """Concept names are compared case-insensitively with whitespace collapsed."""
    return re.sub(r"\s+", " ", str(raw)).strip()


def name_key(name: str) -> str:
    return clean_name(name).casefold()


@dataclass(frozen=True)
class Concept:
    name: str
    category: str = DEFAULT_CATEGORY
    group: str = ""
    prompt: str | None = None  # replaces the set's template for this concept

    def text(self, template: str) -> str:
        return self.prompt if self.prompt else template.format(self.name)


@dataclass(frozen=True)
class ConceptSet:
    """An ordered, duplicate-free list of concepts; column j of a concept basis is concept j."""

    name: str
    concepts: tuple[Concept, ...]
    title: str = ""
    description: str = ""
    template: str = DEFAULT_TEMPLATE
    source: str = ""
    _index: dict[str, int] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        if "{}" not in self.template:
            raise DataError(
                f"{self.source or self.name}: template {self.template!r} has no {{}} for the concept"
            )
        index: dict[str, int] = {}
        for i, c in enumerate(self.concepts):
            key = name_key(c.name)
            if not key:
                raise DataError(f"{self.source or self.name}: concept {i + 1} has an empty name")
            if key in index:
                raise DataError(
                    f"{self.source or self.name}: concept {c.name!r} appears twice "
                    f"(entries {index[key] + 1} and {i + 1})"
                )
            index[key] = i
        self._index.update(index)

    # -- views ---------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.concepts)

    def __iter__(self) -> Iterator[Concept]:
        return iter(self.concepts)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name_key(name) in self._index

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.concepts]

    @property
    def categories(self) -> list[str]:
        """Categories in order of first appearance."""
        return list(dict.fromkeys(c.category for c in self.concepts))

    def by_category(self) -> dict[str, list[Concept]]:
        out: dict[str, list[Concept]] = {}
        for c in self.concepts:
            out.setdefault(c.category, []).append(c)
        return out

    def index(self, name: str) -> int:
        """Position of a concept (case-insensitive); DataError with close matches if absent."""
        key = name_key(name)
        if key not in self._index:
            import difflib

            close = difflib.get_close_matches(key, list(self._index), n=5, cutoff=0.6)
            hint = f"; did you mean: {', '.join(close)}" if close else ""
            raise DataError(f"concept {name!r} is not in the concept set {self.name!r}{hint}")
        return self._index[key]

    def get(self, name: str) -> Concept:
        return self.concepts[self.index(name)]

    def texts(self, template: str | None = None) -> list[str]:
        """What the text encoder reads for each concept."""
        t = template or self.template
        return [c.text(t) for c in self.concepts]

    @property
    def fingerprint(self) -> str:
        """Identifies the texts a text encoder sees (cache key for concept embeddings)."""
        payload = json.dumps([self.template, [(c.name, c.prompt) for c in self.concepts]])
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    # -- subsets -------------------------------------------------------------------------------------
    def subset(self, names: Iterable[str], *, name: str | None = None) -> ConceptSet:
        """The given concepts, in the given order."""
        chosen = tuple(self.concepts[self.index(n)] for n in names)
        return replace(self, concepts=chosen, name=name or self.name, _index={})

    def select(self, k: int | None, strategy: SelectStrategy = "balanced") -> ConceptSet:
        """A subset C_k of k concepts (the paper's "k selected concepts"); None or k >= len: all.

        "balanced" takes concepts round-robin over the categories (in file order) so that a small k
        still covers natural and human geography; "first" takes the first k in file order. The
        result keeps file order.
        """
        if k is None or k >= len(self):
            return self
        if k < 1:
            raise DataError(f"the number of concepts k must be >= 1, got {k}")
        if strategy == "first":
            keep = set(range(k))
        elif strategy == "balanced":
            pools = [
                [i for i, c in enumerate(self.concepts) if c.category == cat]
                for cat in self.categories
            ]
            keep: set[int] = set()
            depth = 0
            while len(keep) < k:
                for pool in pools:
                    if depth < len(pool) and len(keep) < k:
                        keep.add(pool[depth])
                depth += 1
        else:
            raise DataError(f"unknown selection strategy {strategy!r}; use balanced or first")
        chosen = tuple(c for i, c in enumerate(self.concepts) if i in keep)
        return replace(self, concepts=chosen, name=f"{self.name}-k{k}", _index={})

    def extended(self, concepts: Iterable[Concept], *, name: str | None = None) -> ConceptSet:
        """This set plus new concepts (those already present are skipped)."""
        extra, seen = [], set(self._index)
        for c in concepts:
            key = name_key(c.name)
            if key and key not in seen:
                seen.add(key)
                extra.append(c)
        return replace(
            self, concepts=self.concepts + tuple(extra), name=name or self.name, _index={}
        )

    # -- serialisation -------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        groups: dict[str, dict[str, list[Any]]] = {}
        for c in self.concepts:
            entry: Any = {"name": c.name, "prompt": c.prompt} if c.prompt else c.name
            groups.setdefault(c.group or "concepts", {}).setdefault(c.category, []).append(entry)
        return {
            "name": self.name,
            "title": self.title,
            "description": self.description,
            "template": self.template,
            "groups": groups,
        }

    def save(self, path: str | Path) -> Path:
        """Write the set as YAML in the bundled schema (readable by `load_concept_set`)."""
        import yaml

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_output(path) as tmp:
            tmp.write_text(yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True))
        return path


# --- loading ----------------------------------------------------------------------------------------


def list_concept_sets() -> list[str]:
    return list(BUNDLED)


def _bundled_text(name: str) -> tuple[str, str]:
    resource = resources.files("geoalign").joinpath("assets", "concepts", BUNDLED[name])
    return resource.read_text(encoding="utf-8"), f"bundled concept set {name!r}"


def _entry(raw: Any, category: str, group: str, where: str) -> Concept:
    if isinstance(raw, str):
        name, prompt = raw, None
    elif isinstance(raw, dict) and "name" in raw:
        unknown = set(raw) - {"name", "prompt"}
        if unknown:
            raise DataError(f"{where}: unknown key(s) {sorted(unknown)} (allowed: name, prompt)")
        name, prompt = raw["name"], raw.get("prompt")
    else:
        raise DataError(
            f"{where}: expected a concept name or {{name: ..., prompt: ...}}, got {raw!r}"
        )
    name = clean_name(name)
    if not name:
        raise DataError(f"{where}: empty concept name")
    if len(name) > _MAX_NAME:
        raise DataError(
            f"{where}: concept name longer than {_MAX_NAME} characters: {name[:40]!r}..."
        )
    if prompt is not None and not str(prompt).strip():
        raise DataError(f"{where}: empty prompt for {name!r}")
    return Concept(name, clean_name(category) or DEFAULT_CATEGORY, clean_name(group), prompt)


def _from_mapping(data: Any, source: str, fallback_name: str) -> ConceptSet:
    if not isinstance(data, dict):
        raise DataError(f"{source}: expected a mapping with `groups` (see the bundled sets)")
    known = {"name", "title", "version", "description", "template", "groups", "concepts"}
    unknown = set(data) - known
    if unknown:
        raise DataError(f"{source}: unknown key(s) {sorted(unknown)}; known: {sorted(known)}")
    concepts: list[Concept] = []
    if "groups" in data:
        groups = data["groups"]
        if not isinstance(groups, dict):
            raise DataError(f"{source}: `groups` must map group -> category -> list of concepts")
        for group, cats in groups.items():
            if not isinstance(cats, dict):
                raise DataError(f"{source}: groups.{group} must map category -> list of concepts")
            for cat, items in cats.items():
                if not isinstance(items, list):
                    raise DataError(f"{source}: groups.{group}.{cat} must be a list of concepts")
                for i, raw in enumerate(items):
                    concepts.append(_entry(raw, cat, group, f"{source}: groups.{group}.{cat}[{i}]"))
    if "concepts" in data:  # a flat list, or a mapping category -> list
        flat = data["concepts"]
        items_by_cat = flat if isinstance(flat, dict) else {DEFAULT_CATEGORY: flat}
        for cat, items in items_by_cat.items():
            if not isinstance(items, list):
                raise DataError(f"{source}: concepts.{cat} must be a list")
            for i, raw in enumerate(items):
                concepts.append(_entry(raw, cat, "", f"{source}: concepts.{cat}[{i}]"))
    if not concepts:
        raise DataError(f"{source}: no concepts (expected `groups` or `concepts`)")
    return ConceptSet(
        name=clean_name(data.get("name") or fallback_name),
        concepts=tuple(concepts),
        title=str(data.get("title") or ""),
        description=clean_name(data.get("description") or ""),
        template=str(data.get("template") or DEFAULT_TEMPLATE),
        source=source,
    )


def _from_text(text: str, source: str, name: str) -> ConceptSet:
    concepts, category = [], DEFAULT_CATEGORY
    for lineno, line in enumerate(text.splitlines(), start=1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        header = re.fullmatch(r"\[(.+)\]", line)
        if header:
            category = clean_name(header[1])
            continue
        concepts.append(_entry(line, category, "", f"{source}: line {lineno}"))
    if not concepts:
        raise DataError(f"{source}: no concepts (one per line; '#' starts a comment)")
    return ConceptSet(name=name, concepts=tuple(concepts), source=source)


def _from_table(path: Path) -> ConceptSet:
    import pandas as pd

    sep = "\t" if path.suffix.lower() == ".tsv" else ","
    try:
        frame = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False)
    except Exception as err:
        raise DataError(f"{path}: cannot be read as a table: {err}") from err
    cols = {c.strip().lower(): c for c in frame.columns}
    col = cols.get("concept") or cols.get("name")
    if col is None:
        raise DataError(f"{path}: needs a `concept` column (have {list(frame.columns)})")
    concepts = []
    for i, row in enumerate(frame.itertuples(index=False), start=2):
        rec = dict(zip(frame.columns, row, strict=True))
        raw: Any = rec[col]
        prompt = rec.get(cols["prompt"]) if "prompt" in cols else None
        entry: Any = {"name": raw, "prompt": prompt} if prompt else raw
        concepts.append(
            _entry(
                entry,
                rec.get(cols.get("category", ""), "") or DEFAULT_CATEGORY,
                rec.get(cols.get("group", ""), "") or "",
                f"{path}: line {i}",
            )
        )
    if not concepts:
        raise DataError(f"{path}: no concepts")
    return ConceptSet(name=path.stem, concepts=tuple(concepts), source=str(path))


def load_concept_set(name_or_path: str | Path = DEFAULT_SET) -> ConceptSet:
    """A bundled set by name (`list_concept_sets`) or a user file (.yaml/.yml, .csv/.tsv, .txt)."""
    import yaml

    key = str(name_or_path)
    if key in BUNDLED:
        text, source = _bundled_text(key)
        return _from_mapping(yaml.safe_load(text), source, key)
    path = Path(key).expanduser()
    if not path.is_file():
        raise DataError(
            f"concept set {key!r} is neither a bundled set ({', '.join(BUNDLED)}) nor a file"
        )
    suffix = path.suffix.lower()
    if suffix in {".yaml", ".yml", ".json"}:
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as err:
            raise DataError(f"{path}: not valid YAML: {err}") from err
        return _from_mapping(data, str(path), path.stem)
    if suffix in {".csv", ".tsv"}:
        return _from_table(path)
    return _from_text(path.read_text(encoding="utf-8"), str(path), path.stem)


# --- the SpLiCE way: a caption vocabulary, then concepts chosen by sparse decompositions --------------

_WORD = re.compile(r"[a-z][a-z'-]*[a-z]|[a-z]")


def caption_vocabulary(
    captions: Iterable[str],
    *,
    n_words: int = 10000,
    n_bigrams: int = 5000,
    min_count: int = 2,
    stop_words: Iterable[str] | None = None,
) -> list[str]:
    """The most frequent words and two-word phrases of a caption corpus, stop words removed.

    SpLiCE (Bhalla et al., NeurIPS 2024) builds its vocabulary this way from LAION-400M captions.
    A bigram counts only where its two words are adjacent in the caption and neither is a stop word
    (removing stop words first would invent bigrams such as "man horse" from "man on a horse").
    Returned most frequent first: words, then bigrams.
    """
    if stop_words is None:
        from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

        stop_words = ENGLISH_STOP_WORDS
    stop = frozenset(w.lower() for w in stop_words)
    words: Counter[str] = Counter()
    pairs: Counter[str] = Counter()
    for caption in captions:
        tokens = _WORD.findall(str(caption).lower())
        keep = [t not in stop and len(t) > 1 for t in tokens]
        words.update(t for t, k in zip(tokens, keep, strict=True) if k)
        pairs.update(
            f"{a} {b}"
            for (a, ka), (b, kb) in zip(
                zip(tokens, keep, strict=True), zip(tokens[1:], keep[1:], strict=True), strict=False
            )
            if ka and kb
        )
    top_words = [w for w, c in words.most_common(n_words) if c >= min_count]
    top_pairs = [p for p, c in pairs.most_common(n_bigrams) if c >= min_count]
    return top_words + top_pairs


def splice_decompose(
    image_emb: np.ndarray,
    concept_emb: np.ndarray,
    *,
    l1_penalty: float = 0.25,
    image_mean: np.ndarray | None = None,
) -> np.ndarray:
    """Sparse non-negative concept weights per image, [N, C], as SpLiCE computes them.

    Concepts are L2-normalised, mean-centred and renormalised; images are centred on the image
    mean (of the given images unless `image_mean` is passed) and normalised; then each image solves
    min_w ||z - C^T w||^2 / (2 d) + alpha ||w||_1, w >= 0 with alpha = l1_penalty / d, where d is the
    embedding width (SpLiCE's objective ||z - C^T w||^2 + 2 l1 ||w||_1 in scikit-learn's scaling).
    scikit-learn's coordinate-descent Lasso solves it (SpLiCE uses ADMM: same minimiser).
    """
    from sklearn.linear_model import Lasso

    def unit(x: np.ndarray) -> np.ndarray:
        return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)

    c = unit(np.asarray(concept_emb, dtype=np.float64))
    c = unit(c - c.mean(axis=0, keepdims=True))
    z = np.asarray(image_emb, dtype=np.float64)
    mean = z.mean(axis=0, keepdims=True) if image_mean is None else np.asarray(image_mean)[None]
    z = unit(unit(z) - unit(mean))
    d = c.shape[1]
    lasso = Lasso(alpha=l1_penalty / d, positive=True, fit_intercept=False, max_iter=5000)
    lasso.fit(c.T, z.T)  # samples = embedding dimensions, features = concepts, targets = images
    return np.atleast_2d(lasso.coef_).reshape(len(z), len(c))


def splice_select(
    concept_set: ConceptSet,
    concept_emb: np.ndarray,
    image_emb: np.ndarray,
    k: int,
    *,
    l1_penalty: float = 0.25,
) -> tuple[ConceptSet, np.ndarray]:
    """The k concepts of a (general) vocabulary that SpLiCE decompositions of the images use most.

    This is how a general concept set is "generated by SpLiCE" for a dataset: decompose the
    dataset's image embeddings over the vocabulary and keep the concepts with the largest mean
    weight. Returns the subset (most used first) and its mean weights.
    """
    if len(concept_emb) != len(concept_set):
        raise DataError(f"{len(concept_emb)} concept embeddings for {len(concept_set)} concepts")
    weights = splice_decompose(image_emb, concept_emb, l1_penalty=l1_penalty).mean(axis=0)
    order = np.argsort(-weights, kind="stable")[:k]
    order = order[weights[order] > 0] if (weights[order] > 0).any() else order
    chosen = concept_set.subset(
        [concept_set.names[i] for i in order], name=f"{concept_set.name}-splice-k{len(order)}"
    )
    return chosen, weights[order]


def describe(concept_set: ConceptSet) -> list[tuple[str, str, list[str]]]:
    """(group, category, names) rows for listing a set."""
    rows: list[tuple[str, str, list[str]]] = []
    for cat, items in concept_set.by_category().items():
        rows.append((items[0].group, cat, [c.name for c in items]))
    return rows


def missing_from(concept_set: ConceptSet, names: Sequence[str]) -> list[str]:
    return [n for n in names if n not in concept_set]
