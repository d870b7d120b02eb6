"""SynthAVS clips, drawn and heard: a task that can only be solved by listening.

* Ten object categories, each with its own look (shape and colour) and its own sound (a harmonic
  tone at its own pitch, with its own harmonic recipe and amplitude-modulation rate).
* Every frame shows 2-4 objects of different categories moving over a textured background. Only
  the sounding ones are in the ground truth, so a predictor that segments everything it sees is
  wrong wherever a visible object is silent, which is most frames.
* S4 (and AVSS v1s): one sounding category per clip. MS3 (and AVSS v1m, v2): 1-3 sounding objects,
  and which ones sound changes from second to second; frame k shows second k of the audio.
* About 10% of seconds have only an off-screen sound (a category not in the picture) or silence,
  so their ground truth is empty.

:func:`make_clip` draws one clip in memory (:class:`SynthClip`: frames, which category owns each
pixel, what sounds when, the audio) as a function of (seed, task, index), for the generator
(:mod:`avsac_lit.data.synthetic`, which writes clips in a task's layout) and for ``pretrain``.
``docs/synthetic.md`` has the details.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image

from avsac_lit.data.audio import SAMPLE_RATE
from avsac_lit.data.metadata import TASKS

EMPTY_SECOND_PROBABILITY = 0.1  # of a second with only an off-screen sound, or silence


@dataclass(frozen=True)
class Category:
    """One kind of object: how it looks and how it sounds."""

    name: str
    shape: str
    color: tuple[int, int, int]
    pitch_hz: float
    modulation_hz: float
    harmonics: tuple[float, ...]  # amplitude of harmonic 1, 2, 3, ...


# Pitches are about four semitones apart so that their harmonics fall in different mel bands;
# modulation rates are shuffled against pitch so that neither cue alone orders the categories.
CATEGORIES: tuple[Category, ...] = (
    Category("red_disc", "disc", (220, 50, 47), 165.0, 3.0, (1.0, 0.5, 0.33, 0.25)),
    Category("green_square", "square", (60, 170, 60), 220.0, 11.0, (1.0, 0.0, 0.33, 0.0, 0.2)),
    Category("blue_triangle", "triangle", (38, 100, 210), 277.0, 6.0, (1.0, 0.8)),
    Category("yellow_diamond", "diamond", (235, 200, 40), 349.0, 14.0, (1.0,)),
    Category("magenta_ring", "ring", (205, 50, 170), 440.0, 2.0, (1.0, 0.3, 0.6)),
    Category("cyan_cross", "cross", (40, 200, 210), 554.0, 8.0, (1.0, 0.6, 0.0, 0.4)),
    Category("orange_star", "star", (245, 130, 30), 698.0, 4.0, (1.0, 0.25)),
    Category("white_hexagon", "hexagon", (240, 240, 240), 880.0, 12.0, (1.0, 0.0, 0.5)),
    Category("purple_bar", "bar", (130, 70, 200), 1109.0, 5.0, (1.0, 0.7, 0.5)),
    Category("brown_crescent", "crescent", (140, 90, 45), 1397.0, 9.0, (1.0, 0.4)),
)


def _disc(x: np.ndarray, y: np.ndarray, r: float) -> np.ndarray:
    return x**2 + y**2 <= r**2


def _triangle(x: np.ndarray, y: np.ndarray, r: float) -> np.ndarray:
    # Apex up (image y grows downwards); the three half-planes of an equilateral triangle.
    root3 = np.sqrt(3.0)
    return (y <= 0.5 * r) & (root3 * x - y <= r) & (-root3 * x - y <= r)


def _star(x: np.ndarray, y: np.ndarray, r: float) -> np.ndarray:
    angle = np.arctan2(y, x)
    return np.hypot(x, y) <= r * (0.62 + 0.38 * np.cos(5 * angle))


def _hexagon(x: np.ndarray, y: np.ndarray, r: float) -> np.ndarray:
    ax, ay = np.abs(x), np.abs(y)
    return (ay <= 0.866 * r) & (0.866 * ax + 0.5 * ay <= 0.866 * r)


def _crescent(x: np.ndarray, y: np.ndarray, r: float) -> np.ndarray:
    return _disc(x, y, r) & ~_disc(x - 0.45 * r, y + 0.1 * r, 0.8 * r)


SHAPES: dict[str, Callable[[np.ndarray, np.ndarray, float], np.ndarray]] = {
    "disc": _disc,
    "square": lambda x, y, r: np.maximum(np.abs(x), np.abs(y)) <= 0.8 * r,
    "triangle": _triangle,
    "diamond": lambda x, y, r: np.abs(x) + np.abs(y) <= r,
    "ring": lambda x, y, r: (x**2 + y**2 <= r**2) & (x**2 + y**2 >= (0.55 * r) ** 2),
    "cross": lambda x, y, r: (
        ((np.abs(x) <= 0.3 * r) & (np.abs(y) <= r)) | ((np.abs(y) <= 0.3 * r) & (np.abs(x) <= r))
    ),
    "star": _star,
    "hexagon": _hexagon,
    "bar": lambda x, y, r: (np.abs(x) <= r) & (np.abs(y) <= 0.35 * r),
    "crescent": _crescent,
}


@dataclass
class SceneObject:
    category: int
    radius: float
    position: np.ndarray  # (x, y) at frame 0, pixels
    velocity: np.ndarray  # pixels per frame


@dataclass
class SynthClip:
    """One generated clip in memory, before it is written in a task's layout."""

    name: str
    split: str
    frames: np.ndarray  # uint8 [T, H, W, 3]
    owner: np.ndarray  # int [T, H, W]: category index of the topmost object, -1 for background
    sounding: list[list[int]]  # per second: categories heard (visible or not)
    visible: list[int]
    audio: np.ndarray  # float [T * SAMPLE_RATE]
    label: str = ""  # AVSS: v1s, v1m or v2

    @property
    def num_frames(self) -> int:
        return len(self.frames)

    def sounding_visible(self, k: int) -> list[int]:
        return [c for c in self.sounding[k] if c in self.visible]

    def class_ids(self, k: int, *, sounding_only: bool) -> np.ndarray:
        """Per-pixel class ids (category + 1, 0 = background) of frame k [H, W]."""
        keep = self.sounding_visible(k) if sounding_only else self.visible
        owner = self.owner[k]
        return np.where(np.isin(owner, keep), owner + 1, 0)


def _sounding_schedule(
    rng: np.random.Generator, visible: list[int], seconds: int, multi_source: bool
) -> list[list[int]]:
    off_screen = [c for c in range(len(CATEGORIES)) if c not in visible]
    single = [visible[0]]
    schedule: list[list[int]] = []
    previous: list[int] = []
    for _ in range(seconds):
        if rng.random() < EMPTY_SECOND_PROBABILITY:
            # Only an off-screen sound, or silence: the ground truth of this frame is empty.
            current = [int(rng.choice(off_screen))] if rng.random() < 0.5 else []
        elif not multi_source:
            current = single
        else:
            # At most all but one visible object sounds, so a silent object is always on screen.
            most = min(3, len(visible) - 1)
            for _attempt in range(10):
                count = int(rng.integers(1, most + 1))
                current = sorted(int(c) for c in rng.choice(visible, size=count, replace=False))
                if current != previous:
                    break
        schedule.append(current)
        previous = current
    return schedule


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A muted, textured background: oriented gratings plus smooth noise, float [H, W, 3]."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    base = rng.uniform(70, 150, size=3)
    texture = np.zeros((height, width))
    for _ in range(3):
        angle, wavelength = rng.uniform(0, np.pi), rng.uniform(8, 40)
        phase = rng.uniform(0, 2 * np.pi)
        texture += np.sin(2 * np.pi * (x * np.cos(angle) + y * np.sin(angle)) / wavelength + phase)
    coarse = rng.normal(size=(height // 16 + 2, width // 16 + 2))
    smooth = np.asarray(
        Image.fromarray(coarse.astype(np.float32)).resize((width, height), Image.BILINEAR)
    )
    tint = rng.uniform(-1, 1, size=3)
    return base + 9 * texture[..., None] + 14 * smooth[..., None] * (0.6 + 0.4 * tint)


def _place_objects(
    rng: np.random.Generator, visible: list[int], height: int, width: int, num_frames: int
) -> list[SceneObject]:
    objects: list[SceneObject] = []
    for category in visible:
        radius = rng.uniform(0.09, 0.14) * height
        for _attempt in range(100):
            position = np.array(
                [rng.uniform(radius, width - radius), rng.uniform(radius, height - radius)]
            )
            if all(np.hypot(*(position - o.position)) >= radius + o.radius for o in objects):
                break
        # Slow enough that an object crosses at most about half the frame over the clip.
        speed = rng.uniform(0.1, 0.5) * height / num_frames
        direction = rng.uniform(0, 2 * np.pi)
        velocity = speed * np.array([np.cos(direction), np.sin(direction)])
        objects.append(SceneObject(category, radius, position, velocity))
    return objects


def _reflect(value: float, low: float, high: float) -> float:
    span = high - low
    folded = (value - low) % (2 * span)
    return low + (folded if folded <= span else 2 * span - folded)


def _render(
    rng: np.random.Generator, objects: list[SceneObject], height: int, width: int, num_frames: int
) -> tuple[np.ndarray, np.ndarray]:
    background = _background(rng, height, width)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    colors = [np.array(CATEGORIES[o.category].color, dtype=np.float64) for o in objects]
    colors = [np.clip(c + rng.uniform(-12, 12, size=3), 0, 255) for c in colors]
    frames = np.empty((num_frames, height, width, 3), dtype=np.uint8)
    owner = np.full((num_frames, height, width), -1, dtype=np.int64)
    for k in range(num_frames):
        image = background.copy()
        for obj, color in zip(objects, colors, strict=True):  # list order is depth order
            cx = _reflect(obj.position[0] + k * obj.velocity[0], obj.radius, width - obj.radius)
            cy = _reflect(obj.position[1] + k * obj.velocity[1], obj.radius, height - obj.radius)
            inside = SHAPES[CATEGORIES[obj.category].shape](x - cx, y - cy, obj.radius)
            # A soft light from the top-left, so objects are not flat stickers.
            shade = 1.0 + 0.12 * ((cx - x) + (cy - y)) / obj.radius
            image[inside] = np.clip(color[None, :] * shade[inside][:, None], 0, 255)
            owner[k][inside] = obj.category
        noise = rng.normal(0, 3, size=image.shape)
        frames[k] = np.clip(image + noise, 0, 255).round().astype(np.uint8)
    return frames, owner


def _tone(rng: np.random.Generator, category: Category, samples: int) -> np.ndarray:
    t = np.arange(samples) / SAMPLE_RATE
    pitch = category.pitch_hz * rng.uniform(0.98, 1.02)
    wave = np.zeros(samples)
    for order, amplitude in enumerate(category.harmonics, start=1):
        if amplitude:
            wave += amplitude * np.sin(2 * np.pi * order * pitch * t + rng.uniform(0, 2 * np.pi))
    modulation = 0.6 + 0.4 * np.sin(2 * np.pi * category.modulation_hz * t + rng.uniform(0, 6.3))
    return wave * modulation / np.abs(wave).max()


def _envelope(active_seconds: list[bool]) -> np.ndarray:
    """1 during the seconds a source sounds, with 20 ms linear ramps to avoid clicks."""
    gate = np.repeat(np.asarray(active_seconds, dtype=np.float64), SAMPLE_RATE)
    ramp = int(0.02 * SAMPLE_RATE)
    # A centred moving average of the gate, via a cumulative sum (linear in the signal length).
    padded = np.concatenate([np.zeros(ramp // 2 + 1), gate, np.zeros(ramp // 2)])
    running = np.cumsum(padded)
    return (running[ramp:] - running[:-ramp])[: len(gate)] / ramp


def _mix(rng: np.random.Generator, schedule: list[list[int]]) -> np.ndarray:
    seconds = len(schedule)
    samples = seconds * SAMPLE_RATE
    audio = rng.normal(0, 0.003, size=samples)
    for category in sorted({c for second in schedule for c in second}):
        active = [category in second for second in schedule]
        gain = rng.uniform(0.5, 1.0)
        audio += gain * _tone(rng, CATEGORIES[category], samples) * _envelope(active)
    return audio * rng.uniform(0.5, 0.9) / max(np.abs(audio).max(), 1e-9)


def make_clip(
    seed: int, task: str, index: int, split: str, height: int, label: str = ""
) -> SynthClip:
    """Generate clip ``index`` of ``task``; the same arguments always give the same clip."""
    rng = np.random.default_rng([seed, TASKS.index(task), index])
    num_frames = 10 if label == "v2" else 5
    width = round(height * 4 / 3) if task == "avss" else height
    multi_source = task == "ms3" or label in ("v1m", "v2")
    count = int(rng.integers(2, 5))
    visible = [int(c) for c in rng.choice(len(CATEGORIES), size=count, replace=False)]
    schedule = _sounding_schedule(rng, visible, num_frames, multi_source)
    objects = _place_objects(rng, visible, height, width, num_frames)
    rng.shuffle(objects)  # depth order independent of which object sounds
    frames, owner = _render(rng, objects, height, width, num_frames)
    return SynthClip(
        name=f"synth{index:05d}",
        split=split,
        frames=frames,
        owner=owner,
        sounding=schedule,
        visible=visible,
        audio=_mix(rng, schedule),
        label=label,
    )
