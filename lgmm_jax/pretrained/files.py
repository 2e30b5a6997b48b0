"""Reading a checkpoint file into a flat `{name: numpy array}` state dict, whatever wraps it.

- `.safetensors`: the `safetensors` package's numpy API (no torch needed).
- `.pth` / `.pt` / `.bin` / `.ckpt`: `torch.load(..., map_location="cpu", weights_only=True)`, never an
  unrestricted unpickler; needs torch (`pip install -e '.[torch]'`).
- `.npz`: `numpy.load(..., allow_pickle=False)`.

Local paths and any URL `etils.epath` opens (e.g. `gs://bucket/model.safetensors`) work. Wrappers are
removed: mmcv's `{"state_dict": ..., "meta": ...}`, Microsoft's / timm's `{"model": ...}`, and a `module.`
prefix on every name (`DataParallel`). Other prefixes (`backbone.`, `segformer.`) belong to the layouts.
"""

from __future__ import annotations

import io
import os
import pickle
import re

import numpy as np

from lgmm_jax.pretrained.rules import WeightsError

TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
WRAPPER_KEYS = ("state_dict", "model", "module", "model_state", "state_dict_ema")


def _one_line(error: Exception) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error)).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}".rstrip(": ")


def _is_remote(path: str) -> bool:
    return "://" in path


def _read_bytes(path: str) -> bytes:
    from etils import epath

    return epath.Path(path).read_bytes()


def _read_safetensors(path: str) -> dict[str, np.ndarray]:
    import safetensors.numpy  # bfloat16 entries come as ml_dtypes.bfloat16 arrays (cast on loading)

    if _is_remote(path):
        return dict(safetensors.numpy.load(_read_bytes(path)))
    return dict(safetensors.numpy.load_file(path))


def _read_torch(path: str) -> object:
    try:
        import torch
    except ImportError:
        raise WeightsError(
            f"{path}: reading PyTorch files needs torch: pip install -e '.[torch]' "
            "(or save the state dict as .safetensors)"
        ) from None
    source = io.BytesIO(_read_bytes(path)) if _is_remote(path) else path
    try:
        return torch.load(source, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise WeightsError(
            f"{path}: holds objects besides tensors, which torch.load(weights_only=True) refuses; if you "
            "trust the file, save its state dict alone: torch.save(torch.load(path, weights_only=False)"
            "['state_dict'], 'weights.pth')"
        ) from None


def _is_tensor(value) -> bool:
    return hasattr(value, "detach") and hasattr(value, "shape")


def _to_numpy(value) -> np.ndarray:
    value = value.detach().cpu()
    if value.is_floating_point() and value.dtype.itemsize < 4:  # float16 / bfloat16
        value = value.float()
    return value.numpy()


def unwrap(checkpoint: object, path: str) -> dict:
    """The state dict inside a checkpoint object: tensors/arrays by name, wrappers removed."""
    while isinstance(checkpoint, dict) and not any(_is_tensor(v) or isinstance(v, np.ndarray)
                                                  for v in checkpoint.values()):
        inner = next((checkpoint[k] for k in WRAPPER_KEYS if isinstance(checkpoint.get(k), dict)), None)
        if inner is None:
            keys = ", ".join(repr(k) for k in list(checkpoint)[:5])
            raise WeightsError(f"{path}: no state dict found (top-level keys: {keys})")
        checkpoint = inner
    if not isinstance(checkpoint, dict):
        raise WeightsError(f"{path}: holds a {type(checkpoint).__name__}, not a state dict")
    state = {}
    for name, value in checkpoint.items():
        if _is_tensor(value) and not isinstance(value, np.ndarray):
            state[name] = _to_numpy(value)
        elif isinstance(value, np.ndarray):
            state[name] = value
    if state and all(name.startswith("module.") for name in state):
        state = {name.removeprefix("module."): value for name, value in state.items()}
    return state


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The file's state dict as numpy arrays, in the file's order; WeightsError if it cannot be read."""
    path = os.fspath(path)
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in (".safetensors", ".npz", *TORCH_SUFFIXES):
        raise WeightsError(
            f"{path}: unknown file type {suffix or '(none)'!r}; expected .safetensors, .npz or a PyTorch "
            f"file ({', '.join(TORCH_SUFFIXES)})"
        )
    if not _is_remote(path) and not os.path.isfile(path):
        raise WeightsError(f"{path}: no such file")
    try:
        if suffix == ".safetensors":
            checkpoint = _read_safetensors(path)
        elif suffix == ".npz":
            source = io.BytesIO(_read_bytes(path)) if _is_remote(path) else path
            with np.load(source, allow_pickle=False) as data:
                checkpoint = {name: data[name] for name in data.files}
        else:
            checkpoint = _read_torch(path)
    except WeightsError:
        raise
    except Exception as error:  # any reader failure becomes one line naming the file
        raise WeightsError(f"{path}: cannot be read as {suffix} ({_one_line(error)})") from error
    state = unwrap(checkpoint, path)
    if not state:
        raise WeightsError(f"{path}: holds no arrays")
    return state
