"""Models: segmentation-models-pytorch U-Net (and friends) with input normalisation built in.

:class:`SegmentationModel` wraps an smp architecture behind a fixed z-score normalisation
layer whose per-band mean and standard deviation are buffers, so they are saved with the
weights (safetensors) and described in the MLM card as ``value_scaling``. Everything needed
to rebuild a model is in :class:`ModelSpec`, a plain, JSON-serialisable description.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from staclearn.errors import ConfigError, UnsafeWeightsError
from staclearn.labels import ClassInfo

__all__ = [
    "ModelSpec",
    "SegmentationModel",
    "SiameseDiffUnet",
    "FUSIONS",
    "DATE_PREFIXES",
    "pair_band_names",
    "model_from_spec",
    "build_model",
    "save_weights",
    "load_weights",
]

FUSIONS = ("early", "siam-diff")
"""Fusion of two dates (``spec.extra["fusion"]``): early fusion (FC-EF) or siamese feature differences (FC-Siam-diff)."""

DATE_PREFIXES = ("t1:", "t2:")
"""Prefixes of the stacked band names: ``t1:`` the before date, ``t2:`` the after date."""

_ARCHITECTURES = ("Unet", "UnetPlusPlus", "FPN", "DeepLabV3Plus", "Linknet", "PSPNet")


@dataclass(frozen=True)
class ModelSpec:
    """What is needed to rebuild a model, without its weights.

    Attributes:
        architecture: smp architecture class name (``"Unet"`` default; Ronneberger et al. 2015).
        encoder: smp/timm encoder name, e.g. ``"resnet18"``, ``"resnet34"``, ``"efficientnet-b0"``.
        bands: input band names, in channel order; ``in_channels == len(bands)``.
        classes: output classes, channel ``i`` of the logits = ``classes[i]``.
        mean: per-band mean used for z-score normalisation, in the imagery's units.
        std: per-band standard deviation, same units.
        encoder_weights: pre-training the encoder started from (``None`` or ``"imagenet"``);
            informational once trained weights exist.
        encoder_depth: number of encoder stages (input H and W must be multiples of
            ``2 ** encoder_depth``; 5 for smp's defaults, i.e. 32 px).
    """

    architecture: str
    encoder: str
    bands: tuple[str, ...]
    classes: tuple[ClassInfo, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    encoder_weights: str | None = None
    encoder_depth: int = 5
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def in_channels(self) -> int:
        """Number of input channels (bands)."""
        return len(self.bands)

    @property
    def num_classes(self) -> int:
        """Number of output classes (logit channels)."""
        return len(self.classes)

    @property
    def stride(self) -> int:
        """Input height and width must be multiples of this (pixels)."""
        return 2**self.encoder_depth

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (classes as STAC Class Objects)."""
        d = asdict(self)
        d["classes"] = [c.to_dict() for c in self.classes]
        d["bands"] = list(self.bands)
        d["mean"] = list(self.mean)
        d["std"] = list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelSpec:
        """Inverse of :meth:`to_dict`."""
        return cls(
            architecture=d["architecture"],
            encoder=d["encoder"],
            bands=tuple(d["bands"]),
            classes=tuple(
                ClassInfo(int(c["value"]), c["name"], c.get("color_hint"), c.get("description")) for c in d["classes"]
            ),
            mean=tuple(float(v) for v in d["mean"]),
            std=tuple(float(v) for v in d["std"]),
            encoder_weights=d.get("encoder_weights"),
            encoder_depth=int(d.get("encoder_depth", 5)),
            extra=dict(d.get("extra", {})),
        )


def pair_band_names(bands: Sequence[str]) -> list[str]:
    """Names of the stacked channels: ``t1:<band>`` for each band, then ``t2:<band>``.

    Args:
        bands: the C band names of one date.

    Returns:
        2C names, before bands first.
    """
    return [f"{p}{b}" for p in DATE_PREFIXES for b in bands]


class SegmentationModel(nn.Module):
    """Z-score normalisation followed by an smp segmentation network.

    Forward:
        x: ``(B, C, H, W) float32`` in the imagery's units (not normalised), H and W multiples
        of ``spec.stride``. Returns logits ``(B, K, H, W) float32``.
    """

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        import segmentation_models_pytorch as smp

        if spec.architecture not in _ARCHITECTURES:
            raise ConfigError(f"architecture must be one of {_ARCHITECTURES}, got {spec.architecture!r}")
        if len(spec.mean) != spec.in_channels or len(spec.std) != spec.in_channels:
            raise ConfigError(
                f"mean/std have {len(spec.mean)}/{len(spec.std)} values for {spec.in_channels} bands"
            )
        self.spec = spec
        self.register_buffer("mean", torch.tensor(spec.mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(spec.std, dtype=torch.float32).view(1, -1, 1, 1))
        arch = getattr(smp, spec.architecture)
        kw: dict[str, Any] = {
            "encoder_name": spec.encoder,
            "encoder_weights": spec.encoder_weights,
            "in_channels": spec.in_channels,
            "classes": spec.num_classes,
        }
        if spec.architecture in ("Unet", "UnetPlusPlus", "FPN", "Linknet", "DeepLabV3Plus"):
            kw["encoder_depth"] = spec.encoder_depth
            if spec.architecture in ("Unet", "UnetPlusPlus"):
                kw["decoder_channels"] = tuple(256 // 2**i for i in range(spec.encoder_depth))
        self.net = arch(**kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)



class SiameseDiffUnet(nn.Module):
    """FC-Siam-diff (Daudt et al. 2018): a shared encoder per date, a U-Net decoder on ``|f1 - f2|``.

    The input is the stacked pair (as for early fusion), z-score normalised with the spec's
    2C mean/std, then split into the two dates; both go through the same smp encoder (one
    batched pass, so BatchNorm sees both dates), and the decoder receives the absolute
    feature difference at every scale, the bottleneck included (Daudt et al. feed the
    bottleneck with the second date's features; the difference keeps the model symmetric in
    the two dates).

    Args:
        spec: :class:`staclearn.models.ModelSpec` with ``architecture="Unet"``, 2C stacked
            bands (``t1:*`` then ``t2:*``) and ``extra["fusion"] == "siam-diff"``.

    Forward:
        x: ``(B, 2C, H, W) float32`` in the imagery's units, H and W multiples of
        ``spec.stride``. Returns logits ``(B, K, H, W) float32``.

    Raises:
        ConfigError: an odd number of bands or mean/std of another length.
    """

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        import segmentation_models_pytorch as smp

        if spec.in_channels % 2 or len(spec.mean) != spec.in_channels or len(spec.std) != spec.in_channels:
            raise ConfigError(
                f"A siamese model needs 2C stacked bands with 2C means/stds; got {spec.in_channels} "
                f"bands, {len(spec.mean)} means, {len(spec.std)} stds."
            )
        self.spec = spec
        self.register_buffer("mean", torch.tensor(spec.mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(spec.std, dtype=torch.float32).view(1, -1, 1, 1))
        self.net = smp.Unet(
            encoder_name=spec.encoder,
            encoder_weights=spec.encoder_weights,
            in_channels=spec.in_channels // 2,
            classes=spec.num_classes,
            encoder_depth=spec.encoder_depth,
            decoder_channels=tuple(256 // 2**i for i in range(spec.encoder_depth)),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.mean) / self.std
        c = x.shape[1] // 2
        feats = self.net.encoder(torch.cat([x[:, :c], x[:, c:]], 0))
        n = x.shape[0]
        diffs = [torch.abs(f[:n] - f[n:]) for f in feats]
        return self.net.segmentation_head(self.net.decoder(diffs))

def model_from_spec(spec: ModelSpec) -> SegmentationModel | SiameseDiffUnet:
    """Build the (untrained) network a :class:`ModelSpec` describes.

    ``spec.extra["fusion"]`` selects the two-date change models (Daudt et al. 2018):
    ``"siam-diff"`` gives a :class:`SiameseDiffUnet`; ``"early"`` or no fusion (single-date
    models) a :class:`SegmentationModel`.

    Raises:
        ConfigError: unknown fusion or architecture, mean/std of the wrong length.
    """
    fusion = spec.extra.get("fusion", "early")
    if fusion == "early":
        return SegmentationModel(spec)
    if fusion == "siam-diff":
        return SiameseDiffUnet(spec)
    raise ConfigError(f"fusion must be one of {FUSIONS}, got {fusion!r}")


def build_model(
    bands: Sequence[str],
    classes: Sequence[ClassInfo],
    *,
    mean: Sequence[float] | np.ndarray,
    std: Sequence[float] | np.ndarray,
    architecture: str = "Unet",
    encoder: str = "resnet18",
    encoder_weights: str | None = None,
    encoder_depth: int = 5,
) -> SegmentationModel:
    """Build a U-Net (or another smp architecture) for ``len(bands)`` inputs and ``len(classes)`` outputs.

    Args:
        bands: input band names in channel order.
        classes: output classes.
        mean: per-band mean, e.g. from :func:`staclearn.chips.band_statistics`.
        std: per-band standard deviation.
        architecture: smp class name; ``"Unet"`` by default.
        encoder: encoder name (``"resnet18"`` default: 11 M parameters, trains on a CPU).
        encoder_weights: ``None`` (random init; tests and offline machines) or ``"imagenet"``
            (needs internet; only the first 3 channels are pre-trained when ``in_channels != 3``).
        encoder_depth: encoder stages, 3 to 5.

    Returns:
        The model, in training mode.

    Raises:
        ConfigError: unknown architecture, mean/std length differs from bands.
    """
    spec = ModelSpec(
        architecture=architecture,
        encoder=encoder,
        bands=tuple(bands),
        classes=tuple(classes),
        mean=tuple(float(v) for v in mean),
        std=tuple(float(v) for v in std),
        encoder_weights=encoder_weights,
        encoder_depth=encoder_depth,
    )
    return SegmentationModel(spec)


def save_weights(model: nn.Module, path: str | os.PathLike[str]) -> Path:
    """Write a model's ``state_dict`` as safetensors (atomically: temp name, then rename).

    Safetensors holds tensors only and runs no code on load, unlike pickle-based ``.pt``.

    Returns:
        The path written.
    """
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, path)
    return path


def load_weights(model: nn.Module, path: str | os.PathLike[str]) -> nn.Module:
    """Load safetensors weights into ``model`` (strict key match).

    Args:
        model: a model built from the same :class:`ModelSpec`.
        path: a ``.safetensors`` file (local path or fsspec URL).

    Returns:
        ``model``, with the weights loaded.

    Raises:
        UnsafeWeightsError: the file is not safetensors (e.g. a pickle ``.pt``/``.pth``); it is
            never unpickled.
    """
    import fsspec
    from safetensors.torch import load as load_bytes

    with fsspec.open(os.fspath(path), "rb") as f:
        data = f.read()
    # safetensors starts with an 8-byte little-endian header length followed by a JSON header
    header_len = int.from_bytes(data[:8], "little") if len(data) >= 8 else 0
    if not (0 < header_len < len(data) and data[8:9] == b"{"):
        raise UnsafeWeightsError(
            f"{os.fspath(path)!r} is not a safetensors file (pickled weights can run code when "
            "loaded and are refused). Convert it with safetensors.torch.save_file(state_dict, ...)."
        )
    model.load_state_dict(load_bytes(data))
    return model
