"""Who computes the batches does not change them: worker processes, threads and process shares give the
stream that one thread gives, a stream resumes at its position whatever computed either part, a failing
example is one line naming it, and worker processes end with the process that started them."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from lgmm_jax.data import pipeline, reading
from lgmm_jax.data.sources import ArraySource, load_digits_source
from tests.subprocesses import REPO

STEPS = 5


def batches(iterator, count: int = STEPS) -> list[dict]:
    taken = [next(iterator) for _ in range(count)]
    iterator.close()
    return taken


def digits_stream(**options):
    settings = dict(batch_size=16, seed=1, preprocess="shift")
    settings.update(options)
    return pipeline.train_iterator(load_digits_source("train"), **settings)


def assert_same(expected: list[dict], got: list[dict]) -> None:
    assert len(expected) == len(got)
    for want, have in zip(expected, got):
        for key in ("image", "label"):
            np.testing.assert_array_equal(want[key], have[key])


def test_the_batches_do_not_depend_on_workers_threads_or_processes():
    reference = batches(digits_stream(workers=0, threads=1))
    assert_same(reference, batches(digits_stream(workers=0, threads=4)))
    assert_same(reference, batches(digits_stream(workers=1, threads=1)))
    assert_same(reference, batches(digits_stream(workers=2, threads=2)))
    halves = [batches(digits_stream(workers=2, process_index=p, process_count=2)) for p in (0, 1)]
    for whole, first, second in zip(reference, *halves):
        np.testing.assert_array_equal(whole["image"], np.concatenate([first["image"], second["image"]]))


def test_a_stream_resumes_at_its_position_whatever_computed_either_part():
    reference = batches(digits_stream(workers=0), 2 * STEPS)
    first = digits_stream(workers=2)
    assert_same(reference[:3], [next(first) for _ in range(3)])
    state = first.get_state()
    first.close()
    assert state == {"position": 3}
    resumed = digits_stream(workers=0)
    resumed.set_state(state)
    assert_same(reference[3:6], [next(resumed) for _ in range(3)])
    again = digits_stream(workers=1)
    again.set_state(resumed.get_state())
    resumed.close()
    assert_same(reference[6:], batches(again, 2 * STEPS - 6))


def test_a_checkpoint_of_the_element_level_stream_resumes_at_its_batch():
    """Checkpoints written before batches were computed whole hold grain's example position."""
    reference = batches(digits_stream(), 6)
    resumed = digits_stream(workers=1)
    resumed.set_state({"next_index": 4 * 16})
    assert_same(reference[4:], batches(resumed, 2))


class FailingSource(ArraySource):
    """Digits whose example 7 cannot be made (a stand-in for a broken file or a bad label)."""

    def __getitem__(self, index: int):
        if int(index) == 7:
            raise KeyError("label 'x' is not a class")
        return super().__getitem__(index)


def failing_source() -> FailingSource:
    digits = load_digits_source("train")
    return FailingSource("failing", digits.images, digits.labels, digits.label_names)


@pytest.mark.parametrize("workers", [0, 2])
def test_a_failing_example_is_one_line_naming_it(workers):
    stream = pipeline.train_iterator(failing_source(), batch_size=16, seed=1, preprocess="none", workers=workers)
    with pytest.raises(reading.ExampleError) as raised:
        for _ in range(200):  # an epoch and more: example 7 comes up
            next(stream)
    stream.close()
    message = str(raised.value)
    assert message.startswith("example 7 of failing: KeyError") and "\n" not in message, message
    evaluation = pipeline.eval_batches(failing_source(), batch_size=16, preprocess="none", workers=workers)
    with pytest.raises(reading.ExampleError, match="example 7 of failing"):
        list(evaluation)


WORKER_TREE = """
import sys, time
sys.path.insert(0, sys.argv[1])
from tests.data.test_reading import digits_stream
stream = digits_stream(workers=2)
next(stream)
print("reading", flush=True)
time.sleep(600)
"""


def children_of(pid: int) -> list[int]:
    """The processes whose parent is `pid` (from /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry))
    return found


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads the process table from /proc")
def test_worker_processes_end_when_the_process_that_started_them_is_killed():
    process = subprocess.Popen([sys.executable, "-c", WORKER_TREE, str(REPO)], cwd=REPO, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert process.stdout.readline().strip() == "reading"
        workers = [pid for pid in children_of(process.pid) if alive(pid)]
        assert len(workers) >= 2, workers  # the two workers (and multiprocessing's resource tracker)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        deadline = time.monotonic() + 10 * reading.PARENT_CHECK_SECONDS + 5
        while time.monotonic() < deadline and any(alive(pid) for pid in workers):
            time.sleep(0.1)
        assert not [pid for pid in workers if alive(pid)], "worker processes outlived their trainer"
    finally:
        process.kill()


# ------------------------------------------------------------------------------------------------------
# A random resized crop decoded, cropped and resized in one pass of pillow (`images.read_image_window`)
# ------------------------------------------------------------------------------------------------------


def photograph_jpeg(path, size, orientation: int | None = None) -> str:
    """scikit-image's astronaut at `size` (W, H) as a quality-90 JPEG, as ImageNet's files are stored."""
    from PIL import Image
    from skimage import data as skimage_data

    picture = Image.fromarray(skimage_data.astronaut()).resize(size)
    exif = Image.Exif()
    if orientation:
        exif[0x0112] = orientation
    picture.save(path, quality=90, exif=exif.tobytes())
    return str(path)


def crops(path, seeds, one_pass: bool):
    from PIL import Image

    from lgmm_jax.data import augment, images

    for seed in seeds:
        rng = np.random.default_rng(seed)
        if one_pass:
            yield images.read_image_window(path, 3, lambda h, w: augment.random_resized_crop_window(h, w, rng),
                                           224, Image.Resampling.BILINEAR)
        else:
            yield augment.random_resized_crop(images.read_image(path), 224, rng)


@pytest.mark.parametrize("size, orientation, mean_bound", [
    ((500, 375), None, 0.5),  # ImageNet's typical size: no window is large enough to draft
    ((375, 500), 6, 0.5),  # a phone's portrait photo: the window is drawn on the picture as it stands
    ((1000, 750), None, 2.0),  # windows of 448+ pixels are decoded at 1/2 or 1/4 scale first
])
def test_the_one_pass_crop_is_the_crop_of_the_full_decode_to_a_fraction_of_a_grey_level(
        tmp_path, size, orientation, mean_bound):
    """Measured on this machine: mean absolute differences of 0.025 (500x375) and 0.37 (1000x750) grey
    levels of 255 over 300 crops, at most 0.2 and 1.05 for one crop; the bounds leave room for another
    CPU's libjpeg and resampling paths, and a wrong window (a misplaced box, a missed rotation) moves a
    photograph's crop by tens of grey levels."""
    path = photograph_jpeg(tmp_path / "photo.jpg", size, orientation)
    seeds = range(40)
    for full, fast in zip(crops(path, seeds, False), crops(path, seeds, True)):
        assert fast.shape == full.shape == (224, 224, 3)
        assert np.abs(full.astype(np.int32) - fast.astype(np.int32)).mean() <= mean_bound


def test_the_imagenet_stream_of_a_folder_reads_windows_and_leaves_images_uint8(tmp_path):
    from lgmm_jax.data.catalog import get_source

    for name in ("a", "b"):
        (tmp_path / "f" / name).mkdir(parents=True)
        for i in range(10):
            photograph_jpeg(tmp_path / "f" / name / f"{i}.jpg", (500 - 7 * i, 375))
    source = get_source(f"imagefolder={tmp_path / 'f'}", "train")
    assert hasattr(source, "read_window")
    (batch,) = batches(pipeline.train_iterator(source, batch_size=2, seed=0, preprocess="imagenet",
                                               normalize=False), 1)
    assert batch["image"].dtype == np.uint8 and batch["image"].shape == (2, 224, 224, 3)
