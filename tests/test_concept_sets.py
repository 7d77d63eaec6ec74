"""Concept sets: the bundled sets, user files, selection, the SpLiCE vocabulary and decomposition."""

from __future__ import annotations

import numpy as np
import pytest

from geoalign.data.concept_sets import (
    caption_vocabulary,
    list_concept_sets,
    load_concept_set,
    splice_decompose,
    splice_select,
)
from geoalign.errors import DataError

# Every concept the concept-aware paper prints: its Table 3 and the concepts named with figs. 1, 3-5.
PAPER_TABLE3 = (
    "windmill theater factory scaffolding promenade drizzle mangrove sombrero eucalyptus cairn "
    "grapevine favela temperate sari underpass crater chimney dune gondola island uniform tea "
    "brickwork reflection gate lorry bus motorcycle fortress hedge townhouse hairstyle succulent "
    "plantation cobblestone souk woodland summit pennant demonstration"
).split() + [
    "prayer flags",
    "power line",
    "vending machine",
    "sand dune",
    "oak tree",
    "shanty town",
]
PAPER_FIGURES = [
    "skyscraper", "esplanade", "advertisement", "typhoon", "historical civilization", "tuk-tuk",
    "incense", "monorail", "tropical climate", "mountain", "cathedral", "forest",
]  # fmt: skip


def test_bundled_geography_set():
    s = load_concept_set("geography")
    assert 300 <= len(s) <= 500
    assert set(list_concept_sets()) >= {"geography", "general"}
    missing = [c for c in PAPER_TABLE3 + PAPER_FIGURES if c not in s]
    assert missing == []
    cats = set(s.categories)
    natural = {"climate", "landforms", "vegetation", "water"}
    human = {"architecture", "transport", "signage", "dress", "food", "religion", "economy"}
    assert natural | human <= cats
    groups = {c.group for c in s}
    assert groups == {"natural", "human"}
    assert (
        all("{}" in s.template for _ in [0])
        and s.texts()[s.index("Forest")] == "a photo of forest."
    )


def test_general_set_is_disjoint_in_purpose():
    g = load_concept_set("general")
    geo = load_concept_set("geography")
    assert len(g) >= 300
    shared = set(g.names) & set(geo.names)
    assert len(shared) < 0.1 * len(g)


def test_select_balanced_covers_every_category():
    s = load_concept_set("geography")
    sub = s.select(28)
    assert len(sub) == 28
    assert set(sub.categories) == set(s.categories)  # 14 categories, 2 each
    assert sub.names == [n for n in s.names if n in set(sub.names)]  # file order kept
    assert s.select(5, "first").names == s.names[:5]
    assert s.select(None) is s
    with pytest.raises(DataError):
        s.select(0)


def test_user_files(tmp_path):
    txt = tmp_path / "mine.txt"
    txt.write_text(
        "# my concepts\n[roofs]\nthatched roof\nred tile roof  # Mediterranean\n\n[trees]\nbaobab\n"
    )
    s = load_concept_set(txt)
    assert s.names == ["thatched roof", "red tile roof", "baobab"]
    assert [c.category for c in s] == ["roofs", "roofs", "trees"]

    csv = tmp_path / "mine.csv"
    csv.write_text("concept,category,prompt\nfjord,water,\nyurt,architecture,a yurt on a steppe\n")
    s = load_concept_set(csv)
    assert s.texts() == ["a photo of fjord.", "a yurt on a steppe"]

    yml = tmp_path / "mine.yaml"
    yml.write_text("name: x\ntemplate: 'street view of {}'\nconcepts: [pagoda, souk]\n")
    s = load_concept_set(yml)
    assert s.name == "x" and s.texts() == ["street view of pagoda", "street view of souk"]
    out = s.save(tmp_path / "round.yaml")
    assert load_concept_set(out).texts() == s.texts()


def test_user_file_errors_name_the_place(tmp_path):
    dup = tmp_path / "dup.txt"
    dup.write_text("forest\nriver\nForest\n")
    with pytest.raises(DataError, match=r"'Forest' appears twice \(entries 1 and 3\)"):
        load_concept_set(dup)
    bad = tmp_path / "bad.yaml"
    bad.write_text("groups:\n  natural:\n    climate:\n      - {nam: fog}\n")
    with pytest.raises(DataError, match=r"groups.natural.climate\[0\]"):
        load_concept_set(bad)
    with pytest.raises(DataError, match="neither a bundled set"):
        load_concept_set(tmp_path / "nope.yaml")
    s = load_concept_set("geography")
    with pytest.raises(DataError, match="did you mean: mosque"):
        s.index("mosqe")


def test_caption_vocabulary_counts_adjacent_bigrams_only():
    caps = [
        "a man on a horse in the desert",
        "man riding horse at sunset",
        "the desert at sunset",
        "desert sunset with camels",
        "red desert sunset",
    ]
    vocab = caption_vocabulary(caps, min_count=2)
    assert vocab[0] == "desert"  # 4 captions
    assert "sunset" in vocab and "man" in vocab and "horse" in vocab
    assert "desert sunset" in vocab  # adjacent twice
    assert "man horse" not in vocab  # never adjacent: "on a" sits between
    assert "the" not in vocab and "a" not in vocab


def test_splice_decompose_recovers_a_planted_combination():
    rng = np.random.default_rng(0)
    concepts = rng.normal(size=(40, 64))
    unit = concepts / np.linalg.norm(concepts, axis=1, keepdims=True)
    centred = unit - unit.mean(0)
    centred /= np.linalg.norm(centred, axis=1, keepdims=True)
    images = np.stack([centred[3] + 0.6 * centred[17], centred[8] + 0.8 * centred[30]])
    w = splice_decompose(images, concepts, l1_penalty=0.05, image_mean=np.zeros(64))
    assert w.shape == (2, 40) and (w >= 0).all()
    assert set(np.argsort(-w[0])[:2]) == {3, 17}
    assert set(np.argsort(-w[1])[:2]) == {8, 30}
    assert (w[0] > 1e-6).sum() <= 6  # sparse

    vocab = load_concept_set("general").subset(load_concept_set("general").names[:40])
    chosen, weights = splice_select(vocab, concepts, images, 3, l1_penalty=0.05)
    assert len(chosen) == 3 and np.all(np.diff(weights) <= 0)
    assert chosen.names[0] in {vocab.names[i] for i in (3, 8, 17, 30)}
