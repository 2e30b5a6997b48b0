"""Users' own labelled images (`imagefolder=`, `imagelist=`): listings, carved splits, decoding, bad files,
refusals. Expected values come from what each test wrote (hand-written listings, the arrays saved) and from
pillow's own decode; the carve is checked against its documented rule recomputed here."""

import io
import os
import subprocess

import numpy as np
import pytest
from PIL import Image, ImageOps
from skimage import data as skimage_data

from configs import default
from lgmm_jax.runtime import cli
from lgmm_jax.training import experiment, train
from lgmm_jax.data import images, labelled, pipeline
from lgmm_jax.data.sources import DatasetNotAvailableError
from lgmm_jax.data.catalog import get_source
from lgmm_jax.data.labelled import LabelledOptions


def photo(seed: int, size=(20, 24)) -> np.ndarray:
    """A crop of scikit-image's astronaut photograph (real pixels), uint8 [H, W, 3]."""
    picture = skimage_data.astronaut()
    top, left = 17 * seed % 400, 29 * seed % 400
    return np.ascontiguousarray(picture[top:top + size[0], left:left + size[1]])


def save_png(path, array) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(array[..., 0] if array.ndim == 3 and array.shape[-1] == 1 else array).save(path)


def exif_rotated_jpeg(path, array, orientation: int = 6) -> None:
    """A JPEG whose EXIF says to rotate it (6: 90 degrees clockwise), as a phone writes a portrait photo."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(array).save(path, quality=95, exif=exif.tobytes())


def class_folder(root, per_class: dict[str, int], seed: int = 0) -> dict[str, list[str]]:
    """root/<class>/<i>.png of real pixels, `per_class[name]` images each; returns the names written."""
    written = {}
    for c, (name, count) in enumerate(sorted(per_class.items())):
        written[name] = []
        for i in range(count):
            save_png(os.path.join(root, name, f"{i:02d}.png"), photo(seed + 31 * c + i))
            written[name].append(f"{i:02d}.png")
    return written


def options(**changes) -> LabelledOptions:
    return LabelledOptions(**changes)


@pytest.fixture(autouse=True)
def fresh_listings():
    """Listings are cached per process by (path, options); each test writes its own folders."""
    labelled.folder_listing.cache_clear()
    labelled.list_listing.cache_clear()


# ------------------------------------------------------------------------------------------------------
# Listings
# ------------------------------------------------------------------------------------------------------


def test_split_folders_give_class_ids_in_sorted_order_and_each_file_its_split(tmp_path):
    root = tmp_path / "pets"
    for split_folder, names in {"training": ["cat/a.png", "cat/b.png", "dog/c.png", "dog/sub/d.png"],
                                "valid": ["cat/e.png", "dog/f.png"],
                                "test": ["cat/g.png", "dog/h.png", "fox/i.png"]}.items():
        for i, name in enumerate(names):
            save_png(os.path.join(root, split_folder, name), photo(i))
    (root / "training" / "cat" / ".hidden.png").write_bytes(b"junk")
    (root / "training" / "dog" / "notes.txt").write_text("not an image")
    listing = labelled.folder_listing(str(root), options())
    assert listing.class_names == ("cat", "dog", "fox")  # fox: a test-only class
    assert listing.splits == {
        "train": (("training/cat/a.png", 0), ("training/cat/b.png", 0), ("training/dog/c.png", 1),
                  ("training/dog/sub/d.png", 1)),
        "validation": (("valid/cat/e.png", 0), ("valid/dog/f.png", 1)),
        "test": (("test/cat/g.png", 0), ("test/dog/h.png", 1), ("test/fox/i.png", 2)),
    }
    assert listing.carved == ()
    source = get_source(f"imagefolder={root}", "test")
    np.testing.assert_array_equal(source.labels, [0, 1, 2])
    assert source.label_names == ("cat", "dog", "fox") and source.num_classes == 3
    assert source.image_shape == (None, None, 3)


def test_carved_splits_follow_the_documented_rule_are_disjoint_and_stratified(tmp_path):
    written = class_folder(tmp_path / "flat", {"ant": 10, "bee": 7, "wasp": 12})
    listing = labelled.folder_listing(str(tmp_path / "flat"), options(split_seed=3))
    assert listing.carved == ("validation", "test")
    expected = {"train": [], "validation": [], "test": []}
    for label, name in enumerate(("ant", "bee", "wasp")):  # the module docstring's rule, recomputed
        paths = sorted(f"{name}/{file}" for file in written[name])
        order = np.random.default_rng([3, label]).permutation(len(paths))
        n_test, n_val = round(len(paths) * 0.2), round(len(paths) * 0.1)
        expected["test"] += [(paths[i], label) for i in order[:n_test]]
        expected["validation"] += [(paths[i], label) for i in order[n_test:n_test + n_val]]
        expected["train"] += [(paths[i], label) for i in order[n_test + n_val:]]
    assert {split: sorted(entries) for split, entries in expected.items()} == {
        split: list(entries) for split, entries in listing.splits.items()}
    files = [entry for entries in listing.splits.values() for entry in entries]
    assert len(files) == len(set(files)) == 29  # disjoint, nothing lost
    for entries in listing.splits.values():
        assert {label for _, label in entries} == {0, 1, 2}  # every class in every split
    again = labelled.folder_listing.__wrapped__(str(tmp_path / "flat"), options(split_seed=3))
    assert again.splits == listing.splits  # reproducible for a seed, without the cache
    other = labelled.folder_listing(str(tmp_path / "flat"), options(split_seed=4))
    assert other.splits["test"] != listing.splits["test"]


def test_image_lists_with_class_names_and_a_root(tmp_path):
    root = tmp_path / "images"
    for i in range(6):
        save_png(root / "a" / f"{i}.png", photo(i))
    (tmp_path / "train.txt").write_text("# OpenOOD image list\na/0.png 1\na/1.png 0\n\na/2.png 1\na/3.png 0\n")
    (tmp_path / "val.txt").write_text("a/4.png 1\n")
    (tmp_path / "test.txt").write_text("a/5.png 2\n")
    (tmp_path / "classes.txt").write_text("zebra\nyak\nwolf\n")
    chosen = options(image_root=str(root), validation_list=str(tmp_path / "val.txt"),
                     test_list=str(tmp_path / "test.txt"), class_names=str(tmp_path / "classes.txt"))
    listing = labelled.list_listing(str(tmp_path / "train.txt"), chosen)
    assert listing.class_names == ("zebra", "yak", "wolf")
    assert listing.splits == {"train": (("a/0.png", 1), ("a/1.png", 0), ("a/2.png", 1), ("a/3.png", 0)),
                              "validation": (("a/4.png", 1),), "test": (("a/5.png", 2),)}
    source = get_source(f"imagelist={tmp_path / 'train.txt'}", "train", options=chosen)
    np.testing.assert_array_equal(source[0]["image"], photo(0))  # PNG is lossless
    assert source[0]["label"] == 1


def test_split_lists_written_for_a_run_are_an_image_list_of_the_same_data(tmp_path):
    class_folder(tmp_path / "flat", {"ant": 10, "bee": 10})
    listing = labelled.folder_listing(str(tmp_path / "flat"), options())
    labelled.write_split_lists(str(tmp_path / "splits"), listing)
    again = labelled.list_listing(str(tmp_path / "splits" / "train.txt"), options(
        image_root=listing.root, validation_list=str(tmp_path / "splits" / "validation.txt"),
        test_list=str(tmp_path / "splits" / "test.txt"), class_names=str(tmp_path / "splits" / "classes.txt")))
    assert again.splits == listing.splits and again.class_names == listing.class_names


# ------------------------------------------------------------------------------------------------------
# Images as users have them
# ------------------------------------------------------------------------------------------------------


def cmyk_jpeg(path, array) -> None:
    Image.fromarray(array).convert("CMYK").save(path, quality=95)


def test_every_mode_decodes_as_pillow_does_with_the_exif_orientation_applied(tmp_path):
    folder = tmp_path / "mixed" / "things"
    os.makedirs(folder)
    base = photo(1, size=(30, 40))
    exif_rotated_jpeg(folder / "phone.jpg", base)
    cmyk_jpeg(folder / "print.jpg", base)
    Image.fromarray(base).convert("RGBA").save(folder / "alpha.png")
    Image.fromarray(base).convert("P").save(folder / "palette.png")
    Image.fromarray(base).convert("L").save(folder / "gray.png")
    Image.fromarray(base).save(folder / "plain.bmp")
    source = get_source(f"imagefolder={tmp_path / 'mixed'}", "train",
                        options=options(validation_fraction=0.2, test_fraction=0.2))
    for index, path in enumerate(source.paths):
        with Image.open(path) as image:
            expected = np.asarray(ImageOps.exif_transpose(image).convert("RGB"))
        got = source[index]["image"]
        np.testing.assert_array_equal(got, expected, err_msg=path)
        if path.endswith("phone.jpg"):  # stood up: 30x40 stored, 40x30 shown
            assert got.shape == (40, 30, 3)


def test_grayscale_folders_decode_to_one_channel_and_mixed_ones_to_three(tmp_path):
    for i in range(10):
        save_png(tmp_path / "gray" / "a" / f"{i}.png", photo(i)[..., :1])
    assert get_source(f"imagefolder={tmp_path / 'gray'}", "train").image_shape == (None, None, 1)
    for i in range(10):
        picture = photo(i)
        save_png(tmp_path / "mixed" / "a" / f"{i}.png", picture[..., :1] if i % 2 else picture)
    mixed = get_source(f"imagefolder={tmp_path / 'mixed'}", "train")
    assert mixed.image_shape == (None, None, 3)
    gray_file = next(i for i, p in enumerate(mixed.paths) if int(os.path.basename(p)[0]) % 2)
    with Image.open(mixed.paths[gray_file]) as image:
        np.testing.assert_array_equal(mixed[gray_file]["image"], np.asarray(image.convert("RGB")))


def test_image_size_resizes_every_image_as_pillow_does_in_training_and_evaluation(tmp_path):
    class_folder(tmp_path / "f", {"a": 10, "b": 10})
    source = get_source(f"imagefolder={tmp_path / 'f'}", "train")
    stream = pipeline.train_iterator(source, batch_size=4, seed=0, preprocess="none", image_size=(12, 9),
                                     normalization=pipeline.Normalization((0.0,), (1.0,)))
    batch = next(stream)
    assert batch["image"].shape == (4, 12, 9, 3)
    evaluation = next(iter(pipeline.eval_batches(source, batch_size=4, preprocess="none", image_size=(12, 9),
                                                 normalization=pipeline.Normalization((0.0,), (1.0,)))))
    with Image.open(source.paths[0]) as image:
        expected = np.asarray(image.convert("RGB").resize((9, 12), Image.Resampling.BILINEAR), np.float32) / 255
    np.testing.assert_allclose(evaluation["image"][0], expected, atol=1e-6)


# ------------------------------------------------------------------------------------------------------
# Bad files
# ------------------------------------------------------------------------------------------------------


def folder_with_bad_files(root) -> set[str]:
    """Two classes of good PNGs plus a corrupt JPEG, a zero-byte PNG, a text file named .jpg, a hidden
    file and a README; returns the paths of the three files that must be found unreadable."""
    class_folder(root, {"a": 12, "b": 12})
    good_jpeg = io.BytesIO()
    Image.fromarray(photo(5)).save(good_jpeg, "JPEG", quality=90)
    (root / "a" / "cut.jpg").write_bytes(good_jpeg.getvalue()[:300])  # truncated
    (root / "b" / "empty.png").write_bytes(b"")
    (root / "b" / "words.jpg").write_text("this is not an image")
    (root / "a" / ".DS_Store.png").write_bytes(b"\0\0")
    (root / "README.md").write_text("a dataset")
    return {str(root / "a" / "cut.jpg"), str(root / "b" / "empty.png"), str(root / "b" / "words.jpg")}


def test_unreadable_files_are_replaced_in_training_listed_and_the_batches_stay_deterministic(tmp_path):
    bad = folder_with_bad_files(tmp_path / "f")
    chosen = options(validation_fraction=0.1, test_fraction=0.1)
    source = get_source(f"imagefolder={tmp_path / 'f'}", "train", options=chosen)
    assert ".DS_Store.png" not in " ".join(source.paths)
    assert bad <= set(source.paths)  # every bad file landed in train (the seed-0 carve)
    kwargs = dict(batch_size=6, seed=0, preprocess="none", image_size=(16, 16), num_epochs=2)
    batches = list(pipeline.train_iterator(source, **kwargs))
    assert set(source.unreadable.items()) == bad  # counted and listed exactly
    assert len(batches) == 2 * len(source) // 6  # epochs run on into each other; the last part batch dropped
    again = get_source(f"imagefolder={tmp_path / 'f'}", "train", options=chosen)
    halves = [list(pipeline.train_iterator(again, **kwargs, process_index=p, process_count=2)) for p in (0, 1)]
    for whole, first, second in zip(batches, *halves):  # the same global batches over 2 processes
        np.testing.assert_array_equal(whole["image"], np.concatenate([first["image"], second["image"]]))
        np.testing.assert_array_equal(whole["label"], np.concatenate([first["label"], second["label"]]))


def test_unreadable_files_are_masked_out_of_evaluation(tmp_path):
    bad = folder_with_bad_files(tmp_path / "f")
    source = get_source(f"imagefolder={tmp_path / 'f'}", "train",
                        options=options(validation_fraction=0.1, test_fraction=0.1))
    batches = list(pipeline.eval_batches(source, batch_size=8, preprocess="none", image_size=(16, 16)))
    mask = np.concatenate([b["mask"] for b in batches])
    labels = np.concatenate([b["original_label"] for b in batches])
    readable = [path not in bad for path in source.paths]
    np.testing.assert_array_equal(mask[:len(source)], readable)
    np.testing.assert_array_equal(labels[:len(source)][readable], source.labels[readable])
    assert set(source.unreadable.items()) == bad


def test_read_image_names_the_file_and_why(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("hello")
    for name, why in (("empty.png", "empty file"), ("text.jpg", "not an image"), ("missing.png", "not found")):
        with pytest.raises(images.UnreadableImageError, match=why) as raised:
            images.read_image(str(tmp_path / name))
        assert raised.value.path == str(tmp_path / name) and "\n" not in str(raised.value)


# ------------------------------------------------------------------------------------------------------
# Refusals before any training: one line naming the file or class, nothing written
# ------------------------------------------------------------------------------------------------------


def guarded_run(config, workdir, capfd) -> subprocess.CompletedProcess:
    with pytest.raises(SystemExit) as exited:
        cli.run_guarded(lambda: train.train_and_evaluate(config, str(workdir)))
    out, err = capfd.readouterr()
    return subprocess.CompletedProcess("run_guarded", exited.value.code, out, err)


def folder_config(dataset: str, **overrides):
    config = default.get_config()
    config.dataset = dataset
    config.protocol = ""
    config.num_train_steps = 1
    config.batch_size = 4
    config.update_from_flattened_dict(overrides)
    return config


def refusal_cases(tmp_path):
    """name -> (dataset, overrides, fragments of the one-line error)."""
    class_folder(tmp_path / "ok", {"a": 10, "b": 10})
    class_folder(tmp_path / "small", {"a": 10, "b": 2})
    class_folder(tmp_path / "empty_class", {"a": 10})
    os.makedirs(tmp_path / "empty_class" / "b")
    os.makedirs(tmp_path / "nothing" / "a")
    (tmp_path / "nothing" / "a" / "notes.txt").write_text("no images here")
    save_png(tmp_path / "lists" / "img" / "x.png", photo(0))
    (tmp_path / "lists" / "bad_line.txt").write_text("img/x.png 0\nimg/x.png\n")
    (tmp_path / "lists" / "bad_label.txt").write_text("img/x.png 0\nimg/x.png 5\n")
    (tmp_path / "lists" / "escape.txt").write_text("img/x.png 0\n../../etc/passwd 1\n")
    (tmp_path / "lists" / "names.txt").write_text("cat\ndog\n")
    lists = tmp_path / "lists"
    return {
        "missing root": (f"imagefolder={tmp_path / 'nope'}", {}, ("nope", "not found")),
        "empty class folder": (f"imagefolder={tmp_path / 'empty_class'}", {}, ("empty_class/b", "no image files")),
        "too few images": (f"imagefolder={tmp_path / 'small'}", {}, ("class 'b'", "2 images", "too few")),
        "no images": (f"imagefolder={tmp_path / 'nothing'}", {}, ("nothing/a", "no image files")),
        "unparsable line": (f"imagelist={lists / 'bad_line.txt'}", {}, ("bad_line.txt:2", "relative/path label")),
        "label outside the table": (f"imagelist={lists / 'bad_label.txt'}",
                                    {"data.class_names": str(lists / "names.txt")},
                                    ("bad_label.txt:2", "label 5", "0..1")),
        "path leaving the root": (f"imagelist={lists / 'escape.txt'}", {}, ("escape.txt:2", "leaves the image root")),
        "unknown known class": (f"imagefolder={tmp_path / 'ok'}", {"known_classes": ("a", "zebra")},
                                ("zebra", "its classes are a, b")),
    }


CASES = ("missing root", "empty class folder", "too few images", "no images", "unparsable line",
         "label outside the table", "path leaving the root", "unknown known class")


@pytest.mark.parametrize("case", CASES)
def test_bad_data_is_refused_in_one_line_before_anything_is_written(case, tmp_path, capfd):
    dataset, overrides, fragments = refusal_cases(tmp_path)[case]
    workdir = tmp_path / "run"
    result = guarded_run(folder_config(dataset, **overrides), workdir, capfd)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode != 0 and len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert not workdir.exists()


def test_a_known_class_without_training_images_is_refused(tmp_path, capfd):
    for split, names in {"train": ["a/0.png", "a/1.png", "a/2.png", "a/3.png"],
                         "val": ["a/4.png", "b/5.png"], "test": ["a/6.png", "b/7.png"]}.items():
        for name in names:
            save_png(tmp_path / "f" / split / name, photo(int(name[2])))
    config = folder_config(f"imagefolder={tmp_path / 'f'}", known_classes=("a", "b"))
    result = guarded_run(config, tmp_path / "run", capfd)
    assert "known class 'b' has no training images" in result.stderr
    assert not (tmp_path / "run").exists()


def test_the_unknown_set_is_the_test_files_of_the_other_classes(tmp_path):
    class_folder(tmp_path / "f", {"ant": 10, "bee": 10, "cat": 10, "dog": 10})
    config = folder_config(f"imagefolder={tmp_path / 'f'}", known_classes=("dog", "bee"))
    protocol = experiment.resolve_protocol(config)
    assert protocol.known_classes == (3, 1)  # the user's order
    (unknown,) = protocol.unknown
    test = experiment.data_source(protocol.dataset, protocol.test_split, config=config)
    listing = labelled.folder_listing(str(tmp_path / "f"), options())
    expected = sorted(os.path.join(listing.root, path) for path, label in listing.splits["test"]
                      if label in (0, 2))
    chosen = pipeline.indices_of_classes(test.labels, unknown.classes)
    assert sorted(test.paths[i] for i in chosen) == expected
    with pytest.raises(DatasetNotAvailableError):
        get_source(f"imagefolder={tmp_path / 'missing'}", "train")
