"""A published AVSegFormer checkpoint as a checkpoint of this suite:
``python -m avsac_lit.convert +experiment=<s4|ms3|avss> backbone=<pvt_v2_b5|resnet50>
source=FILE output=OUT.ckpt``.

``source`` is a file of the official code (vvvb-github/AVSegFormer): ``model.module.state_dict()``
with keys ``backbone.*``, ``vggish.*``, ``head.*`` and ``audio_proj.*``, also accepted with a
``module.`` prefix (DataParallel) or inside ``{"state_dict": ...}``. Every key is renamed or
dropped (modules the official forward never calls) by the tables of
:mod:`avsac_lit.checkpoints.official`; any other key, a key of ours the file does not fill,
or a shape that differs stops the conversion with an error naming the key and the file. The
output is a checkpoint like one of ``avsac_lit.train``: it carries the composed config (the
experiment with the AVSegFormer setting, ``src/avsac_lit/conf/setting/avsegformer.yaml``), so
``avsac_lit.eval``, ``avsac_lit.predict``, the notebooks and
:func:`avsac_lit.inference.trained.load_trained` take it as they take a trained one.

The official model and ours give the same logits for the same weights and inputs (within 1e-4,
``tests/test_convert.py``); docs/model.md lists how the two are laid out.
"""

from __future__ import annotations

import hashlib
import logging
import sys
from pathlib import Path

import hydra
import lightning as L
from omegaconf import DictConfig, OmegaConf, open_dict

from avsac_lit.checkpoints.official import (
    ConversionError,
    backbone_of,
    classes_of,
    official_to_suite,
    read_official,
    rename,
)
from avsac_lit.checkpoints.versions import suite_version
from avsac_lit.data.metadata import read_class_names
from avsac_lit.inference.trained import quiet
from avsac_lit.run.assemble import CONFIG_PATH, build_module
from avsac_lit.run.record import source_version
from avsac_lit.run.wrapper import refusals_in_one_line
from avsac_lit.storage.atomic import OutputExists, refuse_existing
from avsac_lit.storage.checksums import write_checkpoint

log = logging.getLogger(__name__)

SETTING = "avsegformer"  # src/avsac_lit/conf/setting/avsegformer.yaml: the model and its recipe
BINARY_TASKS = ("s4", "ms3")  # one class; AVSS has label2idx.json's count (71 for AVSBench)


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def avss_class_names(cfg: DictConfig) -> list[str] | None:
    """The AVSS class names from the data root's ``label2idx.json``, when the root is there."""
    path = Path(cfg.data.root) / "label2idx.json"
    return read_class_names(path) if path.is_file() else None


def convert(cfg: DictConfig) -> Path:
    """Convert ``cfg.source`` into the checkpoint ``cfg.output``, a new file (an existing one is
    refused: :class:`~avsac_lit.storage.atomic.OutputExists`); returns its path."""
    source, output = Path(cfg.source).expanduser(), Path(cfg.output).expanduser()
    refuse_existing(output, named="output=")
    official = read_official(source)
    backbone = backbone_of(official, str(source))
    if backbone != cfg.backbone.name:
        raise ConversionError(
            f"{source} holds a {backbone} backbone but backbone={cfg.backbone.name} was given: "
            f"pass backbone={backbone}."
        )
    task = cfg.data.task
    classes = classes_of(official, str(source))
    if (classes == 1) != (task in BINARY_TASKS):
        raise ConversionError(
            f"{source} predicts {classes} class{'es' if classes > 1 else ''}, which is not a "
            f"{task} model (S4 and MS3: 1, AVSS: 71): give the +experiment= of its task."
        )
    class_names = avss_class_names(cfg) if task == "avss" else None
    if class_names is not None and len(class_names) != classes:
        raise ConversionError(
            f"{source} predicts {classes} classes but {cfg.data.root}/label2idx.json has "
            f"{len(class_names)}."
        )
    with open_dict(cfg):
        cfg.model.num_classes = classes
        # The file's weights replace the encoders' published ones: nothing else to read.
        cfg.weights.visual = cfg.weights.audio = None
        cfg.backbone.pretrained = False
    with quiet("avsac_lit.models"):
        module = build_module(cfg)
    expected = {name: value.shape for name, value in module.net.state_dict().items()}
    module.net.load_state_dict(official_to_suite(official, expected, source=str(source)))
    dropped = sorted(key for key in official if rename(key) is None)
    checkpoint = {
        "state_dict": module.state_dict(),
        "pytorch-lightning_version": L.__version__,
        "epoch": 0,
        "global_step": 0,
        "hparams_name": "kwargs",
        "hyper_parameters": dict(module.hparams),
        "avsac_lit": {
            "version": suite_version(),
            "config": OmegaConf.to_container(cfg, resolve=True),
            "class_names": class_names,
            "converted_from": {
                "file": str(source.resolve()),
                "sha256": file_digest(source),
                "format": "AVSegFormer (vvvb-github/AVSegFormer) model.module.state_dict()",
                "dropped_keys": len(dropped),
                "converter_commit": source_version(),
            },
        },
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    try:
        write_checkpoint(checkpoint, output, new=True)
    except OutputExists:  # it appeared while converting
        raise OutputExists(output, named="output=") from None
    log.info(
        "Converted %s (%s, %s, classes: %d; %d unused official keys dropped) into %s",
        source, task, backbone, classes, len(dropped), output,
    )  # fmt: skip
    return output


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="convert")
@refusals_in_one_line("avsac_lit.convert")
def run(cfg: DictConfig) -> None:
    if cfg.model.name != "avsegformer":
        raise ConversionError(
            f"The converter reads AVSegFormer checkpoints, but setting= made the model "
            f"{cfg.model.name}. Leave setting= out."
        )
    convert(cfg)


def main() -> None:
    # An experiment brings its own model (AVSAC). The AVSegFormer setting, appended after it,
    # makes the model AVSegFormer with its recipe, as +table does with its rows; appended to the
    # command line, so that model overrides (model.net.*) apply to AVSegFormer's config.
    if not any(arg.lstrip("+~").startswith("setting=") for arg in sys.argv[1:]):
        sys.argv.append(f"+setting={SETTING}")
    run()


if __name__ == "__main__":
    main()
