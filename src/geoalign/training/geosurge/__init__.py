"""Train GeoSURGE (Daruna et al., Sec. III-C and IV) with the paper's recipe, from features or
from images. One view per image, as the paper (it describes no augmentation). Its ten-crop
evaluation: `eval.images` (the benchmark's photos, through the model's own image side) or
`eval.queries` holding ten crops per photo (`geoalign features extract --ten-crop`).

Recipe: AdamW (lr 1e-4, weight decay 1e-4), StepLR gamma 0.5 after every epoch, an effective batch
of 1024 (gradient accumulation over micro-batches when memory needs it), 1% of the rows held out
for validation, early stopping after 4 epochs without improvement of the validation metric (the
paper does not name it: we monitor the mean GeoScore of hierarchical top-1 predictions by default).
The best and the last model are exported as geoalign checkpoints (`<out_dir>/best`, `/last`).

Three visual inputs (`model.visual`):
- "features": precomputed backbone features (frozen backbone, no fusion) from a feature store,
  arrays, or the packaged scene-label descriptors; an optional linear/MLP head;
- "backbone": photos through CLIP with its last block (and final norm + projection) trainable,
  no fusion (Table VIII's "0 blocks");
- "fusion": photos through CLIP (last block trainable) fused with their ADE20K maps from a
  segmentation store (`geoalign segment extract`) by `fusion_blocks` blocks.

Choices where the paper is silent: the temperatures get no weight decay (decaying a log
temperature pulls it to tau = 1); photos get no augmentation (the map must stay aligned with the
crop); the cell hierarchy is built from the training rows (not the held-out ones) unless
`cells.path` names one. With "batch" negatives the negatives are the cells of the whole
effective batch (across processes under DDP), also when it is split into micro-batches: the
step is a GradCache-style two-pass step (`module.GeoSurgeModule`), exactly one batch's loss.

Config: YAML with sections model, cells, data, optim, trainer, eval and `method: geosurge`; see
configs/geosurge/. Unknown keys are errors; `base: file.yaml` inherits another config.

Modules: `config` (the YAML sections), `data` (split, features or photos), `model` (cells, model,
what trains), `module` (the LightningModule), `run` (export and `train_geosurge`), `quickstart`
(the GeoSURGE rows of `geoalign quickstart`).
"""

from geoalign.training.geosurge.config import (
    GeoSurgeTrainConfig,
    geosurge_config_from_dict,
    load_geosurge_config,
)
from geoalign.training.geosurge.model import set_trainable
from geoalign.training.geosurge.quickstart import (
    QUICKSTART_NAME,
    geosurge_quickstart_rows,
    quickstart_geosurge_config,
)
from geoalign.training.geosurge.run import GeoSurgeTrainResult, train_geosurge

__all__ = [
    "QUICKSTART_NAME",
    "GeoSurgeTrainConfig",
    "GeoSurgeTrainResult",
    "geosurge_config_from_dict",
    "geosurge_quickstart_rows",
    "load_geosurge_config",
    "quickstart_geosurge_config",
    "set_trainable",
    "train_geosurge",
]
