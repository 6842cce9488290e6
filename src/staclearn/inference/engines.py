"""Inference engines: the same trained network run by PyTorch or by ONNX Runtime.

A model card (:mod:`staclearn.stac.modelcard`) holds the weights as safetensors (role
``mlm:model``, ``mlm:artifact_type`` ``safetensors.torch.save_file``) and, once
:func:`add_onnx_artifact` has run, the whole network as an ONNX graph beside them: a second
``mlm:model`` asset with ``mlm:artifact_type`` ``torch.onnx.export`` and the input and
output tensors it takes (``staclearn:onnx_input`` / ``staclearn:onnx_output``: name, shape
with ``-1`` for a dynamic dimension, dim order, data type; MLM forbids ``mlm:input`` on an
asset). The graph includes the z-score normalisation, so it takes the bands in the
imagery's units, exactly as the PyTorch model does.

Engines (``engine=``):

* ``"torch"``: the PyTorch model rebuilt from the safetensors weights.
* ``"onnx"``: the ONNX graph in ONNX Runtime (the optional extra ``staclearn[onnx]``);
  falls back to PyTorch with a :class:`~staclearn.errors.StaclearnWarning` when
  ``onnxruntime`` is not installed or the card has no ONNX asset.
* ``"auto"``: ONNX Runtime when it is installed and the card has the ONNX asset, else
  PyTorch (no warning).

Why: on a 2-core CPU, ONNX Runtime ran the smp U-Net ResNet-34 of the inference
benchmark 1.77x faster than eager PyTorch and 1.30x faster than PyTorch in channels_last
(issue 15, ``bench/inference.py``).

Safety: like safetensors, an ONNX file holds tensors and a graph of standard operators;
loading it runs no Python. :func:`load_onnx_model` refuses graphs that use operators outside
the standard ONNX domains (custom operators can load native code) or keep their weights in
external files.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import os
import warnings
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from staclearn.errors import (
    ConfigError,
    ModelCardError,
    StaclearnWarning,
    UnsafeWeightsError,
)

__all__ = [
    "ENGINES",
    "ONNX_ASSET",
    "ONNX_ARTIFACT_TYPE",
    "Engine",
    "OnnxModel",
    "activation_bytes_per_px",
    "engine_of",
    "export_onnx",
    "load_onnx_model",
    "onnxruntime_available",
    "resolve_engine",
    "tile_bytes_per_px",
    "with_engine",
]

log = logging.getLogger(__name__)

Engine = Literal["auto", "torch", "onnx"]
ENGINES = ("auto", "torch", "onnx")
ONNX_ASSET = "onnx"
"""Key of the ONNX asset in a model card."""
ONNX_ARTIFACT_TYPE = "torch.onnx.export"
ONNX_MEDIA_TYPE = "application/octet-stream; application=onnx"
ONNX_OPSET = 17
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
# domains of the standard operator sets; anything else is a custom operator (native code)
_STANDARD_DOMAINS = {"", "ai.onnx", "ai.onnx.ml"}
_FALLBACK_BYTES_PER_PX = 1200.0  # U-Net ResNet-34 measures ~1030 with the probe


def onnxruntime_available() -> bool:
    """Whether ``onnxruntime`` can be imported (the ``staclearn[onnx]`` extra)."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def _check_engine(engine: str) -> None:
    if engine not in ENGINES:
        raise ConfigError(f"engine must be one of {ENGINES}, got {engine!r}")


def _probe_size(model: nn.Module) -> int:
    spec = getattr(model, "spec", None)
    chip = getattr(spec, "chip_size", None)
    if chip is not None:
        return int(chip)
    stride = int(getattr(spec, "stride", 32) or 1)
    return max(64, 2 * stride)


def _is_classifier(model: nn.Module) -> bool:
    return hasattr(getattr(model, "spec", None), "chip_size")


def export_onnx(model: nn.Module, path: str | os.PathLike[str], *, opset: int = ONNX_OPSET) -> Path:
    """Export a staclearn model (normalisation included) to an ONNX file, atomically.

    Uses PyTorch's TorchScript-based exporter (``torch.onnx.export(..., dynamo=False)``): it
    needs no extra package and works offline; the ``torch.export``-based default of
    PyTorch >= 2.9 needs ``onnxscript``. A copy of the model is exported on the CPU, so
    ``model`` is left where it is.

    Args:
        model: a segmentation model ``(B, C, H, W) float32 -> (B, K, H, W)`` logits (batch,
            height and width dynamic; H and W multiples of ``spec.stride``), or a chip
            classifier ``(B, C, S, S) -> (B, K)`` (batch dynamic, S = ``spec.chip_size``).
            Two-date change models take the stacked pair ``(B, 2C, H, W)``.
        path: the ``.onnx`` file to write.
        opset: ONNX operator-set version.

    Returns:
        The path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    net = copy.deepcopy(model).cpu().eval()
    spec = getattr(model, "spec", None)
    channels = len(spec.bands) if spec is not None else int(next(iter(net.parameters())).shape[1])
    size = _probe_size(model)
    x = torch.zeros(1, channels, size, size)
    axes = {0: "batch"} if _is_classifier(model) else {0: "batch", 2: "height", 3: "width"}
    out_axes = {0: "batch"} if _is_classifier(model) else {0: "batch", 2: "height", 3: "width"}
    tmp = path.with_name(path.name + ".tmp")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation notes
        torch.onnx.export(
            net, (x,), str(tmp), dynamo=False, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: axes, OUTPUT_NAME: out_axes}, opset_version=opset, do_constant_folding=True,
        )
    os.replace(tmp, path)
    return path


def activation_bytes_per_px(model: nn.Module) -> float:
    """Estimated peak activation bytes per input pixel of one tile (float32).

    Measured on a small probe forward with hooks: the encoder's feature maps (held for the
    decoder's skip connections) plus three times the largest single activation (its input,
    its output and a workspace), per input pixel. An estimate for choosing tile sizes, not a
    bound: an allocator's caching adds to it.
    """
    spec = getattr(model, "spec", None)
    size = _probe_size(model)
    channels = len(spec.bands) if spec is not None else 3
    sizes: list[int] = []
    skips = 0

    def hook(_m: nn.Module, _i: Any, out: Any) -> None:
        if isinstance(out, torch.Tensor):
            sizes.append(out.numel() * 4)

    handles = [m.register_forward_hook(hook) for m in model.modules() if not list(m.children())]
    enc = getattr(getattr(model, "net", None), "encoder", None)
    feats: list[int] = []
    if enc is not None:
        handles.append(enc.register_forward_hook(lambda _m, _i, out: feats.extend(t.numel() * 4 for t in out if isinstance(t, torch.Tensor))))
    try:
        with torch.inference_mode():
            model.eval()(torch.zeros(1, channels, size, size, device=next(iter(model.parameters()), torch.zeros(0)).device))
    finally:
        for h in handles:
            h.remove()
    skips = sum(feats)
    peak = skips + 3 * (max(sizes) if sizes else channels * size * size * 4)
    return peak / (size * size)


def engine_of(model: nn.Module) -> str:
    """The engine a model runs in: its ``engine`` attribute, else ``"onnx"`` for an
    :class:`OnnxModel` and ``"torch"`` for any other module."""
    return str(getattr(model, "engine", "onnx" if type(model).__name__ == "OnnxModel" else "torch"))


def with_engine(model: nn.Module, engine: str) -> nn.Module:
    """The model to run for ``engine``.

    Args:
        model: a PyTorch module or an :class:`OnnxModel`.
        engine: ``"auto"`` keeps the model's own engine (an :class:`OnnxModel` runs in ONNX
            Runtime, a PyTorch module in PyTorch); ``"onnx"`` exports a PyTorch module to ONNX
            first (falls back to PyTorch with a :class:`~staclearn.errors.StaclearnWarning`
            when onnxruntime is missing); ``"torch"`` needs a PyTorch module.

    Returns:
        ``model`` itself, or an :class:`OnnxModel` of it.

    Raises:
        ConfigError: an unknown engine, or ``"torch"`` asked for an ONNX Runtime model.
    """
    _check_engine(engine)
    mine = engine_of(model)
    if engine in ("auto", mine):
        return model
    if engine == "torch":
        raise ConfigError(
            "engine='torch' was asked for an ONNX Runtime model; load the card with "
            "staclearn.stac.modelcard.load_model(card, engine='torch') instead."
        )
    if not onnxruntime_available():
        warnings.warn("engine='onnx' asked for but onnxruntime is not installed (pip install 'staclearn[onnx]'); "
                      "running the model in PyTorch.", StaclearnWarning, stacklevel=4)
        return model
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        data = export_onnx(model, Path(tmp) / "model.onnx").read_bytes()
    return OnnxModel(data, getattr(model, "spec", None), activation_bytes_per_px=tile_bytes_per_px(model))


def tile_bytes_per_px(model: nn.Module) -> float:
    """Activation bytes per input pixel of a tile that ``tile_size="auto"`` plans with.

    The model's recorded ``activation_bytes_per_px`` (an :class:`OnnxModel` from a card),
    else :func:`activation_bytes_per_px` measured on a probe forward of a PyTorch module, else
    a conservative 1200 B/px (a U-Net ResNet-34 measures about 1030).
    """
    known = getattr(model, "activation_bytes_per_px", None)
    if known:
        return float(known)
    if engine_of(model) == "torch" and any(True for _ in model.parameters()):
        try:
            return activation_bytes_per_px(model)
        except Exception:  # noqa: BLE001 - a model the probe cannot run: use the conservative default
            pass
    return _FALLBACK_BYTES_PER_PX


def onnx_io_fields(model: nn.Module) -> dict[str, Any]:
    """The ONNX graph's input and output as card fields (``staclearn:onnx_input`` /
    ``staclearn:onnx_output``: name, shape with -1 for dynamic dimensions, dim order, float32)."""
    spec = model.spec  # type: ignore[attr-defined]
    c, k = len(spec.bands), len(spec.classes)
    if _is_classifier(model):
        s = int(spec.chip_size)
        inp = {"shape": [-1, c, s, s], "dim_order": ["batch", "bands", "height", "width"]}
        out = {"shape": [-1, k], "dim_order": ["batch", "class"]}
    else:
        inp = {"shape": [-1, c, -1, -1], "dim_order": ["batch", "bands", "height", "width"]}
        out = {"shape": [-1, k, -1, -1], "dim_order": ["batch", "class", "height", "width"]}
    return {
        "staclearn:onnx_input": {"name": INPUT_NAME, **inp, "data_type": "float32"},
        "staclearn:onnx_output": {"name": OUTPUT_NAME, **out, "data_type": "float32"},
    }


def _href_exists(href: str) -> bool:
    """Whether a local path or fsspec URL exists (False when the check itself fails)."""
    import fsspec

    try:
        fs, path = fsspec.core.url_to_fs(href)
        return bool(fs.exists(path))
    except Exception:  # noqa: BLE001 - unreachable store: treat as missing
        return False


def _onnx_asset(card: Any) -> Any | None:
    for asset in card.assets.values():
        if "mlm:model" in (asset.roles or []) and asset.extra_fields.get("mlm:artifact_type") == ONNX_ARTIFACT_TYPE:
            return asset
    return None


def _check_graph(data: bytes, where: str) -> None:
    import onnx

    proto = onnx.load_model_from_string(data)
    domains = {o.domain for o in proto.opset_import} | {n.domain for n in proto.graph.node}
    custom = sorted(d for d in domains if d not in _STANDARD_DOMAINS)
    if custom:
        raise UnsafeWeightsError(
            f"{where} uses operators outside the standard ONNX domains ({custom}); custom operators can run "
            "native code and are refused. Re-export it with standard operators (staclearn export-onnx)."
        )
    external = [t.name for t in proto.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    if external:
        raise UnsafeWeightsError(f"{where} keeps tensors in external files ({external[:3]}...); staclearn reads single-file ONNX only.")


class OnnxModel(nn.Module):
    """A staclearn model run by ONNX Runtime, usable wherever the PyTorch model is.

    Args:
        data: the ONNX file's bytes (already checked, see :func:`load_onnx_model`).
        spec: the model's spec.
        providers: ONNX Runtime execution providers to try, in order; default the CPU.
        threads: intra-op threads; default ``torch.get_num_threads()``.
        activation_bytes_per_px: activation-memory estimate (for ``tile_size="auto"``).
        path: the same file on local disk, which the session is then built from.

    Calling it takes ``(B, C, H, W) float32`` in the imagery's units (a torch tensor) and
    returns the logits as a torch tensor on the input's device, like the PyTorch model.
    It has no parameters: it cannot be trained; load the card with ``engine="torch"`` for that.

    Attributes:
        spec: the :class:`~staclearn.models.segmentation.ModelSpec` or
            :class:`~staclearn.models.classifier.ClassifierSpec` from the card.
        engine: ``"onnx"``.
        provider: the ONNX Runtime execution provider in use (e.g. ``CPUExecutionProvider``).
        digest: SHA-256 of the ONNX file (identifies the weights, e.g. for resuming).
        activation_bytes_per_px: activation-memory estimate from the card, or None.
    """

    engine = "onnx"

    def __init__(
        self,
        data: bytes,
        spec: Any,
        *,
        providers: list[str] | None = None,
        threads: int | None = None,
        activation_bytes_per_px: float | None = None,
        path: str | None = None,
    ) -> None:
        super().__init__()
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(threads or torch.get_num_threads())
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # the arena keeps every size it ever grew to: without it a U-Net tile peaks at about
        # half the memory (~450 instead of ~880 B per input pixel), at the same speed
        opts.enable_cpu_mem_arena = False
        available = ort.get_available_providers()
        chosen = [p for p in (providers or ["CPUExecutionProvider"]) if p in available] or ["CPUExecutionProvider"]
        # from a local file ONNX Runtime keeps no second copy of the serialised graph (~1x the weights)
        self.session = ort.InferenceSession(path or data, sess_options=opts, providers=chosen)
        self.spec = spec
        self.provider = self.session.get_providers()[0]
        self.input_name = self.session.get_inputs()[0].name
        self.digest = hashlib.sha256(data).hexdigest()
        self.activation_bytes_per_px = activation_bytes_per_px

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Run the ONNX graph: ``(B, C, H, W)`` float32 -> logits ``(B, K, H, W)`` (or ``(B, K)``
        for a chip classifier), returned on ``x``'s device."""
        a = x.detach().to("cpu", torch.float32).contiguous().numpy()
        out = self.session.run(None, {self.input_name: a})[0]
        return torch.from_numpy(out).to(x.device)

    def __repr__(self) -> str:
        return f"OnnxModel(provider={self.provider!r}, classes={len(self.spec.classes)}, bands={list(self.spec.bands)})"


def load_onnx_model(card: Any, spec: Any, *, device: str | torch.device = "cpu") -> OnnxModel:
    """Load the ONNX asset of a model card into ONNX Runtime (no code is executed).

    Args:
        card: the card Item.
        spec: the model spec rebuilt from the card (:func:`staclearn.stac.modelcard.spec_from_card`).
        device: ``"cuda"`` uses ONNX Runtime's CUDA provider when installed; anything else
            the CPU provider.

    Returns:
        The :class:`OnnxModel`.

    Raises:
        ModelCardError: the card has no ONNX asset, or its file does not match the card's
            ``staclearn:sha256``.
        UnsafeWeightsError: the graph uses custom operators or external data.
        ImportError: ``onnxruntime`` is not installed.
    """
    import fsspec

    asset = _onnx_asset(card)
    if asset is None:
        raise ModelCardError(
            f"Model card {card.id!r} has no ONNX asset (mlm:artifact_type {ONNX_ARTIFACT_TYPE!r}); "
            f"add one with 'staclearn export-onnx {card.id}.json'."
        )
    href = asset.get_absolute_href() or asset.href
    with fsspec.open(href, "rb") as f:
        data = f.read()
    want = asset.extra_fields.get("staclearn:sha256")
    if want and hashlib.sha256(data).hexdigest() != want:
        raise ModelCardError(f"{href} does not match the SHA-256 in model card {card.id!r}; re-export it (staclearn export-onnx).")
    _check_graph(data, href)
    dev = torch.device(device) if not isinstance(device, torch.device) else device
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if dev.type == "cuda" else ["CPUExecutionProvider"]
    local = href.removeprefix("file://") if "://" not in href or href.startswith("file://") else None
    return OnnxModel(
        data, spec, providers=providers, path=local,
        activation_bytes_per_px=asset.extra_fields.get("staclearn:activation_bytes_per_px"),
    )


def resolve_engine(engine: str, card: Any) -> str:
    """The engine a card is run with: ``"onnx"`` or ``"torch"`` (see the module docstring).

    Args:
        engine: ``"auto"``, ``"torch"`` or ``"onnx"``.
        card: the card Item.

    Returns:
        ``"onnx"`` when asked for (or ``"auto"``) and both ``onnxruntime`` and the card's ONNX
        asset are there, else ``"torch"``; ``engine="onnx"`` that cannot be honoured warns.

    Raises:
        ConfigError: an unknown engine name.
    """
    _check_engine(engine)
    if engine == "torch":
        return "torch"
    why = None
    asset = _onnx_asset(card)
    if asset is None:
        why = f"model card {card.id!r} has no ONNX asset (add it with 'staclearn export-onnx')"
    elif not _href_exists(asset.get_absolute_href() or asset.href):
        why = f"the ONNX file {asset.get_absolute_href() or asset.href} of model card {card.id!r} is missing"
    elif not onnxruntime_available():
        why = "onnxruntime is not installed (pip install 'staclearn[onnx]')"
    if why is None:
        return "onnx"
    if engine == "onnx":
        warnings.warn(f"engine='onnx' asked for but {why}; running the model in PyTorch.", StaclearnWarning, stacklevel=3)
    else:
        log.info("engine auto: %s; running the model in PyTorch", why)
    return "torch"
