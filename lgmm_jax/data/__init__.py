"""The data layer: where examples come from and how they become batches.

    catalog.py     a dataset name -> its source (the one place that knows every source module)
    sources.py     the source interface, bundled real data (digits, Fashion-MNIST, MNIST-5k), TFDS, folder= sets
    labelled.py    your own labelled images in place: imagefolder= / imagelist= (carved splits, class table)
    images.py      finding and decoding image files (EXIF, every mode), unreadable files
    protocols.py   open-set protocols: the known classes and the unknown sets
    pipeline.py    grain training and evaluation streams, presets, normalisation
    reading.py     who computes the batches: threads, worker processes, a resumable position
    settings.py    what the config's data keys mean
    augment.py, randaugment.py, seg_augment.py   the augmentations
    scenes.py, segmentation.py, segfolder.py     the segmentation testbed and segmentation sources

Import the module you need (``from lgmm_jax.data import pipeline``); this package imports none of them,
so that a light caller (an exported model's loader) pays only for what it uses.
"""
