"""kornia augmentation keeps image and mask together and the mask integer."""

from __future__ import annotations

import torch

from staclearn.chips.augment import Augmentation
from staclearn.data.labels import IGNORE_INDEX


def test_augmentation_moves_image_and_mask_together():
    torch.manual_seed(0)
    mask = torch.full((8, 64, 64), IGNORE_INDEX, dtype=torch.int64)
    mask[:, :32, :32] = 0
    mask[:, 32:, :32] = 1
    mask[:, :32, 32:] = 2
    image = mask[:, None].float().repeat(1, 3, 1, 1)  # every band equals the class value
    out_img, out_mask = Augmentation(rotation=45, zoom=(0.8, 1.2), shift=0.2)(image, mask)
    assert out_mask.dtype == torch.int64 and out_img.shape == image.shape
    assert set(out_mask.unique().tolist()) <= {0, 1, 2, IGNORE_INDEX}
    # the augmentation changed something
    assert (out_mask != mask).float().mean() > 0.05
    # image and mask were transformed with the same parameters: they agree except on edges
    agree = (out_img[:, 0].round() == out_mask.float()).float().mean()
    assert agree > 0.95
    # ignored pixels stay ignored: wherever the image says 'ignore', so does the mask
    ignored_img = out_img[:, 0].round() == IGNORE_INDEX
    assert (out_mask[ignored_img] == IGNORE_INDEX).float().mean() > 0.95


def test_augmentation_is_seedable():
    mask = torch.randint(0, 3, (2, 32, 32))
    image = torch.rand(2, 4, 32, 32)
    torch.manual_seed(3)
    a = Augmentation()(image, mask)
    torch.manual_seed(3)
    b = Augmentation()(image, mask)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    # and it did something: a no-op Augmentation would pass the line above too
    assert not torch.equal(a[0], image) and not torch.equal(a[1], mask)
    torch.manual_seed(4)
    c = Augmentation()(image, mask)
    assert not torch.equal(c[0], a[0])  # another seed, another draw


def test_images_only_and_radiometric_jitter():
    from staclearn.chips.augment import RadiometricJitter

    torch.manual_seed(0)
    x = 50 + 100 * torch.rand(16, 3, 8, 8)
    flipped = Augmentation(rotation=0, zoom=(1.0, 1.0), shift=0, flips=True).images(x)
    for a, b in zip(flipped, x, strict=True):  # each image is itself or a flip of itself
        assert any(torch.allclose(a, v) for v in (b, b.flip(-1), b.flip(-2), b.flip(-1).flip(-2)))
    y = RadiometricJitter(brightness=0.2, contrast=0.0, band_gain=0.0, p=1.0)(x)
    ratio = (y / x).flatten(1)
    assert torch.allclose(ratio, ratio[:, :1].expand_as(ratio), atol=1e-5)  # one gain per image
    assert ratio.min() >= 0.8 - 1e-6 and ratio.max() <= 1.2 + 1e-6 and ratio.std() > 0.01
    z = RadiometricJitter(brightness=0.0, contrast=0.3, band_gain=0.0, p=1.0)(x)
    assert torch.allclose(z.mean(dim=(1, 2, 3)), x.mean(dim=(1, 2, 3)), atol=1e-3)  # contrast keeps the mean
    assert torch.equal(RadiometricJitter(p=0.0)(x), x)
