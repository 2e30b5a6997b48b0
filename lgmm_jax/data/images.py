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


def _decoded(image: Image.Image, channels: int) -> np.ndarray:
    image = ImageOps.exif_transpose(image)
    if channels == 1:
        image = image.convert("L")
    else:
        image = image.convert("RGB")
    array = np.asarray(image, dtype=np.uint8)
    return array[..., None] if array.ndim == 2 else array


def read_image(path: str, channels: int = 3) -> np.ndarray:
    """``path`` decoded with pillow, EXIF orientation applied, as uint8 ``[H, W, channels]`` (1 or 3).

    Raises:
      UnreadableImageError: the file is missing, empty, truncated or not an image pillow reads.
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    try:
        if os.path.getsize(path) == 0:
            raise UnreadableImageError(path, "empty file (0 bytes)")
        with Image.open(path) as image:
            return _decoded(image, channels)
    except UnreadableImageError:
        raise
    except FileNotFoundError:
        raise UnreadableImageError(path, "file not found") from None
    except UnidentifiedImageError:
        raise UnreadableImageError(path, "not an image pillow can read") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise UnreadableImageError(path, f"damaged or truncated ({first_line})") from None


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
