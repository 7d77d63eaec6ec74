"""The five tasks build offline with the right shapes, labels and provenance, and cache faithfully."""

import numpy as np
import pytest

from geoalign.downstream.sampling import LandPoints
from geoalign.downstream.tasks import (
    TASKS,
    _label_country,
    _label_elevation,
    _label_koppen,
    _label_population,
    _label_temperature,
    load_task,
    resolve_task_names,
)
from geoalign.errors import GeoalignError

KNOWN = LandPoints(
    latlon=np.array([[1.35, 103.82], [23.0, 10.0], [27.99, 86.93], [35.68, 139.69], [64.0, -20.0]]),
    country=np.array(["SG", "DZ", "NP", "JP", "IS"]),
)


def test_labels_at_known_points():
    temp, ok, _, _ = _label_temperature(KNOWN)
    assert ok.all() and temp[1] > 20 > temp[4] and temp[0] > 24
    elev, ok, _, _ = _label_elevation(KNOWN)
    assert ok.all() and elev[2] > 3000 and elev[0] < 200
    zone, ok, classes, _ = _label_koppen(KNOWN)
    assert ok.all() and classes[zone[0]] == "Af" and classes[zone[1]] == "BWh"
    pop, _, _, _ = _label_population(KNOWN)
    assert pop[3] > 6.5 and pop[1] == 0.0  # Tokyo: log10(>3M); central Sahara: nobody
    country, _, classes, sources = _label_country(KNOWN)
    assert [classes[c].split()[0] for c in country] == ["SG", "DZ", "NP", "JP", "IS"]
    assert "Natural Earth" in sources[0].name


@pytest.mark.parametrize("name", list(TASKS))
def test_task_builds_offline(name, tmp_path):
    task = load_task(name, n_points=600, seed=0, cache_dir=tmp_path)
    n = len(task.y)
    assert task.latlon.shape == (n, 2) and task.split.shape == (n,) and n > 350
    assert set(np.unique(task.split)) <= {0, 1, 2}
    assert min(task.counts().values()) > 30
    if task.kind == "classification":
        assert task.y.dtype == np.int64 and task.y.min() >= 0 and task.y.max() < len(task.classes)
        assert np.bincount(task.y).min() >= task.metadata["min_class_count"]
    else:
        assert task.classes is None and np.isfinite(task.y).all()
    for src in task.metadata["sources"]:
        assert src["version"] not in ("", "not installed") and src["licence"] and src["package"]
    again = load_task(name, n_points=600, seed=0, cache_dir=tmp_path)  # from the cache
    np.testing.assert_array_equal(again.latlon, task.latlon)
    np.testing.assert_array_equal(again.y, task.y)
    np.testing.assert_array_equal(again.split, task.split)
    assert again.classes == task.classes and again.metadata == task.metadata


def test_tasks_share_points_and_split(tmp_path):
    a = load_task("temperature", n_points=600, seed=0, cache_dir=tmp_path)
    b = load_task("population", n_points=600, seed=0, cache_dir=tmp_path)
    np.testing.assert_array_equal(a.latlon, b.latlon)  # both label every land point
    np.testing.assert_array_equal(a.split, b.split)


def test_task_names():
    assert resolve_task_names("all") == list(TASKS)
    assert resolve_task_names("country, elevation") == ["country", "elevation"]
    with pytest.raises(GeoalignError, match="unknown task"):
        resolve_task_names("country,weather")
