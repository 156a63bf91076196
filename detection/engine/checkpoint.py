"""Checkpoints that are always complete files, load without running code, and have one writer."""

import errno
import fcntl
import io
import logging
import os
import random
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

log = logging.getLogger(__name__)


class CheckpointWriteError(OSError):
    """A checkpoint could not be written; the message names the path, the cause and the last good one."""


def _write_failure_cause(error: BaseException, folder: Path) -> str:
    """What went wrong, in words."""
    code = getattr(error, "errno", None)
    if code in (errno.ENOSPC, errno.EDQUOT):
        return f"no space left on the device of {folder} ({error})"
    if code in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"no permission to write in {folder} ({error})"
    return f"{type(error).__name__}: {error}"


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """Writes `state` to `path` atomically: a temporary file in the same folder, flushed and fsynced,
    then renamed over `path`, so `path` is always either the old or the new complete checkpoint. A failed
    write raises CheckpointWriteError naming the path and the cause."""
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()  # serialised first, so that a failed write is the kernel's OSError (no space,
    torch.save(state, buffer)  # no permission, file too large), not torch's 'unexpected pos'
    temporary = None
    try:
        handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        with os.fdopen(handle, "wb") as file:
            file.write(buffer.getbuffer())
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except OSError as error:
        raise CheckpointWriteError(f"could not write checkpoint {path}: {_write_failure_cause(error, path.parent)}") \
            from error
    finally:
        if temporary is not None:
            Path(temporary).unlink(missing_ok=True)  # gone already when the rename succeeded


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


TRAINING_STATE = ("optimizer", "scheduler", "scaler", "rng")  # what only resuming needs


def model_only(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint without the training state (TRAINING_STATE), marked `model_only`: the weights, the
    configuration and the rest that evaluating, predicting and exporting read, at about half the size."""
    return {**{key: value for key, value in checkpoint.items() if key not in TRAINING_STATE}, "model_only": True}


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

    def save(self, state: dict[str, Any], *, step: int, is_best: bool = False, best_model_only: bool = False) -> Path:
        """Raises CheckpointWriteError naming the last good checkpoint when the write fails. With
        `best_model_only`, best.pt is a file of its own without the training state (`model_only`)."""
        path = self.folder / f"step_{step:08d}.pt"
        try:
            save_checkpoint(state, path)
        except CheckpointWriteError as error:
            last = f"the last good checkpoint is {self.last}" if self.last.is_file() else "no checkpoint was written"
            raise CheckpointWriteError(f"{error}; the run stops, {last}") from error
        self._point(self.last, path)
        if is_best and best_model_only:
            save_checkpoint(model_only(state), self.folder / "best.pt")
        elif is_best:
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


class RunLocked(RuntimeError):
    """Another live process trains from or into the same checkpoint folder."""


class RunLock:
    """One writer per run: a POSIX lock (`lockf`) on `<folder>/.lock`, which holds the owner's pid and host.
    The kernel drops it when its process dies, however it dies, and a forked loader worker does not
    inherit it; so a lock left by a killed process is taken over (and said so), and a live owner makes
    `acquire` fail at once, naming it."""

    def __init__(self, folder: Path):
        self.path = Path(folder) / ".lock"
        self._file = None

    def acquire(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        file = open(self.path, "a+")
        try:
            fcntl.lockf(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            file.seek(0)
            owner = file.read().strip() or "unknown"
            file.close()
            raise RunLocked(f"{self.path.parent} is in use by another training process ({owner}); one "
                            f"checkpoint is resumed by one process at a time") from None
        file.seek(0)
        previous: Optional[str] = file.read().strip() or None
        if previous:
            log.warning("%s: taking over the lock of %s, which no longer runs", self.path, previous)
        file.seek(0)
        file.truncate()
        file.write(f"pid {os.getpid()} on {socket.gethostname()}")
        file.flush()
        self._file = file
        return self

    def release(self) -> None:
        """Empties the file (a clean end leaves no owner to take over from) and drops the lock."""
        if self._file is not None:
            self._file.truncate(0)
            self._file.close()
            self._file = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc_info) -> None:
        self.release()
