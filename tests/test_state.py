"""The optimiser a config builds: groups, weight-decay exemptions, gradient clipping and the warm-up,
checked against updates computed by hand."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default
from lgmm_jax.training import state


def swin_like_params():
    ones = lambda *shape: jnp.ones(shape, jnp.float32)  # noqa: E731
    return {
        "backbone": {
            "block": {"qkv": {"kernel": ones(4, 12), "bias": ones(12)},
                      "attn": {"relative_position_bias_table": ones(9, 2)},
                      "norm": {"scale": ones(4), "bias": ones(4)}},
            "stem_bn": {"scale": ones(4), "bias": ones(4)},
        },
        "classifier": {"kernel": ones(4, 3), "bias": ones(3)},
    }


def optimizer_config(**overrides):
    config = default.get_config()
    config.model.head = "softmax"
    config.optimizer.update(schedule="constant", **overrides)
    return config


def one_update(config, grads_scale=0.0):
    params = swin_like_params()
    optimizer, _ = state.create_optimizer(config, steps_per_epoch=1, total_steps=10)
    grads = jax.tree.map(lambda x: grads_scale * x, params)
    updates, _ = optimizer.update(grads, optimizer.init(params), params)
    return jax.tree_util.tree_leaves_with_path(updates)


def test_adamw_without_decay_on_norms_biases_and_position_tables():
    """mmcls's Swin paramwise_cfg: with zero gradients, AdamW's decoupled decay moves only the kernels, by
    -lr * wd * param."""
    config = optimizer_config(name="adamw", learning_rate=0.1, weight_decay=0.05, decay_norms_and_biases=False)
    for path, update in one_update(config):
        name = jax.tree_util.keystr(path)
        expected = -0.1 * 0.05 if name.endswith("['kernel']") else 0.0
        np.testing.assert_allclose(update, expected, rtol=1e-6, err_msg=name)


def test_decay_on_everything_by_default():
    config = optimizer_config(name="adamw", learning_rate=0.1, weight_decay=0.05)
    for path, update in one_update(config):
        np.testing.assert_allclose(update, -0.1 * 0.05, rtol=1e-6, err_msg=jax.tree_util.keystr(path))


def test_gradient_clipping_scales_the_encoder_gradient_to_the_global_norm():
    """SGD without momentum at rate 1: the update is minus the clipped gradient, g * 5 / |g|."""
    config = optimizer_config(name="sgd", learning_rate=1.0, momentum=0.0, weight_decay=0.0, clip_grad_norm=5.0)
    params = swin_like_params()
    norm = np.sqrt(sum(float(jnp.sum(jnp.square(3.0 * x))) for x in jax.tree.leaves(params)))
    for path, update in one_update(config, grads_scale=3.0):
        np.testing.assert_allclose(update, -3.0 * 5.0 / norm, rtol=1e-5, err_msg=jax.tree_util.keystr(path))
    with pytest.raises(ValueError, match="clip_grad_norm=-1"):
        state.create_optimizer(optimizer_config(clip_grad_norm=-1.0), 1, 10)


def test_warm_up_starts_from_its_share_of_the_rate():
    config = optimizer_config(learning_rate=0.5, warmup_epochs=2, warmup_start_factor=1e-3)
    schedule = state.learning_rate_schedule(config.optimizer, 0.5, steps_per_epoch=10, total_steps=100)
    assert float(schedule(0)) == pytest.approx(5e-4, rel=1e-4)
    assert float(schedule(10)) == pytest.approx(5e-4 + (0.5 - 5e-4) / 2, rel=1e-6)
    assert float(schedule(20)) == pytest.approx(0.5, rel=1e-6)
