"""`method=gmmseg` (lgmm_jax/method/gmmseg.py) against a written-out transcription of GMMSeg's own code.

The references below follow github.com/leonnnop/GMMSeg line by line in numpy, loops and all:
`GMMSegHead.online_contrast` with `distributed_sinkhorn_wograd` (the balanced assignment on each class's
log-probabilities divided by their largest magnitude), `_dequeue_and_enqueue_k` with `rnd_sample(...,
_uniform=True)` (the queue admission and ring), `update_GMM` with `momentum_update` and `shifted_var`, and
the loss of `forward_train` (the decode cross-entropy of the class LayerNorm's scores plus 0.01 x the
component cross-entropy). The log-densities come from scipy.stats.norm. `torch.linspace(0, n - 1, 20,
dtype=torch.int64)` equals `np.linspace(0, n - 1, 20).astype(np.int64)` for every n from 21 to 19,999
(checked with torch 2.13 when this was written; torch is not a test dependency).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special
import scipy.stats

from lgmm_jax.deploy import forward
from lgmm_jax.method import gmmseg
from lgmm_jax.training import experiment, train
from lgmm_jax.method.memory import MemoryBank
from lgmm_jax.heads import base as head_base
from lgmm_jax.heads import create_model
from lgmm_jax.runtime.sharding import global_batch, make_mesh
from lgmm_jax.training.state import create_optimizer, create_sharded_train_state, create_train_state, state_shardings
from tests.test_tasks import tiny_config

VOID = 255


# ----------------------------------------------------------------------------------------------------------
# GMMSeg's code, written out in numpy
# ----------------------------------------------------------------------------------------------------------


def reference_sinkhorn(out: np.ndarray, iterations: int = 3, epsilon: float = 0.05):
    """`distributed_sinkhorn_wograd(out)`: (Q [B, K] before the argmax, the argmax)."""
    q = np.exp(out / epsilon).T  # K x B
    num_pixels, num_components = q.shape[1], q.shape[0]
    q = q / np.sum(q)
    for _ in range(iterations):
        q = q / np.sum(q, axis=1, keepdims=True)
        q = q / num_components
        q = q / np.sum(q, axis=0, keepdims=True)
        q = q / num_pixels
    q = (q * num_pixels).T
    return q, np.argmax(q, axis=1)


def reference_assignment(log_probs: np.ndarray, labels: np.ndarray):
    """`online_contrast`'s per-class clustering: (component [N], Q [N, K]) of each labelled pixel."""
    components = np.zeros(len(labels), np.int64)
    q_all = np.zeros((len(labels), log_probs.shape[-1]))
    for k in np.unique(labels):
        if k == VOID:
            continue
        init_q = log_probs[labels == k, k, :]
        init_q = init_q / np.abs(init_q).max()
        q, index = reference_sinkhorn(init_q)
        components[labels == k] = index
        q_all[labels == k] = q
    return components, q_all


def reference_enqueue(queue, pointers, embeddings, labels, components, correct, num_components, max_sample_size):
    """`_dequeue_and_enqueue_k` for every class of the batch: (queue [G, Q, D], pointers [G])."""
    queue, pointers = queue.copy(), pointers.copy()
    size = queue.shape[1]
    for k in np.unique(labels):
        if k == VOID:
            continue
        embs = embeddings[labels == k]
        cluster = (np.eye(num_components)[components[labels == k]] * correct[labels == k][:, None]) > 0
        for q_index in range(num_components):
            row = k * num_components + q_index
            ptr = int(pointers[row])
            if np.sum(cluster[:, q_index]) == 0:
                continue
            q_embs = embs[cluster[:, q_index]]
            sample_size = q_embs.shape[0]
            if sample_size > max_sample_size:
                q_embs = q_embs[np.linspace(0, sample_size - 1, max_sample_size).astype(np.int64)]
                sample_size = max_sample_size
            if ptr + sample_size >= size:
                first, second = size - ptr, sample_size - size + ptr
                queue[row, ptr:size] = q_embs[:first]
                queue[row, :second] = q_embs[first:]
            else:
                queue[row, ptr:ptr + sample_size] = q_embs
            pointers[row] = (ptr + sample_size) % size
    return queue, pointers


def l2(x):
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def reference_update(means, scales, queue, classes, num_components, gamma_mean=0.999, gamma_cov=0.0):
    """`update_GMM` for `classes`, means as the next forward pass uses them (L2-normalised)."""
    means, scales = means.copy(), scales.copy()
    for c in classes:
        for p in range(num_components):
            memory = queue[c * num_components + p]  # n, d
            f = l2(np.sum(memory, axis=0))
            means[c, p] = gamma_mean * means[c, p] + (1 - gamma_mean) * f
            shifted = memory - f[None]
            variance = np.sum(shifted.T ** 2, axis=-1) / shifted.shape[0]  # shifted_var(rowvar=False)
            scales[c, p] = gamma_cov * scales[c, p] + (1 - gamma_cov) * np.sqrt(variance + 1e-2)
    return l2(means), scales


def reference_log_probs(z, means, scales):
    """log N(z; mu_ck, diag sigma_ck^2) [N, C, K] by scipy."""
    return np.sum(scipy.stats.norm.logpdf(z[:, None, None, :], means[None], scales[None]), axis=-1)


# ----------------------------------------------------------------------------------------------------------
# The rules
# ----------------------------------------------------------------------------------------------------------


def random_log_probs(rng, num_pixels, num_classes, num_components):
    """Log-densities of the size a 64-dimensional unit-sphere latent has (around -60, spread 20)."""
    return -60.0 + 20.0 * rng.standard_normal((num_pixels, num_classes, num_components))


def test_the_balanced_assignment_is_gmmsegs_on_each_class_scaled_by_its_largest_magnitude():
    rng = np.random.default_rng(0)
    num_classes, num_components = 4, 5
    log_probs = random_log_probs(rng, 600, num_classes, num_components)
    labels = rng.integers(0, num_classes, 600)
    labels[rng.random(600) < 0.2] = VOID
    expected, q = reference_assignment(log_probs, labels)
    valid = labels != VOID
    own = log_probs[np.arange(600), np.where(valid, labels, 0)]
    got = np.asarray(gmmseg.scaled_sinkhorn_assignment(
        jnp.asarray(own, jnp.float32), jnp.asarray(labels), jnp.asarray(valid), num_classes))
    # float32 rounding moves log Q by ~1e-6 per operation: pixels whose two best components are closer
    # than 1e-4 in log Q could go either way (there are none or a handful).
    top2 = np.sort(np.log(q[valid]), axis=1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0]) > 1e-4
    assert clear.mean() > 0.98
    np.testing.assert_array_equal(got[valid][clear], expected[valid][clear])
    assert np.all(got[~valid] == 0)
    # Balanced: no component takes a whole class (what the scaling is for).
    for k in range(num_classes):
        assert len(np.unique(got[labels == k])) == num_components


def test_the_queues_admit_correct_pixels_evenly_spaced_and_ring_as_gmmsegs():
    rng = np.random.default_rng(1)
    num_classes, num_components, size, dim = 3, 2, 25, 4
    num_pixels = 400  # ~67 pixels per (class, component): more than 20, so the evenly spaced rule acts
    labels = rng.integers(0, num_classes, num_pixels)
    labels[rng.random(num_pixels) < 0.1] = VOID
    components = rng.integers(0, num_components, num_pixels)
    correct = (rng.random(num_pixels) < 0.7) & (labels != VOID)
    correct[(labels == 2) & (components == 1)] &= rng.random(np.sum((labels == 2) & (components == 1))) < 0.1  # < 20
    embeddings = rng.standard_normal((num_pixels, dim)).astype(np.float32)
    queue = rng.standard_normal((num_classes * num_components, size, dim)).astype(np.float32)
    pointers = np.array([0, 3, 10, 24, 15, 7])  # rings that wrap around (24 + 20 > 25) and that do not
    expected_queue, expected_pointers = reference_enqueue(
        queue, pointers, embeddings, labels, components, correct, num_components, 20)

    groups = np.where(labels != VOID, labels, 0) * num_components + components
    selected = gmmseg.queue_admission(jnp.asarray(groups), jnp.asarray(correct), num_classes * num_components, 20)
    bank = MemoryBank(jnp.asarray(queue), jnp.ones(queue.shape[:2], bool), jnp.asarray(pointers, jnp.int32))
    got = gmmseg.enqueue(bank, jnp.asarray(embeddings), jnp.asarray(groups), selected)
    np.testing.assert_array_equal(np.asarray(got.latents), expected_queue)
    np.testing.assert_array_equal(np.asarray(got.write_index), expected_pointers)
    assert int(np.sum(selected)) == sum(min(20, np.sum(correct & (groups == g))) for g in range(6))


def test_the_gaussians_move_by_gmmsegs_momentum_toward_the_queue_and_take_its_shifted_spread():
    rng = np.random.default_rng(2)
    num_classes, num_components, size, dim = 4, 3, 50, 8
    means = l2(rng.standard_normal((num_classes, num_components, dim)))
    scales = rng.uniform(0.2, 1.0, (num_classes, num_components, dim))
    queue = l2(rng.standard_normal((num_classes * num_components, size, dim)) + 2 * rng.standard_normal((1, 1, dim)))
    present = np.array([True, False, True, True])
    expected_means, expected_scales = reference_update(means, scales, queue, np.flatnonzero(present), num_components)
    bank = MemoryBank(jnp.asarray(queue, jnp.float32), jnp.ones(queue.shape[:2], bool),
                      jnp.zeros(num_classes * num_components, jnp.int32))
    got_means, got_scales = gmmseg.updated_gaussians(
        jnp.asarray(means, jnp.float32), jnp.asarray(scales, jnp.float32), bank, jnp.asarray(present),
        gmmseg.GMMSegConfig())
    np.testing.assert_allclose(np.asarray(got_means), expected_means, rtol=0, atol=1e-6)
    np.testing.assert_allclose(np.asarray(got_scales), expected_scales, rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(got_means)[1], means[1].astype(np.float32))  # absent: kept
    # momentum 0.999: the means moved, by about 0.001 of the way
    moved = np.linalg.norm(np.asarray(got_means)[present] - means[present], axis=-1)
    assert np.all((moved > 1e-5) & (moved < 2e-3))


def test_the_loss_is_gmmsegs_decode_cross_entropy_plus_a_hundredth_of_the_component_one():
    rng = np.random.default_rng(3)
    batch, height, width, dim, num_classes, num_components = 2, 6, 6, 8, 3, 2
    z = l2(rng.standard_normal((batch, height, width, dim)))
    labels = rng.integers(0, num_classes, (batch, height, width))
    labels[rng.random(labels.shape) < 0.15] = VOID
    means = l2(rng.standard_normal((num_classes, num_components, dim)))
    scales = rng.uniform(0.3, 1.0, (num_classes, num_components, dim))
    head = {"means": jnp.asarray(means, jnp.float32), "raw_scales": jnp.asarray(np.log(np.expm1(scales)), jnp.float32)}
    weight, bias = rng.uniform(0.5, 1.5, num_classes), rng.normal(0, 0.3, num_classes)
    norm = nn.LayerNorm(epsilon=1e-5)
    class_logits = lambda m: norm.apply({"params": {"scale": jnp.asarray(weight, jnp.float32),  # noqa: E731
                                                    "bias": jnp.asarray(bias, jnp.float32)}}, m)
    total, outputs = gmmseg.pixel_objective(jnp.asarray(z, jnp.float32), jnp.asarray(labels), head, class_logits,
                                            gmmseg.GMMSegConfig(), scale_floor=0.0)

    flat_z, flat_labels = z.reshape(-1, dim), labels.reshape(-1)
    log_probs = reference_log_probs(flat_z, means, scales)
    best = log_probs.max(-1)
    normed = (best - best.mean(-1, keepdims=True)) / np.sqrt(best.var(-1, keepdims=True) + 1e-5) * weight + bias
    labelled = flat_labels != VOID
    log_posterior = scipy.special.log_softmax(normed, axis=-1)
    decode = -np.sum(log_posterior[labelled, flat_labels[labelled]]) / flat_labels.size  # mmseg: / every pixel
    components, _ = reference_assignment(log_probs, flat_labels)
    targets = flat_labels * num_components + components
    contrast_log_posterior = scipy.special.log_softmax(log_probs.reshape(len(flat_z), -1), axis=-1)
    kept = labelled & (targets != VOID)  # F.cross_entropy(ignore_index=255)
    contrast = -np.mean(contrast_log_posterior[kept, targets[kept]])
    assert float(outputs.terms["decode"]) == pytest.approx(decode, rel=1e-5)
    assert float(outputs.terms["contrast"]) == pytest.approx(contrast, rel=1e-5)
    assert float(total) == pytest.approx(decode + 0.01 * contrast, rel=1e-5)
    correct = labelled & (np.argmax(normed, -1) == flat_labels)
    np.testing.assert_array_equal(np.asarray(outputs.selected), correct)  # < 20 per component: all admitted
    np.testing.assert_array_equal(np.asarray(outputs.classes), np.isin(np.arange(num_classes), flat_labels))


# ----------------------------------------------------------------------------------------------------------
# The method in a run
# ----------------------------------------------------------------------------------------------------------


def gmmseg_config():
    config = tiny_config("segmentation", "lgmm")
    config.method = "gmmseg"
    config.segmentation.gmmseg.queue_size = 40
    return experiment.check_config(config, num_devices=1)


def test_method_gmmseg_builds_gmmsegs_head():
    config = gmmseg_config()
    model = create_model(config.model, 8)
    assert (model.latent_projection, model.latent_normalization, model.latent_norm_epsilon, model.class_norm,
            model.share_scale, model.reduction, model.latent_dim) == (
        "conv_bn_relu", "layernorm_l2", 1e-5, True, False, "max", 64)
    classification = tiny_config("classification", "lgmm")
    classification.method = "gmmseg"
    with pytest.raises(ValueError, match="method='gmmseg' does not apply to task='classification'"):
        experiment.check_config(classification, num_devices=1)


@pytest.mark.parametrize("key, value, message", [
    ("queue_size", 0, "gmmseg.queue_size=0 must be at least 1"),
    ("mean_momentum", 1.5, r"gmmseg.mean_momentum=1.5 must lie in \[0, 1\]"),
    ("variance_offset", 0.0, "gmmseg.variance_offset and gmmseg.sinkhorn_epsilon must be positive"),
])
def test_a_bad_gmmseg_number_is_refused_by_name_before_any_work(key, value, message):
    config = tiny_config("segmentation", "lgmm")
    config.method = "gmmseg"
    config.segmentation.gmmseg[key] = value
    with pytest.raises(ValueError, match=message):
        experiment.check_config(config, num_devices=1)


@pytest.mark.slow  # six train steps of a segmenter, each against the transcription: ~60 s
def test_gmmseg_steps_train_the_encoder_feed_the_queues_and_move_the_gaussians_every_fifth_step():
    config = gmmseg_config()
    mesh = make_mesh()
    protocol = experiment.resolve_protocol(config)
    source = experiment.data_source(protocol.dataset, protocol.train_split, config=config)
    input_shape = experiment.model_input_shape(config, protocol, source)
    model = create_model(config.model, 8)
    optimizer, _ = create_optimizer(config, steps_per_epoch=10, total_steps=10)
    state, shardings = create_sharded_train_state(config, model, optimizer, input_shape, 8, mesh)
    queue = np.asarray(state.memory.latents)
    assert queue.shape == (8 * 3, 40, 64)
    np.testing.assert_allclose(np.linalg.norm(queue, axis=-1), 1.0, rtol=1e-5)  # random unit vectors
    step = train.make_train_step(config, model, optimizer, shardings, mesh, 8)
    stream = experiment.train_stream(config, protocol, source)
    encode = jax.jit(lambda variables, images, key: model.apply(
        variables, images, True, method="encode", mutable=head_base.TRAIN_COLLECTIONS, rngs={"dropout": key})[0])
    for index in range(6):
        local, _ = train.step_inputs(next(stream))  # as the trainer reads it
        before = jax.device_get(state)
        variables = jax.device_get(forward.model_variables(state))
        state, metrics = step(state, global_batch(local, mesh))
        after = jax.device_get(state)
        assert np.isfinite(metrics["loss"])
        # The step's pixels, as the reference sees them: latents and scores of the training pass.
        z = encode(variables, local["image"], head_base.step_key(before))
        rows = np.arange(z.shape[1]) * local["label"].shape[1] // z.shape[1]
        labels = local["label"][:, rows][:, :, rows].reshape(-1)
        flat_z = np.asarray(z, np.float64).reshape(-1, 64)
        head = before.params["head"]
        means, scales = np.asarray(head["means"], np.float64), np.log1p(np.exp(np.asarray(head["raw_scales"], np.float64)))
        log_probs = reference_log_probs(flat_z, means, scales)
        best = log_probs.max(-1)
        norm_params = before.params["class_layer_norm"]
        normed = ((best - best.mean(-1, keepdims=True)) / np.sqrt(best.var(-1, keepdims=True) + 1e-5)
                  * norm_params["scale"] + norm_params["bias"])
        components, _ = reference_assignment(log_probs, labels)
        correct = (labels != VOID) & (np.argmax(normed, -1) == labels)
        expected_queue, expected_pointers = reference_enqueue(
            np.asarray(before.memory.latents), np.asarray(before.memory.write_index), flat_z, labels, components,
            correct, 3, 20)
        np.testing.assert_array_equal(np.asarray(after.memory.write_index), expected_pointers)
        np.testing.assert_allclose(np.asarray(after.memory.latents), expected_queue, atol=1e-5)
        if index % 5 == 0:  # GMMSeg's iteration counter starts at 0
            present = np.unique(labels[labels != VOID])
            expected_means, expected_scales = reference_update(
                means, scales, np.asarray(after.memory.latents, np.float64), present, 3)
            np.testing.assert_allclose(after.params["head"]["means"], expected_means, atol=1e-6)
            new_scales = np.log1p(np.exp(np.asarray(after.params["head"]["raw_scales"], np.float64)))
            np.testing.assert_allclose(new_scales, expected_scales, rtol=1e-5)
        else:
            np.testing.assert_array_equal(after.params["head"]["means"], head["means"])
            np.testing.assert_array_equal(after.params["head"]["raw_scales"], head["raw_scales"])
        moved = jax.tree.map(lambda a, b: not np.array_equal(a, b), before.params, after.params)
        del moved["head"]
        assert all(jax.tree.leaves(moved))  # every encoder array, the class LayerNorm's included


@pytest.mark.slow  # compiles a step of the paper's SegFormer-B5 head shapes: ~30 s
def test_a_gmmseg_step_runs_on_the_shapes_of_the_paper_ade20k_segformer():
    """The whole step traced (jax.eval_shape: shapes only, nothing computed) on ADE20K's SegFormer-B5 with
    two 512x512 crops: 150 classes x 8 components, GMMSeg's 32,000-latent queues."""
    import configs.ade20k_segformer_b5

    config = configs.ade20k_segformer_b5.get_config()
    config.method = "gmmseg"
    config = experiment.check_config(config, num_devices=1)
    mesh = make_mesh()
    model = create_model(config.model, 150)
    optimizer, _ = create_optimizer(config, steps_per_epoch=100, total_steps=1000)
    state = jax.eval_shape(lambda: create_train_state(config, model, optimizer, (512, 512, 3), 150))
    step = train.make_train_step(config, model, optimizer, state_shardings(state, mesh, 150), mesh, 150)
    batch = {"image": jax.ShapeDtypeStruct((2, 512, 512, 3), jnp.float32),
             "label": jax.ShapeDtypeStruct((2, 512, 512), jnp.int32), "mask": jax.ShapeDtypeStruct((2,), bool)}
    new_state, metrics = jax.eval_shape(step, state, batch)
    assert new_state.memory.latents.shape == (150 * 8, 32_000, 64)
    assert all(jax.tree.leaves(jax.tree.map(lambda a, b: a.shape == b.shape, new_state.params, state.params)))
    assert {"loss", "decode", "contrast", "accuracy"} <= set(metrics)
