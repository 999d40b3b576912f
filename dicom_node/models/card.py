"""The model card: the JSON file that travels with a model's weights and says what it is.

A model directory holds ``model_card.json`` and the weights file it names. The
card is the single source for everything the node does with the model: how to
build the network (``architecture``), how to make its input (``input``), what its
output means (``labels``, with SNOMED CT codes for the SEG and SR), which
thresholds turn outputs into calls, how it was trained (the exact command) and
what it measured. The weights' SHA-256 is recorded so that a card can never be
paired with other weights by accident.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from dicom_node.models.combine import StudyDecision
from dicom_node.models.inputs import InputSpec
from dicom_node.models.result import ModelKind

CARD_FILE = "model_card.json"
SCHEMA = "dicom-node-model-card/1"
#: Kinds with weights; the threshold baseline has none and no card.
NETWORK_KINDS = (ModelKind.CLASSIFIER, ModelKind.UNET, ModelKind.MASKRCNN)
STUDY_POOLING = ("max", "noisy_or", "top2_mean")


@dataclass(frozen=True)
class CodedLabel:
    """One output label with its code (the SEG's segmented property, the SR's finding)."""

    value: int
    name: str
    scheme: str
    code: str
    meaning: str

    def __post_init__(self) -> None:
        if self.value < 1:
            raise ValueError("label values start at 1 (0 is background)")
        if not (self.scheme and self.code and self.meaning):
            raise ValueError("a label needs a coding scheme, a code value and a code meaning")


#: Intracranial hemorrhage, SNOMED CT 1386000.
ICH_LABEL = CodedLabel(value=1, name="hemorrhage", scheme="SCT", code="1386000", meaning="Intracranial hemorrhage")


@dataclass(frozen=True)
class Thresholds:
    """The numbers that turn network outputs into a mask, lesions and a study call.

    ``decision``: study probability at or above which the study is positive.
    ``pixel``: probability at or above which a pixel is lesion (U-Net, instance masks).
    ``score``: instance score at or above which a Mask R-CNN detection is kept.
    ``min_lesion_ml``: 3D components smaller than this are dropped.
    """

    decision: float = 0.5
    pixel: float = 0.5
    score: float = 0.5
    min_lesion_ml: float = 0.1
    fill_holes: bool = True

    def __post_init__(self) -> None:
        for name in ("decision", "pixel", "score"):
            value = getattr(self, name)
            if not 0.0 < value <= 1.0 or math.isnan(value):
                raise ValueError(f"threshold {name} must be in (0, 1]")
        if self.min_lesion_ml < 0:
            raise ValueError("min_lesion_ml must not be negative")


@dataclass(frozen=True)
class ModelCard:
    """Everything about one trained model but its weights."""

    name: str
    version: str
    kind: ModelKind
    weights_file: str
    weights_sha256: str
    architecture: dict[str, Any]
    input: InputSpec
    labels: tuple[CodedLabel, ...] = (ICH_LABEL,)
    thresholds: Thresholds = Thresholds()
    study_pooling: str = "max"
    study_decision: StudyDecision | None = None
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    intended_use: str = "Research use only. Not for diagnosis or treatment decisions."

    def __post_init__(self) -> None:
        if self.kind not in NETWORK_KINDS:
            raise ValueError(f"a model card is for a network kind ({[k.value for k in NETWORK_KINDS]})")
        if not self.name or not self.version:
            raise ValueError("a model card needs a name and a version")
        if not self.weights_file or Path(self.weights_file).name != self.weights_file:
            raise ValueError("weights_file is a file name inside the model directory, not a path")
        if len(self.weights_sha256) != 64:
            raise ValueError("weights_sha256 must be the 64 hex digits of the weights' SHA-256")
        if not self.labels or [label.value for label in self.labels] != list(range(1, len(self.labels) + 1)):
            raise ValueError("labels must be numbered 1..n")
        if self.study_pooling not in STUDY_POOLING:
            raise ValueError(f"study_pooling must be one of {STUDY_POOLING}")

    def to_json(self) -> dict[str, Any]:
        """The card as written to ``model_card.json``."""
        return {
            "schema": SCHEMA,
            "name": self.name,
            "version": self.version,
            "kind": self.kind.value,
            "intended_use": self.intended_use,
            "weights": {"file": self.weights_file, "sha256": self.weights_sha256},
            "architecture": self.architecture,
            "input": self.input.to_json(),
            "labels": [asdict(label) for label in self.labels],
            "thresholds": asdict(self.thresholds),
            "study_pooling": self.study_pooling,
            "study_decision": None if self.study_decision is None else self.study_decision.to_json(),
            "training": self.training,
            "metrics": self.metrics,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ModelCard:
        """Parse and validate a card; every problem is a ValueError naming the key."""
        if data.get("schema") != SCHEMA:
            raise ValueError(f"not a dicom-node model card: schema must be {SCHEMA!r}")
        for key in ("name", "version", "kind", "weights", "architecture", "input", "labels"):
            if key not in data:
                raise ValueError(f"a model card needs {key!r}")
        try:
            kind = ModelKind(data["kind"])
        except ValueError:
            raise ValueError(f"unknown model kind {data['kind']!r}") from None
        weights = data["weights"]
        if not isinstance(weights, dict) or "file" not in weights or "sha256" not in weights:
            raise ValueError("the card's weights section needs 'file' and 'sha256'")
        labels = tuple(CodedLabel(**label) for label in data["labels"])
        return cls(
            name=str(data["name"]),
            version=str(data["version"]),
            kind=kind,
            weights_file=str(weights["file"]),
            weights_sha256=str(weights["sha256"]),
            architecture=dict(data["architecture"]),
            input=InputSpec.from_json(data["input"]),
            labels=labels,
            thresholds=Thresholds(**data.get("thresholds", {})),
            study_pooling=str(data.get("study_pooling", "max")),
            study_decision=StudyDecision.from_json(data["study_decision"]) if data.get("study_decision") else None,
            training=dict(data.get("training", {})),
            metrics=dict(data.get("metrics", {})),
            intended_use=str(data.get("intended_use", cls.intended_use)),
        )

    def with_metrics(self, metrics: dict[str, Any]) -> ModelCard:
        """A copy whose metrics section is updated with ``metrics`` (other keys kept)."""
        return replace(self, metrics={**self.metrics, **metrics})

    def save(self, directory: Path) -> Path:
        """Write ``model_card.json`` into ``directory`` (atomically) and return its path."""
        path = Path(directory) / CARD_FILE
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=2, sort_keys=False) + "\n")
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, directory: Path) -> ModelCard:
        """Read ``model_card.json`` from a model directory."""
        path = Path(directory) / CARD_FILE
        if not path.is_file():
            raise ValueError(f"{directory} is not a model directory: it has no {CARD_FILE}")
        return cls.from_json(json.loads(path.read_text()))


def sha256_of(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
