"""The memory bank against a plain Python reference: one deque(maxlen=M) per class."""
import collections

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lgmm_jax.method.memory import create_memory, oldest_to_newest, sample_per_class, update_memory


def reference_push(queues, latents, labels, mask):
    for z, y, m in zip(latents, labels, mask):
        if m:
            queues[y].append(z)


@pytest.mark.parametrize("capacity,batch,classes", [(5, 8, 3), (3, 16, 2), (7, 4, 6)])
def test_matches_python_fifo_reference(capacity, batch, classes):
    rng = np.random.default_rng(capacity * 100 + batch)
    dim = 4
    memory = create_memory(classes, capacity, dim)
    queues = [collections.deque(maxlen=capacity) for _ in range(classes)]
    update = jax.jit(update_memory)
    for step in range(12):
        # Skewed labels: some batches hold more than `capacity` of one class, some classes are absent.
        labels = rng.choice(classes, size=batch, p=np.eye(classes)[0] * 0.6 + 0.4 / classes)
        mask = rng.random(batch) > 0.2
        latents = rng.normal(size=(batch, dim)).astype(np.float32)
        memory = update(memory, jnp.asarray(latents), jnp.asarray(labels), jnp.asarray(mask))
        reference_push(queues, latents, labels, mask)
        for c in range(classes):
            expected = np.array(queues[c]).reshape(-1, dim)
            np.testing.assert_array_equal(oldest_to_newest(memory, c), expected)
            assert int(memory.valid[c].sum()) == len(queues[c])


def test_starts_empty_and_ignores_padding():
    memory = create_memory(3, 4, 2)
    assert not memory.valid.any() and not memory.latents.any()
    memory = update_memory(memory, jnp.ones((2, 2)), jnp.array([1, 1]), jnp.array([False, False]))
    assert not memory.valid.any() and not memory.latents.any()
    assert memory.write_index.tolist() == [0, 0, 0]


def test_batch_with_more_than_capacity_keeps_the_last_ones():
    memory = create_memory(2, 3, 1)
    latents = jnp.arange(10, dtype=jnp.float32)[:, None]
    memory = update_memory(memory, latents, jnp.zeros(10, jnp.int32))
    np.testing.assert_array_equal(oldest_to_newest(memory, 0)[:, 0], [7, 8, 9])
    assert oldest_to_newest(memory, 1).shape == (0, 1)


def test_latents_are_stored_without_gradient():
    memory = create_memory(2, 3, 2)

    def first_slot_sum(z):
        return jnp.sum(update_memory(memory, z, jnp.array([0, 1])).latents)

    np.testing.assert_array_equal(jax.grad(first_slot_sum)(jnp.ones((2, 2))), 0.0)


def test_rejects_empty_capacity():
    with pytest.raises(ValueError, match="capacity"):
        create_memory(2, 0, 4)


def test_sample_per_class_is_uniform_without_replacement_and_keeps_the_original_order():
    labels = jnp.array([0, 1, 0, 2, 0, 255, 0, 1, 0, 0])  # class 0: six examples, 1: two, 2: one, 3: none
    eligible = labels != 255
    draw = jax.jit(lambda key: sample_per_class(key, labels, eligible, 4, 3))
    picks = np.zeros(len(labels))
    trials = 600
    for seed in range(trials):
        indices, valid = (np.asarray(a) for a in draw(jax.random.key(seed)))
        assert indices.shape == (10,)  # min(C * per_class, N)
        chosen = indices[valid]
        np.testing.assert_array_equal(valid, np.arange(10) < 6)  # 3 + 2 + 1 picks first, then padding
        np.testing.assert_array_equal(np.asarray(labels)[chosen], [0, 0, 0, 1, 1, 2])  # class by class
        assert np.all(np.diff(chosen[:3]) > 0)  # distinct, in their original order
        picks[chosen] += 1
    # Each of class 0's six examples is kept with probability 3/6; classes 1 and 2 keep all theirs.
    np.testing.assert_allclose(picks[np.asarray(labels) == 0] / trials, 0.5, atol=0.08)
    np.testing.assert_array_equal(picks[[1, 3, 7]], trials)
    assert picks[5] == 0  # never an ineligible (void) example


def test_sample_per_class_is_at_most_per_class_times_classes():
    labels = jnp.arange(50) % 2
    indices, valid = sample_per_class(jax.random.key(0), labels, jnp.ones(50, bool), 2, 4)
    assert indices.shape == (8,) and bool(valid.all())
    np.testing.assert_array_equal(np.asarray(labels)[np.asarray(indices)], [0, 0, 0, 0, 1, 1, 1, 1])
