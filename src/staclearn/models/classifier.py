"""Object classifier: a timm image classifier with input normalisation built in.

:class:`ObjectClassifier` maps one footprint chip to class logits. As
:class:`staclearn.models.segmentation.SegmentationModel`, it puts a fixed z-score normalisation layer
(per-band mean and standard deviation as buffers, saved with the weights and described in
the MLM card as ``value_scaling`` ``z_score``) in front of the network, here any
``timm.create_model`` backbone with ``in_chans=len(bands)`` and ``num_classes=K``
(ResNet-18 by default; He et al. 2016). :class:`ClassifierSpec` holds what is needed to
rebuild it, including how chips are cut (``chip_size``, ``buffer_m``, ``mask_outside``), so
inference cuts chips the way training did. Weights are saved and loaded with
:func:`staclearn.models.segmentation.save_weights` / :func:`staclearn.models.segmentation.load_weights` (safetensors).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from staclearn.errors import ConfigError
from staclearn.data.labels import ClassInfo

__all__ = ["ClassifierSpec", "ObjectClassifier", "build_classifier"]


@dataclass(frozen=True)
class ClassifierSpec:
    """What is needed to rebuild an object classifier and cut its input chips, without weights.

    Attributes:
        model_name: timm model name, e.g. ``"resnet18"``, ``"resnet34"``, ``"efficientnet_b0"``.
        bands: input channel names in order (``post_b1``... then ``pre_b1``... when the
            pre image is stacked); ``in_chans == len(bands)``.
        classes: output classes; logit ``i`` is ``classes[i]``.
        mean: per-channel mean for z-score normalisation, in the imagery's units (DN).
        std: per-channel standard deviation, same units.
        chip_size: chip edge in pixels (input H = W).
        buffer_m: context around the footprint's bounding box, in metres.
        mask_outside: factor applied to pixels outside the footprint, ``None`` if not used.
        pretrained: timm pre-training the weights started from (``None``: random init);
            informational once trained weights exist.
        extra: free-form JSON-ready settings (e.g. the class map, the training tiles).
    """

    model_name: str
    bands: tuple[str, ...]
    classes: tuple[ClassInfo, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    chip_size: int = 224
    buffer_m: float = 10.0
    mask_outside: float | None = None
    pretrained: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def in_channels(self) -> int:
        """Number of input channels."""
        return len(self.bands)

    @property
    def num_classes(self) -> int:
        """Number of output classes."""
        return len(self.classes)

    @property
    def stack_pre(self) -> bool:
        """Whether the input holds pre-event bands (names starting with ``pre_``)."""
        return any(b.startswith("pre_") for b in self.bands)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (classes as STAC Class Objects)."""
        d = asdict(self)
        d["classes"] = [c.to_dict() for c in self.classes]
        d["bands"] = list(self.bands)
        d["mean"] = list(self.mean)
        d["std"] = list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ClassifierSpec:
        """Inverse of :meth:`to_dict`."""
        return cls(
            model_name=d["model_name"],
            bands=tuple(d["bands"]),
            classes=tuple(
                ClassInfo(int(c["value"]), c["name"], c.get("color_hint"), c.get("description")) for c in d["classes"]
            ),
            mean=tuple(float(v) for v in d["mean"]),
            std=tuple(float(v) for v in d["std"]),
            chip_size=int(d.get("chip_size", 224)),
            buffer_m=float(d.get("buffer_m", 10.0)),
            mask_outside=None if d.get("mask_outside") is None else float(d["mask_outside"]),
            pretrained=d.get("pretrained"),
            extra=dict(d.get("extra", {})),
        )


class ObjectClassifier(nn.Module):
    """Z-score normalisation followed by a timm classifier.

    Args:
        spec: the model description.
        pretrained: load timm's pre-trained weights (needs internet or a local Hugging Face
            cache; with ``in_chans != 3`` timm adapts the first convolution). ``False`` for a
            random init (tests, offline machines, or before :func:`~staclearn.models.segmentation.load_weights`).

    Forward:
        x: ``(B, C, H, W) float32`` in the imagery's units (not normalised). Returns logits
        ``(B, K) float32``.

    Raises:
        ConfigError: mean/std length differs from the bands, no class, or unknown timm model.
    """

    def __init__(self, spec: ClassifierSpec, *, pretrained: bool = False) -> None:
        super().__init__()
        import timm

        if len(spec.mean) != spec.in_channels or len(spec.std) != spec.in_channels:
            raise ConfigError(f"mean/std have {len(spec.mean)}/{len(spec.std)} values for {spec.in_channels} bands")
        if spec.num_classes < 2:
            raise ConfigError(f"A classifier needs at least 2 classes, got {[c.name for c in spec.classes]}")
        if not timm.is_model(spec.model_name):
            raise ConfigError(
                f"Unknown timm model {spec.model_name!r}; see timm.list_models(), e.g. 'resnet18', 'resnet34'."
            )
        self.spec = spec
        self.register_buffer("mean", torch.tensor(spec.mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(spec.std, dtype=torch.float32).view(1, -1, 1, 1))
        self.net = timm.create_model(
            spec.model_name, pretrained=pretrained, in_chans=spec.in_channels, num_classes=spec.num_classes
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W) float32`` chips in the imagery's units -> ``(B, K) float32`` logits."""
        return self.net((x - self.mean) / self.std)


def build_classifier(
    bands: Sequence[str],
    classes: Sequence[ClassInfo],
    *,
    mean: Sequence[float] | np.ndarray,
    std: Sequence[float] | np.ndarray,
    model_name: str = "resnet18",
    chip_size: int = 224,
    buffer_m: float = 10.0,
    mask_outside: float | None = None,
    pretrained: bool = False,
    extra: dict[str, Any] | None = None,
) -> ObjectClassifier:
    """Build a timm classifier for ``len(bands)`` inputs and ``len(classes)`` outputs.

    Args:
        bands: input channel names in order (e.g. ``FootprintChipReader.bands``).
        classes: output classes (e.g. ``ClassMap.classes``).
        mean: per-channel mean, e.g. from :func:`staclearn.chips.object_dataset.chip_band_statistics`.
        std: per-channel standard deviation.
        model_name: timm model (``"resnet18"`` default: 11 M parameters, trains on a CPU).
        chip_size: chip edge in pixels the model is trained on.
        buffer_m: chip context in metres.
        mask_outside: factor outside the footprint, or ``None``.
        pretrained: start from timm's pre-trained weights (``spec.pretrained`` records
            ``"timm"``); needs internet or a cache.
        extra: free-form settings stored in the spec.

    Returns:
        The model, in training mode.

    Raises:
        ConfigError: as :class:`ObjectClassifier`.
    """
    spec = ClassifierSpec(
        model_name=model_name,
        bands=tuple(bands),
        classes=tuple(classes),
        mean=tuple(float(v) for v in mean),
        std=tuple(float(v) for v in std),
        chip_size=int(chip_size),
        buffer_m=float(buffer_m),
        mask_outside=mask_outside,
        pretrained="timm" if pretrained else None,
        extra=dict(extra or {}),
    )
    return ObjectClassifier(spec, pretrained=pretrained)
