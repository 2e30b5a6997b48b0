"""Swin layouts: timm's current one, the original Microsoft / older timm one, and mmpretrain's.

timm (>= 0.9, `swin_{tiny,small,base}_patch4_window7_224`):

  patch_embed.proj / .norm                  -> patch_embed / patch_embed_norm
  layers.{i}.downsample.norm / .reduction   -> stage{i}_merge/norm / reduction   (i >= 1: merging at the
                                               START of stage i, i.e. after stage i-1)
  layers.{i}.blocks.{j}.norm1 / norm2       -> stage{i+1}_block{j+1}/norm1 / norm2
  layers.{i}.blocks.{j}.attn.qkv / proj     -> .../attn/qkv / proj
  layers.{i}.blocks.{j}.attn.relative_position_bias_table -> .../attn/relative_position_bias_table
  layers.{i}.blocks.{j}.mlp.fc1 / fc2       -> .../mlp_fc1 / mlp_fc2
  norm                                      -> norm
  head.fc                                   -> the image classifier

The Microsoft checkpoints (`swin_tiny_patch4_window7_224.pth`, wrapped as `{"model": ...}`) and timm
before 0.9 put patch merging at the END of stage i (`layers.{i}.downsample`, i <= 2), call the head
`head`, and carry `relative_position_index` and `attn_mask` buffers (ignored: we compute them). They are
recognised by `layers.0.downsample.reduction.weight`, as timm's own `checkpoint_filter_fn` does.

mmpretrain (`SwinTransformer` under `backbone.`, `head.fc`; mmseg's Swin has the same modules): the
patch embedding `patch_embed.projection`, blocks `stages.{i}.blocks.{j}` with `attn.w_msa.*` and
`ffn.layers.0.0` / `ffn.layers.1`, patch merging `stages.{i}.downsample` at the END of stage i built on
nn.Unfold, whose 4C channels are ordered [channel, 2x2 position] where ours (timm's) are [position,
channel] with positions (0,0), (1,0), (0,1), (1,1): the merging's norm and reduction are reordered. The
output norm of the last stage is `norm3`; the other stages' `norm{i}` (mmseg) are not ours and are
ignored. mmpretrain's classifiers shrink the window to maps no larger than it without shifting (timm's
and our convention); mmseg's segmentation Swin keeps shifting there.
"""

from __future__ import annotations

import re

import numpy as np

from lgmm_jax.pretrained.rules import State, rule, substitute

_BLOCK = r"layers\.(\d)\.blocks\.(\d+)"
_TARGET = "stage{1+}_block{2+}"

SWIN_RULES = (
    rule(r"patch_embed\.proj", "conv", "encoder", "patch_embed"),
    rule(r"patch_embed\.norm", "layer_norm", "encoder", "patch_embed_norm"),
    rule(r"layers\.(\d)\.downsample\.norm", "layer_norm", "encoder", "stage{1}_merge/norm"),
    rule(r"layers\.(\d)\.downsample\.reduction", "linear", "encoder", "stage{1}_merge/reduction"),
    rule(_BLOCK + r"\.(norm[12])", "layer_norm", "encoder", _TARGET + "/{3}"),
    rule(_BLOCK + r"\.attn\.(qkv|proj)", "linear", "encoder", _TARGET + "/attn/{3}"),
    rule(_BLOCK + r"\.attn", "swin_attention", "encoder", _TARGET + "/attn"),
    rule(_BLOCK + r"\.mlp\.(fc[12])", "linear", "encoder", _TARGET + "/mlp_{3}"),
    rule(r"norm", "layer_norm", "encoder", "norm"),
    rule(r"head\.fc", "linear", "image_classifier", ""),
)

_OLD_TO_NEW = substitute((
    (r"^layers\.(\d+)\.downsample\.", lambda m: f"layers.{int(m[1]) + 1}.downsample."),
    (r"^head\.(weight|bias)$", r"head.fc.\1"),
))


_MMPRETRAIN_TO_TIMM = substitute((
    (r"^backbone\.", ""),
    (r"^patch_embed\.projection\.", "patch_embed.proj."),
    (r"^stages\.(\d+)\.blocks\.", r"layers.\1.blocks."),
    (r"\.attn\.w_msa\.", ".attn."),
    (r"\.ffn\.layers\.0\.0\.", ".mlp.fc1."),
    (r"\.ffn\.layers\.1\.", ".mlp.fc2."),
    (r"^stages\.(\d+)\.downsample\.", lambda m: f"layers.{int(m[1]) + 1}.downsample."),
    (r"^norm3\.", "norm."),
))
_UNFOLD_POSITIONS = [0, 2, 1, 3]  # unfold's index (kh * 2 + kw) of our positions (0,0), (1,0), (0,1), (1,1)


def _from_unfold_order(value: np.ndarray) -> np.ndarray:
    """[..., 4C] with channels ordered (c, kh, kw) -> ordered (position, c) as our patch merging's."""
    *lead, width = value.shape
    if width % 4:
        return value
    value = value.reshape(*lead, width // 4, 4)[..., _UNFOLD_POSITIONS]
    return np.swapaxes(value, -1, -2).reshape(*lead, width)


def is_swin(names: set[str]) -> bool:
    return "patch_embed.proj.weight" in names and "layers.0.blocks.0.attn.qkv.weight" in names


def is_old_swin(names: set[str]) -> bool:
    return "layers.0.downsample.reduction.weight" in names


def is_mmpretrain_swin(names: set[str]) -> bool:
    return any(n.endswith("stages.0.blocks.0.attn.w_msa.qkv.weight") for n in names)


def mmpretrain_to_current(state: State) -> State:
    """mmpretrain / mmseg Swin names -> current timm names; patch merging channels reordered."""
    state = state.renamed(_MMPRETRAIN_TO_TIMM)
    arrays = {
        name: _from_unfold_order(value) if re.search(r"\.downsample\.(norm|reduction)\.", name) else value
        for name, value in state.arrays.items()
    }
    return State(arrays, state.origins)


def old_to_current(state: State) -> State:
    """Microsoft / old timm names -> current timm names (patch merging moved to the next stage)."""
    return state.renamed(_OLD_TO_NEW)
