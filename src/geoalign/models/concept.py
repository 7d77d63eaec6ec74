"""Concept-aware GeoCLIP (Jia et al., "Towards Interpretable Geo-localization: a Concept-Aware Global
Image-GPS Alignment Framework", arXiv 2509.01910): GeoCLIP plus the Concept-Aware Alignment Module.

The module projects image and location embeddings onto a bank of geographic concepts:
    B = E_concept + Δ                       (eq. 1; `geoalign.nn.concept_basis.ConceptBasis`)
    z_img = f_img(x_img)                    (eq. 2; a light MLP, `ConceptHead`)
    z_loc = x_locᵀ B                        (eq. 3)
and adds a distribution-level divergence between the two sets of concept scores to GeoCLIP's
contrastive loss (its queue, GPS noise and temperature unchanged):
    L = L_img-gps + λ · L_concept           (eq. 7; L_concept: `concept_divergence`, eqs. 5-6).
Inference is GeoCLIP's gallery retrieval; the concept scores explain it (`geoalign.interpret`).

Checkpoints use the geoalign layout (`location_encoder.*`, `image_head.*`, `logit_scale`, `queue.*`,
plus `concept.*`), so `geoalign.models.registry.load_location_encoder` and the `Geolocator` read a concept-aware
checkpoint exactly like a GeoCLIP one.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

from geoalign.data.concept_sets import Concept, ConceptSet
from geoalign.losses import Divergence, concept_divergence  # eqs. 5-6
from geoalign.models.geoclip import GeoCLIP, GeoCLIPConfig
from geoalign.nn.concept_basis import ConceptBasis, ConceptHead, top_k_sparse

MappingChoice = Literal["auto", "image_head", "projection"]


# --- configuration -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConceptConfig:
    """The concept-aware module's settings (the `concept:` section of a training config)."""

    concept_set: str = "geography"  # bundled name or a file (recorded; the names live in the ckpt)
    k: int | None = None  # number of concepts C_k (None: the whole set)
    select: Literal["balanced", "first"] = "balanced"
    text_encoder: str = "clip-vit-l14"
    template: str | None = None  # None: the set's own template
    mapping: MappingChoice = "auto"  # auto: the image head for CLIP text, else a learned projection
    learn_delta: bool = True
    head_hidden: tuple[int, ...] = (512,)  # f_img's hidden widths
    head_residual: bool = True  # f_img = x̂Bᵀ + MLP(x̂) (see ConceptHead); False: plain MLP
    lambda_concept: float = 1.0  # λ of eq. 7
    sigma: float = 1.0  # σ of the Gaussian kernel, eq. 5
    divergence: Divergence = "paper"
    top_k: int = 20  # sparsity of the concept activations used in explanations

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["head_hidden"] = list(self.head_hidden)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ConceptConfig:
        d = dict(d)
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown concept config keys: {sorted(unknown)}")
        if "head_hidden" in d and d["head_hidden"] is not None:
            d["head_hidden"] = tuple(int(h) for h in d["head_hidden"])
        return cls(**d)


def resolve_mapping(choice: MappingChoice, text_kind: str, text_dim: int, head_in_dim: int) -> str:
    """'image_head' (GeoCLIP's text-query route) when the text lives in the head's input space."""
    if choice == "auto":
        return "image_head" if text_kind == "clip" and text_dim == head_in_dim else "projection"
    if choice == "image_head" and text_dim != head_in_dim:
        raise ValueError(
            f"mapping 'image_head' needs text embeddings of the image head's input width "
            f"({head_in_dim}), got {text_dim}: use mapping 'projection'"
        )
    return choice


# --- the model ---------------------------------------------------------------------------------------


@dataclass
class ConceptInfo:
    """What the checkpoint records about the concepts (enough to explain without the text tower)."""

    names: list[str]
    categories: list[str]
    groups: list[str]
    template: str
    text_encoder: str
    text_kind: str
    mapping: str
    set_name: str = "concepts"
    extra: dict[str, Any] = field(default_factory=dict)

    def concept_set(self) -> ConceptSet:
        return ConceptSet(
            name=self.set_name,
            concepts=tuple(
                Concept(n, c, g)
                for n, c, g in zip(self.names, self.categories, self.groups, strict=True)
            ),
            template=self.template,
            source="checkpoint",
        )


class ConceptAwareGeoCLIP(GeoCLIP):
    """GeoCLIP + Concept-Aware Alignment Module: same retrieval, plus concept scores and L_concept."""

    method = "concept"

    def __init__(
        self,
        config: GeoCLIPConfig,
        concept: ConceptConfig,
        concept_set: ConceptSet,
        text_embeddings: Tensor,
        *,
        text_kind: str = "clip",
        mapping: str | None = None,
    ) -> None:
        super().__init__(config)
        if text_embeddings.shape[0] != len(concept_set):
            raise ValueError(
                f"{text_embeddings.shape[0]} text embeddings for {len(concept_set)} concepts"
            )
        self.concept_config = concept
        self.concept_set = concept_set
        mapping = mapping or resolve_mapping(
            concept.mapping, text_kind, text_embeddings.shape[1], config.image_head.in_dim
        )
        if mapping == "image_head":
            # GeoCLIP's text queries: CLIP text embedding -> image head -> location space, through
            # the head this model trains, recomputed on every use (see ConceptBasis "head").
            self.basis = ConceptBasis(
                text_embeddings,
                self.embed_dim,
                mapping="head",
                learn_delta=concept.learn_delta,
            )
            self.basis.bind_mapper(self._text_through_head)
        elif mapping in {"projection", "fixed"}:
            self.basis = ConceptBasis(
                text_embeddings,
                self.embed_dim,
                mapping=mapping,  # "fixed": already in the location space (loading a checkpoint)
                learn_delta=concept.learn_delta,
                seed=config.seed,
            )
        else:
            raise ValueError(f"unknown concept mapping {mapping!r}")
        self.mapping = mapping
        self.text_kind = text_kind
        self.f_img = ConceptHead(
            self.embed_dim,
            len(concept_set),
            concept.head_hidden,
            residual=concept.head_residual,
        )

    # -- construction ---------------------------------------------------------------------------------
    @classmethod
    def from_geoclip(
        cls,
        geoclip: GeoCLIP,
        concept: ConceptConfig,
        concept_set: ConceptSet,
        text_embeddings: Tensor,
        *,
        text_kind: str = "clip",
    ) -> ConceptAwareGeoCLIP:
        """Wrap a GeoCLIP (official weights, a checkpoint, or fresh) with the concept module."""
        model = cls(geoclip.config, concept, concept_set, text_embeddings, text_kind=text_kind)
        model.location_encoder.load_state_dict(geoclip.location_encoder.state_dict())
        model.image_head.load_state_dict(geoclip.image_head.state_dict())
        with torch.no_grad():
            model.logit_scale.copy_(geoclip.logit_scale)
        model.queue.load_state_dict(geoclip.queue.state_dict())
        return model

    def _text_through_head(self, text_embeddings: Tensor) -> Tensor:
        """g(t): text embeddings through the current image head (GeoCLIP's text queries)."""
        param = next(self.image_head.parameters())
        return self.image_head(text_embeddings.to(param))

    @classmethod
    def build(
        cls,
        geoclip: GeoCLIP,
        concept: ConceptConfig,
        *,
        text_encoder: Any = None,
        cache: bool = True,
    ) -> ConceptAwareGeoCLIP:
        """Load the concept set and text encoder the config names, embed the concepts, wrap."""
        from geoalign.data.concept_sets import load_concept_set
        from geoalign.nn.text_encoders import encode_concepts, load_text_encoder

        cset = load_concept_set(concept.concept_set).select(concept.k, concept.select)
        texts = cset.texts(concept.template)
        encoder = text_encoder or load_text_encoder(concept.text_encoder, vocabulary=texts)
        emb = encode_concepts(encoder, texts, cache=cache)
        model = cls.from_geoclip(geoclip, concept, cset, emb, text_kind=encoder.kind)
        model.text_encoder_fingerprint = encoder.fingerprint
        return model

    # -- concept scores -------------------------------------------------------------------------------
    @property
    def num_concepts(self) -> int:
        return self.basis.num_concepts

    def image_concepts(self, image_emb: Tensor) -> Tensor:
        """z_img = f_img(x_img) from image embeddings [..., d] -> [..., k]."""
        return self.f_img(image_emb, self.basis)

    def location_concepts(self, location_emb: Tensor) -> Tensor:
        """z_loc = x̂_locᵀ B from location embeddings [..., d] -> [..., k]."""
        return self.basis(location_emb)

    def concepts_from_features(self, features: Tensor) -> Tensor:
        return self.image_concepts(self.encode_images(features))

    def concepts_from_latlon(self, latlon: Tensor) -> Tensor:
        return self.location_concepts(self.encode_locations(latlon))

    def activations(self, image_emb: Tensor, top_k: int | None = None) -> Tensor:
        """Concept activations for explanations: z_img with all but the top-k per image zeroed."""
        k = self.concept_config.top_k if top_k is None else top_k
        return top_k_sparse(self.image_concepts(image_emb), k)

    def concept_loss(self, image_emb: Tensor, location_emb: Tensor) -> Tensor:
        """L_concept between paired image and location embeddings ([b, d], or [P, b, d] views:
        the divergence per view, averaged)."""
        c = self.concept_config
        if image_emb.dim() == 2:
            image_emb, location_emb = image_emb[None], location_emb[None]
        if c.divergence == "paper":
            # eq. 6 as printed sees the two score sets only through their means (and for one row
            # per side it is exactly ||z_img - z_loc||² / σ²): the mean scores, computed through
            # the linear parts at once, give the same loss at about a third of the cost.
            matrix = self.basis.basis()
            pairs = [
                (
                    self.f_img.mean_scores(image_emb[j], self.basis, matrix)[None],
                    self.basis.mean_scores(location_emb[j], matrix)[None],
                )
                for j in range(image_emb.shape[0])
            ]
        else:
            pairs = [
                (self.image_concepts(image_emb[j]), self.location_concepts(location_emb[j]))
                for j in range(image_emb.shape[0])
            ]
        terms = [concept_divergence(zi, zl, c.sigma, c.divergence) for zi, zl in pairs]
        return torch.stack(terms).mean()

    def auxiliary_loss(
        self, image_emb: Tensor, batch_location_emb: Tensor, *, target_offset: int = 0
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """λ · L_concept for a training step, given what GeoCLIP's step already computed.

        image_emb [P, b, d] (this process's images), batch_location_emb [P, B, d] (every batch
        location, noisy, this process's at rows target_offset..+b). Returns (term, logs).
        """
        if image_emb.dim() == 2:
            image_emb, batch_location_emb = image_emb[None], batch_location_emb[None]
        b = image_emb.shape[1]
        own = batch_location_emb[:, target_offset : target_offset + b]
        loss = self.concept_loss(image_emb, own)
        return self.concept_config.lambda_concept * loss, {"train/concept_loss": loss.detach()}

    # -- checkpoints ----------------------------------------------------------------------------------
    def concept_info(self) -> ConceptInfo:
        s = self.concept_set
        return ConceptInfo(
            names=s.names,
            categories=[c.category for c in s],
            groups=[c.group for c in s],
            template=s.template
            if self.concept_config.template is None
            else self.concept_config.template,
            text_encoder=self.concept_config.text_encoder,
            text_kind=self.text_kind,
            mapping=self.mapping,
            set_name=s.name,
            extra={"text_encoder_fingerprint": getattr(self, "text_encoder_fingerprint", None)},
        )

    # GeoCLIP's save/load with the concept module's parts added through its hooks
    def _extra_state(self) -> dict[str, Tensor]:
        with torch.no_grad():
            self.basis.concept_embeddings()  # a "head" basis stores the E of the saved head
        state = {f"concept.basis.{k}": v for k, v in self.basis.state_dict().items()}
        state.update({f"concept.f_img.{k}": v for k, v in self.f_img.state_dict().items()})
        return state

    def _extra_config(self) -> dict[str, Any]:
        return {
            "concept": {
                "config": self.concept_config.to_dict(),
                "info": asdict(self.concept_info()),
            }
        }

    @classmethod
    def _from_checkpoint(cls, ckpt: Any, config: GeoCLIPConfig) -> ConceptAwareGeoCLIP:
        """The module as saved (no text encoder needed: the text embeddings, or E, are stored).

        A basis saved with its `embedding` buffer is a "head" basis (E follows the head); one
        without it predates that and loads "fixed", with the E it was trained with."""
        from geoalign.errors import WeightsNotFoundError

        cfg = ckpt.config
        if "concept" not in cfg:
            raise WeightsNotFoundError(
                f"{ckpt.path} is a {cfg.get('method', 'unknown')!r} checkpoint, not a concept-aware "
                "one (train one with a configs/concept/*.yaml config)"
            )
        info = ConceptInfo(**cfg["concept"]["info"])
        basis = ckpt.component("concept.basis")
        if info.mapping == "projection":
            mapping = "projection"
        else:
            mapping = "image_head" if "embedding" in basis else "fixed"
        model = cls(
            config,
            ConceptConfig.from_dict(cfg["concept"]["config"]),
            info.concept_set(),
            basis["text"],
            text_kind=info.text_kind,
            mapping=mapping,
        )
        model.mapping = info.mapping
        model.text_encoder_fingerprint = info.extra.get("text_encoder_fingerprint")
        return model

    def _load_extra_state(self, ckpt: Any) -> None:
        self.basis.load_state_dict(ckpt.component("concept.basis"), strict=True)
        self.f_img.load_state_dict(ckpt.component("concept.f_img"), strict=True)


__all__ = [
    "ConceptAwareGeoCLIP",
    "ConceptConfig",
    "ConceptInfo",
    "concept_divergence",
]
