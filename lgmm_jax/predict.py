"""Classify and reject image files with an exported model (`lgmm_jax.export`).

    python -m lgmm_jax.predict --model=EXPORTED photo1.png photo2.jpg FOLDER/ [--alpha=0.01] [--output=preds.jsonl]

Each image (png / jpg / any format pillow reads; a folder stands for the image files in it, sorted) is
decoded with pillow to the export's channels (grayscale or RGB). Images of another size are resized to the
export's input size when its preprocessing resizes anyway (the ImageNet presets) and refused otherwise.
One JSON line per image goes to --output (default: stdout): `file`, `label` (the original label id),
`name`, `score`, `p_value` and `known` (p_value > alpha: the conformal decision, at the export's alpha
unless --alpha is given). A file that cannot be used is one line on stderr (`error: FILE: why`) and the
others still run; the exit status is non-zero only when no image could be classified.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
from absl import flags

from lgmm_jax import cli

FLAGS = flags.FLAGS
NO_IMAGE_CLASSIFIED = 1


def define_flags() -> None:
    flags.DEFINE_string("model", None, "an exported model's folder (python -m lgmm_jax.export)")
    flags.DEFINE_float("alpha", None, "decide at this alpha instead of the export's (conformal p-value > alpha)")
    flags.DEFINE_string("output", None, "write the JSON lines here instead of stdout")


def image_files(paths: list[str]) -> list[str]:
    """The files named, with each folder replaced by the files in it (sorted)."""
    files = []
    for path in paths:
        if os.path.isdir(path):
            files += sorted(os.path.join(path, name) for name in os.listdir(path)
                            if os.path.isfile(os.path.join(path, name)))
        else:
            files.append(path)
    return files


def read_image(path: str, image_shape) -> np.ndarray:
    """uint8 [H, W, C] in the export's channels and size; ValueError naming what does not fit."""
    from PIL import Image, UnidentifiedImageError

    height, width, channels = image_shape
    try:
        with Image.open(path) as image:
            image = image.convert("L" if channels == 1 else "RGB")
            array = np.asarray(image, np.uint8)
    except (UnidentifiedImageError, OSError) as error:
        raise ValueError(f"not an image pillow can read ({type(error).__name__})") from None
    array = array[..., None] if array.ndim == 2 else array
    size = array.shape[:2]
    if height is not None and width is not None and size != (height, width):
        raise ValueError(f"{size[0]}x{size[1]} pixels, the model takes {height}x{width}: resize the image first")
    return array


def predictions(model, files: list[str], alpha: float | None):
    """Yield (file, JSON-ready dict) for each usable image and (file, error message) for the others."""
    shape = tuple(model.image_shape)
    for path in files:
        try:
            image = read_image(path, shape)
        except (ValueError, FileNotFoundError) as error:
            yield path, str(error)
            continue
        out = model.predict(image[None], alpha=alpha)
        label = int(out["label"][0])
        yield path, {
            "file": path,
            "label": label,
            "name": model.label_names[model.known_labels.index(label)],
            "score": float(out["score"][0]),
            "p_value": float(out["p_value"][0]) if "p_value" in out else None,
            "known": bool(out["known"][0]),
        }


def main(argv):
    if not FLAGS.model:
        cli.fail("pass --model=EXPORTED (an exported model's folder) and the image files or folders")
    files = image_files(argv[1:])
    if not files:
        cli.fail("pass at least one image file or folder after the flags")
    cli.quiet_libraries()

    def predict_all():
        from lgmm_jax import inference
        from lgmm_jax.tasks.classification.exported import Model

        model = inference.load(FLAGS.model, batch_size=1)
        if not isinstance(model, Model):
            raise ValueError(f"{FLAGS.model} is a segmenter: use inference.load(...).predict on image arrays")
        output = open(FLAGS.output, "w") if FLAGS.output else sys.stdout
        classified = 0
        try:
            for path, result in predictions(model, files, FLAGS.alpha):
                if isinstance(result, str):
                    print(f"error: {path}: {result}", file=sys.stderr, flush=True)
                    continue
                output.write(json.dumps(result) + "\n")
                classified += 1
        finally:
            if output is not sys.stdout:
                output.close()
        if classified == 0:
            cli.fail(f"none of the {len(files)} images could be classified", NO_IMAGE_CLASSIFIED)

    return cli.run_guarded(predict_all)


if __name__ == "__main__":
    cli.define_flags_or_fail(define_flags, sys.argv)
    sys.exit(cli.run_app(main))
