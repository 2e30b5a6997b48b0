"""The pieces every layout shares: the error, a converted entry, and the renaming rules.

A layout turns the file's state dict into `Entry`s: our array (in flax's layout) at a path inside one
*role* of the model, with the file's entry names it came from. Roles are the parts a checkpoint may hold:

  encoder            the backbone (ResNet, ResNetV1c, Swin, MiT)
  decode_head        the segmentation decoder (ASPP head, all-MLP head), without its classifier
  auxiliary_head     mmseg's auxiliary FCN head (DeepLabv3+)
  pixel_classifier   the segmenter's 1x1 conv classifier
  image_classifier   an image classifier's Dense head (e.g. ImageNet's 1000 classes)

`loading.role_roots` says where each role lives in a given model. A `Rule` matches a module name of the
file (the entry name without its last component) and names our module; its `kind` says how the leaves
convert (PyTorch conv weights [O, I/g, kh, kw] -> [kh, kw, I/g, O], Linear [O, I] -> [I, O], BatchNorm
`weight/bias/running_mean/running_var` -> `scale/bias` params and `mean/var` batch_stats, ...).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable, Mapping

import numpy as np

ROLES = ("encoder", "decode_head", "auxiliary_head", "pixel_classifier", "image_classifier")
# Entries that are structure, not weights: BatchNorm's step counter and Swin's index and mask buffers.
STRUCTURAL_LEAVES = ("num_batches_tracked", "relative_position_index", "attn_mask")


class WeightsError(ValueError):
    """A checkpoint that cannot be read or does not fit the model; the message is one line."""


@dataclasses.dataclass(frozen=True)
class Entry:
    """One array of ours filled from the file: `value` goes to `(collection, *role_root, *path)`."""

    role: str
    collection: str
    path: tuple[str, ...]
    value: np.ndarray
    sources: tuple[str, ...]  # the file's entry names (two for a fused key/value)
    source_shape: tuple[int, ...]

    @property
    def source(self) -> str:
        return "+".join(self.sources)


@dataclasses.dataclass
class State:
    """A state dict on its way to our names: arrays by (canonical) name and the file names behind each."""

    arrays: dict[str, np.ndarray]
    origins: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)

    def origin(self, name: str) -> tuple[str, ...]:
        return self.origins.get(name, (name,))

    def renamed(self, rename: Callable[[str], str]) -> State:
        """The same arrays under `rename(name)`, remembering the file names."""
        arrays, origins = {}, {}
        for name, value in self.arrays.items():
            arrays[rename(name)] = value
            origins[rename(name)] = self.origin(name)
        return State(arrays, origins)


def substitute(table: Iterable[tuple[str, str | Callable]]) -> Callable[[str], str]:
    """A renaming that applies each (regex, replacement) of `table` in turn."""
    table = tuple(table)

    def rename(name: str) -> str:
        for pattern, replacement in table:
            name = re.sub(pattern, replacement, name)
        return name

    return rename


def strip_prefix(state: State, prefix: str) -> State:
    return state.renamed(lambda name: name.removeprefix(prefix))


def _conv_kernel(w: np.ndarray) -> np.ndarray:
    if w.ndim != 4:
        raise ValueError("a convolution weight has 4 axes")
    return np.transpose(w, (2, 3, 1, 0))


def _dense_kernel(w: np.ndarray) -> np.ndarray:
    if w.ndim == 4 and w.shape[2:] == (1, 1):  # a 1x1 convolution used as a Linear layer
        w = w[:, :, 0, 0]
    if w.ndim != 2:
        raise ValueError("a Linear weight has 2 axes")
    return w.T


_same = np.asarray
KINDS: dict[str, dict[str, tuple[str, str, Callable]]] = {
    "conv": {"weight": ("params", "kernel", _conv_kernel), "bias": ("params", "bias", _same)},
    "linear": {"weight": ("params", "kernel", _dense_kernel), "bias": ("params", "bias", _same)},
    "layer_norm": {"weight": ("params", "scale", _same), "bias": ("params", "bias", _same)},
    "batch_norm": {
        "weight": ("params", "scale", _same),
        "bias": ("params", "bias", _same),
        "running_mean": ("batch_stats", "mean", _same),
        "running_var": ("batch_stats", "var", _same),
    },
    "swin_attention": {
        "relative_position_bias_table": ("params", "relative_position_bias_table", _same),
    },
}


@dataclasses.dataclass(frozen=True)
class Rule:
    """Module names matching `pattern` (whole name) are our `target(match)` ("a/b/c") in `role`."""

    pattern: str
    kind: str
    role: str
    target: Callable[[re.Match], str]


def rule(pattern: str, kind: str, role: str, target: str | Callable[[re.Match], str]) -> Rule:
    """A `Rule`; a string target may use `{1}`, `{1+}` (group 1 plus one), `{1-}` (minus one)."""
    if callable(target):
        return Rule(pattern, kind, role, target)

    def fill(match: re.Match) -> str:
        def group(spec: re.Match) -> str:
            value = match[int(spec[1])]
            shift = {"": 0, "+": 1, "-": -1}[spec[2]]
            return str(int(value) + shift) if shift else value

        return re.sub(r"\{(\d)([+-]?)\}", group, target)

    return Rule(pattern, kind, role, fill)


def conv_module(pattern: str, role: str, target: str) -> tuple[Rule, Rule]:
    """mmcv's ConvModule `<pattern>.conv` / `<pattern>.bn` -> our `<target>/conv` and `<target>/bn`."""
    return (
        rule(pattern + r"\.conv", "conv", role, target + "/conv"),
        rule(pattern + r"\.bn", "batch_norm", role, target + "/bn"),
    )


def apply_rules(state: State, rules: Iterable[Rule], file: str) -> tuple[list[Entry], list[str]]:
    """Converts every entry a rule matches; returns the entries and the file's names left unused."""
    rules = tuple(rules)
    entries, ignored = [], []
    for name, array in state.arrays.items():
        module, _, leaf = name.rpartition(".")
        if leaf in STRUCTURAL_LEAVES:
            ignored.extend(state.origin(name))
            continue
        for candidate in rules:
            match = re.fullmatch(candidate.pattern, module)
            if match and leaf in KINDS[candidate.kind]:
                collection, our_leaf, convert = KINDS[candidate.kind][leaf]
                try:
                    value = convert(np.asarray(array))
                except ValueError as error:
                    source = "+".join(state.origin(name))
                    raise WeightsError(
                        f"{file}: entry {source!r} has shape {tuple(array.shape)}, which does not fit a "
                        f"{candidate.kind} ({error})"
                    ) from None
                path = tuple(p for p in candidate.target(match).split("/") if p) + (our_leaf,)
                entries.append(
                    Entry(candidate.role, collection, path, value, state.origin(name), tuple(array.shape))
                )
                break
        else:
            ignored.extend(state.origin(name))
    return entries, ignored


def first_names(names: Iterable[str], count: int = 3) -> str:
    """A short list of names for a message."""
    names = list(names)
    shown = ", ".join(repr(n) for n in names[:count])
    return shown + (f" and {len(names) - count} more" if len(names) > count else "")


def has_any(names: Mapping | Iterable[str], *candidates: str) -> bool:
    names = set(names)
    return any(c in names for c in candidates)
