"""Published checkpoints of reference implementations -> this library's flax variables.

    from lgmm_jax import models, pretrained
    options = pretrained.model_options("model.safetensors")          # {} or {"decoder_kwargs": {...}}
    model = models.create_segmenter("segformer_b0", num_classes=19, **options)
    variables, report = pretrained.load_variables(model, "model.safetensors", image_shape=(1, 64, 96, 3))
    logits = model.apply(variables, images, train=False)   # images NHWC float32, already normalised

`report` = {"layout", "loaded": our arrays filled, "fresh": ours left at init, "ignored": the file's
entries not used}. `what="backbone"` fills only the encoder. Every failure is a `WeightsError`
(a ValueError) with a one-line message naming the file.

Layouts, recognised from the entry names (`layouts.py`, with the name tables in `resnets.py`,
`swins.py`, `segformers.py`):
- torchvision ResNet-50/101 (ImageNet) -> `models.create_classifier("resnet50" | "resnet101", C)`;
- mmpretrain / mmseg ResNetV1c (`stem.*`, `layer*`, optionally under `backbone.`) -> the DeepLabv3+
  encoders; mmseg's DeepLabv3+ R50/R101-D8 (`decode_head.*`, `auxiliary_head.*`) -> the whole segmenter;
- Swin-T/S/B, timm's current layout, the Microsoft / older timm one (`relative_position_index`,
  `attn_mask` ignored as buffers) and mmpretrain's (`backbone.stages.*`, nn.Unfold patch merging)
  -> `create_classifier("swin_t" | "swin_s" | "swin_b", C)`;
- MiT-B0..B5 / SegFormer as NVlabs (`mit_b*.pth`, `segformer.*.pth`), Hugging Face (hub names and
  transformers >= 5 names) and mmseg ship them -> the SegFormer segmenters.

Conventions that change outputs follow the file: Hugging Face's SegFormer LayerNorms use eps 1e-5
(NVlabs and our default 1e-6), mmseg's 1e-6 everywhere and mmseg's decode head projects with
conv+BN+ReLU. A model built otherwise is refused with a message; `model_options(path)` gives the
create_segmenter kwargs that fit (for `what="backbone"` only the encoder's count).

Reading: `.safetensors` (numpy, no torch), `.pth/.pt/.bin/.ckpt` through `torch.load(weights_only=True)`
when torch is installed (`pip install -e '.[torch]'`), `.npz`; local paths or gs:// (etils.epath).
`transfer_encoder` copies the encoder of one of this library's runs into another model.
"""

from lgmm_jax.pretrained.files import read_state_dict
from lgmm_jax.pretrained.layouts import Layout, detect
from lgmm_jax.pretrained.loading import convert_state, load_variables, model_options, plan, role_roots
from lgmm_jax.pretrained.rules import STRUCTURAL_LEAVES, WeightsError
from lgmm_jax.pretrained.transfer import encoder_root, transfer_encoder

__all__ = [
    "STRUCTURAL_LEAVES",
    "Layout",
    "WeightsError",
    "convert_state",
    "detect",
    "encoder_root",
    "load_variables",
    "model_options",
    "plan",
    "read_state_dict",
    "role_roots",
    "transfer_encoder",
]
