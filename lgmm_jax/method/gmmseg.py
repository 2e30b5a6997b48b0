"""GMMSeg's per-pixel Gaussian mixture and its updates, as its authors' code runs them (`method=gmmseg`).

GMMSeg (Liang et al., NeurIPS 2022) is the per-pixel generative classifier that the paper's segmentation
half builds on (Section 5.3). `method=gmmseg` trains a segmenter the way GMMSeg's released code does
(github.com/leonnnop/GMMSeg: `mmseg/models/decode_heads/gmmseg_head.py`, `mmseg/utils/GMMSeg.py` and
`configs/_gmmseg/models/base_model_config.py`), beside the library's default and `method=paper`:

* The latent: the decoder's features, a 1x1 conv + BatchNorm + ReLU to 64 dimensions (none when the
  decoder is already that wide), LayerNorm, then L2 normalisation (`LGMMSegmenter` with
  `latent_projection="conv_bn_relu"`, `latent_normalization="layernorm_l2"`).
* The scores: log N(z; mu_yk, diag sigma_yk^2) for every class and component (unit-norm means), the best
  component per class, then a LayerNorm over the classes (`LGMMSegmenter.class_logits`); the encoder
  learns from mmseg's cross-entropy of those scores plus `contrast_weight` x a cross-entropy over the C*K
  components whose targets are the components that `scaled_sinkhorn_assignment` gives each labelled
  pixel (`pixel_objective`). The Gaussians take no gradient.
* A queue of `queue_size` latents per component (initially random unit vectors) fed after each step
  with the correctly classified pixels assigned to it, at most `max_per_component` per step, evenly
  spaced (`queue_admission`, `enqueue`).
* Every `update_interval` steps (the first step included) the Gaussians of the batch's classes move
  toward their queues (`updated_gaussians`): the mean by momentum `mean_momentum` toward the
  L2-normalised sum of the queue, the scale to the queue's spread about that direction plus
  `variance_offset` (momentum `scale_momentum`).

Pixels are at the decoder's resolution (1/4), their labels brought there by nearest resizing, as GMMSeg
does; the void label is a mask everywhere.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from lgmm_jax.method import losses
from lgmm_jax.method.memory import MemoryBank
from lgmm_jax.models.gmm import component_log_prob, head_gaussians, raw_from_scales
from lgmm_jax.models.lgmm import l2_normalize
from lgmm_jax.models.resize import resize_labels_nearest


@dataclasses.dataclass(frozen=True)
class GMMSegConfig:
    """GMMSeg's numbers (`configs/_gmmseg/models/base_model_config.py`): `config.segmentation.gmmseg` in a run's config.

    queue_size: latents remembered per component (GMMSeg's mem_size, 32,000).
    max_per_component: pixels a component's queue admits per step (max_sample_size, 20).
    update_interval: steps between updates of the Gaussians (update_GMM_interval, 5).
    mean_momentum, scale_momentum: the share of the old value kept (gamma = [0.999, 0]).
    variance_offset: added to the queue's variance before the square root (1e-2).
    contrast_weight: the weight of the component cross-entropy (contrast_loss_weight, 0.01).
    sinkhorn_iterations, sinkhorn_epsilon: the balanced assignment (3 and 0.05).
    """

    queue_size: int = 32000
    max_per_component: int = 20
    update_interval: int = 5
    mean_momentum: float = 0.999
    scale_momentum: float = 0.0
    variance_offset: float = 1e-2
    contrast_weight: float = 0.01
    sinkhorn_iterations: int = 3
    sinkhorn_epsilon: float = 0.05

    def __post_init__(self):
        for name in ("queue_size", "max_per_component", "update_interval"):
            if getattr(self, name) < 1:
                raise ValueError(f"gmmseg.{name}={getattr(self, name)} must be at least 1")
        for name in ("mean_momentum", "scale_momentum"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"gmmseg.{name}={getattr(self, name)} must lie in [0, 1] (GMMSeg: 0.999 and 0)")
        if self.variance_offset <= 0 or self.sinkhorn_epsilon <= 0:
            raise ValueError("gmmseg.variance_offset and gmmseg.sinkhorn_epsilon must be positive")


def create_queue(key: jax.Array, num_classes: int, num_components: int, queue_size: int, dim: int) -> MemoryBank:
    """The queues of every component, row y*K + k: random unit vectors, every slot counted from the start
    (GMMSeg's `queue` buffer: randn, normalised over the embedding axis)."""
    latents = jax.random.normal(key, (num_classes * num_components, queue_size, dim), jnp.float32)
    return MemoryBank(
        latents=l2_normalize(latents),
        valid=jnp.ones(latents.shape[:2], bool),
        write_index=jnp.zeros((latents.shape[0],), jnp.int32),
    )


def per_class_sum(values: jax.Array, labels: jax.Array, num_classes: int) -> jax.Array:
    """sum over the pixels of each class: values [N, ...] -> [C, ...] (labels >= C count nowhere)."""
    return jax.ops.segment_sum(values, labels, num_segments=num_classes + 1)[:num_classes]


def scaled_sinkhorn_assignment(
    own_log_probs: jax.Array, labels: jax.Array, valid: jax.Array, num_classes: int,
    iterations: int = 3, epsilon: float = 0.05,
) -> jax.Array:
    """The component of each pixel [N] by GMMSeg's balanced assignment, each class on its own pixels.

    own_log_probs [N, K]: log N(z; mu_yk, sigma_yk) under the pixel's own class y = labels [N]; valid [N]
    marks labelled pixels. Per class, the log-probabilities are divided by their largest magnitude over
    the class's pixels (so they lie in [-1, 1]), Q = exp(. / epsilon) is normalised to sum 1, then
    `iterations` rounds scale each component's total to 1/K and each pixel's to 1/n (n the class's
    pixel count); the assignment is argmax_k Q (`distributed_sinkhorn_wograd`). Invalid pixels get 0.
    """
    num_components = own_log_probs.shape[-1]
    segments = num_classes + 1  # the unlabelled pixels form a segment of their own, never read
    labels = jnp.where(valid, labels, num_classes)
    own_log_probs = jnp.where(valid[:, None], own_log_probs, 0.0)
    magnitude = jnp.max(jnp.abs(own_log_probs), axis=-1)
    largest = jax.ops.segment_max(magnitude, labels, num_segments=segments)
    largest = jnp.where(largest > 0, largest, 1.0)
    q = jnp.exp(own_log_probs / largest[labels][:, None] / epsilon)
    q = q / per_class_sum(jnp.sum(q, -1), labels, segments)[labels][:, None]
    count = per_class_sum(jnp.ones_like(magnitude), labels, segments)[labels][:, None]
    for _ in range(iterations):
        q = q / per_class_sum(q, labels, segments)[labels] / num_components
        q = q / jnp.sum(q, axis=-1, keepdims=True) / count
    assignment = jnp.argmax(q * count, axis=-1)
    return jnp.where(valid, assignment, 0)


def ranks_within_groups(groups: jax.Array, members: jax.Array, num_groups: int) -> tuple[jax.Array, jax.Array]:
    """(rank [N], count [G]): each member's position among its group's members in pixel order, and each
    group's member count. One sort of N keys, never an [N, G] table (ADE20K: 262,144 pixels, 1,200 groups)."""
    keys = jnp.where(members, groups, num_groups)
    positions = jnp.arange(keys.shape[0])
    sorted_keys, order = jax.lax.sort((keys, positions), num_keys=2)
    starts = jnp.searchsorted(sorted_keys, jnp.arange(num_groups + 1), side="left")
    rank = jnp.zeros_like(positions).at[order].set(positions - starts[sorted_keys])
    return rank, starts[1:] - starts[:-1]


def queue_admission(groups: jax.Array, admitted: jax.Array, num_groups: int, max_per_group: int) -> jax.Array:
    """Which pixels [N] enter their group's queue: all admitted pixels of a group when it has at most
    `max_per_group`, else `max_per_group` of them evenly spaced in pixel order, ranks
    floor(i (n - 1) / (max_per_group - 1)) for i = 0 .. max_per_group - 1 (GMMSeg's
    `rnd_sample(..., _uniform=True)`, torch.linspace to int64)."""
    rank, count = ranks_within_groups(groups, admitted, num_groups)
    count = count[jnp.where(admitted, groups, 0)]
    if max_per_group == 1:
        evenly_spaced = rank == 0
    else:
        steps = jnp.maximum(count - 1, 1)
        first_index = (rank * (max_per_group - 1) + steps - 1) // steps  # the smallest i reaching this rank
        evenly_spaced = (first_index * steps) // (max_per_group - 1) == rank
    return admitted & ((count <= max_per_group) | evenly_spaced)


def enqueue(queue: MemoryBank, latents: jax.Array, groups: jax.Array, selected: jax.Array) -> MemoryBank:
    """The selected latents [N, D] written into their groups' rings (row y*K + k) in pixel order, oldest
    out first (`_dequeue_and_enqueue_k`). A group takes at most its queue's length per call."""
    num_groups, capacity = queue.latents.shape[:2]
    rank, count = ranks_within_groups(groups, selected, num_groups)
    keeps = selected & (rank >= count[jnp.where(selected, groups, 0)] - capacity)
    row = jnp.where(keeps, groups, num_groups)  # out of range: dropped by the scatter
    slot = (queue.write_index[jnp.where(selected, groups, 0)] + rank) % capacity
    return MemoryBank(
        latents=queue.latents.at[row, slot].set(jax.lax.stop_gradient(latents), mode="drop"),
        valid=queue.valid,
        write_index=((queue.write_index + count) % capacity).astype(jnp.int32),
    )


def updated_gaussians(
    means: jax.Array, scales: jax.Array, queue: MemoryBank, classes: jax.Array, config: GMMSegConfig
) -> tuple[jax.Array, jax.Array]:
    """GMMSeg's `update_GMM` for the classes marked in `classes` [C] (the batch's): (means, scales) [C, K, D].

    f = sum of a component's queue, L2-normalised; mean <- m mu + (1 - m) f, returned L2-normalised as
    GMMSeg's next forward pass uses it; scale <- s sigma + (1 - s) sqrt(mean over the queue of (x - f)^2
    + variance_offset). The other classes keep theirs.
    """
    num_classes, num_components, dim = means.shape
    entries = queue.latents.reshape(num_classes, num_components, -1, dim)
    direction = l2_normalize(jnp.sum(entries, axis=2))
    new_means = l2_normalize(config.mean_momentum * means + (1.0 - config.mean_momentum) * direction)
    variance = jnp.mean(jnp.square(entries - direction[:, :, None]), axis=2)
    spread = jnp.sqrt(variance + config.variance_offset)
    new_scales = config.scale_momentum * scales + (1.0 - config.scale_momentum) * spread
    keep = ~classes[:, None, None]
    return jnp.where(keep, means, new_means), jnp.where(keep, scales, new_scales)


def updated_head(head_params: dict, queue: MemoryBank, classes: jax.Array, config: GMMSegConfig,
                 scale_floor: float) -> dict:
    """The head's parameters after `updated_gaussians` (scales stored as raw values over the floor)."""
    num_components = head_params["means"].shape[1]
    means, scales = head_gaussians(head_params, scale_floor, num_components)
    means, scales = updated_gaussians(means, scales, queue, classes, config)
    return {**head_params, "means": means, "raw_scales": raw_from_scales(scales, scale_floor)}


class PixelOutputs(NamedTuple):
    """What the step needs besides the gradient: the pixels [N] at the decoder's resolution."""

    latents: jax.Array  # [N, D], held fixed
    groups: jax.Array  # [N] y*K + k of each labelled pixel (0 elsewhere)
    selected: jax.Array  # [N] the pixels the queues admit this step
    classes: jax.Array  # [C] the classes labelled in the batch: their Gaussians may update
    class_logits: jax.Array  # [B, h, w, C] the decode scores, for the accuracy
    terms: dict


def pixel_objective(
    z: jax.Array,
    labels: jax.Array,
    head_params: dict,
    class_logits_fn,
    config: GMMSegConfig,
    *,
    scale_floor: float,
    void_label: int = 255,
    avg_non_ignore: bool = False,
    align_corners: bool = False,
) -> tuple[jax.Array, PixelOutputs]:
    """GMMSeg's loss for the encoder: the decode cross-entropy plus `contrast_weight` x the component one.

    z [B, h, w, D] the per-pixel latents; labels [B, H, W]. The decode scores are `class_logits_fn`
    (the class LayerNorm) of max_k log N(z; mu_yk, sigma_yk) [B, h, w, C], taken by mmseg's cross-entropy
    at the labels' size (`losses.pixel_cross_entropy`). The component cross-entropy is over the C*K
    log-densities at the decoder's resolution, targets y*K + (the pixel's `scaled_sinkhorn_assignment`),
    averaged over labelled pixels (F.cross_entropy with ignore_index). The Gaussians are held fixed.
    """
    batch, height, width, dim = z.shape
    num_classes, num_components, _ = head_params["means"].shape
    means, scales = jax.lax.stop_gradient(head_gaussians(head_params, scale_floor, num_components))
    flat_z = z.reshape(-1, dim)
    log_probs = component_log_prob(flat_z, means, scales)  # [N, C, K]
    class_logits = class_logits_fn(jnp.max(log_probs, axis=-1)).reshape(batch, height, width, num_classes)
    decode = losses.pixel_cross_entropy(class_logits, labels, void_label, avg_non_ignore, align_corners)

    small_labels = resize_labels_nearest(labels, (height, width)).reshape(-1)
    labelled = small_labels != void_label
    own_labels = jnp.where(labelled, small_labels, 0)
    fixed_log_probs = jax.lax.stop_gradient(log_probs)
    own = jnp.take_along_axis(fixed_log_probs, own_labels[:, None, None], axis=1)[:, 0]  # [N, K]
    component = scaled_sinkhorn_assignment(
        own, small_labels, labelled, num_classes, config.sinkhorn_iterations, config.sinkhorn_epsilon)
    groups = own_labels * num_components + component
    per_pixel = optax.softmax_cross_entropy_with_integer_labels(log_probs.reshape(flat_z.shape[0], -1), groups)
    # GMMSeg's F.cross_entropy(..., ignore_index=255) also skips a pixel whose target y*K + k is 255 (with
    # C*K > 255, e.g. ADE20K's 150 x 8): kept, so that the numbers are GMMSeg's.
    contrast = losses.masked_mean(per_pixel, labelled & (groups != void_label))

    correct = labelled & (jnp.argmax(class_logits.reshape(-1, num_classes), axis=-1) == small_labels)
    selected = queue_admission(groups, correct, num_classes * num_components, config.max_per_component)
    classes = per_class_sum(labelled.astype(jnp.int32), jnp.where(labelled, small_labels, num_classes),
                            num_classes) > 0
    total = decode + config.contrast_weight * contrast
    terms = {"loss": total, "decode": decode, "contrast": contrast,
             "admitted_pixels": jnp.sum(selected).astype(jnp.float32)}
    outputs = PixelOutputs(jax.lax.stop_gradient(flat_z), groups, selected, classes,
                           jax.lax.stop_gradient(class_logits), terms)
    return total, outputs
