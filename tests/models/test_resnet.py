"""mmcls's `zero_init_residual`: the last BatchNorm of every residual block starts with scale 0."""

import functools

import jax
import numpy as np
import pytest

from lgmm_jax.models import create_backbone

LAST_BATCH_NORM = {"resnet18": "BatchNorm_1", "resnet50": "BatchNorm_2"}  # BasicBlock / Bottleneck


def batch_norm_scales(name, **kwargs) -> dict:
    """{(layer, batch norm): scale} of a narrow (base width 8) ResNet, really initialised."""
    model = create_backbone(name, base_width=8, **kwargs)
    params = jax.jit(functools.partial(model.init, train=False))(
        jax.random.key(0), np.zeros((1, 32, 32, 3), np.float32)
    )["params"]
    scales = {}
    for layer, modules in params.items():
        if layer == "stem_bn":
            scales[layer, layer] = modules["scale"]
        for module, leaves in modules.items() if layer.startswith("stage") else ():
            if "scale" in leaves:
                scales[layer, module] = leaves["scale"]
    return scales


@pytest.mark.parametrize("name", [  # ResNet-50 initialises for ~15 s: the slow tier
    pytest.param(name, marks=pytest.mark.slow) if name == "resnet50" else name for name in sorted(LAST_BATCH_NORM)])
def test_zero_init_residual_zeroes_exactly_the_last_batch_norm_of_each_block(name):
    scales = batch_norm_scales(name, zero_init_residual=True)
    last = {key for key in scales if key[1] == LAST_BATCH_NORM[name]}
    assert len(last) == sum((2, 2, 2, 2) if name == "resnet18" else (3, 4, 6, 3))
    for key, scale in scales.items():
        np.testing.assert_array_equal(scale, 0.0 if key in last else 1.0, err_msg=str(key))
    assert any(key[1] == "proj_bn" for key in scales)  # shortcut BatchNorms stay at one


def test_zero_init_residual_is_off_by_default():
    assert all(np.all(scale == 1.0) for scale in batch_norm_scales("resnet18").values())
