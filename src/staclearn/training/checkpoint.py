"""Training checkpoints: everything a ``fit`` needs to resume where it stopped, without pickle.

A training checkpoint holds the model weights, the weights of the best epoch so far, the
optimizer state (AdamW moments and step counts), the learning-rate scheduler's position,
the epoch history and early-stopping counters, and the state of every random number
generator the loop draws from (Python, NumPy, torch CPU and CUDA, and the generator that
shuffles or samples the training chips). Restored together they make a resumed run repeat
the uninterrupted one step for step (as Lightning's ``ckpt_path=`` resume, or fastai's
``save_model(with_opt=True)``).

It is one safetensors file: every tensor is a safetensors tensor and everything else is JSON
in the file's header metadata, so loading runs no code, unlike a pickled ``torch.save``
checkpoint. The best-epoch weights file of ``Trainer(checkpoint=...)`` stays a plain weights
file for :func:`staclearn.models.segmentation.load_weights`.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from staclearn.errors import CheckpointError, UnsafeWeightsError

__all__ = ["TrainingState", "save_training_state", "load_training_state", "capture_rng", "restore_rng"]

_META_KEY = "staclearn.training_state"
_VERSION = 1


@dataclass
class TrainingState:
    """The state of a training run after an epoch.

    Attributes:
        model: the model's ``state_dict`` (tensors, any device; written from the CPU).
        best_model: the ``state_dict`` of the best epoch so far, or ``None``.
        optimizer: the optimizer's ``state_dict`` (``{"state": {param index: {name: value}},
            "param_groups": [...]}``); tensor values become safetensors tensors, the rest JSON.
        scheduler: the learning-rate scheduler's ``state_dict`` (JSON-ready, as
            ``OneCycleLR``'s is).
        rng: random generator states from :func:`capture_rng`.
        info: JSON-ready figures of the run: epoch reached, planned epochs, learning rate,
            history, best epoch, early-stopping counters (see ``BaseTrainer.fit``).
    """

    model: dict[str, torch.Tensor]
    best_model: dict[str, torch.Tensor] | None
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    rng: dict[str, Any]
    info: dict[str, Any] = field(default_factory=dict)


def capture_rng(generator: torch.Generator | None = None) -> dict[str, Any]:
    """The states of Python's, NumPy's and torch's global generators (and of ``generator``).

    Args:
        generator: e.g. the generator of a DataLoader's sampler.

    Returns:
        ``{"python": tuple, "numpy": tuple, "torch": (N,) uint8 tensor, "cuda": [tensors],
        "generator": (N,) uint8 tensor or None}``, for :func:`restore_rng`.
    """
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else [],
        "generator": generator.get_state() if generator is not None else None,
    }


def restore_rng(state: dict[str, Any], generator: torch.Generator | None = None) -> None:
    """Set the generators back to a :func:`capture_rng` state.

    CUDA states are restored only when as many CUDA devices are visible as were saved (a
    checkpoint written on a GPU machine resumes on a CPU, with other CUDA draws).
    """
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and torch.cuda.device_count() == len(cuda):
        torch.cuda.set_rng_state_all(cuda)
    if generator is not None and state.get("generator") is not None:
        generator.set_state(state["generator"])


def _cpu(t: torch.Tensor) -> torch.Tensor:
    # safetensors refuses tensors sharing memory, so each gets its own contiguous copy
    return t.detach().to("cpu", copy=True).contiguous()


def save_training_state(state: TrainingState, path: str | os.PathLike[str]) -> Path:
    """Write a :class:`TrainingState` as one safetensors file (atomically: temp name, then rename).

    Tensors are stored under ``model/<key>``, ``best/<key>``, ``optimizer/<param>/<name>``
    and ``rng/...``; the optimizer's param groups, the scheduler state, the Python and NumPy
    generator figures and ``info`` are JSON in the header metadata.

    Args:
        state: the state to write.
        path: output file, e.g. ``run/state.safetensors``.

    Returns:
        The path written.

    Raises:
        CheckpointError: a non-tensor value (scheduler state, ``info``) is not JSON-ready.
    """
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {f"model/{k}": _cpu(v) for k, v in state.model.items()}
    if state.best_model is not None:
        tensors.update({f"best/{k}": _cpu(v) for k, v in state.best_model.items()})
    opt_extra: dict[str, dict[str, Any]] = {}
    for pid, entries in state.optimizer["state"].items():
        for name, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer/{pid}/{name}"] = _cpu(value)
            else:
                opt_extra.setdefault(str(pid), {})[name] = value
    rng = state.rng
    tensors["rng/torch"] = _cpu(rng["torch"])
    for i, s in enumerate(rng.get("cuda") or []):
        tensors[f"rng/cuda/{i}"] = _cpu(s)
    if rng.get("generator") is not None:
        tensors["rng/generator"] = _cpu(rng["generator"])
    np_name, np_keys, np_pos, np_gauss, np_cached = rng["numpy"]
    tensors["rng/numpy"] = torch.from_numpy(np.asarray(np_keys, dtype=np.int64))
    meta = {
        "version": _VERSION,
        "info": state.info,
        "has_best": state.best_model is not None,
        "optimizer": {"param_groups": state.optimizer["param_groups"], "extra": opt_extra},
        "scheduler": state.scheduler,
        "rng": {
            "python": [rng["python"][0], list(rng["python"][1]), rng["python"][2]],
            "numpy": [np_name, int(np_pos), int(np_gauss), float(np_cached)],
            "cuda": len(rng.get("cuda") or []),
        },
    }
    try:
        text = json.dumps(meta)
    except TypeError as err:
        raise CheckpointError(f"Cannot write the training state to {os.fspath(path)!r}: {err}") from err
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={_META_KEY: text})
    os.replace(tmp, path)
    return path


def load_training_state(path: str | os.PathLike[str]) -> TrainingState:
    """Read a file written by :func:`save_training_state` (tensors on the CPU).

    Args:
        path: the checkpoint file.

    Returns:
        The :class:`TrainingState`.

    Raises:
        CheckpointError: the file does not exist, or is a safetensors file without training
            state (e.g. a best-weights file; load that with :func:`~staclearn.models.segmentation.load_weights`).
        UnsafeWeightsError: the file is not safetensors (e.g. a pickled ``.pt``); it is never
            unpickled.
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"Training checkpoint {os.fspath(path)!r} does not exist; write one with fit(state_path=...).")
    with open(path, "rb") as f:
        head = f.read(9)
    header_len = int.from_bytes(head[:8], "little") if len(head) >= 8 else 0
    if not (0 < header_len < path.stat().st_size and head[8:9] == b"{"):
        raise UnsafeWeightsError(
            f"{os.fspath(path)!r} is not a safetensors file (pickled checkpoints can run code when loaded "
            "and are refused); resume from a file written by fit(state_path=...)."
        )
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
        if _META_KEY not in metadata:
            raise CheckpointError(
                f"{os.fspath(path)!r} holds weights only, no training state: load it with "
                "staclearn.models.segmentation.load_weights, or resume from a file written by fit(state_path=...)."
            )
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
    meta = json.loads(metadata[_META_KEY])
    if meta.get("version") != _VERSION:
        raise CheckpointError(f"{os.fspath(path)!r} is a training state of version {meta.get('version')}, expected {_VERSION}.")
    model = {k[len("model/") :]: v for k, v in tensors.items() if k.startswith("model/")}
    best = {k[len("best/") :]: v for k, v in tensors.items() if k.startswith("best/")} if meta["has_best"] else None
    opt_state: dict[int, dict[str, Any]] = {}
    for k, v in tensors.items():
        if k.startswith("optimizer/"):
            _, pid, name = k.split("/", 2)
            opt_state.setdefault(int(pid), {})[name] = v
    for pid, extra in meta["optimizer"]["extra"].items():
        opt_state.setdefault(int(pid), {}).update(extra)
    r = meta["rng"]
    np_name, np_pos, np_gauss, np_cached = r["numpy"]
    rng = {
        "python": (r["python"][0], tuple(r["python"][1]), r["python"][2]),
        "numpy": (np_name, tensors["rng/numpy"].numpy().astype(np.uint32), np_pos, np_gauss, np_cached),
        "torch": tensors["rng/torch"],
        "cuda": [tensors[f"rng/cuda/{i}"] for i in range(r["cuda"])],
        "generator": tensors.get("rng/generator"),
    }
    return TrainingState(
        model=model,
        best_model=best,
        optimizer={"state": opt_state, "param_groups": meta["optimizer"]["param_groups"]},
        scheduler=meta["scheduler"],
        rng=rng,
        info=meta["info"],
    )
