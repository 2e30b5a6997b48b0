"""ResNet layouts: torchvision's ImageNet ResNets, mmpretrain/mmseg ResNetV1c, mmseg's DeepLabv3+.

torchvision (`torchvision.models.resnet50()` and friends; mmpretrain's plain ResNet is the same under
`backbone.`, with `head.fc`):

  conv1, bn1                          -> stem_conv, stem_bn
  layer{s}.{b}.conv{i} / bn{i}        -> stage{s}_block{b+1}/Conv_{i-1} / BatchNorm_{i-1}
  layer{s}.{b}.downsample.0 / .1      -> stage{s}_block{b+1}/proj_conv / proj_bn
  fc (or head.fc)                     -> the image classifier

ResNetV1c (mmseg `ResNetV1c`, mmpretrain `ResNetV1c`; what mmseg's DeepLabv3+ loads): the deep stem
`stem.{0,3,6}` (convs) / `stem.{1,4,7}` (BatchNorms) -> stem_conv{1,2,3} / stem_bn{1,2,3}, the same layers.

mmseg's DeepLabv3+ (`deeplabv3plus_r{50,101}-d8`; mmseg/models/decode_heads/sep_aspp_head.py,
aspp_head.py, fcn_head.py): `backbone.` the ResNetV1c above, and

  decode_head.image_pool.1                      -> decode_head/image_pool (ConvModule: conv + bn)
  decode_head.aspp_modules.0                    -> decode_head/aspp0
  decode_head.aspp_modules.{k}.depthwise_conv   -> decode_head/aspp{k}/depthwise   (k = 1, 2, 3)
  decode_head.aspp_modules.{k}.pointwise_conv   -> decode_head/aspp{k}/pointwise
  decode_head.bottleneck / c1_bottleneck        -> decode_head/bottleneck / skip
  decode_head.sep_bottleneck.{n}.*_conv         -> decode_head/sep_bottleneck{n+1}/{depthwise,pointwise}
  decode_head.conv_seg                          -> the pixel classifier
  auxiliary_head.convs.0 / conv_seg             -> auxiliary_head/conv / classifier
"""

from __future__ import annotations

from lgmm_jax.pretrained.rules import conv_module, rule

_BLOCK = r"layer(\d)\.(\d+)"
_BLOCK_TARGET = "stage{1}_block{2+}"

RESNET_LAYERS = (
    rule(_BLOCK + r"\.conv(\d)", "conv", "encoder", _BLOCK_TARGET + "/Conv_{3-}"),
    rule(_BLOCK + r"\.bn(\d)", "batch_norm", "encoder", _BLOCK_TARGET + "/BatchNorm_{3-}"),
    rule(_BLOCK + r"\.downsample\.0", "conv", "encoder", _BLOCK_TARGET + "/proj_conv"),
    rule(_BLOCK + r"\.downsample\.1", "batch_norm", "encoder", _BLOCK_TARGET + "/proj_bn"),
)

TORCHVISION_RULES = (
    rule(r"conv1", "conv", "encoder", "stem_conv"),
    rule(r"bn1", "batch_norm", "encoder", "stem_bn"),
    *RESNET_LAYERS,
    rule(r"fc|head\.fc", "linear", "image_classifier", ""),
)

_STEM_CONVS = {"0": "1", "3": "2", "6": "3"}
_STEM_NORMS = {"1": "1", "4": "2", "7": "3"}

RESNET_V1C_RULES = (
    rule(r"stem\.([036])", "conv", "encoder", lambda m: f"stem_conv{_STEM_CONVS[m[1]]}"),
    rule(r"stem\.([147])", "batch_norm", "encoder", lambda m: f"stem_bn{_STEM_NORMS[m[1]]}"),
    *RESNET_LAYERS,
    rule(r"head\.fc|fc", "linear", "image_classifier", ""),
)

DEEPLAB_HEAD_RULES = (
    *conv_module(r"decode_head\.image_pool\.1", "decode_head", "image_pool"),
    *conv_module(r"decode_head\.aspp_modules\.0", "decode_head", "aspp0"),
    *conv_module(r"decode_head\.aspp_modules\.(\d)\.depthwise_conv", "decode_head", "aspp{1}/depthwise"),
    *conv_module(r"decode_head\.aspp_modules\.(\d)\.pointwise_conv", "decode_head", "aspp{1}/pointwise"),
    *conv_module(r"decode_head\.bottleneck", "decode_head", "bottleneck"),
    *conv_module(r"decode_head\.c1_bottleneck", "decode_head", "skip"),
    *conv_module(
        r"decode_head\.sep_bottleneck\.(\d)\.depthwise_conv", "decode_head", "sep_bottleneck{1+}/depthwise"
    ),
    *conv_module(
        r"decode_head\.sep_bottleneck\.(\d)\.pointwise_conv", "decode_head", "sep_bottleneck{1+}/pointwise"
    ),
    rule(r"decode_head\.conv_seg", "conv", "pixel_classifier", ""),
    *conv_module(r"auxiliary_head\.convs\.0", "auxiliary_head", "conv"),
    rule(r"auxiliary_head\.conv_seg", "conv", "auxiliary_head", "classifier"),
)


def is_torchvision(names: set[str]) -> bool:
    return "layer1.0.conv1.weight" in names and "conv1.weight" in names


def is_resnet_v1c(names: set[str]) -> bool:
    return "layer1.0.conv1.weight" in names and "stem.0.weight" in names


def is_deeplab(names: set[str]) -> bool:
    return any(name.startswith("decode_head.aspp_modules.") for name in names)
