"""Data augmentation of image + mask batches with kornia, on the batch's device.

Rotation, zoom (scale), shift (translate) and flips, applied with the *same* random
parameters to the image and its mask (kornia ``AugmentationSequential`` with
``data_keys=["input", "mask"]``). The mask is resampled with nearest neighbour and comes
back as integers with exactly the input's label values; pixels moved in from outside the
chip are filled by reflection in both image and mask, so they stay consistent.

Defaults follow the seed arcgis.learn workflow (rotation, zoom, shift, flips) and
TorchGeo's trainers (flips + kornia on GPU).

:class:`RadiometricJitter` changes brightness, contrast and the balance of bands per image
(image only: labels do not move), so a classifier does not learn one scene's colours.
"""

from __future__ import annotations

import kornia.augmentation as K
import torch
from torch import nn

__all__ = ["Augmentation", "RadiometricJitter"]


class Augmentation(nn.Module):
    """Random geometric augmentation of ``(image, mask)`` batches.

    Args:
        rotation: maximum rotation in degrees (uniform in ``[-rotation, rotation]``).
        zoom: scale range, e.g. ``(0.9, 1.1)``.
        shift: maximum translation as a fraction of the chip size (x and y).
        flips: apply random horizontal and vertical flips (p=0.5 each).
        p: probability of the affine transform (rotation + zoom + shift).
        radiometric: a :class:`RadiometricJitter` applied to the image after the geometric
            transforms (the mask is unchanged), or ``None`` (default). Spectral shifts between
            labelled patches (e.g. a forest a few DN brighter in one band) then look like
            training variation.

    Forward:
        image: ``(B, C, H, W) float32``; mask: ``(B, H, W)`` integer class indices.
        Returns the transformed ``(image, mask)``; the mask keeps its dtype and holds only
        values present in the input mask (ignore index included). :meth:`images` applies the
        same random transforms to an image batch without a mask (object classification).
    """

    def __init__(
        self,
        *,
        rotation: float = 30.0,
        zoom: tuple[float, float] = (0.9, 1.1),
        shift: float = 0.1,
        flips: bool = True,
        p: float = 0.75,
        radiometric: RadiometricJitter | None = None,
    ) -> None:
        super().__init__()
        self.radiometric = radiometric
        ops: list[nn.Module] = []
        if flips:
            ops += [K.RandomHorizontalFlip(p=0.5), K.RandomVerticalFlip(p=0.5)]
        if rotation or shift or zoom != (1.0, 1.0):
            ops.append(
                K.RandomAffine(
                    degrees=rotation,
                    translate=(shift, shift) if shift else None,
                    scale=zoom,
                    padding_mode="reflection",
                    p=p,
                )
            )
        self.pipeline = K.AugmentationSequential(*ops, data_keys=["input", "mask"])

    @torch.no_grad()
    def forward(self, image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        dtype = mask.dtype
        m = mask[:, None].to(image.dtype)
        img, m = self.pipeline(image, m)
        if self.radiometric is not None:
            img = self.radiometric(img)
        return img, m[:, 0].round().to(dtype)

    @torch.no_grad()
    def images(self, image: torch.Tensor) -> torch.Tensor:
        """Transform an image batch alone, for object classification where there is no mask.

        Args:
            image: ``(B, C, H, W) float32``.

        Returns:
            The transformed ``(B, C, H, W) float32`` batch.
        """
        return self.pipeline(image, data_keys=["input"])


class RadiometricJitter(nn.Module):
    """Random brightness, contrast and band gains of image batches, per image.

    Each image ``x`` becomes ``((x - m) * c + m) * b * g_k`` with ``m`` its mean over bands
    and pixels, a contrast factor ``c``, a brightness factor ``b`` and a gain ``g_k`` per band,
    each uniform in ``[1 - amount, 1 + amount]``. Multiplicative, so it works in any units
    (DN, reflectance); a colour-jitter in the manner of torchvision's ``ColorJitter``
    without assuming values in [0, 1].

    Args:
        brightness: amount of the brightness factor, in [0, 1).
        contrast: amount of the contrast factor, in [0, 1).
        band_gain: amount of the per-band gains, in [0, 1).
        p: probability that an image is jittered.

    Forward:
        image: ``(B, C, H, W) float32``. Returns the jittered batch, same shape and dtype.
    """

    def __init__(self, *, brightness: float = 0.2, contrast: float = 0.2, band_gain: float = 0.1, p: float = 0.8) -> None:
        super().__init__()
        self.brightness, self.contrast, self.band_gain, self.p = brightness, contrast, band_gain, p

    @torch.no_grad()
    def forward(self, image: torch.Tensor) -> torch.Tensor:
        b, c = image.shape[:2]

        def factor(amount: float, *shape: int) -> torch.Tensor:
            return 1.0 + amount * (2.0 * torch.rand(b, *shape, device=image.device, dtype=image.dtype) - 1.0)

        mean = image.mean(dim=(1, 2, 3), keepdim=True)
        out = ((image - mean) * factor(self.contrast, 1, 1, 1) + mean) * factor(self.brightness, 1, 1, 1)
        out = out * factor(self.band_gain, c, 1, 1)
        apply = (torch.rand(b, 1, 1, 1, device=image.device) < self.p).to(image.dtype)
        return apply * out + (1.0 - apply) * image
