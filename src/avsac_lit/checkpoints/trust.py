"""What a config read from a file may build.

A checkpoint is read tensors-only, but it carries its run's config, and Hydra calls whatever a
``_target_`` there names when the model is built. A config read from a file (a checkpoint's,
``config=``, a run's ``config.yaml``) is therefore checked first (:func:`trusted_config`): every
``_target_`` must be a class the package's own configs name, or an optimiser or scheduler of
``torch.optim``, decided without importing anything the file names.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Iterator

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from avsac_lit.checkpoints.versions import moved_targets
from avsac_lit.conf import CONFIG_DIR


class UntrustedConfigError(ValueError):
    """A config read from a file that names code the suite does not build, or a file to read."""


# Classes that configs of earlier versions name and :func:`upgraded` reads: version 0.1's BAVD
# (``model.net.bavd``, folded into the net) and its checkpoint callback.
EARLIER_TARGETS = frozenset(
    {"avsac_lit.models.bavd.BAVD", "lightning.pytorch.callbacks.ModelCheckpoint"}
)


# The nodes of a run config that no command builds from a file: eval takes its own loggers and
# none of the run's callbacks (eval.run_config_for_test), load_trained and export build the model
# only, and a resumed run builds from its command line. A run's own callbacks (FirstStepRecorder,
# a class of the user's) leave its checkpoints readable.
NEVER_BUILT = ("callbacks", "logger")


def targets(tree: object, key: str = "") -> Iterator[tuple[str, object]]:
    """Every ``_target_`` in a config's nested dicts and lists, with the key of the node that
    holds it (``model.net``; ``""`` for the top level)."""
    if isinstance(tree, dict):
        for name, value in tree.items():
            if name == "_target_":
                yield key, value
            else:
                yield from targets(value, f"{key}.{name}" if key else str(name))
    elif isinstance(tree, list):
        for index, value in enumerate(tree):
            yield from targets(value, f"{key}.{index}" if key else str(index))


@functools.cache
def suite_targets() -> frozenset[str]:
    """The classes the package's own configs name (``avsac_lit/conf``), read from them, and
    :data:`EARLIER_TARGETS`."""
    named = {
        target
        for path in CONFIG_DIR.rglob("*.yaml")
        for _, target in targets(OmegaConf.to_container(OmegaConf.load(path)))
    }
    return frozenset(named) | EARLIER_TARGETS


def buildable(target: object) -> bool:
    """Whether a config read from a file may name ``target``: a class of the suite's configs, or
    an optimiser or scheduler of ``torch.optim`` (a run may train with any, e.g.
    ``model.optimizer._target_=torch.optim.SGD``, and its checkpoint must still load). Decided
    without importing anything, which would run the module's code: the name is looked up in the
    modules already imported."""
    if not isinstance(target, str):
        return False
    if target in suite_targets():
        return True
    module_name, _, name = target.rpartition(".")
    if module_name != "torch.optim" and not module_name.startswith("torch.optim."):
        return False
    module = sys.modules.get(module_name)
    found = vars(module).get(name) if module is not None else None
    return isinstance(found, type) and issubclass(found, (Optimizer, LRScheduler))


def model_names() -> list[str]:
    return sorted(path.stem for path in (CONFIG_DIR / "model").glob("*.yaml"))


def trusted_config(loaded: DictConfig, source: str, to_build: bool = True) -> DictConfig:
    """``loaded``, a run config read from ``source``, resolved, once nothing in it would run code
    the suite does not: Hydra calls whatever a ``_target_`` names when the model is built (a
    checkpoint loaded with ``weights_only=True`` still carries its config), so every one must be
    :func:`buildable` (but in the nodes no command builds, :data:`NEVER_BUILT`). It is checked
    resolved (a resolver such as ``oc.create`` makes nodes) and
    returned resolved, so what is checked is what is built. A config of version 0.1's layout
    also names the model config :func:`upgraded` reads: it must be one the package ships.

    ``to_build=False``: the config is only read, never built (a resume compares it with the
    run's own, which its command line builds), so its targets are left unchecked: a run trained
    with a class of the user's (``model.net._target_=mylab.Net``) resumes from its own
    checkpoints."""
    try:
        tree = moved_targets(OmegaConf.to_container(loaded, resolve=True))
    except OmegaConfBaseException as error:
        raise UntrustedConfigError(
            f"Cannot read {source}: an interpolation in it does not resolve ({error}). The "
            "configs avsac_lit writes hold plain values: pass the config.yaml of the run that "
            "wrote the checkpoint (logs/train/runs/<time>/config.yaml)."
        ) from None
    if not isinstance(tree, dict):
        raise UntrustedConfigError(
            f"{source} is not a run config (a mapping with data, model, trainer, ...). Pass the "
            "config.yaml of the run that wrote the checkpoint."
        )
    built = {key: node for key, node in tree.items() if key not in NEVER_BUILT}
    refused = (
        [(key, target) for key, target in targets(built) if not buildable(target)]
        if to_build
        else []
    )
    if refused:
        named = "; ".join(
            f"{key + '.' if key else ''}_target_={target!r}" for key, target in refused[:3]
        )
        more = f" and {len(refused) - 3} more" if len(refused) > 3 else ""
        raise UntrustedConfigError(
            f"Refusing {source}: it names {named}{more}, and avsac-lit builds only the classes "
            "of its own configs and torch.optim's optimisers and schedulers. Hydra calls "
            "whatever a _target_ names when the model is built, so a file naming anything else "
            "could run code; nothing was built from it. Use a checkpoint or config.yaml that "
            "avsac_lit wrote (train, convert or export) and that you trust; a model class of "
            "your own is built once the package's configs name it (conf/model/<name>.yaml, "
            "docs/architecture.md)."
        )
    model = tree.get("model")
    if (
        isinstance(model, dict)
        and "_target_" not in model
        and model.get("name") not in model_names()
    ):
        raise UntrustedConfigError(
            f"Refusing {source}: model.name={model.get('name')!r} is not a model of avsac-lit "
            f"({', '.join(model_names())}), and a config without model._target_ (version 0.1's "
            "layout) is completed from that model's config file. Pass the config.yaml of the run "
            "that wrote the checkpoint."
        )
    return OmegaConf.create(tree)
