"""Predict image files with an exported model (`lgmm_jax.export`): classify and reject, or segment.

    python -m lgmm_jax.predict --model=EXPORTED photo.jpg FOLDER/ ... [--output=preds.jsonl] [--format=csv]
    python -m lgmm_jax.predict --model=SEGMENTER_EXPORT --output=NEW_FOLDER FOLDER/ ...

Inputs. A folder stands for the image files under it, recursively and sorted (extensions .png .jpg .jpeg
.bmp .gif .ppm .pgm .tif .tiff .webp, any case; hidden files and folders and other files are skipped); a
file named on the command line is used as given. Every image is decoded with pillow as training decoded
its files (`lgmm_jax.data.images.read_image`): EXIF orientation applied, any mode (grayscale, palette,
RGBA, CMYK, 16-bit) converted to the export's channels. An export that takes any size brings each
image to the network's input itself, as the evaluation of training did (model.json's `image_size` or
`preprocess`); an export of one fixed size refuses an image of another size.

Batches. --batch_size images (default 32) are decoded (in threads, the next batch while the model runs on
this one) and predicted in one call of the model compiled for that batch (a segmenter: one call per image
size in the batch). The rows are the same, in the same order, whatever --batch_size, but for the last
float32 digits of a score (the network's floating-point path depends on the compiled batch shape) and,
for a score that close to a calibration score, its p-value.

Classifiers. One row per image, in input order, to --output (default: stdout), as JSON lines
(--format=jsonl, the default) or CSV with a header row (--format=csv): `file`, `label` (the original
label id of the most probable known class), `name`, `score`, `p_value` and `known` (p_value > alpha: the
conformal decision, at the export's alpha unless --alpha is given; false = rejected as unknown).

Segmenters. --output=FOLDER is required (a new or empty folder): each image gives `<name>_label.png`
(uint8: the known class id of each pixel, and the export's void label, 255, where the pixel is rejected
as unknown) and `<name>_score.npy` (float32 [H, W]: the per-pixel score, higher = more like the known
classes), at the image's own size; <name> is the file's path under its folder argument without the
extension (its extension kept where two files would share a name). One row per image goes to stdout:
`file`, `label_file`, `score_file` and `unknown_share` (the share of the image's pixels rejected).

Existing results are never overwritten: an existing --output file (or non-empty folder) is refused
unless --overwrite is given.

Progress goes to stderr: on a terminal a bar (`[#####.....] 1200/5000 images 85 img/s`) redrawn as
images are done; otherwise one line each time --progress_every images (default 1000) are done, so an
input of fewer images prints none. --progress_every=0 prints no progress at all.

A file that cannot be used (unreadable, damaged, empty, not an image, of another size than a fixed-size
export takes) is one line on stderr, `error: FILE: why`, and the other files still run; the exit status
is non-zero only when no image could be predicted.
"""

from __future__ import annotations

import collections
import concurrent.futures
import csv
import dataclasses
import json
import os
import sys
import time
from typing import Iterable, Iterator

import numpy as np
from absl import flags

from lgmm_jax.runtime import cli

FLAGS = flags.FLAGS
NO_IMAGE_PREDICTED = 1
FORMATS = ("jsonl", "csv")
CLASSIFIER_FIELDS = ("file", "label", "name", "score", "p_value", "known")
SEGMENTER_FIELDS = ("file", "label_file", "score_file", "unknown_share")
LABEL_SUFFIX, SCORE_SUFFIX = "_label.png", "_score.npy"
DECODE_THREADS = max(1, min(8, os.cpu_count() or 1))
BAR_WIDTH = 30
BAR_REDRAW_SECONDS = 0.2


def define_flags() -> None:
    flags.DEFINE_string("model", None, "an exported model's folder (python -m lgmm_jax.export)")
    flags.DEFINE_float("alpha", None, "decide at this alpha instead of the export's (conformal p-value > alpha)")
    flags.DEFINE_string("output", None, "classifiers: the file to write the rows to (default: stdout); "
                        "segmenters: the new or empty folder for the label PNGs and score maps (required)")
    flags.DEFINE_enum("format", "jsonl", list(FORMATS), "the rows as JSON lines or CSV with a header row")
    flags.DEFINE_integer("batch_size", 32, "images per forward pass of the model")
    flags.DEFINE_boolean("overwrite", False, "replace an existing --output file, or write into a non-empty folder")
    flags.DEFINE_integer("progress_every", 1000, "without a terminal, a progress line on stderr every this many "
                         "images (0: no progress output, on a terminal neither)")


# ----------------------------------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Input:
    """An image file to predict: `path` as found, `name` its path under the folder argument it was found
    in (a file argument's own base name), which names a segmenter's output files."""

    path: str
    name: str


def expand_arguments(arguments: Iterable[str]) -> tuple[list[Input], list[str]]:
    """(the image files the arguments stand for, in order; the folder arguments that hold none).

    A folder stands for `images.image_files(folder)` (recursive, sorted, hidden and non-image files
    skipped); any other argument is a file, used as given (one that is missing or not an image fails
    when it is read, with its own error line).
    """
    from lgmm_jax.data import images

    inputs, empty_folders = [], []
    for argument in arguments:
        if os.path.isdir(argument):
            found = images.image_files(argument)
            inputs += [Input(path, os.path.relpath(path, argument)) for path in found]
            if not found:
                empty_folders.append(argument)
        else:
            inputs.append(Input(argument, os.path.basename(argument)))
    return inputs, empty_folders


def chunks(items: list, size: int) -> Iterator[list]:
    """`items` in consecutive lists of `size` (the last one shorter)."""
    for start in range(0, len(items), size):
        yield items[start:start + size]


def decode(path: str, channels: int) -> np.ndarray | str:
    """The image as uint8 [H, W, channels] (`images.read_image`), or why it cannot be read."""
    from lgmm_jax.data import images

    try:
        return images.read_image(path, channels)
    except images.UnreadableImageError as error:
        return error.reason


def size_problem(shape: tuple, image_shape: tuple) -> str | None:
    """Why an image of `shape` [H, W, C] does not fit a model taking `image_shape` (None: it fits)."""
    height, width = image_shape[:2]
    if height is None or width is None or tuple(shape[:2]) == (height, width):
        return None
    return f"{shape[0]}x{shape[1]} pixels, the model takes {height}x{width}: resize the image first"


def decoded_chunks(inputs: list[Input], batch_size: int, channels: int,
                   threads: int = DECODE_THREADS) -> Iterator[list[tuple[Input, np.ndarray | str]]]:
    """`inputs` in chunks of `batch_size`, each input with its decoded image or why it cannot be read, in
    input order; the next chunk is decoded in `threads` threads while the caller uses this one."""
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        pending = None
        for chunk in chunks(inputs, batch_size):
            submitted = (chunk, [pool.submit(decode, item.path, channels) for item in chunk])
            if pending is not None:
                yield [(item, future.result()) for item, future in zip(*pending)]
            pending = submitted
        if pending is not None:
            yield [(item, future.result()) for item, future in zip(*pending)]


# ----------------------------------------------------------------------------------------------------------
# Classifiers
# ----------------------------------------------------------------------------------------------------------


def classifier_rows(model, decoded: list[tuple[Input, np.ndarray | str]], alpha: float | None
                    ) -> list[tuple[Input, dict | str]]:
    """Each input of one chunk with its row (`CLASSIFIER_FIELDS`) or why it has none: one `predict` call
    for the chunk's usable images."""
    shape = tuple(model.image_shape)
    results: list = [(item, image if isinstance(image, str) else size_problem(image.shape, shape))
                     for item, image in decoded]
    usable = [i for i, (_, problem) in enumerate(results) if problem is None]
    if not usable:
        return results
    out = model.predict([decoded[i][1] for i in usable], alpha=alpha)
    names = dict(zip(model.known_labels, model.label_names))
    for k, i in enumerate(usable):
        label = int(out["label"][k])
        results[i] = (results[i][0], {
            "file": results[i][0].path,
            "label": label,
            "name": names[label],
            "score": float(out["score"][k]),
            "p_value": float(out["p_value"][k]) if "p_value" in out else None,
            "known": bool(out["known"][k]),
        })
    return results


def classify(model, inputs: list[Input], batch_size: int, alpha: float | None = None
             ) -> Iterator[tuple[Input, dict | str]]:
    """Every input, in order, with its row (`CLASSIFIER_FIELDS`) or why it cannot be classified."""
    for decoded in decoded_chunks(inputs, batch_size, int(model.image_shape[-1])):
        yield from classifier_rows(model, decoded, alpha)


# ----------------------------------------------------------------------------------------------------------
# Segmenters
# ----------------------------------------------------------------------------------------------------------


def output_stems(names: list[str]) -> list[str]:
    """A distinct output stem per input name: the name without its extension; with it where two names
    would share a stem (a.png, a.jpg); then `_2`, `_3`, ... in order for names still alike (the same
    file name from two folder arguments). Compared case-insensitively, as some file systems do."""
    plain = [os.path.splitext(name)[0] for name in names]
    shared = collections.Counter(stem.casefold() for stem in plain)
    stems = [name if shared[stem.casefold()] > 1 else stem for name, stem in zip(names, plain)]
    taken: set[str] = set()
    distinct = []
    for stem in stems:
        candidate, n = stem, 1
        while candidate.casefold() in taken:
            n += 1
            candidate = f"{stem}_{n}"
        taken.add(candidate.casefold())
        distinct.append(candidate)
    return distinct


def label_ids(description: dict) -> tuple[np.ndarray, int]:
    """(the uint8 id of each of a segmenter's classes, in model order; the void id for rejected pixels)."""
    ids = [int(label) for label in description["known_labels"]]
    void = int(description.get("void_label", 255))
    if not all(0 <= i <= 255 for i in [*ids, void]) or void in ids:
        raise ValueError(f"this segmenter's class ids {ids[0]}..{ids[-1]} and void label {void} do not fit "
                         "distinct uint8 values of a label PNG: predict with inference.load(...).predict instead")
    return np.asarray(ids, np.uint8), void


def label_map(label: np.ndarray, known: np.ndarray, ids: np.ndarray, void: int) -> np.ndarray:
    """uint8 [H, W]: each pixel's class id, `void` where it is rejected as unknown."""
    return np.where(known, ids[label], np.uint8(void)).astype(np.uint8)


def segment_chunk(model, decoded: list[tuple[Input, np.ndarray | str]], alpha: float | None
                  ) -> list[tuple[Input, dict | str]]:
    """Each input of one chunk with its maps ({"label", "score", "known"} at its size) or why it has none:
    one `predict` call per image size in the chunk."""
    results: list = list(decoded)
    by_size = collections.defaultdict(list)
    for i, (_, image) in enumerate(decoded):
        if not isinstance(image, str):
            by_size[image.shape[:2]].append(i)
    for indices in by_size.values():
        out = model.predict(np.stack([decoded[i][1] for i in indices]), alpha=alpha)
        for k, i in enumerate(indices):
            results[i] = (decoded[i][0], {name: out[name][k] for name in ("label", "score", "known")})
    return results


def write_maps(folder: str, stem: str, maps: dict, ids: np.ndarray, void: int) -> tuple[str, str]:
    """`<stem>_label.png` and `<stem>_score.npy` of one image's maps in `folder`: their paths."""
    from PIL import Image

    label_file, score_file = (os.path.join(folder, stem + suffix) for suffix in (LABEL_SUFFIX, SCORE_SUFFIX))
    os.makedirs(os.path.dirname(label_file), exist_ok=True)
    Image.fromarray(label_map(maps["label"], maps["known"], ids, void)).save(label_file)
    np.save(score_file, np.asarray(maps["score"], np.float32))
    return label_file, score_file


def segment(model, inputs: list[Input], batch_size: int, folder: str, alpha: float | None = None
            ) -> Iterator[tuple[Input, dict | str]]:
    """Every input, in order, with its row (`SEGMENTER_FIELDS`; its label PNG and score map written into
    `folder`) or why it cannot be segmented."""
    ids, void = label_ids(model.description)
    stems = output_stems([item.name for item in inputs])
    position = 0  # of the chunk's first input in `inputs`
    for decoded in decoded_chunks(inputs, batch_size, 3):
        chunk_stems = stems[position:position + len(decoded)]
        position += len(decoded)
        for (item, maps), stem in zip(segment_chunk(model, decoded, alpha), chunk_stems):
            if isinstance(maps, str):
                yield item, maps
                continue
            label_file, score_file = write_maps(folder, stem, maps, ids, void)
            yield item, {"file": item.path, "label_file": label_file, "score_file": score_file,
                         "unknown_share": float(np.mean(~np.asarray(maps["known"], bool)))}


# ----------------------------------------------------------------------------------------------------------
# Output
# ----------------------------------------------------------------------------------------------------------


class RowWriter:
    """Rows (dicts of `fields`) to a text stream, as JSON lines or CSV with a header row (None as an empty
    cell, booleans as true / false, floats at full precision, as in JSON)."""

    def __init__(self, stream, fields: tuple[str, ...], format_name: str):
        if format_name not in FORMATS:
            raise ValueError(f"--format={format_name} is not one of {', '.join(FORMATS)}")
        self.stream, self.fields = stream, fields
        self.csv = csv.DictWriter(stream, fieldnames=fields, lineterminator="\n") if format_name == "csv" else None
        if self.csv is not None:
            self.csv.writeheader()

    def write(self, row: dict) -> None:
        if self.csv is None:
            self.stream.write(json.dumps({name: row[name] for name in self.fields}) + "\n")
        else:
            self.csv.writerow({name: csv_cell(row[name]) for name in self.fields})
        self.stream.flush()


def csv_cell(value):
    """A row value as a CSV cell: JSON's spelling of booleans and floats, empty for None."""
    if value is None:
        return ""
    if isinstance(value, (bool, float)):
        return json.dumps(value)
    return value


def refuse_existing_results(path: str | None, overwrite: bool) -> None:
    """ValueError when --output holds results already (an existing file, a non-empty folder) and
    --overwrite is not given; checked before the model loads, whichever kind it is."""
    if not path or overwrite:
        return
    if os.path.isfile(path):
        raise ValueError(f"--output={path} exists: pass a new file name, or --overwrite to replace it")
    if os.path.isdir(path) and os.listdir(path):
        raise ValueError(f"--output={path} is not empty: pass a new folder, or --overwrite to write into it")


def check_output_file(path: str, overwrite: bool) -> None:
    """ValueError when a classifier's rows cannot go to file `path`: results there already, a folder, or
    no folder to hold it."""
    if os.path.isdir(path):
        raise ValueError(f"--output={path} is a folder: a classifier writes its rows to one file, e.g. "
                         "--output=predictions.jsonl")
    refuse_existing_results(path, overwrite)
    if not os.path.isdir(os.path.dirname(os.path.abspath(path))):
        raise ValueError(f"the folder of --output={path} does not exist: create it first")


def check_output_folder(path: str | None, overwrite: bool) -> None:
    """ValueError when a segmenter's maps cannot go to folder `path`: none given, a file, or not empty."""
    if not path:
        raise ValueError("a segmenter writes a label PNG and a score map per image: pass --output=FOLDER "
                         "(a new or empty folder)")
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"--output={path} is a file: a segmenter writes into a folder; pass a new folder")
    refuse_existing_results(path, overwrite)


# ----------------------------------------------------------------------------------------------------------
# Progress
# ----------------------------------------------------------------------------------------------------------


def progress_bar(done: int, total: int, rate: float, width: int = BAR_WIDTH) -> str:
    """'[#####.....] 1200/5000 images 85 img/s' (without the carriage return)."""
    filled = width * done // max(total, 1)
    return f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total} images {rate:.0f} img/s"


def progress_line(done: int, total: int, rate: float) -> str:
    """'progress: 1000/5000 images, 85 img/s' (one line, for a log)."""
    return f"progress: {done}/{total} images, {rate:.0f} img/s"


def report_error(path: str, why: str, stream=None) -> None:
    """`error: PATH: why` on one line of `stream` (stderr)."""
    print(f"error: {path}: {' '.join(why.split())}", file=stream or sys.stderr, flush=True)


class Progress:
    """Progress and per-file errors on `stream` (stderr). On a terminal (`tty`) a bar, redrawn at most every
    `BAR_REDRAW_SECONDS` and when done, that error lines clear first; otherwise `progress_line` each time
    `every` more images are done. `every=0`: errors only."""

    def __init__(self, total: int, every: int, stream=None, tty: bool | None = None, clock=time.monotonic):
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.total, self.every, self.clock = total, every, clock
        self.start = self.last_drawn = clock()
        self.done = 0
        self.bar_shown = False

    def rate(self) -> float:
        return self.done / max(self.clock() - self.start, 1e-9)

    def error(self, path: str, why: str) -> None:
        self._clear_bar()
        report_error(path, why, self.stream)

    def advance(self) -> None:
        """One more image done (predicted or failed)."""
        self.done += 1
        if self.every <= 0:
            return
        if self.tty:
            if self.done == self.total or self.clock() - self.last_drawn >= BAR_REDRAW_SECONDS:
                self.last_drawn = self.clock()
                self.stream.write("\r" + progress_bar(self.done, self.total, self.rate()))
                self.stream.flush()
                self.bar_shown = True
        elif self.done % self.every == 0:
            print(progress_line(self.done, self.total, self.rate()), file=self.stream, flush=True)

    def close(self) -> None:
        """End the bar's line."""
        if self.bar_shown:
            self.stream.write("\n")
            self.stream.flush()
            self.bar_shown = False

    def _clear_bar(self) -> None:
        if self.bar_shown:
            self.stream.write("\r" + " " * (BAR_WIDTH + 40) + "\r")
            self.bar_shown = False


# ----------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------


def check_alpha(model, alpha: float | None) -> None:
    """ValueError when --alpha cannot be used with this export (before any image is read)."""
    from lgmm_jax.ood import conformal

    if alpha is None:
        return
    if model.calibration is None:
        raise ValueError("this export has no calibration scores, so it decides only at its own threshold: "
                         "leave out --alpha, or export the model again to choose alpha at prediction time")
    conformal.check_alpha(alpha)


def is_classifier(model) -> bool:
    """A classifier's export (`Model`) rather than a segmenter's (`SegmentationModel`)."""
    from lgmm_jax.tasks.classification.exported import Model

    return isinstance(model, Model)


def write_rows(results: Iterator[tuple[Input, dict | str]], writer: RowWriter, progress: Progress) -> int:
    """Write every row, report every error; the number of rows written."""
    written = 0
    for item, result in results:
        if isinstance(result, str):
            progress.error(item.path, result)
        else:
            writer.write(result)
            written += 1
        progress.advance()
    progress.close()
    return written


def main(argv):
    if not FLAGS.model:
        cli.fail("pass --model=EXPORTED (an exported model's folder) and the image files or folders")
    if len(argv) < 2:
        cli.fail("pass at least one image file or folder after the flags")
    if FLAGS.batch_size < 1:
        cli.fail(f"--batch_size={FLAGS.batch_size} must be at least 1")
    if FLAGS.progress_every < 0:
        cli.fail(f"--progress_every={FLAGS.progress_every} must be 0 (no progress) or more")
    cli.quiet_libraries()

    def predict_all():
        inputs, empty_folders = expand_arguments(argv[1:])
        for folder in empty_folders:
            report_error(folder, "no image files under this folder")
        if not inputs:
            cli.fail("no image files to predict: a folder stands for the image files under it (.png, .jpg, ...)",
                     NO_IMAGE_PREDICTED)
        refuse_existing_results(FLAGS.output, FLAGS.overwrite)
        from lgmm_jax.deploy import inference

        model = inference.load(FLAGS.model, batch_size=FLAGS.batch_size)
        check_alpha(model, FLAGS.alpha)
        classifier = is_classifier(model)
        if classifier:
            if FLAGS.output:
                check_output_file(FLAGS.output, FLAGS.overwrite)
            results = classify(model, inputs, FLAGS.batch_size, FLAGS.alpha)
            fields = CLASSIFIER_FIELDS
            stream = open(FLAGS.output, "w" if FLAGS.overwrite else "x", newline="") if FLAGS.output else sys.stdout
        else:
            check_output_folder(FLAGS.output, FLAGS.overwrite)
            os.makedirs(FLAGS.output, exist_ok=True)
            results = segment(model, inputs, FLAGS.batch_size, FLAGS.output, FLAGS.alpha)
            fields, stream = SEGMENTER_FIELDS, sys.stdout
        progress = Progress(len(inputs), FLAGS.progress_every)
        try:
            written = write_rows(results, RowWriter(stream, fields, FLAGS.format), progress)
        finally:
            if stream is not sys.stdout:
                stream.close()
        if written == 0:
            verb = "classified" if classifier else "segmented"
            cli.fail(f"none of the {len(inputs)} images could be {verb}", NO_IMAGE_PREDICTED)

    return cli.run_guarded(predict_all)


if __name__ == "__main__":
    cli.define_flags_or_fail(define_flags, sys.argv)
    sys.exit(cli.run_app(main))
