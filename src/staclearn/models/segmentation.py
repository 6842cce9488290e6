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
from staclearn.data.labels import ClassInfo
from staclearn.data.pairs import DATE_PREFIXES

__all__ = [
    "ModelSpec",
    "SegmentationModel",
    "PixelConvNet",
    "SegmentationEnsemble",
    "SpectralIndices",
    "SPECTRAL_INDICES",
    "LANDSAT_ETM_BANDS",
    "spectral_index_statistics",
    "member_spec",
    "PIXEL_CONV",
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

_ARCHITECTURES = ("Unet", "UnetPlusPlus", "FPN", "DeepLabV3Plus", "Linknet", "PSPNet")

PIXEL_CONV = "PixelConvNet"
"""``ModelSpec.architecture`` of :class:`PixelConvNet` (a small fully convolutional net, no smp)."""

SPECTRAL_INDICES: dict[str, tuple[str, str]] = {
    "ndvi": ("nir", "red"),
    "ndwi": ("green", "nir"),
    "mndwi": ("green", "swir16"),
    "ndbi": ("swir16", "nir"),
}
"""Normalised differences ``(a - b) / (a + b)`` by name: the ``(a, b)`` band roles.
NDVI (Rouse et al. 1974), NDWI (McFeeters 1996), MNDWI (Xu 2006), NDBI (Zha et al. 2003)."""

LANDSAT_ETM_BANDS: dict[str, str] = {"blue": "b1", "green": "b2", "red": "b3", "nir": "b4", "swir16": "b5"}
"""Band roles of Landsat-7 ETM+ bands named ``b1``..``b5`` (the NC scene's names)."""


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
            ``2 ** encoder_depth``; 5 for smp's defaults, i.e. 32 px; 0 for
            :class:`PixelConvNet`, any size).
        extra: JSON-able options. Read by :func:`model_from_spec`: ``fusion`` (change
            models), ``members`` (> 1: a :class:`SegmentationEnsemble` of that many copies),
            ``indices`` / ``index_bands`` / ``index_mean`` / ``index_std`` (spectral indices
            appended to the normalised bands, :class:`SpectralIndices`) and, for
            ``architecture="PixelConvNet"``, ``width``, ``layers``, ``kernel``, ``dropout``.
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
            raise ConfigError(f"architecture must be one of {(*_ARCHITECTURES, PIXEL_CONV)}, got {spec.architecture!r}")
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
            "in_channels": spec.in_channels + len(spec.extra.get("indices") or []),
            "classes": spec.num_classes,
        }
        if spec.architecture in ("Unet", "UnetPlusPlus", "FPN", "Linknet", "DeepLabV3Plus"):
            kw["encoder_depth"] = spec.encoder_depth
            if spec.architecture in ("Unet", "UnetPlusPlus"):
                kw["decoder_channels"] = tuple(256 // 2**i for i in range(spec.encoder_depth))
        self.net = arch(**kw)
        self.indices = _spectral_indices(spec)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = (x - self.mean) / self.std
        if self.indices is not None:
            z = torch.cat([z, self.indices(x)], 1)
        return self.net(z)



class SiameseDiffUnet(nn.Module):
    """FC-Siam-diff (Daudt et al. 2018): a shared encoder per date, a U-Net decoder on ``|f1 - f2|``.

    The input is the stacked pair (as for early fusion), z-score normalised with the spec's
    2C mean/std, then split into the two dates; both go through the same smp encoder (one
    batched pass, so BatchNorm sees both dates), and the decoder receives the absolute
    feature difference at every scale, the bottleneck included (Daudt et al. feed the
    bottleneck with the second date's features; the difference keeps the model symmetric in
    the two dates).

    Args:
        spec: :class:`staclearn.models.segmentation.ModelSpec` with ``architecture="Unet"``, 2C stacked
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

def _index_roles(spec_bands: Sequence[str], extra: dict[str, Any]) -> tuple[list[str], list[tuple[int, int]]]:
    names = [str(n).lower() for n in extra.get("indices") or []]
    roles = dict(extra.get("index_bands") or LANDSAT_ETM_BANDS)
    pairs = []
    for n in names:
        if n not in SPECTRAL_INDICES:
            raise ConfigError(f"Unknown spectral index {n!r}; known: {sorted(SPECTRAL_INDICES)}")
        idx = []
        for role in SPECTRAL_INDICES[n]:
            band = roles.get(role)
            if band not in spec_bands:
                raise ConfigError(
                    f"Index {n!r} needs the {role!r} band: extra['index_bands'] maps it to {band!r}, "
                    f"which is not one of the model's bands {list(spec_bands)}."
                )
            idx.append(list(spec_bands).index(band))
        pairs.append((idx[0], idx[1]))
    return names, pairs


class SpectralIndices(nn.Module):
    """Normalised-difference spectral indices computed from named input bands.

    Each index is ``(x_a - x_b) / (x_a + x_b)`` of two input channels (raw imagery units),
    z-scored with ``index_mean`` / ``index_std`` (defaults 0 / 1). The band behind each role
    comes from ``index_bands`` (role -> band name, default :data:`LANDSAT_ETM_BANDS`).

    Args:
        bands: the model's input band names (channel order).
        indices: index names, keys of :data:`SPECTRAL_INDICES`.
        index_bands: role (``"red"``, ``"nir"``...) -> band name.
        index_mean: per-index mean used for the z-score.
        index_std: per-index standard deviation.

    Forward:
        x: ``(B, C, H, W)`` raw bands. Returns ``(B, len(indices), H, W)``; a zero
        denominator gives 0.

    Raises:
        ConfigError: unknown index, a role whose band is not an input, stats of wrong length.
    """

    def __init__(
        self,
        bands: Sequence[str],
        indices: Sequence[str],
        index_bands: dict[str, str] | None = None,
        index_mean: Sequence[float] | None = None,
        index_std: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        extra: dict[str, Any] = {"indices": list(indices), "index_bands": index_bands}
        self.names, pairs = _index_roles(bands, extra)
        n = len(self.names)
        mean = [0.0] * n if index_mean is None else [float(v) for v in index_mean]
        std = [1.0] * n if index_std is None else [float(v) for v in index_std]
        if len(mean) != n or len(std) != n:
            raise ConfigError(f"index_mean/index_std have {len(mean)}/{len(std)} values for {n} indices")
        self.register_buffer("a", torch.tensor([p[0] for p in pairs], dtype=torch.long), persistent=False)
        self.register_buffer("b", torch.tensor([p[1] for p in pairs], dtype=torch.long), persistent=False)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def raw(self, x: torch.Tensor) -> torch.Tensor:
        """The indices before the z-score, ``(B, n, H, W)``."""
        a, b = x[:, self.a], x[:, self.b]
        den = a + b
        safe = torch.where(den == 0, torch.ones_like(den), den)
        return torch.where(den == 0, torch.zeros_like(den), (a - b) / safe)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.raw(x) - self.mean) / self.std


def _spectral_indices(spec: ModelSpec) -> SpectralIndices | None:
    if not spec.extra.get("indices"):
        return None
    return SpectralIndices(
        spec.bands,
        spec.extra["indices"],
        spec.extra.get("index_bands"),
        spec.extra.get("index_mean"),
        spec.extra.get("index_std"),
    )


def spectral_index_statistics(
    pixels: np.ndarray, bands: Sequence[str], indices: Sequence[str], index_bands: dict[str, str] | None = None
) -> tuple[list[float], list[float]]:
    """Mean and standard deviation of spectral indices over valid pixels (for ``index_mean`` /
    ``index_std``, computed on the training pixels like the band statistics).

    Args:
        pixels: ``(C, N)`` raw band values of valid pixels.
        bands: band names of the C rows.
        indices: index names.
        index_bands: role -> band name (default :data:`LANDSAT_ETM_BANDS`).

    Returns:
        ``(mean, std)`` lists, one value per index; std at least 1e-6.
    """
    mod = SpectralIndices(bands, indices, index_bands)
    with torch.no_grad():
        v = mod.raw(torch.as_tensor(np.asarray(pixels, np.float32))[None, :, :, None])[0, :, :, 0].double()
    return [float(m) for m in v.mean(1)], [max(float(s), 1e-6) for s in v.std(1, unbiased=False)]


class PixelConvNet(nn.Module):
    """A small fully convolutional network for sparse per-pixel land-cover labels.

    Z-scored bands (plus optional :class:`SpectralIndices`) go through ``layers`` blocks of
    ``kernel x kernel`` convolution (``width`` channels, "same" padding), BatchNorm, ReLU and
    channel dropout, then a 1x1 convolution to the class logits. The receptive field is
    ``layers * (kernel - 1) + 1`` pixels, so the map keeps the resolution of the imagery and
    any input size works (``encoder_depth`` 0, stride 1).

    ``spec.extra``: ``width`` (32), ``layers`` (3), ``kernel`` (3), ``dropout`` (0.1), and
    the index options of :class:`SpectralIndices` (``indices``, ``index_bands``,
    ``index_mean``, ``index_std``).

    Forward:
        x: ``(B, C, H, W) float32`` raw bands. Returns logits ``(B, K, H, W)``.
    """

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        if len(spec.mean) != spec.in_channels or len(spec.std) != spec.in_channels:
            raise ConfigError(f"mean/std have {len(spec.mean)}/{len(spec.std)} values for {spec.in_channels} bands")
        e = spec.extra
        width, layers, kernel = int(e.get("width", 32)), int(e.get("layers", 3)), int(e.get("kernel", 3))
        dropout = float(e.get("dropout", 0.1))
        if width < 1 or layers < 1 or kernel < 1 or kernel % 2 == 0 or not 0 <= dropout < 1:
            raise ConfigError(
                f"PixelConvNet needs width, layers >= 1, an odd kernel and 0 <= dropout < 1; got {width}, {layers}, {kernel}, {dropout}"
            )
        self.spec = spec
        self.register_buffer("mean", torch.tensor(spec.mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(spec.std, dtype=torch.float32).view(1, -1, 1, 1))
        self.indices = _spectral_indices(spec)
        c = spec.in_channels + (len(self.indices.names) if self.indices is not None else 0)
        blocks: list[nn.Module] = []
        for _ in range(layers):
            blocks += [
                nn.Conv2d(c, width, kernel, padding=kernel // 2, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
                nn.Dropout2d(dropout),
            ]
            c = width
        self.body = nn.Sequential(*blocks)
        self.head = nn.Conv2d(c, spec.num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = (x - self.mean) / self.std
        if self.indices is not None:
            z = torch.cat([z, self.indices(x)], 1)
        return self.head(self.body(z))


class SegmentationEnsemble(nn.Module):
    """Several segmentation networks of one spec (e.g. trained from different seeds) as one model.

    The logits are the log of the members' mean softmax probability, so argmax and softmax
    give the averaged prediction. Built from ``spec`` with ``extra["members"] = M``; member
    ``i`` is ``model_from_spec(spec with members=1)`` and its weights are ``members.i.*`` in
    the one state dict (one safetensors file).

    Forward:
        x: ``(B, C, H, W) float32`` raw bands. Returns ``(B, K, H, W)`` log-probabilities.
    """

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        m = int(spec.extra.get("members", 1))
        if m < 2:
            raise ConfigError(f"An ensemble needs extra['members'] >= 2, got {m}")
        self.spec = spec
        self.members = nn.ModuleList([model_from_spec(member_spec(spec)) for _ in range(m)])

    @classmethod
    def from_members(cls, models: Sequence[nn.Module]) -> SegmentationEnsemble:
        """Assemble trained members (same spec, ``members`` 1) into one ensemble model."""
        if len(models) < 2:
            raise ConfigError(f"An ensemble needs >= 2 members, got {len(models)}")
        base = models[0].spec  # type: ignore[attr-defined]
        for mdl in models[1:]:
            if mdl.spec.to_dict() != base.to_dict():  # type: ignore[attr-defined]
                raise ConfigError("Ensemble members must share one ModelSpec (bands, normalisation, options).")
        spec = ModelSpec.from_dict({**base.to_dict(), "extra": {**base.extra, "members": len(models)}})
        ens = cls(spec)
        for dst, src in zip(ens.members, models, strict=True):
            dst.load_state_dict(src.state_dict())
        return ens.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        prob = torch.stack([m(x).float().softmax(1) for m in self.members]).mean(0)
        return prob.clamp_min(1e-12).log()


def member_spec(spec: ModelSpec) -> ModelSpec:
    """The spec of one member of an ensemble spec (``extra["members"]`` set to 1)."""
    return ModelSpec.from_dict({**spec.to_dict(), "extra": {**spec.extra, "members": 1}})



def model_from_spec(spec: ModelSpec) -> nn.Module:
    """Build the (untrained) network a :class:`ModelSpec` describes.

    ``spec.extra["members"] > 1`` gives a :class:`SegmentationEnsemble` of that many
    members built from the same spec. ``spec.architecture == "PixelConvNet"`` gives a
    :class:`PixelConvNet`. Otherwise ``spec.extra["fusion"]`` selects the two-date change
    models (Daudt et al. 2018): ``"siam-diff"`` gives a :class:`SiameseDiffUnet`; ``"early"``
    or no fusion (single-date models) a :class:`SegmentationModel`.

    Raises:
        ConfigError: unknown fusion or architecture, mean/std of the wrong length, bad
            ``members`` or index options.
    """
    members = int(spec.extra.get("members", 1))
    if members < 1:
        raise ConfigError(f"extra['members'] must be >= 1, got {members}")
    if members > 1:
        return SegmentationEnsemble(spec)
    if spec.architecture == PIXEL_CONV:
        return PixelConvNet(spec)
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
    extra: dict[str, Any] | None = None,
    index_pixels: np.ndarray | None = None,
) -> nn.Module:
    """Build a U-Net (or another smp architecture, or a :class:`PixelConvNet`) for ``len(bands)``
    inputs and ``len(classes)`` outputs.

    Args:
        bands: input band names in channel order.
        classes: output classes.
        mean: per-band mean, e.g. from :func:`staclearn.chips.pixel.band_statistics`.
        std: per-band standard deviation.
        architecture: smp class name; ``"Unet"`` by default.
        encoder: encoder name (``"resnet18"`` default: 11 M parameters, trains on a CPU).
        encoder_weights: ``None`` (random init; tests and offline machines) or ``"imagenet"``
            (needs internet; only the first 3 channels are pre-trained when ``in_channels != 3``).
        encoder_depth: encoder stages, 3 to 5 (ignored for ``"PixelConvNet"``: 0).
        extra: JSON-able options stored in the spec (see :class:`ModelSpec`): ``indices``,
            ``index_bands``, ``index_mean``, ``index_std``, ``members``; for
            ``architecture="PixelConvNet"`` also ``width``, ``layers``, ``kernel``, ``dropout``.
        index_pixels: ``(C, N)`` raw values of the training pixels; with ``indices`` in
            ``extra`` and no ``index_mean`` there, the indices' z-score statistics are
            computed from them (:func:`spectral_index_statistics`), as the band ``mean`` /
            ``std`` come from the training chips.

    Returns:
        The model (:func:`model_from_spec`), in training mode.

    Raises:
        ConfigError: unknown architecture, mean/std length differs from bands.
    """
    extra = dict(extra or {})
    if extra.get("indices") and index_pixels is not None and "index_mean" not in extra:
        extra["index_mean"], extra["index_std"] = spectral_index_statistics(
            index_pixels, bands, extra["indices"], extra.get("index_bands")
        )
    spec = ModelSpec(
        architecture=architecture,
        encoder=encoder,
        bands=tuple(bands),
        classes=tuple(classes),
        mean=tuple(float(v) for v in mean),
        std=tuple(float(v) for v in std),
        encoder_weights=None if architecture == PIXEL_CONV else encoder_weights,
        encoder_depth=0 if architecture == PIXEL_CONV else encoder_depth,
        extra=extra,
    )
    return model_from_spec(spec)


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
