"""The ONNX artifact of a model card: the whole network exported for ONNX Runtime and
described as a second ``mlm:model`` asset beside the safetensors weights (MLM extension,
``mlm:artifact_type`` ``torch.onnx.export``).
"""

from __future__ import annotations

__all__ = ["add_onnx_artifact"]


import hashlib
import os
import warnings
from pathlib import Path, PurePosixPath
from typing import Any

from torch import nn

from staclearn.errors import (
    ModelCardError,
    StaclearnWarning,
)
from staclearn.inference.engines import (
    ONNX_ARTIFACT_TYPE,
    ONNX_ASSET,
    ONNX_MEDIA_TYPE,
    ONNX_OPSET,
    activation_bytes_per_px,
    export_onnx,
    onnx_io_fields,
)


def add_onnx_artifact(
    card: Any, model: nn.Module, out_dir: str | os.PathLike[str] | None = None, *, required: bool = True
) -> Path | None:
    """Export ``model`` to ONNX beside its safetensors weights and list it in its MLM card.

    Call it after :func:`staclearn.stac.modelcard.model_card` (and before the card is written)::

        card = model_card(model, str(weights.resolve()), ...)
        add_onnx_artifact(card, model)

    The file is ``<weights stem>.onnx`` in ``out_dir`` (default: the weights' folder). The
    card gets a second ``mlm:model`` asset (key ``"onnx"``): ``mlm:artifact_type``
    ``torch.onnx.export``, ``mlm:framework`` ONNX, the input/output tensors
    (``staclearn:onnx_input`` / ``staclearn:onnx_output``, ``-1`` = dynamic), the same
    ``raster:bands`` as the weights, the file's SHA-256 (``staclearn:sha256``) and an
    activation-memory estimate per input pixel (``staclearn:activation_bytes_per_px``, used by
    ``tile_size="auto"``). The href follows the weights' (absolute stays absolute, relative
    stays relative).

    Args:
        card: the card Item (``pystac.Item``) with its ``weights`` asset.
        model: the trained model the card describes.
        out_dir: folder for the ONNX file; default the weights' folder (local weights only).
        required: ``False`` skips the export (with a :class:`~staclearn.errors.StaclearnWarning`)
            when the ``onnx`` package (``staclearn[onnx]``) is not installed or the export
            fails, instead of raising; what training workflows pass, so a run still publishes
            its card with the safetensors weights.

    Returns:
        The ONNX file written, or None when skipped.

    Raises:
        MissingDependencyError: ``onnx`` is not installed and ``required`` is True.
        ModelCardError: the card has no weights asset, or ``out_dir`` is needed (remote
            weights) and not given.
    """
    import pystac

    from staclearn.errors import MissingDependencyError
    from staclearn.stac.modelcard import WEIGHTS_ASSET

    try:
        import onnx
    except ImportError as err:
        msg = f"No ONNX artifact for model card {card.id!r}: the onnx package is missing (pip install 'staclearn[onnx]')."
        if required:
            raise MissingDependencyError(msg) from err
        warnings.warn(msg, StaclearnWarning, stacklevel=2)
        return None

    weights = card.assets.get(WEIGHTS_ASSET)
    if weights is None:
        raise ModelCardError(f"Model card {card.id!r} has no {WEIGHTS_ASSET!r} asset to put the ONNX file beside.")
    href = weights.get_absolute_href() or weights.href
    name = PurePosixPath(href.split("?")[0]).stem + ".onnx"
    if out_dir is None:
        if "://" in href and not href.startswith("file://"):
            raise ModelCardError(f"The weights of {card.id!r} are remote ({href}); pass out_dir= for the ONNX file.")
        out_dir = Path(href.removeprefix("file://")).parent
    try:
        path = export_onnx(model, Path(out_dir) / name)
    except Exception as err:  # noqa: BLE001 - the exporter raises many kinds
        if required:
            raise
        warnings.warn(
            f"No ONNX artifact for model card {card.id!r}: the export failed ({err}); the card keeps the safetensors weights only.",
            StaclearnWarning,
            stacklevel=2,
        )
        return None
    data = path.read_bytes()
    relative = not os.path.isabs(weights.href) and "://" not in weights.href and path.parent == Path(href).parent
    onnx_href = str(PurePosixPath(weights.href).with_name(name)) if relative else str(path.resolve())
    card.add_asset(
        ONNX_ASSET,
        pystac.Asset(
            href=onnx_href,
            media_type=ONNX_MEDIA_TYPE,
            roles=["mlm:model", "data"],
            title=f"{weights.title or 'model'} as an ONNX graph (normalisation included)".replace(" weights (safetensors)", ""),
            description="The whole network for ONNX Runtime: bands in the imagery's units in, logits out "
            "(staclearn:onnx_input / staclearn:onnx_output; -1 is a dynamic dimension).",
            extra_fields={
                "mlm:artifact_type": ONNX_ARTIFACT_TYPE,
                "mlm:framework": "ONNX",
                "mlm:framework_version": onnx.__version__,
                "staclearn:onnx_opset": ONNX_OPSET,
                **onnx_io_fields(model),
                "staclearn:sha256": hashlib.sha256(data).hexdigest(),
                "staclearn:activation_bytes_per_px": round(activation_bytes_per_px(model), 1),
                "raster:bands": list(weights.extra_fields.get("raster:bands") or []),
            },
        ),
    )
    return path
