"""What a config asks to train and evaluate on: the protocol, its sources, and its input streams.

A config either names an open-set protocol (`config.protocol`, see `lgmm_jax.data.protocols`), which fixes
the known classes and the unknown sets, or trains on every class of `config.dataset` and treats each
`config.ood_datasets` entry as out-of-distribution data. An entry is "dataset:split" (split defaults to
'test'), or "folder=PATH" for a folder of image files (everything after '=' is the path, ':' included;
the folder's only split is 'test'), e.g. `ood_datasets=('svhn_cropped:test', 'folder=/data/LSUN_resize')`.
Named protocols get the entries as extra unknown sets.

`config.task` says what an example is, and with it where the data comes from, how training batches are
made and what the network takes (`lgmm_jax.tasks`: 'classification', an image and its class;
'segmentation', the labelled pixels of an image, whose unknown sets are anomaly-map sets such as
'scenes:test_near' or 'folder=/data/fishyscapes_lostandfound').
"""

from __future__ import annotations

import dataclasses
import os

import ml_collections

from lgmm_jax import heads, tasks
from lgmm_jax.data import labelled, pipeline, settings
from lgmm_jax.data.protocols import DataRef, OpenSetProtocol, get_protocol
from lgmm_jax.data.sources import FOLDER_PREFIX, Source
from lgmm_jax.models.configured import compute_dtype
from lgmm_jax.runtime.sharding import check_batch_size, eval_batch_size
from lgmm_jax.training.state import create_optimizer


METHODS = ("library", "paper", "gmmseg")


def paper_method_settings(config: ml_collections.ConfigDict) -> dict:
    """The keys `method=paper` pins: Section 2 exactly as written, none of the library's departures.

    Gradient steps on L_G (Eq. 5-6) instead of M-steps; Eq. 7's posterior untempered (T = 1); a diagonal
    scale per component; responsibilities' argmax as the assignments (no Sinkhorn balancing) and no
    k-means re-seed; every remembered latent of the memory bank in each step (Appendix B.2); the latent
    as the projection gives it (Section 5.1: a convolution to 128 dimensions, no normalisation).
    """
    return {
        "model.latent_normalization": "none",
        "model.gmm_update": "gradient",
        "model.variant": "equations",
        "model.share_scale": False,
        "loss.discriminative_temperature": 1.0,
        "loss.assignment": "posterior",
        "loss.reseed_epochs": (),
        "loss.bank_sample_size": config.memory_size,
    }


def gmmseg_method_settings(config: ml_collections.ConfigDict) -> dict:
    """The keys `method=gmmseg` pins (segmentation): the per-pixel head as GMMSeg's code builds and trains
    it (`lgmm_jax.method.gmmseg`). A 1x1 ConvModule to 64 dimensions, LayerNorm (epsilon 1e-5) and L2; unit-norm
    means with per-component diagonal scales starting at 1 and no floor; the best component per class
    and a LayerNorm over the classes as the decode scores; the Gaussians updated from GMMSeg's queues
    (`config.segmentation.gmmseg` holds its numbers). The component count stays the config's (GMMSeg: 5,
    8 in its ADE20K SegFormer-B5 config)."""
    del config
    return {
        "model.latent_dim": 64,
        "model.latent_projection": "conv_bn_relu",
        "model.latent_normalization": "layernorm_l2",
        "model.latent_norm_epsilon": 1e-5,
        "model.class_norm": True,
        "model.share_scale": False,
        "model.variant": "appendix_g",
        "model.scale_floor": 0.0,
        "model.init_scale": 1.0,
        "model.gmm_update": "gmmseg",
        "loss.reseed_epochs": (),
    }


METHOD_SETTINGS = {"paper": paper_method_settings, "gmmseg": gmmseg_method_settings}


def resolve_method(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """`config` with `method` applied: 'library' (the defaults as configured) leaves it as it is, 'paper'
    and 'gmmseg' return a copy with `paper_method_settings` / `gmmseg_method_settings` written in (they
    win over the same keys set elsewhere), except the keys named in `method_except`, which keep the
    config's value (an ablation: the method with one of its departures undone)."""
    method = config.get("method", "library")
    if method not in METHODS:
        raise ValueError(f"method={method!r} is not one of {METHODS}")
    exceptions = tuple(config.get("method_except", ()))
    if method == "library":
        if exceptions:
            raise ValueError(f"method_except={exceptions} needs method='paper' or 'gmmseg': it names keys "
                             "those methods pin; leave it empty with method='library'")
        return config
    settings = METHOD_SETTINGS[method](config)
    unpinned = [key for key in exceptions if key not in settings]
    if unpinned:
        raise ValueError(f"method_except names {unpinned}, which method={method!r} does not pin: "
                         f"use some of {sorted(settings)}")
    resolved = ml_collections.ConfigDict(config.to_dict())
    resolved.update_from_flattened_dict({key: value for key, value in settings.items() if key not in exceptions})
    return resolved


def check_config(config: ml_collections.ConfigDict, num_devices: int, num_processes: int = 1):
    """What a run checks before any work that needs no data, on `num_devices` devices in `num_processes`
    processes: the method, every batch size it will use (the training batch must split evenly; the
    evaluation batch is rounded up to the device count), the model's and the optimiser's settings.
    Returns the config with its method applied (`resolve_method`); raises ValueError naming the key."""
    config = resolve_method(config)
    task = tasks.get(config)
    if config.get("method", "library") not in task.methods:
        raise ValueError(f"method={config.method!r} does not apply to task={task.name!r}: use one of {task.methods}")
    task.check_config(config)
    check_batch_size(config.batch_size, num_devices, num_processes)
    eval_batch_size(config, num_devices)
    heads.get(config.model).check_config(config)  # model.head, model.gmm_update and the head's own settings
    create_optimizer(config, steps_per_epoch=1, total_steps=1)  # names of optimiser and schedule
    compute_dtype(config.model.dtype)
    return config


def parse_data_ref(spec: str) -> DataRef:
    """'dataset:split' -> DataRef (split defaults to 'test'); 'folder=PATH' -> the folder's 'test' split."""
    if spec.startswith(FOLDER_PREFIX):
        if not spec[len(FOLDER_PREFIX):]:
            raise ValueError(f"ood_datasets entry {spec!r} has no path: write 'folder=/path/to/images'")
        return DataRef(spec, "test")
    dataset, _, split = spec.partition(":")
    if not dataset:
        raise ValueError(f"ood_datasets entry {spec!r} is empty: write 'dataset:split', e.g. 'mnist_5k:test'")
    return DataRef(dataset, split or "test")


def extra_unknown_sets(config: ml_collections.ConfigDict) -> tuple[DataRef, ...]:
    """The config's unknown sets beyond its protocol's: `ood_datasets`, then each of `ood_folders` below
    `ood_folder_root` (when the root is set) as a `folder=` set."""
    specs = list(config.ood_datasets)
    root = config.get("ood_folder_root")
    if root:
        specs += [f"{FOLDER_PREFIX}{os.path.join(root, name)}" for name in config.get("ood_folders", ())]
    return tuple(parse_data_ref(spec) for spec in specs)


def known_class_ids(config: ml_collections.ConfigDict) -> tuple[int, ...] | None:
    """The ids of `config.known_classes` (names, in model order) among the training source's classes, or
    None when the config names none (every class known)."""
    names = [str(name) for name in config.get("known_classes", ())]
    if not names:
        return None
    label_names = tuple(data_source(config.dataset, config.train_split, config=config).label_names)
    missing = [name for name in names if name not in label_names]
    if missing:
        raise ValueError(f"known_classes {missing} are not classes of {config.dataset}: its classes are "
                         f"{', '.join(label_names)}")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"known_classes names {repeated} more than once: name each known class once")
    return tuple(label_names.index(name) for name in names)


def resolve_protocol(config: ml_collections.ConfigDict) -> OpenSetProtocol:
    """The protocol the config describes: a named one; or training on `config.dataset` with the classes
    of `known_classes` known (all when it is empty) and the other classes of its test split unknown."""
    if config.protocol and config.get("known_classes", ()):
        raise ValueError(f"protocol {config.protocol!r} fixes the known classes: set --config.protocol='' to "
                         "name them with known_classes, or leave known_classes empty")
    if config.protocol:
        protocol = get_protocol(config.protocol, config.protocol_split)
        if protocol.dataset != config.dataset:
            raise ValueError(
                f"protocol {config.protocol!r} trains on {protocol.dataset!r} but dataset={config.dataset!r}: "
                f"set --config.dataset={protocol.dataset} or --config.protocol=''"
            )
        return dataclasses.replace(protocol, unknown=protocol.unknown + extra_unknown_sets(config))
    known = known_class_ids(config)
    own_unknown = ()
    if known is not None:
        num_classes = data_source(config.dataset, config.train_split, config=config).num_classes
        other = tuple(label for label in range(num_classes) if label not in known)
        own_unknown = (DataRef(config.dataset, config.test_split, other),) if other else ()
    return OpenSetProtocol(
        name=config.dataset,
        dataset=config.dataset,
        known_classes=known,
        unknown=own_unknown + extra_unknown_sets(config),
        train_split=config.train_split,
        validation_split=config.validation_split,
        test_split=config.test_split,
        preprocess=config.preprocess,
    )


def resolved_data(config: ml_collections.ConfigDict, protocol: OpenSetProtocol, train_source: Source
                  ) -> ml_collections.ConfigDict:
    """`config` with what its training data decided written in (config.json records it; evaluation,
    export and prediction read it from there): `data.image_size` where the images vary in size and the
    preset does not resize (the first training image's size), and a labelled source's class table
    (`data.classes`: id, name and the folder or list each class comes from)."""
    updates = {}
    preset = settings.preprocess_preset(config, protocol)
    shape = getattr(train_source, "image_shape", None)  # segmentation sources have none: the crop decides
    varying = shape is not None and None in tuple(shape)[:2]
    if varying and not pipeline.resizes_to_network_input(preset) and settings.input_image_size(config) is None:
        if not hasattr(train_source, "first_image_size"):
            raise ValueError(f"the images of {config.dataset} vary in size: set --config.data.image_size='(H, W)' "
                             "or a preprocess preset that resizes (imagenet, imagenet_swin)")
        updates["image_size"] = tuple(train_source.first_image_size())
    if isinstance(train_source, labelled.LabelledImageSource):
        updates["classes"] = train_source.listing.class_map()
    if not updates:
        return config
    values = config.to_dict()
    values.setdefault("data", {}).update(updates)
    return ml_collections.ConfigDict(values)


def model_input_shape(config: ml_collections.ConfigDict, protocol: OpenSetProtocol, train_source: Source):
    """(H, W, C) of the images the network takes (the task's: the training images' shape, the ImageNet
    crop, or the segmentation training crop)."""
    return tasks.get(config).model_input_shape(config, train_source, settings.preprocess_preset(config, protocol))


def data_source(ref_or_name, split: str | None = None, *, config: ml_collections.ConfigDict) -> Source:
    """get_source (get_segmentation_source for segmentation) with the config's data_dir (bundled
    Fashion-MNIST folder, the testbed's cache or TFDS data_dir)."""
    return tasks.get(config).data_source(config, ref_or_name, split)


def train_stream(config, protocol: OpenSetProtocol, source: Source):
    """This process's part of each global training batch (the task's), resumable through
    get_state/set_state."""
    return tasks.get(config).train_stream(config, protocol, source, settings.preprocess_preset(config, protocol))
