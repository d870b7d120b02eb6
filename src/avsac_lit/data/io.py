"""Reading the files of an AVSBench tree: frames, masks, colour labels and log-mel pickles.

Every reader names the file it failed on, because a dataset has tens of thousands of them and a
bare ``PIL.UnidentifiedImageError`` does not say which one is broken. The log-mel pickles are
read by an unpickler that builds tensors and arrays and nothing else, so a tampered one cannot
run code (:func:`load_log_mel_pickle`).
"""

from __future__ import annotations

import codecs
import collections
import io
import pickle
from pathlib import Path

import numpy as np
import torch
import torch._utils
from PIL import Image, UnidentifiedImageError
from torchvision.transforms.v2 import functional as TF

from avsac_lit.storage.atomic import atomic_path

try:  # NumPy 2; NumPy 1 has them in numpy.core
    from numpy._core.multiarray import _reconstruct
    from numpy._core.numeric import _frombuffer
except ImportError:
    from numpy.core.multiarray import _reconstruct
    from numpy.core.numeric import _frombuffer

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) of an image file, read from its header."""
    with Image.open(path) as image:
        return image.size


def open_image(path: Path, mode: str | None) -> Image.Image:
    """Open ``path`` and convert it to the PIL ``mode`` (None: keep the stored one), with errors
    that name the file. A 16-bit greyscale image converted to "RGB" or "L" keeps its brightness
    (see :func:`eight_bit`): PIL's own conversion clips it, which turns most of it white."""
    if not path.is_file():
        raise FileNotFoundError(f"Missing file: {path}")
    try:
        with Image.open(path) as image:
            if mode is None:
                image.load()
                return image.copy()
            if mode in ("RGB", "L"):
                return eight_bit(image, path).convert(mode)
            return image.convert(mode)
    except (UnidentifiedImageError, OSError) as error:
        raise ValueError(
            f"Cannot read image {path}: {error}. Expected a PNG or JPEG file."
        ) from error


# PIL's modes for one-channel integer images; a 16-bit greyscale PNG opens as "I;16" (older
# PIL: "I"), a big-endian TIFF as "I;16B".
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def eight_bit(image: Image.Image, path: Path | None = None) -> Image.Image:
    """A 16-bit greyscale image as 8-bit "L" at the same brightness, other images unchanged.

    Values are scaled by 255 / 65535 and rounded (``round(v / 257)``), so the 16-bit copy of an
    8-bit frame (``v * 257``) reads back exactly as that frame. Mode "I" is read as 16-bit too:
    that is what PNG stores in it, and what older PIL opens a 16-bit PNG as.
    """
    if image.mode not in SIXTEEN_BIT_MODES:
        return image
    values = np.asarray(image).astype(np.int64)
    low, high = (int(values.min()), int(values.max())) if values.size else (0, 0)
    if low < 0 or high > 65535:
        raise ValueError(
            f"Image {path or '(in memory)'} is a one-channel {image.mode} image with values "
            f"from {low} to {high}, expected 16-bit values (0 to 65535) or an 8-bit image. "
            "Save the frame as an 8-bit RGB PNG or JPEG (scale its values to 0-255 first)."
        )
    return Image.fromarray(((values * 255 + 32767) // 65535).astype(np.uint8))


def resize_or_crop(image: Image.Image, size: int, *, crop: bool, is_mask: bool) -> Image.Image:
    """Resize to ``size`` x ``size``: plainly, or short side to ``size`` then a centre crop.

    Masks use nearest-neighbour so that labels are never blended; frames use bilinear, as PIL does
    in torchvision's ``Resize`` that the reference code calls.
    """
    resample = Image.NEAREST if is_mask else Image.BILINEAR
    if not crop:
        return image.resize((size, size), resample)
    width, height = image.size
    scale = size / min(width, height)
    new_width, new_height = max(size, int(width * scale)), max(size, int(height * scale))
    image = image.resize((new_width, new_height), resample)
    left = round((new_width - size) / 2)
    top = round((new_height - size) / 2)
    return image.crop((left, top, left + size, top + size))


def load_frame(path: Path, size: int, *, crop: bool = False) -> torch.Tensor:
    """An RGB frame as an ImageNet-normalised float tensor [3, size, size]."""
    return normalised_frame(resize_or_crop(open_image(path, "RGB"), size, crop=crop, is_mask=False))


def normalised_frame(image: Image.Image) -> torch.Tensor:
    """An RGB image as an ImageNet-normalised float tensor [3, H, W]; a 16-bit greyscale one is
    read at its brightness (:func:`eight_bit`), not clipped to white as ``convert`` would."""
    rgb = eight_bit(image).convert("RGB")
    tensor = TF.to_dtype(TF.pil_to_tensor(rgb), torch.float32, scale=True)
    return TF.normalize(tensor, IMAGENET_MEAN, IMAGENET_STD)


def load_binary_mask(
    path: Path, size: int, frame_size: tuple[int, int] | None = None
) -> torch.Tensor:
    """A sounding-object mask as float 0/1 [size, size].

    Any non-zero pixel is foreground. The reference code relies on masks stored as exactly 0/255
    (``convert('1')`` or ``/255``); ``> 0`` gives the same result on those and does not silently
    produce fractional targets on masks saved with other values. ``frame_size`` (width, height):
    the size of the mask's frame, which the mask must have. A 16-bit mask is checked on its
    stored values (0/65535 and 0/1 are binary, as 0/255 is): scaled to 8 bits, 0/1 would become
    all background; clipped, grey edges above 255 would pass as foreground. A mask with
    transparency is read only where its alpha agrees with its colour (:func:`check_transparency`).
    """
    image = open_image(path, None)
    if frame_size is not None and image.size != tuple(frame_size):
        raise ValueError(
            f"Mask {path} is {image.size[0]} x {image.size[1]} pixels but its frame is "
            f"{frame_size[0]} x {frame_size[1]}: resized to the same square, it would be "
            "stretched onto the frame and mark the wrong pixels. Make the mask from its frame "
            "(the same size), or resize frame and mask alike."
        )
    values = np.asarray(image if image.mode in SIXTEEN_BIT_MODES else image.convert("L"))
    check_binary(values, path)
    check_transparency(image, values > 0, path, MASK_TRANSPARENCY)
    image = Image.fromarray(np.where(values > 0, 255, 0).astype(np.uint8))
    image = resize_or_crop(image, size, crop=False, is_mask=True)
    return torch.from_numpy(np.asarray(image) > 0).float()


def check_binary(values: np.ndarray, path: Path) -> None:
    """A mask must hold background 0 and at most one foreground value (255 as AVSBench stores
    it, or 1): the reference reads grey values as fractional targets (MS3) or dithers them (S4),
    and ``> 0`` would make every faint pixel an object."""
    found = np.unique(values)
    if len(found) > 2 or (len(found) == 2 and found[0] != 0):
        shown = ", ".join(map(str, found[:6])) + (", ..." if len(found) > 6 else "")
        how = (
            "image.convert('L').point(lambda v: 255 if v >= 128 else 0)"
            if values.dtype == np.uint8
            # PIL's convert('L') clips 16-bit values at 255 instead of scaling them.
            else "Image.fromarray(np.where(np.asarray(image) >= 32768, 255, 0).astype('uint8'))"
        )
        raise ValueError(
            f"Mask {path} is not binary: it holds {len(found)} grey levels ({shown}); expected "
            "0 for background and one value (255, as AVSBench stores masks, 1, or 65535 in a "
            "16-bit mask) for the "
            f"sounding objects. Binarise it, e.g. with PIL: {how}."
        )


# Modes that carry an alpha channel; any other mode may have transparency through its palette or
# a transparent colour key (``info["transparency"]``).
ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")

MASK_TRANSPARENCY = (
    "Mask",
    "its colour marks {coloured:.1%} of the pixels as sounding object",
    "AVSBench's masks are opaque; the reference code reads the colour alone, an image viewer "
    "shows the alpha",
    "Flatten it into an opaque greyscale 0/255 mask, with PIL (p: the file): from its alpha, "
    "Image.open(p).convert('RGBA').getchannel('A').point(lambda v: 255 if v >= 128 else "
    "0).save(p); or from its colour, Image.open(p).convert('L').save(p)",
)
LABEL_TRANSPARENCY = (
    "Label",
    "its colours mark {coloured:.1%} of the pixels as a class other than background",
    "AVSBench's labels are opaque; the reference code reads the colour alone, an image viewer "
    "shows the alpha",
    "Flatten it into an opaque RGB label, with PIL (p: the file): keeping its colours, "
    "Image.open(p).convert('RGB').save(p); or, if its transparent pixels are background, "
    "a = np.array(Image.open(p).convert('RGBA')); a[a[..., 3] < 128] = 0; "
    "Image.fromarray(a[..., :3]).save(p)",
)


def alpha_channel(image: Image.Image) -> np.ndarray | None:
    """The alpha [H, W] (uint8) of an image with transparency (an alpha channel, a palette with
    transparent entries, a transparent colour key), or None: none, or fully opaque."""
    if image.mode not in ALPHA_MODES and "transparency" not in image.info:
        return None
    alpha = np.asarray(image.convert("RGBA"))[..., 3]
    return None if alpha.min() == 255 else alpha


def check_transparency(
    image: Image.Image, coloured: np.ndarray, path: Path, wording: tuple[str, str, str, str]
) -> None:
    """A mask or label with transparency is read by its colour only where its alpha says the
    same: opaque exactly on the ``coloured`` pixels [H, W] (the objects, or the classes other
    than background) and transparent elsewhere, as a cut-out saved over a transparent
    background is. Otherwise colour and alpha disagree (an object drawn in the alpha over a
    uniform colour would read as all foreground, or none), and neither AVSBench's format nor the
    reference says which one holds the objects: refused, naming the file and both ways to
    flatten it (``wording``: :data:`MASK_TRANSPARENCY` or :data:`LABEL_TRANSPARENCY`)."""
    alpha = alpha_channel(image)
    if alpha is None:
        return
    if np.isin(alpha, (0, 255)).all() and np.array_equal(alpha == 255, coloured):
        return
    kind, colour, source, flatten = wording
    how = (
        "an alpha channel"
        if image.mode in ALPHA_MODES
        else "a palette with transparent entries"
        if image.mode == "P"
        else "a transparent colour"
    )
    raise ValueError(
        f"{kind} {path} has transparency ({image.mode} with {how}): "
        f"{np.mean(alpha == 255):.1%} of its pixels are opaque, "
        f"{np.mean((alpha > 0) & (alpha < 255)):.1%} partly transparent, while "
        f"{colour.format(coloured=np.mean(coloured))}, so it is not clear whether the colour "
        f"or the alpha holds the objects ({source}). {flatten}."
    )


def voc_palette(num_classes: int) -> np.ndarray:
    """The PASCAL-VOC bit-interleaved colour map used by AVSBench-semantic, uint8 [num_classes, 3].

    Class 0 is black (background), 1 is (128, 0, 0), 2 is (0, 128, 0), 3 is (128, 128, 0), ...
    """
    palette = np.zeros((num_classes, 3), dtype=np.uint8)
    for index in range(num_classes):
        code, red, green, blue = index, 0, 0, 0
        for bit in range(8):
            red |= ((code >> 0) & 1) << (7 - bit)
            green |= ((code >> 1) & 1) << (7 - bit)
            blue |= ((code >> 2) & 1) << (7 - bit)
            code >>= 3
        palette[index] = (red, green, blue)
    return palette


def rgb_to_class_ids(rgb: np.ndarray, palette: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Decode a colour label [H, W, 3] into class ids [H, W] by exact palette match; also
    returns [H, W] bool, True where the colour is in the palette.

    Colours outside the palette decode to background (0), as in the reference decoder, which starts
    from zeros and only writes the pixels that match a palette colour.
    """
    keys = (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2]
    palette_keys = (palette[:, 0].astype(np.int64) << 16) | (palette[:, 1].astype(np.int64) << 8)
    palette_keys |= palette[:, 2]
    order = np.argsort(palette_keys)
    sorted_keys = palette_keys[order]
    position = np.clip(np.searchsorted(sorted_keys, keys), 0, len(sorted_keys) - 1)
    found = sorted_keys[position] == keys
    return np.where(found, order[position], 0), found


def load_color_label(path: Path, size: int, palette: np.ndarray, *, crop: bool) -> torch.Tensor:
    """An AVSS colour label (``labels_rgb/{i}.png``) as long class ids [size, size].

    Every pixel must have a palette colour. The reference decodes any other colour as
    background, so a label saved as class ids (a one-channel index image, as ``labels_semantic/``
    holds) or in another palette would silently become an all-background frame. A label with
    transparency is read only where its alpha agrees with its colours (:func:`check_transparency`).
    """
    if not path.is_file():
        raise FileNotFoundError(f"Missing file: {path}")
    with Image.open(path) as image:
        mode = image.mode
    if mode in SIXTEEN_BIT_MODES:
        # Scaled to 8 bits, small class ids would all read as 0: a silent all-background label.
        raise ValueError(
            f"Label {path}: it is a 16-bit one-channel ({mode}) image, probably class ids (like "
            "labels_semantic/), not a colour label. Colour each class id with the palette "
            "(class c -> voc_palette(71)[c], in avsac_lit.data.io) and save it as 8-bit RGB."
        )
    image = open_image(path, None)
    rgb = np.asarray(image.convert("RGB"))
    class_ids, in_palette = rgb_to_class_ids(rgb, palette)
    if not in_palette.all():
        outside = rgb[~in_palette]
        colours = ", ".join(str(tuple(int(v) for v in c)) for c in np.unique(outside, axis=0)[:4])
        hint = (
            f"It is a one-channel ({mode}) image, probably class ids (like labels_semantic/); "
            "colour each class id with the palette (class c -> voc_palette(71)[c], in "
            "avsac_lit.data.io) and save it as RGB."
            if mode in ("1", "L", "I", "I;16", "F")
            else "Re-export the label with the AVSBench palette (avsac_lit.data.io.voc_palette)."
        )
        raise ValueError(
            f"Label {path}: {len(outside)} of {in_palette.size} pixels have colours outside the "
            f"{len(palette)}-colour AVSBench-semantic palette (e.g. {colours}); they would be "
            f"read as background. {hint}"
        )
    check_transparency(image, class_ids > 0, path, LABEL_TRANSPARENCY)
    image = resize_or_crop(
        Image.fromarray(class_ids.astype(np.uint8)), size, crop=crop, is_mask=True
    )
    return torch.from_numpy(np.asarray(image).astype(np.int64))


class RefusedPickle(pickle.UnpicklingError):
    """A pickle that asks for more than a tensor or an array: ``what`` it asked for, in words."""

    def __init__(self, what: str) -> None:
        super().__init__(what)
        self.what = what


def _storage_from_bytes(data: bytes) -> torch.TypedStorage:
    # torch pickles a tensor's storage as a torch.save file of its own, which torch reads back
    # with weights_only=False, so that file could run code too: read it with torch's restricted
    # reader.
    try:
        return torch.load(io.BytesIO(data), weights_only=True)
    except pickle.UnpicklingError as error:
        raise RefusedPickle(
            "its tensor's storage is a torch file that asks for more than a storage (torch's "
            "weights-only reader refused it)"
        ) from error


# Everything a pickled tensor (AVSBench's files, torch 1.x and 2.x) or NumPy array (NumPy 1 and
# 2, protocols 2 to 5) calls to be rebuilt, and nothing else.
LOG_MEL_PICKLE_GLOBALS = {
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch.storage", "_load_from_bytes"): _storage_from_bytes,
    ("collections", "OrderedDict"): collections.OrderedDict,  # a tensor's (empty) hooks
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy.core.numeric", "_frombuffer"): _frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _frombuffer,
    ("_codecs", "encode"): codecs.encode,  # bytes in protocol 2
}


class LogMelUnpickler(pickle.Unpickler):
    """Unpickles tensors and arrays only: any other function or class a pickle names (``os.system``,
    ``builtins.exec``, any module's) is refused before it is looked up, so nothing runs."""

    def find_class(self, module: str, name: str) -> object:
        try:
            return LOG_MEL_PICKLE_GLOBALS[(module, name)]
        except KeyError:
            raise RefusedPickle(f"it calls {module}.{name}") from None


def load_log_mel_pickle(path: Path, expected_shape: tuple[int, ...]) -> torch.Tensor:
    """An AVSBench ``audio_log_mel/*.pkl``: a pickled torch tensor (or NumPy array), checked
    against its shape.

    Read with :class:`LogMelUnpickler`: a pickle that asks for anything but a tensor's or an
    array's parts is refused, naming the file, without running any of it.
    """
    if not path.is_file():
        raise FileNotFoundError(f"Missing file: {path}")
    expected = (
        f"Expected a pickled torch tensor of shape {list(expected_shape)} as written by AVSBench's "
        "preprocessing"
    )
    try:
        with path.open("rb") as handle:
            value = LogMelUnpickler(handle).load()
    except RefusedPickle as refused:
        raise ValueError(
            f"Log-mel pickle {path} is refused: {refused.what}, which a pickled tensor or array "
            "never does, so loading it could run any code (a tampered or foreign file). It was "
            f"not loaded; nothing in it ran. {expected}. Delete it to have the log-mel computed "
            "from the clip's wav, or replace it with AVSBench's published file."
        ) from None
    except Exception as error:
        raise ValueError(f"Cannot read log-mel pickle {path}: {error}. {expected}.") from error
    tensor = _real_tensor(value)
    if tensor is None:
        held = type(value).__name__ + (f" of {value.dtype}" if hasattr(value, "dtype") else "")
        raise ValueError(
            f"Log-mel pickle {path} holds {held}, not a tensor or array of real numbers. "
            f"{expected}."
        )
    tensor = tensor.float()
    if tuple(tensor.shape) != tuple(expected_shape):
        raise ValueError(
            f"Log-mel pickle {path} has shape {list(tensor.shape)}, expected "
            f"{list(expected_shape)} (frames, 1, 96 VGGish frames, 64 mel bands). Delete it to "
            "have it recomputed from the wav, or regenerate it with AVSBench's preprocessing."
        )
    check_finite_audio(tensor, path)
    return tensor


def _real_tensor(value: object) -> torch.Tensor | None:
    """``value`` as a tensor if it is a tensor or NumPy array of real numbers, else None."""
    if torch.is_tensor(value):
        return None if value.is_complex() else value
    if isinstance(value, np.ndarray) and value.dtype.kind in "biuf":
        return torch.from_numpy(np.array(value, dtype=np.float32))  # native order, writable
    return None


def check_finite_audio(examples: torch.Tensor, path: Path) -> None:
    """A log-mel with NaN or infinity would turn the loss, and then every weight, into NaN."""
    bad = (~torch.isfinite(examples)).sum().item()
    if bad:
        raise ValueError(
            f"Log-mel {path} holds {bad} non-finite value(s) (NaN or infinity) of "
            f"{examples.numel()}. Delete it to have it recomputed from the wav, or regenerate it "
            "with AVSBench's preprocessing; a wav with non-finite samples needs replacing."
        )


def save_log_mel_pickle(path: Path, examples: torch.Tensor) -> None:
    """Write ``examples`` in AVSBench's pickle format (a pickled torch tensor), whole or not at
    all."""
    with atomic_path(path) as partial, partial.open("wb") as handle:
        pickle.dump(examples.contiguous(), handle)
