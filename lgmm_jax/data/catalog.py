"""Which source a dataset name is: the one place that maps a name to its source class.

Classification names (`get_source`): the bundled sets and TFDS datasets of `sources`, the testbed's
garments (`scenes`), unlabelled ``folder=`` sets (`sources`) and users' labelled ``imagefolder=`` /
``imagelist=`` images (`labelled`); their table is `sources`' docstring. Segmentation names
(`get_segmentation_source`): the testbed, ADE20K, Cityscapes and anomaly folders of `segmentation`, and
users' ``segfolder=`` folders (`segfolder`); their table is `segmentation`'s docstring. Only this module
imports every source module, and none of them imports it: no import runs in a circle.
"""

from __future__ import annotations

from lgmm_jax.data import labelled, scenes, segfolder, segmentation, sources


def get_source(name: str, split: str, data_dir: str | None = None, options=None) -> sources.Source:
    """Returns the random-access source of ``split`` of dataset ``name`` (`sources` lists them).

    Args:
      name: ``digits``, ``fashion_mnist``, ``mnist_5k``, ``scenes_garments`` (`scenes.load_garments_source`),
        ``folder=PATH`` (a folder of image files), ``imagefolder=PATH`` / ``imagelist=FILE`` (labelled
        images, `labelled`), or a TFDS name (``cifar10``, ``imagenet2012``, ...).
      split: ``train`` / ``validation`` / ``test`` for bundled data, ``test`` for a folder; any TFDS split
        string otherwise.
      data_dir: folder of the Fashion-MNIST IDX files, or the TFDS data_dir (may be ``gs://...``).
      options: `labelled.LabelledOptions` of an ``imagefolder=`` / ``imagelist=`` source (None = defaults).
    Raises:
      DatasetNotAvailableError: the data is not installed / not prepared (the message says how to get it).
      ValueError: unknown dataset or split.
    """
    if name == "digits":
        return sources.load_digits_source(split)
    if name == "fashion_mnist":
        return sources.load_fashion_mnist_source(split, data_dir)
    if name == "mnist_5k":
        return sources.load_mnist_5k_source(split)
    if name == "scenes_garments":  # the segmentation testbed's garments, one per image
        return scenes.load_garments_source(split, data_dir)
    if name.startswith(sources.FOLDER_PREFIX):
        return sources.load_image_folder_source(name, split)
    if labelled.is_labelled(name):
        return labelled.LabelledImageSource(name, split, options or labelled.LabelledOptions())
    return sources.TfdsSource(name, split, data_dir)


def get_segmentation_source(name: str, split: str, data_dir: str | None = None, options=None):
    """The segmentation source of ``split`` of ``name`` (`segmentation` lists them).

    Args:
      name: ``scenes``, ``ade20k``, ``cityscapes``, ``folder=PATH`` (an anomaly set) or ``segfolder=PATH``
        (a labelled folder, `segfolder`).
      split: a split of that source (any TFDS split string for the TFDS datasets).
      data_dir: the testbed's cache folder, the folder holding ADEChallengeData2016, or the TFDS data_dir
        (may be ``gs://...``).
      options: a ``segfolder=`` source's options (the config's ``segfolder`` block, a mapping; None = the
        defaults); the other sources take none.
    Raises:
      DatasetNotAvailableError: the data is not prepared / unpacked (the message says how to get it).
      ValueError: unknown dataset or split.
    """
    if name.startswith(segfolder.SEGFOLDER_PREFIX):
        folder = name[len(segfolder.SEGFOLDER_PREFIX):]
        return segfolder.SegFolderSource(folder, split, segfolder.SegFolderOptions.from_mapping(options))
    if name == "scenes":
        return segmentation.ScenesSource(split, data_dir)
    if name == "ade20k":
        return segmentation.Ade20kSource(split, data_dir)
    if name == "scene_parse150":
        raise ValueError(segmentation.SCENE_PARSE150_REFUSED)
    if name.startswith(sources.FOLDER_PREFIX):
        if split != "test":
            raise ValueError(f"unknown split {split!r} for {name}: use test")
        return segmentation.AnomalyFolderSource(name[len(sources.FOLDER_PREFIX):])
    if name in segmentation.TFDS_SEGMENTATION:
        return segmentation.TfdsSegmentationSource(name, split, data_dir)
    raise ValueError(f"unknown segmentation dataset {name!r}: use one of {', '.join(segmentation.SEGMENTATION_DATASETS)}, "
                     "segfolder=PATH or folder=PATH")
