"""Data augmentation of image + mask batches with kornia, on the batch's device.

Rotation, zoom (scale), shift (translate) and flips, applied with the *same* random
parameters to the image and its mask (kornia ``AugmentationSequential`` with
``data_keys=["input", "mask"]``). The mask is resampled with nearest neighbour and comes
back as integers with exactly the input's label values; pixels moved in from outside the
chip are filled by reflection in both image and mask, so they stay consistent.

Defaults follow the seed arcgis.learn workflow (rotation, zoom, shift, flips) and
TorchGeo's trainers (flips + kornia on GPU).
"""

from __future__ import annotations

import kornia.augmentation as K
import torch
from torch import nn

__all__ = ["Augmentation"]


class Augmentation(nn.Module):
    """Random geometric augmentation of ``(image, mask)`` batches.

    Args:
        rotation: maximum rotation in degrees (uniform in ``[-rotation, rotation]``).
        zoom: scale range, e.g. ``(0.9, 1.1)``.
        shift: maximum translation as a fraction of the chip size (x and y).
        flips: apply random horizontal and vertical flips (p=0.5 each).
        p: probability of the affine transform (rotation + zoom + shift).

    Forward:
        image: ``(B, C, H, W) float32``; mask: ``(B, H, W)`` integer class indices.
        Returns the transformed ``(image, mask)``; the mask keeps its dtype and holds only
        values present in the input mask (ignore index included).
    """

    def __init__(
        self,
        *,
        rotation: float = 30.0,
        zoom: tuple[float, float] = (0.9, 1.1),
        shift: float = 0.1,
        flips: bool = True,
        p: float = 0.75,
    ) -> None:
        super().__init__()
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
        return img, m[:, 0].round().to(dtype)
