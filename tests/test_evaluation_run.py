"""evaluation/run.py: a checkpoint is loaded by its own method's class and evaluated exactly as
the in-memory model it was saved from."""

from __future__ import annotations

import numpy as np
import torch

from geoalign.evaluation.queries import Queries


def loaded_config(path):
    from geoalign.models.registry import checkpoint_config

    return checkpoint_config(path)


def test_concept_checkpoint_is_evaluated_as_a_concept_model(tmp_path):
    from geoalign.evaluation.harness import evaluate_model, make_gallery
    from geoalign.evaluation.run import evaluate_checkpoint
    from geoalign.models.concept import ConceptAwareGeoCLIP
    from geoalign.models.registry import checkpoint_method, checkpoint_reads, model_features
    from geoalign.models.registry import load_model as load_alignment_model
    from geoalign.training.concept import concept_run_from_dict, train_concept
    from test_concept_training import city_data, run_config

    feats, coords, _ = city_data(600)
    cfg = run_config(tmp_path / "run")
    cfg["optim"]["epochs"] = 1
    result = train_concept(concept_run_from_dict(cfg, source="test"), arrays=(feats, coords))
    assert checkpoint_method(result.export_dir) == "concept"
    loaded = load_alignment_model(result.export_dir)
    assert isinstance(loaded, ConceptAwareGeoCLIP)
    assert model_features(result.export_dir) == loaded.config.features  # config.json alone
    assert model_features(loaded) == loaded.config.features  # the loaded model says the same
    assert checkpoint_reads(loaded_config(result.export_dir)) == "features"

    test = Queries(torch.from_numpy(feats[:200]), coords[:200], np.arange(200), "test rows")
    train = Queries(torch.from_numpy(feats), coords, np.arange(600), "train rows")
    run = evaluate_checkpoint(
        result.export_dir,
        test,
        benchmark="cities",
        out=tmp_path / "eval",
        gallery="train:300",
        train=train,
        modes=["top1"],
        baselines=False,
    )
    gallery, _ = make_gallery("train:300", coords, seed=0)
    (direct,) = evaluate_model(result.model, test.features, test.truth, gallery, modes=["top1"])
    (got,) = run.evaluation.results
    np.testing.assert_allclose(got.latlon, direct.latlon)
    assert run.paths["markdown"].is_file()
