"""A training run killed with SIGKILL mid-epoch resumes from its last saved state to the same
weights as an uninterrupted run (CPU, seeded), each run in a process of its own.

The child process trains a real :class:`staclearn.models.segmentation.PixelConvNet` (batch
norm, dropout) with kornia augmentation and shuffled batches on seeded synthetic chips, with
``fit(state_path=...)``. Once the state of epoch ``k - 1`` is on disk the child's dataset
writes a marker part-way into epoch ``k`` (after two optimizer steps) and blocks; the test
then kills it with SIGKILL, so the last state on disk is that of epoch ``k - 1`` and the
steps taken in epoch ``k`` are lost, as in a real crash. A fresh process resumes from the
file; its final weights must equal (``torch.equal``) those of a third process that trained
without interruption.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL (POSIX)")

EPOCHS = 4
KILL_EPOCH = 3  # killed during this epoch: the state of epoch 2 is the last one on disk

_CHILD = r'''
import os, sys, time
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch.utils.data import Dataset

from staclearn.data.labels import IGNORE_INDEX, ClassInfo
from staclearn.models.segmentation import build_model
from staclearn.training.segmentation import Trainer

mode, work = sys.argv[1], Path(sys.argv[2])
epochs, kill_epoch = int(sys.argv[3]), int(sys.argv[4])
torch.set_num_threads(1)
state = work / "state.safetensors"
ready = work / "ready"  # written once the state of epoch kill_epoch - 1 is saved
blocked = work / "blocked"  # written part-way into epoch kill_epoch, just before blocking


class Chips(Dataset):
    """24 seeded 16x16 chips of 3 bands, 3 classes (dark, mid, bright blocks), 30 % labelled."""

    def __init__(self, n: int, seed: int, block: bool) -> None:
        g = torch.Generator().manual_seed(seed)
        mask = torch.randint(0, 3, (n, 1, 4, 4), generator=g).float()
        self.mask = torch.nn.functional.interpolate(mask, size=(16, 16), mode="nearest")[:, 0].long()
        self.x = 100 + 20 * self.mask[:, None].float() + 8 * torch.randn(n, 3, 16, 16, generator=g)
        self.mask[torch.rand(self.mask.shape, generator=g) > 0.3] = IGNORE_INDEX
        self.block, self.reads = block, 0

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        if self.block and ready.exists():
            self.reads += 1
            if self.reads > 2 * 4:  # two batches of 4 into the epoch: the optimizer has stepped
                blocked.write_text("mid-epoch")
                time.sleep(3600)  # wait for SIGKILL
        return self.x[i], self.mask[i]


classes = [ClassInfo(1, "dark"), ClassInfo(2, "mid"), ClassInfo(3, "bright")]
torch.manual_seed(7)
model = build_model(
    ["b1", "b2", "b3"], classes, mean=[120.0] * 3, std=[20.0] * 3, architecture="PixelConvNet",
    extra={"width": 8, "layers": 2, "dropout": 0.2},
)
trainer = Trainer(
    model, Chips(24, 0, block=mode == "killed"), Chips(8, 1, block=False), num_classes=3, batch_size=4,
    weights="sqrt", label_smoothing=0.1, augment=True, device="cpu", seed=5,
)


def on_epoch(rec) -> None:
    # fit() has written the state of this epoch before calling on_epoch
    if mode == "killed" and rec.epoch == kill_epoch - 1:
        ready.write_text(str(rec.epoch))


kwargs = {"state_path": state, "on_epoch": on_epoch, "progress": False, "keep_best": False}
if mode == "resumed":
    kwargs["resume_from"] = state
trainer.fit(epochs, 1e-2, **kwargs)
save_file({k: v.contiguous() for k, v in trainer.model.state_dict().items()}, str(work / "final.safetensors"))
(work / "history.txt").write_text(repr([(r.epoch, r.train_loss, r.valid_loss) for r in trainer.history]))
'''


def _run(script: Path, mode: str, work: Path) -> subprocess.CompletedProcess:
    work.mkdir(exist_ok=True)
    return subprocess.run(
        [sys.executable, str(script), mode, str(work), str(EPOCHS), str(KILL_EPOCH)],
        capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONHASHSEED": "0"},
    )  # fmt: skip


def _weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def test_sigkill_mid_epoch_resumes_to_the_uninterrupted_weights(tmp_path):
    from staclearn.training.checkpoint import load_training_state

    script = tmp_path / "child.py"
    script.write_text(_CHILD)

    killed = tmp_path / "killed"
    killed.mkdir()
    proc = subprocess.Popen(
        [sys.executable, str(script), "killed", str(killed), str(EPOCHS), str(KILL_EPOCH)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONHASHSEED": "0"},
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while not (killed / "blocked").exists():
            if proc.poll() is not None:
                pytest.fail(f"the training process ended before it was killed:\n{proc.stderr.read()}")
            if time.monotonic() > deadline:
                pytest.fail("the training process never reached the middle of the epoch to kill")
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / "final.safetensors").exists()
    saved = load_training_state(killed / "state.safetensors")
    assert saved.info["epoch"] == KILL_EPOCH - 1  # the last complete epoch; the killed one left no state

    # a fresh process continues from the file
    done = _run(script, "resumed", killed)
    assert done.returncode == 0, done.stderr
    straight = tmp_path / "straight"
    ref = _run(script, "straight", straight)
    assert ref.returncode == 0, ref.stderr

    assert (killed / "history.txt").read_text() == (straight / "history.txt").read_text()
    resumed_w, straight_w = _weights(killed / "final.safetensors"), _weights(straight / "final.safetensors")
    assert resumed_w.keys() == straight_w.keys()
    for k, v in straight_w.items():
        assert torch.equal(resumed_w[k], v), k
    # and the run was not trivially short: the weights moved away from their initialisation
    assert load_training_state(straight / "state.safetensors").info["epoch"] == EPOCHS


# run_landcover(resume=True) -----------------------------------------------------------------


class _Interrupted(Exception):
    pass


def test_landcover_run_resumes_to_the_uninterrupted_model(tmp_path, nc_catalog):
    from safetensors.torch import load_file

    from staclearn.errors import RunExistsError
    from staclearn.workflows.landcover import LandCoverConfig, run_landcover

    config = LandCoverConfig(
        members=2, epochs=3, rf_estimators=0, vectorize=False, onnx=False, device="cpu", seed=3,
    )  # fmt: skip
    straight = run_landcover(nc_catalog, tmp_path / "straight", config, progress=False, log=lambda _: None)

    out = tmp_path / "run"
    epochs_seen: list[str] = []

    def crash_in_member_2(line: str) -> None:
        if line.startswith("epoch"):
            epochs_seen.append(line)
            if len(epochs_seen) == config.epochs + 1:  # member 2's first epoch is saved, then the run dies
                raise _Interrupted

    with pytest.raises(_Interrupted):
        run_landcover(nc_catalog, out, config, progress=False, log=crash_in_member_2)
    assert sorted(p.name for p in (out / "train_state").iterdir()) == ["member0.safetensors", "member1.safetensors", "run.json"]
    assert not (out / "model" / "weights.safetensors").exists()
    chips_before = (out / "chips" / "chips.parquet").stat().st_mtime_ns

    # without resume the folder is refused; with other settings it cannot be resumed
    with pytest.raises(RunExistsError, match="not empty"):
        run_landcover(nc_catalog, out, config, progress=False, log=lambda _: None)
    with pytest.raises(RunExistsError, match="lr differ"):
        run_landcover(nc_catalog, out, LandCoverConfig(**{**config.__dict__, "lr": 1e-2}), progress=False, log=lambda _: None, resume=True)

    lines: list[str] = []
    resumed = run_landcover(nc_catalog, out, config, progress=False, log=lines.append, resume=True)
    # member 1 is not retrained, member 2 trains its two missing epochs only; the chips are reused
    assert [line.split()[1] for line in lines if line.startswith("epoch")] == ["2", "3"]
    assert any("member 1: resuming after epoch 3 of 3 (finished)" in line for line in lines), lines
    assert any("member 2: resuming after epoch 1 of 3" in line for line in lines), lines
    assert any("(reused from the interrupted run)" in line for line in lines), lines
    assert (out / "chips" / "chips.parquet").stat().st_mtime_ns == chips_before

    a = load_file(str(straight.out_dir / "model" / "weights.safetensors"))
    b = load_file(str(resumed.out_dir / "model" / "weights.safetensors"))
    assert a.keys() == b.keys()
    for k, v in a.items():
        assert torch.equal(v, b[k]), k
    assert [(r.epoch, r.train_loss) for r in resumed.history] == [(r.epoch, r.train_loss) for r in straight.history]
    assert resumed.metrics["test"]["model"].overall_accuracy == straight.metrics["test"]["model"].overall_accuracy


def test_landcover_resume_refuses_a_folder_without_a_run(tmp_path, nc_catalog):
    from staclearn.errors import RunExistsError
    from staclearn.workflows.landcover import LandCoverConfig, run_landcover

    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(RunExistsError, match="no interrupted land-cover run"):
        run_landcover(nc_catalog, out, LandCoverConfig(members=1, epochs=1), progress=False, log=lambda _: None, resume=True)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
