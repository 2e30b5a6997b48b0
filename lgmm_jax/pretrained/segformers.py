"""SegFormer / MiT layouts: NVlabs, Hugging Face (hub names and transformers >= 5 names), mmseg.

All three are first renamed to NVlabs' names (`mix_transformer.py`, `segformer_head.py`), which then map
onto ours:

  patch_embed{s}.proj / .norm          -> patch_embed{s} / patch_embed{s}_norm
  block{s}.{j}.norm1 / norm2           -> stage{s}_block{j+1}/norm1 / norm2
  block{s}.{j}.attn.q / kv / proj      -> .../attn/q / kv / proj    (kv: keys' rows, then values')
  block{s}.{j}.attn.sr / norm          -> .../attn/sr / sr_norm
  block{s}.{j}.mlp.fc1 / fc2 / dwconv.dwconv -> .../ffn/fc1 / fc2 / dwconv
  norm{s}                              -> stage{s}_norm
  head                                 -> the image classifier (the `mit_b*.pth` ImageNet files)
  decode_head.linear_c{i}.proj         -> decode_head/linear_c{i}              (Linear projections)
  decode_head.linear_c{i}.conv / .bn   -> decode_head/linear_c{i}/conv / bn    (mmseg's ConvModules)
  decode_head.linear_fuse.conv / .bn   -> decode_head/linear_fuse / linear_fuse_bn
  decode_head.linear_pred              -> the pixel classifier

Hugging Face (`SegformerForSemanticSegmentation`, `SegformerForImageClassification`, `SegformerModel`):
`segformer.encoder.patch_embeddings.{i}`, `encoder.block.{i}.{j}` with `attention.self.query/key/value`
(key and value are fused into `kv` here), `attention.self.sr/layer_norm`, `attention.output.dense`,
`mlp.dense1/dwconv.dwconv/dense2`, `layer_norm_1/2`, `encoder.layer_norm.{i}`; `decode_head.linear_c.{i}`,
`linear_fuse` (conv), `batch_norm`, `classifier`. transformers >= 5 saves other names (`stages.{i}`,
`q_proj`, `sequence_reduction`, `layernorm_before`, `linear_projections`, ...: the inverse of its own
`conversion_mapping.py`), read as well. Its LayerNorms all use eps 1e-5.

mmseg (`MixVisionTransformer`, `SegformerHead`): `layers.{i}.0` patch embedding (`projection`, `norm`),
`layers.{i}.1.{j}` blocks (`attn.attn.in_proj_weight` = [q; k; v] rows of nn.MultiheadAttention,
`attn.attn.out_proj`, `attn.sr`, `attn.norm`, `ffn.layers.{0,1,4}` = 1x1 conv, depthwise conv, 1x1
conv), `layers.{i}.2` stage norm, all LayerNorms eps 1e-6; head `decode_head.convs.{i}` (ConvModules),
`fusion_conv` over the stages concatenated as [1, 2, 3, 4] (reordered here to our [4, 3, 2, 1]),
`conv_seg`.
"""

from __future__ import annotations

import numpy as np

from lgmm_jax.pretrained.rules import State, rule, strip_prefix, substitute

_BLOCK = r"block(\d)\.(\d+)"
_TARGET = "stage{1}_block{2+}"

MIT_RULES = (
    rule(r"patch_embed(\d)\.proj", "conv", "encoder", "patch_embed{1}"),
    rule(r"patch_embed(\d)\.norm", "layer_norm", "encoder", "patch_embed{1}_norm"),
    rule(_BLOCK + r"\.(norm[12])", "layer_norm", "encoder", _TARGET + "/{3}"),
    rule(_BLOCK + r"\.attn\.(q|kv|proj)", "linear", "encoder", _TARGET + "/attn/{3}"),
    rule(_BLOCK + r"\.attn\.sr", "conv", "encoder", _TARGET + "/attn/sr"),
    rule(_BLOCK + r"\.attn\.norm", "layer_norm", "encoder", _TARGET + "/attn/sr_norm"),
    rule(_BLOCK + r"\.mlp\.(fc[12])", "linear", "encoder", _TARGET + "/ffn/{3}"),
    rule(_BLOCK + r"\.mlp\.dwconv\.dwconv", "conv", "encoder", _TARGET + "/ffn/dwconv"),
    rule(r"norm(\d)", "layer_norm", "encoder", "stage{1}_norm"),
    rule(r"head", "linear", "image_classifier", ""),
    rule(r"decode_head\.linear_c(\d)\.proj", "linear", "decode_head", "linear_c{1}"),
    rule(r"decode_head\.linear_c(\d)\.conv", "conv", "decode_head", "linear_c{1}/conv"),
    rule(r"decode_head\.linear_c(\d)\.bn", "batch_norm", "decode_head", "linear_c{1}/bn"),
    rule(r"decode_head\.linear_fuse\.conv", "conv", "decode_head", "linear_fuse"),
    rule(r"decode_head\.linear_fuse\.bn", "batch_norm", "decode_head", "linear_fuse_bn"),
    rule(r"decode_head\.linear_pred", "conv", "pixel_classifier", ""),
)

_plus_one = lambda fmt: lambda m: fmt.format(int(m[1]) + 1)

HF_V5_TO_V4 = substitute((
    (r"^stages\.(\d+)\.patch_embeddings\.", r"encoder.patch_embeddings.\1."),
    (r"^stages\.(\d+)\.blocks\.", r"encoder.block.\1."),
    (r"^stages\.(\d+)\.layer_norm\.", r"encoder.layer_norm.\1."),
    (r"attention\.q_proj\.", "attention.self.query."),
    (r"attention\.k_proj\.", "attention.self.key."),
    (r"attention\.v_proj\.", "attention.self.value."),
    (r"attention\.o_proj\.", "attention.output.dense."),
    (r"attention\.sequence_reduction\.sequence_reduction\.", "attention.self.sr."),
    (r"attention\.sequence_reduction\.layer_norm\.", "attention.self.layer_norm."),
    (r"\.mlp\.fc1\.", ".mlp.dense1."),
    (r"\.mlp\.fc2\.", ".mlp.dense2."),
    (r"\.layernorm_before\.", ".layer_norm_1."),
    (r"\.layernorm_after\.", ".layer_norm_2."),
    (r"^decode_head\.linear_projections\.", "decode_head.linear_c."),
))

HF_V4_TO_NVLABS = substitute((
    (r"^encoder\.patch_embeddings\.(\d+)\.proj\.", _plus_one("patch_embed{}.proj.")),
    (r"^encoder\.patch_embeddings\.(\d+)\.layer_norm\.", _plus_one("patch_embed{}.norm.")),
    (r"^encoder\.block\.(\d+)\.", _plus_one("block{}.")),
    (r"^encoder\.layer_norm\.(\d+)\.", _plus_one("norm{}.")),
    (r"\.layer_norm_([12])\.", r".norm\1."),
    (r"\.attention\.self\.query\.", ".attn.q."),
    (r"\.attention\.self\.key\.", ".attn.k."),
    (r"\.attention\.self\.value\.", ".attn.v."),
    (r"\.attention\.self\.sr\.", ".attn.sr."),
    (r"\.attention\.self\.layer_norm\.", ".attn.norm."),
    (r"\.attention\.output\.dense\.", ".attn.proj."),
    (r"\.mlp\.dense([12])\.", r".mlp.fc\1."),
    (r"^decode_head\.linear_c\.(\d+)\.proj\.", _plus_one("decode_head.linear_c{}.proj.")),
    (r"^decode_head\.linear_fuse\.", "decode_head.linear_fuse.conv."),
    (r"^decode_head\.batch_norm\.", "decode_head.linear_fuse.bn."),
    (r"^decode_head\.classifier\.", "decode_head.linear_pred."),
    (r"^classifier\.", "head."),
))

MMSEG_TO_NVLABS = substitute((
    (r"^layers\.(\d+)\.0\.projection\.", _plus_one("patch_embed{}.proj.")),
    (r"^layers\.(\d+)\.0\.norm\.", _plus_one("patch_embed{}.norm.")),
    (r"^layers\.(\d+)\.1\.", _plus_one("block{}.")),
    (r"^layers\.(\d+)\.2\.", _plus_one("norm{}.")),
    (r"\.attn\.attn\.out_proj\.", ".attn.proj."),
    (r"\.attn\.attn\.in_proj_", ".attn.in_proj."),
    (r"\.ffn\.layers\.0\.", ".mlp.fc1."),
    (r"\.ffn\.layers\.1\.", ".mlp.dwconv.dwconv."),
    (r"\.ffn\.layers\.4\.", ".mlp.fc2."),
    (r"^decode_head\.convs\.(\d+)\.", _plus_one("decode_head.linear_c{}.")),
    (r"^decode_head\.fusion_conv\.", "decode_head.linear_fuse."),
    (r"^decode_head\.conv_seg\.", "decode_head.linear_pred."),
))


def is_hf_segformer(names: set[str]) -> bool:
    return any(n.startswith(("segformer.encoder.", "segformer.stages.", "encoder.patch_embeddings.",
                             "stages.0.patch_embeddings.")) for n in names)


def is_nvlabs_mit(names: set[str]) -> bool:
    return "patch_embed1.proj.weight" in names or "backbone.patch_embed1.proj.weight" in names


def is_mmseg_mit(names: set[str]) -> bool:
    return "layers.0.0.projection.weight" in names or "backbone.layers.0.0.projection.weight" in names


def _fuse_key_value(state: State) -> State:
    """`attn.k` and `attn.v` -> NVlabs' `attn.kv` (keys' rows first, as `kv(x).reshape(B, N, 2, ...)`)."""
    arrays, origins = {}, {}
    for name, value in state.arrays.items():
        if ".attn.v." in name:
            continue
        if ".attn.k." in name:
            partner = name.replace(".attn.k.", ".attn.v.")
            fused = name.replace(".attn.k.", ".attn.kv.")
            if partner in state.arrays:
                arrays[fused] = np.concatenate([value, state.arrays[partner]], axis=0)
                origins[fused] = state.origin(name) + state.origin(partner)
                continue
        arrays[name] = value
        origins[name] = state.origin(name)
    for name, value in state.arrays.items():  # a value without its key stays visible (unused)
        if ".attn.v." in name and name.replace(".attn.v.", ".attn.k.") not in state.arrays:
            arrays[name], origins[name] = value, state.origin(name)
    return State(arrays, origins)


def hf_to_nvlabs(state: State) -> State:
    state = strip_prefix(state, "segformer.").renamed(HF_V5_TO_V4).renamed(HF_V4_TO_NVLABS)
    return _fuse_key_value(state)


def _split_in_projection(state: State) -> State:
    """nn.MultiheadAttention's `in_proj_weight/bias` ([q; k; v] rows) -> NVlabs' `q` and `kv`."""
    arrays, origins = {}, {}
    for name, value in state.arrays.items():
        if ".attn.in_proj." in name:
            width = value.shape[0] // 3
            leaf = name.rsplit(".", 1)[1]
            prefix = name.split(".attn.in_proj.")[0]
            arrays[f"{prefix}.attn.q.{leaf}"] = value[:width]
            arrays[f"{prefix}.attn.kv.{leaf}"] = value[width:]
            origins[f"{prefix}.attn.q.{leaf}"] = origins[f"{prefix}.attn.kv.{leaf}"] = state.origin(name)
        else:
            arrays[name], origins[name] = value, state.origin(name)
    return State(arrays, origins)


def _reverse_fusion_inputs(state: State) -> State:
    """mmseg fuses the stages concatenated as [1, 2, 3, 4]; ours (and NVlabs') as [4, 3, 2, 1]."""
    name = "decode_head.linear_fuse.conv.weight"
    weight = state.arrays.get(name)
    if weight is not None and weight.ndim == 4 and weight.shape[1] % 4 == 0:
        blocks = np.split(weight, 4, axis=1)
        state = State({**state.arrays, name: np.concatenate(blocks[::-1], axis=1)}, state.origins)
    return state


def mmseg_to_nvlabs(state: State) -> State:
    state = strip_prefix(state, "backbone.").renamed(MMSEG_TO_NVLABS)
    return _reverse_fusion_inputs(_split_in_projection(state))


def nvlabs(state: State) -> State:
    return strip_prefix(state, "backbone.")


def segformer_options(kind: str, names: set[str]) -> dict:
    """create_segmenter kwargs that make our SegFormer compute what the file's implementation does."""
    epsilons = {
        "hf": dict(layer_norm_epsilon=1e-5, embedding_layer_norm_epsilon=1e-5),
        "nvlabs": dict(layer_norm_epsilon=1e-6, embedding_layer_norm_epsilon=1e-5),
        "mmseg": dict(layer_norm_epsilon=1e-6, embedding_layer_norm_epsilon=1e-6),
    }[kind]
    if any(n.startswith("decode_head.convs.") for n in names):
        epsilons["decode_projection"] = "conv_bn_relu"
    elif any(n.startswith("decode_head.") for n in names):
        epsilons["decode_projection"] = "linear"
    return {"decoder_kwargs": epsilons}
