"""Checkpoints of other versions, and the version that writes them.

A checkpoint records the avsac-lit version that wrote it (``checkpoint["avsac_lit"]["version"]``,
from 0.8.0) and carries its run's config, whose ``_target_``s name the classes of that version's
layout. :func:`upgraded` reads older configs in today's layout: version 0.1's (the BAVD under
``model.bavd``) and 0.7's flat package (``avsac_lit.module.AVSLitModule``, ... :data:`MOVED`), so
their checkpoints and run directories still evaluate, predict and resume; settings whose values
were renamed since take today's names (:data:`RENAMED_VALUES`). Weights that do not fit
the model a config builds are named key by key (:func:`check_weights_fit`).
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib.metadata import version
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict
from torch import Tensor

from avsac_lit.conf import CONFIG_DIR
from avsac_lit.models.bavd import AGCA_BEFORE

PACKAGE = "avsac-lit"

# Classes that moved when the package was laid out in layers (0.9.0), as configs written before
# name them -> where they are now. Read-only: a config naming the old place is rewritten before
# anything is built (a rename, not an import of the name written).
MOVED = {
    "avsac_lit.module.AVSLitModule": "avsac_lit.system.module.AVSLitModule",
    "avsac_lit.feature_cache.EncoderFeatureCache": (
        "avsac_lit.system.feature_cache.EncoderFeatureCache"
    ),
    "avsac_lit.callbacks.ResumableCheckpoint": "avsac_lit.run.callbacks.ResumableCheckpoint",
    "avsac_lit.callbacks.ValidationOverlays": "avsac_lit.run.callbacks.ValidationOverlays",
    "avsac_lit.callbacks.UnfreezeBackbone": "avsac_lit.run.callbacks.UnfreezeBackbone",
    "avsac_lit.callbacks.FirstStepRecorder": "avsac_lit.run.callbacks.FirstStepRecorder",
    "avsac_lit.callbacks.AtomicCheckpointIO": "avsac_lit.checkpoints.writer.AtomicCheckpointIO",
}

# Settings whose values were renamed after 0.9.0: {dotted key: {the value written then: today's}}.
# The values written then are booleans.
RENAMED_VALUES = {"model.net.agca": AGCA_BEFORE}


def renamed_value(key: str, value: object) -> object:
    """``value`` of the setting ``key`` (dotted) by today's name (:data:`RENAMED_VALUES`)."""
    names = RENAMED_VALUES.get(key, {})
    return names[value] if isinstance(value, bool) and value in names else value


def suite_version() -> str:
    """The installed avsac-lit's version (the package's metadata), which checkpoints and
    ``metrics.json`` record."""
    return version(PACKAGE)


def moved_targets(tree: object) -> object:
    """``tree`` (a config as plain dicts and lists) with every ``_target_`` of :data:`MOVED`
    renamed to where its class is now."""
    if isinstance(tree, dict):
        return {
            key: MOVED.get(value, value) if key == "_target_" else moved_targets(value)
            for key, value in tree.items()
        }
    if isinstance(tree, list):
        return [moved_targets(value) for value in tree]
    return tree


def upgraded(cfg: DictConfig) -> DictConfig:
    """A run config of version 0.1's layout (the BAVD under ``model.bavd``, the width as
    ``model.dim``, the module assembled by hand) in today's: ``model`` instantiates the
    LightningModule, the BAVD's settings are the net's; and every value of
    :data:`RENAMED_VALUES` by today's name. Today's configs pass unchanged."""
    model = cfg.model
    if "_target_" not in model:
        current = OmegaConf.load(CONFIG_DIR / "model" / f"{model.name}.yaml")
        with open_dict(cfg):
            bavd = model.net.pop("bavd", None)
            if bavd is not None:
                model.net.decoder_layers = bavd.num_layers
                for key in ("bridge", "agca", "vga_ffn", "heads", "hidden_dim", "dropout"):
                    model.net[key] = bavd[key]
            for stale in ("bavd", "dim"):
                model.pop(stale, None)
            for key, value in current.items():
                if key not in model:
                    model[key] = value
    for key in RENAMED_VALUES:
        value = OmegaConf.select(cfg, key)
        if renamed_value(key, value) is not value:
            OmegaConf.update(cfg, key, renamed_value(key, value))
    return cfg


class CheckpointMismatchError(ValueError):
    """A checkpoint whose weights are not those of the model its config builds here."""


def check_weights_fit(
    found: Mapping[str, Tensor],
    expected: Mapping[str, Tensor],
    checkpoint: str | Path,
    written_by: str | None,
) -> None:
    """Refuse, before they are loaded, the weights ``found`` in ``checkpoint`` (written by
    avsac-lit ``written_by``, where it says) unless they are the ones ``expected`` by the model
    its config builds: every key, each of the same shape. The message names the keys that are
    missing, unexpected or of another shape, where torch's strict loading gives a wall of them
    that names neither the file nor a way on."""

    def shape(value: object) -> list[int] | None:
        return list(value.shape) if isinstance(value, Tensor) else None

    missing = [key for key in expected if key not in found]
    unexpected = [key for key in found if key not in expected]
    reshaped = [
        f"{key}: {shape(found[key])} in the checkpoint, {shape(expected[key])} here"
        for key in expected
        if key in found and shape(found[key]) != shape(expected[key])
    ]
    if not (missing or unexpected or reshaped):
        return

    def listed(keys: list[str]) -> str:
        more = f" and {len(keys) - 3} more" if len(keys) > 3 else ""
        return "; ".join(keys[:3]) + more

    kinds = [
        (missing, "missing from it"),
        (unexpected, "not in the model"),
        (reshaped, "of another shape"),
    ]
    differ = ", ".join(f"{len(keys)} {what} ({listed(keys)})" for keys, what in kinds if keys)
    version = suite_version()
    if written_by == version:
        why = (
            f"It was written by this version ({version}), so its weights and its config do not "
            "belong together: the file was changed after it was written. Use another copy of "
            "it, or another checkpoint of the run (its checkpoints/ holds the best and the last)."
        )
    else:
        writer = (
            f"It was written by avsac-lit {written_by}"
            if written_by
            else "It does not record the avsac-lit version that wrote it (0.7.1 or earlier)"
        )
        why = (
            f"{writer}, and the weights of another version's model load only with that "
            "version. Evaluate, predict with or resume it with the version that wrote it (pip "
            "install avsac-lit==<version>, or the commit its run's metrics.json records), or "
            "train the model again with this one."
        )
    raise CheckpointMismatchError(
        f"Checkpoint {checkpoint} does not fit the model its config builds with avsac-lit "
        f"{version}: its weights differ from the model's, {differ}. {why}"
    )
