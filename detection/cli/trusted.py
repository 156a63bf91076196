"""Configurations from files are data until proven ours: a checkpoint's stored configuration may name only
the `_target_`s this project's config groups name, checked before anything in it is instantiated."""

from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator

import yaml

from detection.cli.schema import CONFIG_DIR
from detection.engine.settings import SettingsError


class UntrustedConfig(SettingsError):
    """A configuration read from a file names a `_target_` this project's config groups do not name."""


@lru_cache(maxsize=1)
def project_targets() -> frozenset[str]:
    """Every `_target_` the config groups under conf/ name (Hydra's own launcher configs aside): the only
    callables a configuration read from a file (a checkpoint's) may instantiate."""
    targets = set()
    for path in CONFIG_DIR.rglob("*.yaml"):
        if "hydra" not in path.relative_to(CONFIG_DIR).parts:
            groups = yaml.safe_load(path.read_text()) or {}
            groups.pop("hydra", None)  # train.yaml's callbacks: Hydra's, never stored in a checkpoint
            targets.update(target for _, target in targets_in(groups))
    return frozenset(targets)


def targets_in(node: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """(key path, value) of every `_target_` in a plain container, at any depth, lists included."""
    if isinstance(node, dict):
        for key, value in node.items():
            where = f"{path}.{key}" if path else str(key)
            if key == "_target_":
                yield where, value
            else:
                yield from targets_in(value, where)
    elif isinstance(node, (list, tuple)):
        for index, value in enumerate(node):
            yield from targets_in(value, f"{path}[{index}]")


def check_targets(config: Any, source: Any) -> None:
    """Refuses a configuration that came from a file (`source`, named in the message) when any `_target_`
    in it, at any depth, is not one of `project_targets()`: a checkpoint is data, and nothing it names is
    called before every target in it has passed. Interpolations are refused too (`${...}` could resolve to
    anything); `config` is a plain container as stored."""
    allowed = project_targets()
    for where, target in targets_in(config):
        if not isinstance(target, str) or target not in allowed:
            raise UntrustedConfig(f"{source}: {where}={target!r} is not a target this project's config groups "
                                  f"name; the configuration stored there is refused and nothing in it was run")

def trusted_checkpoint(path: Path) -> dict[str, Any]:
    """A training checkpoint read without running code: `weights_only` loading, then every `_target_` of
    its stored configurations checked against the project's (`schema.check_targets`) before anything is
    instantiated from them. A file without a configuration (a bare state_dict) is refused naming it."""
    from detection.engine.checkpoint import load_checkpoint  # torch: imported once a checkpoint is asked for

    checkpoint = load_checkpoint(path)
    if not {"config", "model"} <= set(checkpoint):
        raise SettingsError(f"{path}: not a training checkpoint of this project (it holds {sorted(checkpoint)[:5]}, "
                         "not config and model; train.py writes them to checkpoints/)")
    for key in ("config", "config_unresolved"):
        check_targets(checkpoint.get(key), f"{path} ({key})")
        if isinstance(checkpoint.get(key), dict):  # written when the model node held its label: not an argument
            checkpoint[key].get("model", {}).pop("name", None)
    return checkpoint
