"""The class-conditional memory bank (Appendix B.2 and G): per class, a FIFO ring of the last M latents.

The bank starts empty (every slot masked), is written inside the jitted train step from the global batch
with latents held fixed (stop-gradient), and feeds the component usage of L_avg and the counts behind the
mixture weights. It is part of the train state, so it is checkpointed and sharded with it.
"""

from __future__ import annotations

import chex
import flax.struct
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class MemoryBank:
    """latents [C, M, D] float32; valid [C, M] bool; write_index [C] int32 (the next slot of each ring)."""

    latents: jax.Array
    valid: jax.Array
    write_index: jax.Array

    @property
    def num_classes(self) -> int:
        return self.latents.shape[0]

    @property
    def capacity(self) -> int:
        return self.latents.shape[1]


def create_memory(num_classes: int, capacity: int, latent_dim: int) -> MemoryBank:
    """An empty bank: zeros everywhere, nothing valid (never random noise)."""
    if capacity < 1:
        raise ValueError(f"memory capacity must be at least 1 latent per class, got {capacity}")
    return MemoryBank(
        latents=jnp.zeros((num_classes, capacity, latent_dim), jnp.float32),
        valid=jnp.zeros((num_classes, capacity), bool),
        write_index=jnp.zeros((num_classes,), jnp.int32),
    )


def update_memory(
    memory: MemoryBank, latents: jax.Array, labels: jax.Array, mask: jax.Array | None = None
) -> MemoryBank:
    """Push a batch of latents [B, D] into their classes' rings, oldest out first.

    Examples are written in batch order. When a batch holds more than M examples of a class, only its
    last M survive (as if they had been pushed one by one). Padding (mask False) is never written.
    """
    chex.assert_rank(latents, 2)
    num_classes, capacity = memory.num_classes, memory.capacity
    if mask is None:
        mask = jnp.ones(labels.shape, bool)
    one_hot = jax.nn.one_hot(labels, num_classes, dtype=jnp.int32) * mask[:, None].astype(jnp.int32)
    rank_in_class = jnp.sum((jnp.cumsum(one_hot, axis=0) - 1) * one_hot, axis=1)  # [B]
    count_per_class = jnp.sum(one_hot, axis=0)  # [C]
    survives = mask & (rank_in_class >= count_per_class[labels] - capacity)
    slot = (memory.write_index[labels] + rank_in_class) % capacity
    row = jnp.where(survives, labels, num_classes)  # out of range: dropped by the scatter
    latents_stopped = jax.lax.stop_gradient(latents).astype(memory.latents.dtype)
    return MemoryBank(
        latents=memory.latents.at[row, slot].set(latents_stopped, mode="drop"),
        valid=memory.valid.at[row, slot].set(True, mode="drop"),
        write_index=((memory.write_index + count_per_class) % capacity).astype(jnp.int32),
    )


def sample_per_class(
    key: jax.Array, labels: jax.Array, eligible: jax.Array, num_classes: int, per_class: int
) -> tuple[jax.Array, jax.Array]:
    """Up to `per_class` eligible examples of every class, uniformly without replacement.

    labels [N] in [0, C) where eligible [N] is True (elsewhere anything, e.g. a void label). Returns
    (indices [C * S], valid [C * S]), S = per_class, class-major: row block c holds class c's picks in
    ascending index order, then invalid placeholders (index 0). Pushing `labels[indices]` with
    `update_memory(..., mask=valid)` therefore writes each class's picks in their original order: when no
    class has more than S eligible examples, exactly what pushing the whole batch writes.

    One sort of N (class, random priority) keys picks the S lowest priorities of each class; everything
    after it is O(C * S), so what the bank receives per step does not grow with N (pixels per batch).
    """
    num_examples = labels.shape[0]
    priority = jax.random.uniform(key, (num_examples,))
    sort_class = jnp.where(eligible, labels, num_classes)  # ineligible examples sort after every class
    sorted_class, _, order = jax.lax.sort(
        (sort_class, priority, jnp.arange(num_examples)), num_keys=2
    )
    classes = jnp.arange(num_classes)
    starts = jnp.searchsorted(sorted_class, classes, side="left")
    counts = jnp.searchsorted(sorted_class, classes, side="right") - starts
    offsets = jnp.arange(per_class)
    picked = order[jnp.minimum(starts[:, None] + offsets, num_examples - 1)]  # [C, S]
    picked = jnp.sort(jnp.where(offsets < counts[:, None], picked, num_examples), axis=1)
    valid = picked < num_examples
    return jnp.where(valid, picked, 0).reshape(-1), valid.reshape(-1)


def oldest_to_newest(memory: MemoryBank, class_id: int):
    """The valid latents of one class in the order they were written (a host-side view for inspection)."""
    capacity = memory.capacity
    start = int(memory.write_index[class_id])
    order = [(start + offset) % capacity for offset in range(capacity)]
    valid = jax.device_get(memory.valid[class_id])
    latents = jax.device_get(memory.latents[class_id])
    return latents[[slot for slot in order if valid[slot]]]
