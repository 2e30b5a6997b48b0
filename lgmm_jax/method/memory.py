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
    (indices [T], valid [T]) with the static size T = min(C * per_class, N): the picks class by class,
    each class's in ascending index order, then invalid placeholders (index 0). Pushing
    `labels[indices]` with `update_memory(..., mask=valid)` therefore writes each class's picks in their
    original order: when no class has more than `per_class` eligible examples, exactly what pushing the
    whole batch writes.

    Two sorts of N keys: (class, random priority) ranks the examples of each class at random, the first
    `per_class` of each are kept; (class, index) puts the kept ones in order. What the bank and L_G
    receive per step is then at most C * per_class examples whatever N (the pixels of a batch) is.
    """
    num_examples = labels.shape[0]
    size = min(num_classes * per_class, num_examples)
    priority = jax.random.uniform(key, (num_examples,))
    sort_class = jnp.where(eligible, labels, num_classes)  # ineligible examples sort after every class
    sorted_class, _, order = jax.lax.sort(
        (sort_class, priority, jnp.arange(num_examples)), num_keys=2
    )
    class_starts = jnp.searchsorted(sorted_class, jnp.arange(num_classes + 1), side="left")
    rank_in_class = jnp.arange(num_examples) - class_starts[sorted_class]
    kept = (sorted_class < num_classes) & (rank_in_class < per_class)
    kept_class, picked = jax.lax.sort((jnp.where(kept, sorted_class, num_classes), order), num_keys=2)
    valid = kept_class[:size] < num_classes
    return jnp.where(valid, picked[:size], 0), valid


def oldest_to_newest(memory: MemoryBank, class_id: int):
    """The valid latents of one class in the order they were written (a host-side view for inspection)."""
    capacity = memory.capacity
    start = int(memory.write_index[class_id])
    order = [(start + offset) % capacity for offset in range(capacity)]
    valid = jax.device_get(memory.valid[class_id])
    latents = jax.device_get(memory.latents[class_id])
    return latents[[slot for slot in order if valid[slot]]]
