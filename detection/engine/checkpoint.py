"""Checkpoints that are always complete files and load without running code."""

import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """Writes `state` to `path` atomically: a temporary file in the same folder, flushed and fsynced,
    then renamed over `path`, so `path` is always either the old or the new complete checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            torch.save(state, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Reads a checkpoint with `weights_only=True` (a checkpoint file cannot run code)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(f"checkpoint {path} is truncated, corrupt or not a checkpoint: {error}") from error


def rng_state() -> dict[str, Any]:
    """The Python, NumPy and torch RNG states, in types that `weights_only` loading accepts."""
    _, keys, position, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(), "numpy": (torch.from_numpy(keys.astype(np.int64)), position, has_gauss, gauss),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    keys, position, has_gauss, gauss = state["numpy"]
    np.random.set_state(("MT19937", keys.numpy().astype(np.uint32), position, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    """Seeds Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class CheckpointKeeper:
    """Writes `step_<n>.pt` atomically, points `last.pt` (and `best.pt` when asked) at it, and keeps only
    the newest `keep_last` step files. `last.pt` and `best.pt` are hard links (copies where the file
    system has none), so pruning a step file never removes the data they name."""

    def __init__(self, folder: Path, *, keep_last: int = 3):
        if keep_last < 1:
            raise ValueError(f"keep_last must be at least 1, got {keep_last}")
        self.folder = Path(folder)
        self.keep_last = keep_last

    @property
    def last(self) -> Path:
        return self.folder / "last.pt"

    def save(self, state: dict[str, Any], *, step: int, is_best: bool = False) -> Path:
        path = self.folder / f"step_{step:08d}.pt"
        save_checkpoint(state, path)
        self._point(self.last, path)
        if is_best:
            self._point(self.folder / "best.pt", path)
        for old in sorted(self.folder.glob("step_*.pt"))[:-self.keep_last]:
            old.unlink()
        return path

    @staticmethod
    def _point(link: Path, target: Path) -> None:
        temporary = link.with_name(f".{link.name}.tmp")
        temporary.unlink(missing_ok=True)
        try:
            os.link(target, temporary)
        except OSError:
            shutil.copyfile(target, temporary)
        os.replace(temporary, link)
