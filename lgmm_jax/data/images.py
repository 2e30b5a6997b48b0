"""Image files as users have them: finding them, decoding them, and counting the ones that cannot be read.

Every source that reads image files from disk (`folder=` out-of-distribution sets, the labelled
`imagefolder=` / `imagelist=` sources, segmentation folders) and `lgmm_jax.predict` decode through
`read_image`, so a photograph becomes the same pixels wherever it enters:

- the EXIF orientation is applied (`PIL.ImageOps.exif_transpose`: a phone's portrait photo stands up);
- every mode becomes ``L`` (one channel) or ``RGB`` (three) by pillow's ``convert``, as torchvision's
  ``ImageFolder`` loader does: grayscale, palette, RGBA (alpha dropped), CMYK and 16-bit files all decode.

Files are found by extension (`IMAGE_FILE_EXTENSIONS`, torchvision's list plus ``.gif``, any case); names
starting with ``.`` (hidden files and folders, macOS's ``._*`` resource forks) are never read.

A file that cannot be decoded (empty, truncated, not an image despite its extension, missing) raises
`UnreadableImageError`, which names the file and why. Readers that must not stop on one bad file (a
long training run, an evaluation) catch it and record it in an `UnreadableFiles` log: one warning line on
stderr the first time a file is met, and the list for the run's outputs.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_FILE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".ppm", ".pgm", ".tif", ".tiff", ".webp")
GRAYSCALE_MODES = ("L", "1", "I", "I;16", "I;16B", "I;16L", "LA", "F")


class UnreadableImageError(ValueError):
    """An image file that pillow cannot decode; `path` and `reason` say which and why."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


def is_hidden(name: str) -> bool:
    """Hidden files and folders (a leading '.'), never read as data."""
    return name.startswith(".")


def is_image_file(name: str) -> bool:
    """A visible file name with an image extension (`IMAGE_FILE_EXTENSIONS`, any case)."""
    return not is_hidden(name) and name.lower().endswith(IMAGE_FILE_EXTENSIONS)


def image_files(folder: str) -> list[str]:
    """Sorted paths of the image files under ``folder``, recursively, hidden files and folders skipped."""
    paths = []
    for root, folders, names in os.walk(folder):
        folders[:] = [name for name in folders if not is_hidden(name)]
        paths += [os.path.join(root, name) for name in names if is_image_file(name)]
    return sorted(paths)


def channels_of_mode(mode: str) -> int:
    """1 for pillow's grayscale modes, 3 for every other (palette, RGB, RGBA, CMYK, ...)."""
    return 1 if mode in GRAYSCALE_MODES else 3


def file_channels(path: str) -> int | None:
    """The channels `read_image` would give the file by its mode (its header only), None if unreadable."""
    try:
        with Image.open(path) as image:
            return channels_of_mode(image.mode)
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError):
        return None


# The EXIF orientation tag, and its values that turn or mirror the stored picture (1 leaves it as it is).
ORIENTATION_TAG = 0x0112
TURNING_ORIENTATIONS = (2, 3, 4, 5, 6, 7, 8)


def oriented_picture(image: Image.Image, channels: int) -> Image.Image:
    """``image`` with its EXIF orientation applied, in mode L (``channels`` 1) or RGB (3). Neither step copies
    the decoded pixels where it changes nothing (no turning orientation tag; the mode already right), as
    pillow's ``exif_transpose`` and ``convert`` would: two copies of the whole picture per file saved."""
    if image.getexif().get(ORIENTATION_TAG) in TURNING_ORIENTATIONS:
        image = ImageOps.exif_transpose(image)
    mode = "L" if channels == 1 else "RGB"
    return image if image.mode == mode else image.convert(mode)


def _decoded(image: Image.Image, channels: int) -> np.ndarray:
    array = np.asarray(oriented_picture(image, channels), dtype=np.uint8)
    return array[..., None] if array.ndim == 2 else array


@contextlib.contextmanager
def decoding(path: str):
    """A block that reads the file ``path``: whatever goes wrong with the file leaves it as one
    `UnreadableImageError` naming the file and why."""
    try:
        if os.path.getsize(path) == 0:
            raise UnreadableImageError(path, "empty file (0 bytes)")
        yield
    except UnreadableImageError:
        raise
    except FileNotFoundError:
        raise UnreadableImageError(path, "file not found") from None
    except UnidentifiedImageError:
        raise UnreadableImageError(path, "not an image pillow can read") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise UnreadableImageError(path, f"damaged or truncated ({first_line})") from None


def read_image(path: str, channels: int = 3) -> np.ndarray:
    """``path`` decoded with pillow, EXIF orientation applied, as uint8 ``[H, W, channels]`` (1 or 3).

    Raises:
      UnreadableImageError: the file is missing, empty, truncated or not an image pillow reads.
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    with decoding(path), Image.open(path) as image:
        return _decoded(image, channels)


DRAFT_FACTORS = (8, 4, 2)  # the JPEG decoder's scaled inverse DCTs (libjpeg: 1/8, 1/4, 1/2)
# EXIF orientations 5-8 turn the stored picture by 90 degrees: height and width swap.
SWAPPING_ORIENTATIONS = (5, 6, 7, 8)


def draft_factor(window_height: int, window_width: int, min_side: int) -> int:
    """The largest of `DRAFT_FACTORS` (else 1) that keeps the window's shorter side at least ``min_side``."""
    shorter = min(window_height, window_width)
    return next((factor for factor in DRAFT_FACTORS if shorter // factor >= min_side), 1)


def read_image_window(path: str, channels: int, choose_window, size: int, resample: int) -> np.ndarray:
    """The window ``choose_window(height, width) -> (top, left, h, w)`` of the file's picture (EXIF-oriented,
    as `read_image` gives it) resized to ``size x size``, in one pass of pillow: uint8 ``[size, size,
    channels]``. A random resized crop's decode, crop and resize without the full picture as an array.

    Two things differ from ``resize(read_image(path)[top:top + h, left:left + w])``: pillow resizes the
    window inside the picture (``resize(box=...)``), so the filter reads the picture's pixels just
    outside the window's edges where the crop would repeat its own border; and where the window's
    shorter side is at least twice ``size`` a JPEG is decoded at 1/2, 1/4 or 1/8 scale (`draft_factor`,
    the decoder's scaled inverse DCT) before the resize, which shrinks it further anyway. What that
    changes in pixels is measured in tests/data/test_reading.py. Raises `UnreadableImageError` as
    `read_image` does.
    """
    with decoding(path), Image.open(path) as image:
        swapped = image.getexif().get(ORIENTATION_TAG) in SWAPPING_ORIENTATIONS
        height, width = (image.width, image.height) if swapped else (image.height, image.width)
        top, left, h, w = choose_window(height, width)
        factor = draft_factor(h, w, size)
        if factor > 1 and image.format == "JPEG":
            image.draft(image.mode, (-(-image.width // factor), -(-image.height // factor)))
        picture = oriented_picture(image, channels)
        scale_y, scale_x = picture.height / height, picture.width / width
        box = (left * scale_x, top * scale_y, (left + w) * scale_x, (top + h) * scale_y)
        array = np.asarray(picture.resize((size, size), resample, box=box), dtype=np.uint8)
    return array[..., None] if array.ndim == 2 else array


class UnreadableFiles:
    """The unreadable files a reader met (thread-safe): one warning line on stderr when a file is first
    met, and the list (path -> reason) for the run's outputs."""

    def __init__(self, what: str):
        self.what = what
        self._reasons: dict[str, str] = {}
        self._lock = threading.Lock()

    def record(self, error: UnreadableImageError) -> None:
        with self._lock:
            if error.path in self._reasons:
                return
            self._reasons[error.path] = error.reason
        print(f"warning: skipping unreadable image {error.path} ({error.reason}) in {self.what}",
              file=sys.stderr, flush=True)

    def __getstate__(self):  # a worker process gets a copy of its source: the lock stays behind
        return {"what": self.what, "_reasons": self.items()}

    def __setstate__(self, state):
        self.__dict__.update(state, _lock=threading.Lock())

    def items(self) -> dict[str, str]:
        """path -> reason, sorted by path."""
        with self._lock:
            return dict(sorted(self._reasons.items()))

    def __len__(self) -> int:
        with self._lock:
            return len(self._reasons)


def unreadable_of(source) -> dict[str, str]:
    """path -> reason of the unreadable files a source met so far ({} for sources that keep no log)."""
    log = getattr(source, "unreadable", None)
    return log.items() if log is not None else {}
