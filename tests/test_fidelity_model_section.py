"""GeoSURGE's `model:` section is built into GeoSurgeConfig by field name, not copied by hand: the
shared fields agree in type, and the config a run builds is the one the section describes."""

from __future__ import annotations

import dataclasses
from typing import Optional, get_type_hints

import pytest

from geoalign.models.geosurge import GeoSurgeConfig
from geoalign.training.geosurge import geosurge_config_from_dict
from geoalign.training.geosurge.config import GeoSurgeModelSection

YAML_ONLY = {"fusion_blocks", "init"}


def test_the_section_shares_the_model_configs_fields_and_types():
    section = get_type_hints(GeoSurgeModelSection)
    model = get_type_hints(GeoSurgeConfig)
    names = {f.name for f in dataclasses.fields(GeoSurgeModelSection)}
    assert names - set(model) == YAML_ONLY
    for name in names & set(model) - {"fusion"}:  # fusion: a dict completed from the backbone
        assert model[name] in (section[name], Optional[section[name]]), name  # noqa: UP045


@pytest.mark.parametrize(
    ("model", "visual"),
    [
        ({"visual": "features", "feature_head": "mlp", "embed_dim": 32}, "features"),
        ({"fusion_blocks": 0, "trainable_blocks": 2, "negatives": "all"}, "backbone"),
        ({"objective": "classifier", "learn_temperature": False, "coordinates": "gallery",
          "visual": "features", "temperature_init": 0.1}, "features"),
    ],
)  # fmt: skip
def test_model_config_is_the_section_with_what_the_run_knows(model, visual):
    cfg = geosurge_config_from_dict({"method": "geosurge", "model": model})
    m = cfg.model
    assert cfg.visual == visual
    built = m.model_config((3, 7), cfg.visual, feature_dim=12, image_size=28)
    expected = GeoSurgeConfig(
        level_sizes=(3, 7),
        embed_dim=m.embed_dim,
        objective=m.objective,
        negatives=m.negatives,
        temperature_init=m.temperature_init,
        learn_temperature=m.learn_temperature,
        visual=visual,
        feature_dim=12 if visual == "features" else None,
        feature_head=m.feature_head,
        backbone=m.backbone,
        image_size=28,
        trainable_blocks=m.trainable_blocks if visual != "features" else 0,
        fusion=None,
        segmenter=None,
        coordinates=m.coordinates,
    )
    assert built == expected
