"""A published AVSegFormer checkpoint as a checkpoint of this suite:
``python -m avsac_lit.convert +experiment=<s4|ms3|avss> backbone=<pvt_v2_b5|resnet50>
source=FILE output=OUT.ckpt``.

``source`` is a file of the official code (vvvb-github/AVSegFormer): ``model.module.state_dict()``
with keys ``backbone.*``, ``vggish.*``, ``head.*`` and ``audio_proj.*``, also accepted with a
``module.`` prefix (DataParallel) or inside ``{"state_dict": ...}``. Every key is renamed by the
table :data:`RENAMES` or dropped by :data:`DROPPED` (modules the official forward never calls);
any other key, a key of ours the file does not fill, or a shape that differs stops the
conversion with an error naming the key and the file. The output is a checkpoint like one of
``avsac_lit.train``: it carries the composed config (the experiment with the AVSegFormer setting,
``src/avsac_lit/conf/setting/avsegformer.yaml``), so ``avsac_lit.eval``, ``avsac_lit.predict``, the
notebooks and :func:`avsac_lit.checkpoint.load_trained` take it as they take a trained one.

The official model and ours give the same logits for the same weights and inputs (within 1e-4,
``tests/test_convert.py``); docs/model.md lists how the two are laid out.
"""

from __future__ import annotations

import hashlib
import logging
import re
import sys
from collections.abc import Mapping
from pathlib import Path

import hydra
import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import Tensor

import avsac_lit
from avsac_lit.atomic import OutputExists, refuse_existing
from avsac_lit.build import CONFIG_PATH, build_module
from avsac_lit.checkpoint import quiet
from avsac_lit.cli import refusals_in_one_line
from avsac_lit.data.avsbench import read_class_names
from avsac_lit.integrity import write_checkpoint
from avsac_lit.models.weights import load_checkpoint_file
from avsac_lit.run_record import source_version

log = logging.getLogger(__name__)

SETTING = "avsegformer"  # src/avsac_lit/conf/setting/avsegformer.yaml: the model and its recipe
BINARY_TASKS = ("s4", "ms3")  # one class; AVSS has label2idx.json's count (71 for AVSBench)

# Official key (regular expression, matched from the start; the first that matches applies) ->
# our key under the LightningModule's ``net``. Official modules: model/AVSegFormer.py,
# model/head/AVSegHead.py, model/utils/*.py, model/backbone/{pvt,resnet}.py, model/vggish/.
_PVT_STAGES = range(1, 5)
RENAMES: tuple[tuple[str, str], ...] = (
    # PVT-v2-b5 onto timm's names (the renames of timm's pvt_v2.checkpoint_filter_fn).
    (r"backbone\.patch_embed1\.", "visual.model.patch_embed."),
    *((rf"backbone\.patch_embed{s}\.", f"visual.model.stages.{s - 1}.downsample.")
      for s in _PVT_STAGES if s > 1),
    *((rf"backbone\.block{s}\.(\d+)\.mlp\.dwconv\.dwconv\.",
       rf"visual.model.stages.{s - 1}.blocks.\1.mlp.dwconv.") for s in _PVT_STAGES),
    *((rf"backbone\.block{s}\.", f"visual.model.stages.{s - 1}.blocks.") for s in _PVT_STAGES),
    *((rf"backbone\.norm{s}\.", f"visual.model.stages.{s - 1}.norm.") for s in _PVT_STAGES),
    # ResNet-50 (B2_ResNet): branch 1 is the network; its stem and layer1-2 keep their names.
    (r"backbone\.layer3_1\.", "visual.model.layer3."),
    (r"backbone\.layer4_1\.", "visual.model.layer4."),
    (r"backbone\.(conv1|bn1|layer1|layer2)\.", r"visual.model.\1."),
    # VGGish and the projection after it.
    (r"vggish\.", "audio.vggish."),
    (r"audio_proj\.", "audio.proj."),
    # Head: projections, positions, queries.
    (r"head\.in_proj\.(\d)\.", r"input_proj.projections.\1."),
    (r"head\.level_embed$", "tokens.level_embed"),
    (r"head\.learnable_query\.", "learnable_queries."),
    (r"head\.query_generator\.query\.", "query_generator.queries."),
    (r"head\.query_generator\.layers\.(\d+)\.norm1\.", r"query_generator.layers.\1.norms.0."),
    (r"head\.query_generator\.layers\.(\d+)\.norm2\.", r"query_generator.layers.\1.norms.1."),
    (r"head\.query_generator\.layers\.(\d+)\.norm3\.", r"query_generator.layers.\1.norms.2."),
    (r"head\.query_generator\.layers\.(\d+)\.(self_attn|cross_attn|ffn)\.",
     r"query_generator.layers.\1.\2."),
    # Deformable encoder: attention, norm, FFN.
    (r"head\.transformer\.encoder\.layers\.(\d+)\.self_attn\.", r"encoder.\1.self_attn."),
    (r"head\.transformer\.encoder\.layers\.(\d+)\.norm1\.", r"encoder.\1.norm."),
    (r"head\.transformer\.encoder\.layers\.(\d+)\.linear1\.", r"encoder.\1.ffn.net.0."),
    (r"head\.transformer\.encoder\.layers\.(\d+)\.linear2\.", r"encoder.\1.ffn.net.3."),
    (r"head\.transformer\.encoder\.layers\.(\d+)\.norm2\.", r"encoder.\1.ffn.norm."),
    # Query decoder.
    (r"head\.transformer\.decoder\.layers\.(\d+)\.(self_attn|cross_attn)\.", r"decoder.\1.\2."),
    (r"head\.transformer\.decoder\.layers\.(\d+)\.norm1\.", r"decoder.\1.norms.0."),
    (r"head\.transformer\.decoder\.layers\.(\d+)\.norm2\.", r"decoder.\1.norms.1."),
    (r"head\.transformer\.decoder\.layers\.(\d+)\.linear1\.", r"decoder.\1.ffn.net.0."),
    (r"head\.transformer\.decoder\.layers\.(\d+)\.linear2\.", r"decoder.\1.ffn.net.3."),
    (r"head\.transformer\.decoder\.layers\.(\d+)\.norm3\.", r"decoder.\1.ffn.norm."),
    # Mask feature, mixer and prediction head.
    (r"head\.lateral_conv\.", "mask_feature.lateral."),
    (r"head\.out_conv\.", "mask_feature.out_conv."),
    (r"head\.fusion_block\.q_proj\.", "mixer.query."),
    (r"head\.fusion_block\.kv_proj\.", "mixer.key_value."),
    (r"head\.fusion_block\.proj\.", "mixer.proj."),
    (r"head\.mlp\.layers\.0\.", "head.mlp.0."),
    (r"head\.mlp\.layers\.1\.", "head.mlp.2."),
    (r"head\.mlp\.layers\.2\.", "head.mlp.4."),
    (r"head\.fc\.", "head.to_mask."),
)  # fmt: skip

# Official keys left out on purpose (pattern -> why).
DROPPED: dict[str, str] = {
    r"head\.fpn\.": "SimpleFPN, built by AVSegHead but never called in its forward",
    r"head\.attn_fc\.": "a second mask head, built by AVSegHead but never called",
    r"backbone\.layer3_2\.": "B2_ResNet's second branch, never called (forward uses branch 1)",
    r"backbone\.layer4_2\.": "B2_ResNet's second branch, never called (forward uses branch 1)",
}

# A key that only one backbone layout has, to tell which one a file holds.
BACKBONE_MARKERS = {"pvt_v2_b5": "backbone.block1.", "resnet50": "backbone.layer1."}


class ConversionError(ValueError):
    """A source file that does not fit the model; the message names the keys and the file."""


def rename(key: str) -> str | None:
    """Our key (under ``net``) for an official key; ``None`` for a dropped one; the key itself,
    unchanged, when no rule matches (it is then reported as unmapped)."""
    if any(re.match(pattern, key) for pattern in DROPPED):
        return None
    for pattern, replacement in RENAMES:
        match = re.match(pattern, key)
        if match:
            return match.expand(replacement) + key[match.end() :]
    return key


def official_name(ours: str) -> str | None:
    """The official key that :func:`rename` takes to ``ours`` (for messages about keys a file
    lacks), or ``None``. Inverts the table: each replacement's group references become
    wildcards, and what they match fills the pattern's groups in order."""
    for pattern, replacement in RENAMES:
        parts = re.split(r"\\(\d)", replacement)  # literal, group number, literal, ...
        wildcard = "".join(
            re.escape(part) if i % 2 == 0 else f"(?P<g{part}>[^.]+)" for i, part in enumerate(parts)
        )
        match = re.match(wildcard, ours)
        if not match:
            continue
        literals = re.split(r"\([^)]*\)", pattern.removesuffix("$"))
        groups = [match.group(f"g{n}") for n in sorted(parts[1::2])] + [""]
        filled = "".join(text + group for text, group in zip(literals, groups, strict=True))
        candidate = filled.replace("\\.", ".") + ours[match.end() :]
        if rename(candidate) == ours:
            return candidate
    return None


def read_official(path: str | Path) -> dict[str, Tensor]:
    """The state dict of a published file, without a DataParallel ``module.`` prefix."""
    state_dict = load_checkpoint_file(path)
    if state_dict and all(key.startswith("module.") for key in state_dict):
        state_dict = {key.removeprefix("module."): value for key, value in state_dict.items()}
    return state_dict


def backbone_of(state_dict: Mapping[str, Tensor], source: str) -> str:
    """``pvt_v2_b5`` or ``resnet50``, from the keys of an official state dict."""
    found = [name for name, marker in BACKBONE_MARKERS.items()
             if any(key.startswith(marker) for key in state_dict)]  # fmt: skip
    if len(found) != 1:
        raise ConversionError(
            f"{source} is not an AVSegFormer checkpoint of the official code: expected keys "
            f"backbone.*, vggish.*, head.* and audio_proj.*, with a PVT-v2-b5 "
            f"(backbone.block1.*) or ResNet-50 (backbone.layer1.*) backbone; its first keys are "
            f"{', '.join(list(state_dict)[:5]) or 'none'}."
        )
    return found[0]


def classes_of(state_dict: Mapping[str, Tensor], source: str) -> int:
    """The classes the official mask head predicts (``head.fc.4.weight``: [classes, 32, 1, 1])."""
    weight = state_dict.get("head.fc.4.weight")
    if weight is None or weight.dim() != 4:
        raise ConversionError(
            f"{source} has no head.fc.4.weight [classes, 32, 1, 1], the official model's last "
            "layer: not an AVSegFormer checkpoint of the official code."
        )
    return int(weight.shape[0])


def official_to_suite(
    state_dict: Mapping[str, Tensor], expected: Mapping[str, torch.Size], *, source: str
) -> dict[str, Tensor]:
    """Rename an official state dict onto our net's keys (``expected``: name -> shape), checking
    that every key is mapped or dropped, every one of ours filled, and every shape equal."""
    mapped: dict[str, Tensor] = {}
    origin: dict[str, str] = {}
    unmapped, duplicated = [], []
    for key, value in state_dict.items():
        ours = rename(key)
        if ours is None:
            continue
        if ours not in expected:
            unmapped.append(key if ours == key else f"{key} (as {ours})")
        elif ours in mapped:
            duplicated.append(f"{origin[ours]} and {key} both give {ours}")
        else:
            mapped[ours], origin[ours] = value, key
    missing = [
        f"{key} (official {official_name(key) or 'key unknown'})"
        for key in expected
        if key not in mapped
    ]
    wrong_shape = [
        f"{origin[key]}: file {list(value.shape)}, model {list(expected[key])} (as {key})"
        for key, value in mapped.items()
        if tuple(value.shape) != tuple(expected[key])
    ]
    problems = {
        "official keys with no counterpart in the model": unmapped,
        "official keys that collide": duplicated,
        "model keys the file does not fill": missing,
        "shape mismatches": wrong_shape,
    }
    if any(problems.values()):
        lines = [f"{source} does not convert to the model:"]
        for title, keys in problems.items():
            if keys:
                shown = "\n".join(f"    {k}" for k in keys[:12])
                more = f"\n    ... ({len(keys)} in all)" if len(keys) > 12 else ""
                lines.append(f"  {title}:\n{shown}{more}")
        lines.append(
            "Check that the file is a published AVSegFormer checkpoint and that +experiment= and "
            "backbone= name its task and backbone."
        )
        raise ConversionError("\n".join(lines))
    return mapped


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
    refused: :class:`~avsac_lit.atomic.OutputExists`); returns its path."""
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
            "version": avsac_lit.__version__,
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
