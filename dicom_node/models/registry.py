"""Load a model directory (card + weights) and build the network its card describes.

One table (:data:`_KINDS`, filled lazily so that reading a card needs no torch)
says, for each network kind, how to build the network and how to turn its
outputs into a :class:`~dicom_node.models.result.ModelResult`. Loading checks,
in order: the card parses and validates; the kind is the one asked for; the
weights file exists and its SHA-256 is the card's; the state dict fits the
network exactly (``strict=True``: a missing or extra tensor means the card and
the weights disagree about the architecture).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from dicom_node.models.card import ModelCard, sha256_of
from dicom_node.models.result import ModelKind, ModelResult, VolumeLike

if TYPE_CHECKING:
    import torch
    from torch import nn

    from dicom_node.imaging.geometry import CropResize

logger = logging.getLogger(__name__)

#: Where the models trained by ``dicom-node train`` ship, one folder each.
SHIPPED_WEIGHTS = Path(__file__).resolve().parent / "weights"

#: The folder under :data:`SHIPPED_WEIGHTS` that is each kind's default. The U-Net default is
#: the 2.5D whole-stack one (``unet-25d``): it sees the slices 5 mm below and above, and keeps
#: false alarms at the skull base, sinuses and vertex down on real head CTs. ``weights/unet-stacks``
#: (2D, whole stacks + Kaggle) still ships: it is the ``--init`` of ``unet-25d``, named in that
#: card's command, and the way back via ``[analysis] unet_dir``. The classifier default is the
#: whole-stack one (``classifier-stacks``, trained on PHE-SICH stacks and the Kaggle slices): on
#: slices without clot it fires five times less often than the Kaggle-only ``weights/classifier``,
#: which still ships as its ``--init`` and the way back via ``[analysis] classifier_dir``.
SHIPPED_FOLDERS: dict[str, str] = {"classifier": "classifier-stacks", "unet": "unet-25d", "maskrcnn": "maskrcnn"}


class VolumeDecoder(Protocol):
    """Turns batches of network outputs for one volume into its ModelResult.

    ``infer`` runs the network on a batch and returns one CPU output per slice;
    ``add`` records slice ``index``'s output on the source grid (through the
    slice's crop); ``result`` post-processes and measures once every slice is in.
    """

    def infer(self, network: nn.Module, images: torch.Tensor) -> Any: ...

    def add(self, index: int, output: Any, transform: CropResize) -> None: ...

    def result(self) -> ModelResult: ...


@dataclass(frozen=True)
class _Kind:
    build: Callable[[ModelCard], nn.Module]
    decoder: Callable[[ModelCard, VolumeLike], VolumeDecoder]


def _kinds() -> dict[ModelKind, _Kind]:
    from dicom_node.models.classifier import ClassifierDecoder, build_classifier
    from dicom_node.models.maskrcnn import InstanceDecoder, build_maskrcnn
    from dicom_node.models.unet import SegmentationDecoder, build_unet

    return {
        ModelKind.CLASSIFIER: _Kind(
            build=lambda card: build_classifier(card.input.channels, card.architecture),
            decoder=ClassifierDecoder,
        ),
        ModelKind.UNET: _Kind(
            build=lambda card: build_unet(card.input.channels, card.architecture),
            decoder=SegmentationDecoder,
        ),
        ModelKind.MASKRCNN: _Kind(
            build=lambda card: build_maskrcnn(card.input.channels, card.input.size, card.architecture),
            decoder=InstanceDecoder,
        ),
    }


def build_network(card: ModelCard) -> nn.Module:
    """A freshly initialised network of the card's kind and architecture."""
    return _kinds()[card.kind].build(card)


@dataclass(frozen=True, eq=False)
class LoadedModel:
    """A card with its network, weights loaded, in eval mode on the CPU."""

    card: ModelCard
    network: nn.Module
    directory: Path

    @property
    def kind(self) -> ModelKind:
        """The model's kind, from its card."""
        return self.card.kind

    def decoder(self, volume: VolumeLike) -> VolumeDecoder:
        """A fresh decoder collecting this model's outputs for ``volume``."""
        return _kinds()[self.card.kind].decoder(self.card, volume)


def shipped_model_dir(kind: ModelKind | str) -> Path:
    """The folder of the default model of ``kind`` shipped with the package."""
    kind = ModelKind(kind)
    if kind == ModelKind.THRESHOLD:
        raise ValueError("the threshold baseline has no weights and no model directory")
    return SHIPPED_WEIGHTS / SHIPPED_FOLDERS[kind.value]


def load_model(directory: str | Path, *, kind: ModelKind | str | None = None) -> LoadedModel:
    """Load and check the model in ``directory``; ``kind``, when given, must match the card."""
    import torch

    directory = Path(directory)
    card = ModelCard.load(directory)
    if kind is not None and ModelKind(kind) != card.kind:
        raise ValueError(f"{directory} holds a {card.kind.value} model, not a {ModelKind(kind).value}")
    weights = directory / card.weights_file
    if not weights.is_file():
        raise ValueError(f"the card names weights {card.weights_file!r}, which are not in {directory}")
    digest = sha256_of(weights)
    if digest != card.weights_sha256:
        raise ValueError(
            f"{weights} has SHA-256 {digest}, the card says {card.weights_sha256}: "
            "the weights are not the ones this card describes"
        )
    network = build_network(card)
    state = torch.load(weights, map_location="cpu", weights_only=True)
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ValueError(
            f"the weights in {weights} do not fit the architecture in the card (every tensor must match): {exc}"
        ) from exc
    network.eval()
    logger.info("loaded %s model %s %s", card.kind.value, card.name, card.version, extra={"path": str(directory)})
    return LoadedModel(card=card, network=network, directory=directory)
