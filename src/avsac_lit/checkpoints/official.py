"""The published AVSegFormer checkpoints' keys, mapped onto this suite's model.

A file of the official code (vvvb-github/AVSegFormer) holds ``model.module.state_dict()``: keys
``backbone.*``, ``vggish.*``, ``head.*`` and ``audio_proj.*``. Every key is renamed by
:data:`RENAMES` or dropped by :data:`DROPPED` (modules the official forward never calls); any
other key, a key of ours the file does not fill, or a shape that differs is a
:class:`ConversionError` naming the keys and the file. ``python -m avsac_lit.convert`` writes the
result as a checkpoint; ``avsac_lit.eval`` reads :data:`BACKBONE_MARKERS` to advise it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor

from avsac_lit.models.weights import load_checkpoint_file

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
