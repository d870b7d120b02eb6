"""The official AVSegFormer's side of the parity test: the cases, the official state-dict layout
(read from a fixture) and the rule that fills that layout with weights from a seed.

The rule is integer arithmetic only (SplitMix64 over each tensor's element index, keyed by the
CRC-32 of its name), so it gives the same weights on every machine and NumPy or torch version,
and the official code run elsewhere (``tests/fixtures/avsegformer_parity/README.md``) and this
suite fill the same layout with the same numbers.
"""

from __future__ import annotations

import json
import math
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "avsegformer_parity"
SEED = 20240521


@dataclass(frozen=True)
class Case:
    """One parity case: an official config and the input it is run on."""

    name: str
    official_config: str  # under the official repository's config/
    experiment: str  # our +experiment=
    backbone: str  # our backbone=
    size: int  # frames are size x size
    frame_valid: tuple[bool, ...]  # one flag per frame; False = AVSS padding

    @property
    def frames(self) -> int:
        return len(self.frame_valid)


CASES = {
    case.name: case
    for case in (
        Case("s4_pvt", "s4/AVSegFormer_pvt2_s4.py", "s4", "pvt_v2_b5", 64, (True, True)),
        Case("avss_pvt", "avss/AVSegFormer_pvt2_avss.py", "avss", "pvt_v2_b5", 32,
             (True, False)),
        Case("s4_r50", "s4/AVSegFormer_res50_s4.py", "s4", "resnet50", 64, (True, True)),
    )
}  # fmt: skip


# SplitMix64's constants: the increment and the two multipliers of its finaliser.
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
# In place, a block at a time: the whole-array expressions made a temporary of every tensor's
# size per operation, 14x slower on the 160M numbers of a PVT-v2-b5 case (same bits).
_BLOCK = 1 << 16


def uniform(name: str, count: int, seed: int = SEED) -> np.ndarray:
    """``count`` numbers in [-1, 1) that depend only on ``name``, ``seed`` and their index:
    SplitMix64 of ``index + start`` (``start`` from the name's CRC-32 and the seed), its top 53
    bits scaled to [0, 2) and shifted by -1."""
    start = np.uint64(((zlib.crc32(name.encode()) << 32) ^ seed) & (2**64 - 1))
    out = np.empty(count, dtype=np.float64)
    z, shifted = np.empty(_BLOCK, dtype=np.uint64), np.empty(_BLOCK, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for low in range(0, count, _BLOCK):
            n = min(_BLOCK, count - low)
            bits, tmp = z[:n], shifted[:n]
            np.add(np.arange(low, low + n, dtype=np.uint64), start, out=bits)
            bits += _GOLDEN
            for multiplier, shift in ((_MIX1, 30), (_MIX2, 27), (None, 31)):
                np.right_shift(bits, np.uint64(shift), out=tmp)
                bits ^= tmp
                if multiplier is not None:
                    bits *= multiplier
            bits >>= np.uint64(11)
            block = out[low : low + n]
            block[:] = bits
            block *= 2.0**-52
            block -= 1.0
    return out


def weight_for(name: str, shape: tuple[int, ...], seed: int = SEED) -> torch.Tensor:
    """The rule: matrices and kernels uniform with variance 2 / fan-in (He, so the ReLU stacks of
    VGGish and the head keep their scale); 1-D ``weight`` (norm scales) 1 +- 0.1; other vectors
    +- 0.1; BatchNorm running variances in [0.5, 1.5); ``num_batches_tracked`` 0."""
    if name.endswith("num_batches_tracked"):
        return torch.zeros(shape, dtype=torch.long)
    u = uniform(name, math.prod(shape), seed).reshape(shape)
    if name.endswith("running_var"):
        values = 1.0 + 0.5 * u
    elif len(shape) >= 2:
        values = u * math.sqrt(6.0 / math.prod(shape[1:]))
    elif name.endswith("weight"):
        values = 1.0 + 0.1 * u
    else:
        values = 0.1 * u
    return torch.from_numpy(values.astype(np.float32))


def official_layout(case: str) -> list[tuple[str, tuple[int, ...]]]:
    """The official model's ``state_dict()`` keys and shapes for a case, in order."""
    layouts = json.loads((FIXTURES / "official_keys.json").read_text())
    return [(key, tuple(shape)) for key, shape in layouts[case]]


def official_state_dict(
    layout: list[tuple[str, tuple[int, ...]]], seed: int = SEED
) -> dict[str, torch.Tensor]:
    """A state dict in the official layout, filled by :func:`weight_for`."""
    return {key: weight_for(key, shape, seed) for key, shape in layout}
