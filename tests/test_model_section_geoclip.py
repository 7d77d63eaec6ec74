"""GeoCLIP's `model:` section is built into GeoCLIPConfig by field name, not copied by hand: the
shared fields agree in type, and the config a run builds is the one the section describes."""

from __future__ import annotations

import dataclasses
import typing

import pytest

from geoalign.models.geoclip import GeoCLIPConfig
from geoalign.nn.image_head import ImageHeadConfig
from geoalign.nn.location_encoder import LocationEncoderConfig
from geoalign.training.config import ModelSection, config_from_dict

TRAINING_ONLY = {
    "init",
    "architecture",
    "train_location_encoder",
    "train_image_head",
    "queue_mode",
}


def test_the_section_shares_the_model_configs_fields_and_types():
    section = typing.get_type_hints(ModelSection)
    model = typing.get_type_hints(GeoCLIPConfig)
    names = {f.name for f in dataclasses.fields(ModelSection)}
    assert names - set(model) == TRAINING_ONLY
    for name in names & set(model) - ModelSection.BUILT:
        assert typing.get_args(model[name]) == typing.get_args(section[name]), name
        assert typing.get_origin(model[name]) == typing.get_origin(section[name]), name


@pytest.mark.parametrize(
    "model",
    [
        {},
        {"queue_size": 64, "queue_init": "latlon", "temperature_init": 0.1},
        {"learn_temperature": False, "features": "hf:tiny", "queue_size": 0},
    ],
)
def test_model_config_is_the_section_with_what_the_run_knows(model):
    m = config_from_dict({"model": {"init": "scratch", **model}}).model
    loc, head = LocationEncoderConfig(hidden_dim=8), ImageHeadConfig(in_dim=12)
    expected = GeoCLIPConfig(
        location_encoder=loc,
        image_head=head,
        queue_size=m.queue_size,
        queue_init=m.queue_init,
        temperature_init=m.temperature_init,
        learn_temperature=m.learn_temperature,
        features=m.features,
        seed=7,
    )
    assert m.model_config(7, loc, head) == expected
    # a start from weights keeps their temperature and features
    assert m.weights_overrides(7) == {
        "queue_size": m.queue_size,
        "queue_init": m.queue_init,
        "learn_temperature": m.learn_temperature,
        "seed": 7,
    }
