"""Recognising a checkpoint's layout from its entry names, and converting it into `Entry`s.

`detect(names, file)` returns the `Layout`; `layout.convert(state_dict, file)` returns our entries and the
file's names left unused. The layouts (see `resnets`, `swins`, `segformers` for the names):

  torchvision ResNet                ImageNet classifiers (`conv1`, `layer*`, `fc`); mmpretrain's ResNet
  ResNetV1c                         mmpretrain / mmseg deep-stem ResNet (`stem.*`, `layer*`), `backbone.`
  mmseg DeepLabv3+                  ResNetV1c + `decode_head.aspp_modules...` + `auxiliary_head`
  timm Swin                         `layers.{i}.downsample` at the start of stage i
  Microsoft / old timm Swin         `layers.{i}.downsample` at the end of stage i
  mmpretrain Swin                   `backbone.stages.{i}`, `w_msa`, nn.Unfold patch merging
  Hugging Face SegFormer            `segformer.encoder.*` (hub) or `segformer.stages.*` (transformers 5)
  NVlabs SegFormer / MiT            `patch_embed1.proj`, `block1.0.attn.kv`, optional `backbone.` prefix
  mmseg SegFormer / MiT             `layers.{i}.{0,1,2}`, `decode_head.convs`, optional `backbone.`
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

import numpy as np

from lgmm_jax.pretrained import resnets, segformers, swins
from lgmm_jax.pretrained.rules import Entry, Rule, State, WeightsError, apply_rules, first_names, strip_prefix


@dataclasses.dataclass(frozen=True)
class Layout:
    """A recognised checkpoint layout.

    Attributes:
      name: what the file is, for messages and the report.
      canonical: renames (and fuses) the file's entries into the names `rules` read.
      rules: the renaming onto our modules.
      options: keyword arguments of `models.create_segmenter` (e.g. `{"decoder_kwargs": {...}}`) that
        make our model compute what the file's implementation computes; {} where the defaults do.
    """

    name: str
    canonical: Callable[[State], State]
    rules: tuple[Rule, ...]
    options: Mapping = dataclasses.field(default_factory=dict)

    def convert(self, state: Mapping[str, np.ndarray], file: str) -> tuple[list[Entry], list[str]]:
        return apply_rules(self.canonical(State(dict(state))), self.rules, file)


def _backbone_stripped(state: State) -> State:
    return strip_prefix(state, "backbone.")


def _without_backbone_prefix(names: set[str]) -> set[str]:
    return {n.removeprefix("backbone.") for n in names}


KNOWN = (
    "torchvision ResNet, mmpretrain/mmseg ResNetV1c, mmseg DeepLabv3+, timm, Microsoft or mmpretrain Swin, "
    "NVlabs, Hugging Face or mmseg SegFormer/MiT"
)


def detect(names, file: str) -> Layout:
    """The layout of a state dict with entry names `names`; WeightsError naming the file if none fits."""
    names = set(names)
    bare = _without_backbone_prefix(names)
    if segformers.is_hf_segformer(names):
        return Layout("Hugging Face SegFormer", segformers.hf_to_nvlabs, segformers.MIT_RULES,
                      segformers.segformer_options("hf", names))
    if segformers.is_nvlabs_mit(names):
        return Layout("NVlabs SegFormer/MiT", segformers.nvlabs, segformers.MIT_RULES,
                      segformers.segformer_options("nvlabs", names))
    if segformers.is_mmseg_mit(names):
        return Layout("mmseg SegFormer/MiT", segformers.mmseg_to_nvlabs, segformers.MIT_RULES,
                      segformers.segformer_options("mmseg", names))
    if swins.is_mmpretrain_swin(names):
        return Layout("mmpretrain Swin", swins.mmpretrain_to_current, swins.SWIN_RULES)
    if swins.is_swin(names):
        if swins.is_old_swin(names):
            return Layout("Microsoft / old timm Swin", swins.old_to_current, swins.SWIN_RULES)
        return Layout("timm Swin", lambda state: state, swins.SWIN_RULES)
    if resnets.is_resnet_v1c(bare):
        if resnets.is_deeplab(names):
            rules = resnets.RESNET_V1C_RULES + resnets.DEEPLAB_HEAD_RULES
            return Layout("mmseg DeepLabv3+", _backbone_stripped, rules)
        return Layout("ResNetV1c", _backbone_stripped, resnets.RESNET_V1C_RULES)
    if resnets.is_torchvision(bare):
        return Layout("torchvision ResNet", _backbone_stripped, resnets.TORCHVISION_RULES)
    raise WeightsError(
        f"{file}: unknown layout (entries {first_names(sorted(names))}); readable layouts: {KNOWN}"
    )
