"""The collaborative training objective of L-GMM (Section 2.1-2.2) as one differentiable function.

`lgmm_objective` returns L_D(phi; stop_gradient(theta)) + L_G(theta; stop_gradient(z)). One
`jax.value_and_grad` of it over (encoder parameters, head parameters) therefore yields exactly dL_D/dphi
for the encoder and dL_G/dtheta for the Gaussians, in one encoder pass: the discriminative loss never
moves the mixture and the generative loss never moves the encoder. The mixture weights pi are not
parameters at all: they are counted from the memory bank (see `lgmm_jax.method.mixture`). As in Appendix G,
a step updates the mixtures of the classes in its batch only (`batch_classes`).

`pixel_lgmm_objective` is the same objective with a pixel as the example (segmentation, Section 5.3):
L_D on every labelled pixel at the label's resolution, the bank and L_G on a bounded per-class sample of
the labelled pixels; the void label is a mask. Both share `collaborative_objective`.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

from lgmm_jax.method import losses, mixture
from lgmm_jax.method.memory import MemoryBank, sample_per_class, update_memory
from lgmm_jax.models.gmm import head_gaussians, log_likelihood
from lgmm_jax.models.resize import resize_labels_nearest

VARIANTS = ("equations", "appendix_g")
TRAINING_MODES = ("collaborative", "generative_only")


@dataclasses.dataclass(frozen=True)
class ObjectiveConfig:
    """What the paper leaves open, pinned down (docs/design.md; defaults from bench/study.py's runs).

    variant: "equations" (Eq. 4-7: logsumexp over components, L_one on responsibilities) or
      "appendix_g" (Algorithm 1: max over components, L_one pulls the means toward the L2-normalised
      mean of the remembered latents assigned to them, hard counts).
    assignment: "sinkhorn" (balanced hard assignments of the remembered latents feed the MLE targets,
      L_one's one-hot targets and the counts) or "posterior" (k* = argmax p(k|z,y), soft counts).
    training: "collaborative" (the paper) or "generative_only" (Table 7(a): L_G trains everything).
    discriminative_temperature: L_D's posterior is softmax(log p(z|y) / T); 1 is Eq. 7 as written
      (`losses.discriminative_loss` says why a larger T trains better on the unit sphere).
    bank_sample_size: remembered slots per class that the usage, the counts and the balancing look at
      in one step (a fresh random subset each step; all of them when the bank is no larger). The
      bank's log-densities are the objective's largest cost (P * S * K * D for the P = min(B, C)
      classes a step updates, see `batch_classes`, differentiated through L_avg), so ImageNet's
      M = 2000 would otherwise cost more than the encoder (bench/head.py).
    """

    num_components: int = 3
    scale_floor: float = 0.05
    lambda_one: float = 0.1
    lambda_avg: float = 1.0
    usage_distance: str = "total_variation"
    responsibility_temperature: float = 1.0
    assignment: str = "sinkhorn"
    sinkhorn_epsilon: float = 0.05
    sinkhorn_iterations: int = 10
    variant: str = "equations"
    training: str = "collaborative"
    bank_sample_size: int = 256
    discriminative_temperature: float = 1.0

    def __post_init__(self):
        for name, value, allowed in (
            ("variant", self.variant, VARIANTS),
            ("assignment", self.assignment, mixture.ASSIGNMENTS),
            ("training", self.training, TRAINING_MODES),
            ("usage_distance", self.usage_distance, losses.USAGE_DISTANCES),
        ):
            if value not in allowed:
                raise ValueError(f"loss.{name}={value!r} is not one of {allowed}")
        for name, value in (
            ("responsibility_temperature", self.responsibility_temperature),
            ("discriminative_temperature", self.discriminative_temperature),
        ):
            if not value > 0:
                raise ValueError(f"loss.{name}={value!r} must be positive: 1 is the paper's")

    @property
    def reduction(self) -> str:
        return "max" if self.variant == "appendix_g" else "logsumexp"


@dataclasses.dataclass(frozen=True)
class PixelConfig:
    """What makes a pixel an example of the collaborative objective (segmentation).

    void_label: the label of unlabelled pixels (255 in ADE20K with reduce_zero_label and in Cityscapes).
      It is a mask everywhere and never used as a class index.
    pixels_per_class: S, how many of each class's labelled pixels (at the decoder's resolution) a step
      pushes into the memory bank and gives to L_G, drawn uniformly without replacement
      (`memory.sample_per_class`); all of them when a class has no more. This bounds the bank's and
      L_G's work per step by min(C * S, pixels) examples whatever the image size (a 512x512 batch of 16
      has 262,144 pixels at 1/4 resolution). GMMSeg pushes at most 20 per component (100 per class at
      K = 5).
    remember_misclassified: True (default) samples among all labelled pixels, as classification pushes
      every example; False samples only pixels whose prediction argmax_y log p(z|y) is their label
      (GMMSeg's queue).
    avg_non_ignore, align_corners: how L_D's per-pixel cross-entropy is normalised and upsampled
      (`losses.pixel_cross_entropy`, mmseg's defaults False and False).
    """

    void_label: int = 255
    pixels_per_class: int = 64
    remember_misclassified: bool = True
    avg_non_ignore: bool = False
    align_corners: bool = False

    def __post_init__(self):
        if self.pixels_per_class < 1:
            raise ValueError(f"pixels_per_class={self.pixels_per_class} must be at least 1")


class ObjectiveOutputs(NamedTuple):
    """Everything the train step needs besides the gradient."""

    memory: MemoryBank
    classes: jax.Array  # [P] the classes this step updates (`batch_classes`); rows below follow them
    distinct: jax.Array  # [P] False on padding repeats of a class
    counts: jax.Array  # [P, K] component counts over the bank, for the mixture weights
    class_present: jax.Array  # [P] classes with remembered latents
    hard_usage: jax.Array  # [P, K] share of each class's remembered latents assigned to each component
    bank_latents: jax.Array  # [P, S, D] the remembered latents this step looked at
    bank_valid: jax.Array  # [P, S]
    bank_weights: jax.Array  # [P, S, K] their assignments (one-hot or soft)
    class_log_likelihood: jax.Array  # [B, C] log p(z|y) (theta held fixed); pixels: [B, h, w, C]
    terms: dict  # scalar loss terms for logging


def batch_classes(labels: jax.Array, mask: jax.Array, num_classes: int) -> tuple[jax.Array, jax.Array]:
    """The classes whose mixture this step updates: (classes [P], distinct [P]), P = min(B, C).

    Appendix G updates only the classes of the batch (`for _c in label.unique()`): the bank of a class
    absent from the batch did not change this step, so neither did its usage, its counts, its balancing
    nor its M-step target, and the bank's work per step falls from C to P classes. When every class
    fits in a batch (C <= B) all classes are taken. Otherwise the batch's classes come sorted and padded
    to the static size P by repeating the largest; `distinct` is False on the repeats, which compute
    the same values as their original (so scattering them back is harmless) but must not be averaged twice.
    """
    size = min(labels.shape[0], num_classes)
    if size == num_classes:
        return jnp.arange(num_classes), jnp.ones(num_classes, bool)
    largest = jnp.max(jnp.where(mask, labels, 0))
    classes = jnp.unique(jnp.where(mask, labels, largest), size=size, fill_value=largest)
    distinct = jnp.concatenate([jnp.ones(1, bool), classes[1:] != classes[:-1]])
    return classes, distinct


def sample_slots(
    memory: MemoryBank, classes: jax.Array, size: int, key: jax.Array | None
) -> tuple[jax.Array, jax.Array]:
    """(latents [P, S, D], valid [P, S]) of `classes`: S random slots (the same for every class), or all."""
    if key is None or size >= memory.capacity:
        return memory.latents[classes], memory.valid[classes]
    slots = jax.random.choice(key, memory.capacity, (size,), replace=False)
    return memory.latents[classes[:, None], slots], memory.valid[classes[:, None], slots]


def take_component(values: jax.Array, components: jax.Array) -> jax.Array:
    """values[b, components[b]] for values [B, K]."""
    return jnp.take_along_axis(values, components[:, None], axis=-1)[:, 0]


def lgmm_objective(
    z: jax.Array,
    labels: jax.Array,
    mask: jax.Array,
    head_params: dict,
    log_weights: jax.Array,
    memory: MemoryBank,
    config: ObjectiveConfig,
    key: jax.Array | None = None,
) -> tuple[jax.Array, ObjectiveOutputs]:
    """L_D(phi; sg(theta)) + L_G(theta; sg(z)) (Eq. 5-7), the memory bank updated with this batch.

    z [B, D], labels [B], mask [B] (False on padding: such examples count nowhere). `key` draws the bank
    slots this step looks at (`ObjectiveConfig.bank_sample_size`); without it the whole bank is used.
    """
    means, scales = head_gaussians(head_params, config.scale_floor, config.num_components)
    # L_D (Eq. 7): the encoder learns from the posterior of a mixture it cannot move.
    class_log_likelihood = fixed_mixture_log_likelihood(z, means, scales, log_weights, config)
    discriminative = losses.discriminative_loss(
        class_log_likelihood, labels, mask, config.discriminative_temperature
    )
    memory = update_memory(memory, jax.lax.stop_gradient(z), labels, mask)
    return collaborative_objective(
        discriminative, class_log_likelihood, z, labels, mask, means, scales, log_weights, memory, config,
        key,
    )


def fixed_mixture_log_likelihood(
    z: jax.Array, means: jax.Array, scales: jax.Array, log_weights: jax.Array, config: ObjectiveConfig
) -> jax.Array:
    """log p(z|y) [B, C] under a mixture held fixed (Eq. 4): L_D (Eq. 7) differentiates it w.r.t. z only."""
    fixed = jax.lax.stop_gradient
    return log_likelihood(z, fixed(means), fixed(scales), log_weights, config.reduction)


def collaborative_objective(
    discriminative: jax.Array,
    class_log_likelihood: jax.Array,
    z: jax.Array,
    labels: jax.Array,
    mask: jax.Array,
    means: jax.Array,
    scales: jax.Array,
    log_weights: jax.Array,
    memory: MemoryBank,
    config: ObjectiveConfig,
    key: jax.Array | None,
) -> tuple[jax.Array, ObjectiveOutputs]:
    """L_D (given) + L_G(theta; sg(z)) on the examples (z [B, D], labels, mask) and the updated bank.

    The part of the objective that classification and segmentation share: they differ only in what an
    example is and in where L_D is taken (`lgmm_objective`, `pixel_lgmm_objective`).
    """
    num_components = config.num_components
    fixed = jax.lax.stop_gradient

    # L_G (Eq. 5-6): the mixture learns from latents it cannot move (unless generative-only).
    generative_z = z if config.training == "generative_only" else fixed(z)
    temperature = config.responsibility_temperature
    batch_log_prob = mixture.labelled_log_prob(generative_z, labels, means, scales)  # [B, K]
    batch_joint = batch_log_prob + log_weights[labels]
    classes, distinct = batch_classes(labels, mask, memory.num_classes)
    bank_latents, bank_valid = sample_slots(memory, classes, config.bank_sample_size, key)
    bank_log_prob = mixture.own_class_log_prob(bank_latents, means[classes], scales[classes])  # [P, S, K]
    bank_joint = bank_log_prob + log_weights[classes][:, None, :]
    batch_responsibilities = jax.nn.softmax(batch_joint / temperature, axis=-1)
    bank_responsibilities = jax.nn.softmax(bank_joint / temperature, axis=-1)
    soft_usage, class_present = mixture.masked_usage(bank_responsibilities, bank_valid)
    counted_once = class_present & distinct

    if config.assignment == "sinkhorn":
        potentials = mixture.sinkhorn_log_potentials(
            fixed(bank_log_prob), bank_valid, config.sinkhorn_epsilon, config.sinkhorn_iterations
        )
        eps = config.sinkhorn_epsilon
        rows = jnp.searchsorted(classes, labels)  # each example's class among `classes`
        batch_targets = mixture.balanced_assignment(fixed(batch_log_prob), potentials[rows], eps)
        bank_assignment = mixture.balanced_assignment(fixed(bank_log_prob), potentials[:, None], eps)
        nll = losses.masked_mean(-take_component(batch_joint, batch_targets), mask)
    else:
        batch_targets = jnp.argmax(batch_joint, axis=-1)
        bank_assignment = jnp.argmax(bank_joint, axis=-1)
        reduce = jax.nn.logsumexp if config.reduction == "logsumexp" else jnp.max
        nll = losses.negative_log_likelihood(reduce(batch_joint, axis=-1), mask)

    bank_one_hot = jax.nn.one_hot(bank_assignment, num_components)
    hard_usage, _ = mixture.masked_usage(bank_one_hot, bank_valid)
    valid = bank_valid[..., None]
    if config.assignment == "posterior" and config.variant == "equations":
        bank_weights = bank_responsibilities
    else:
        bank_weights = bank_one_hot
    counts = jnp.sum(bank_weights * valid, axis=1)

    if config.variant == "appendix_g":
        targets, has_members = mixture.assigned_means(
            bank_latents, bank_valid, bank_assignment, num_components
        )
        squared = jnp.sum(jnp.square(means[classes] - fixed(targets)), axis=-1)  # [P, K]
        counted = has_members & distinct[:, None]
        one_hot = losses.masked_mean(squared.reshape(-1), counted.reshape(-1))
    else:
        one_hot = losses.one_hot_loss(batch_responsibilities, mask, batch_targets)
    average = losses.average_usage_loss(soft_usage, counted_once, config.usage_distance)
    generative = losses.generative_loss(nll, one_hot, average, config.lambda_one, config.lambda_avg)

    if config.training == "generative_only":
        total = generative
    else:
        total = discriminative + generative
    terms = {
        "loss": total,
        "discriminative": discriminative,
        "nll": nll,
        "one_hot": one_hot,
        "average_usage": average,
        "generative": generative,
    }
    outputs = ObjectiveOutputs(
        memory=memory,
        classes=classes,
        distinct=distinct,
        counts=fixed(counts),
        class_present=class_present,
        hard_usage=fixed(hard_usage),
        bank_latents=bank_latents,
        bank_valid=bank_valid,
        bank_weights=fixed(bank_weights),
        class_log_likelihood=fixed(class_log_likelihood),
        terms=terms,
    )
    return total, outputs


def pixel_lgmm_objective(
    z: jax.Array,
    labels: jax.Array,
    head_params: dict,
    log_weights: jax.Array,
    memory: MemoryBank,
    config: ObjectiveConfig,
    key: jax.Array,
    pixels: PixelConfig = PixelConfig(),
) -> tuple[jax.Array, ObjectiveOutputs]:
    """The collaborative objective with a pixel as the example (Section 5.3 with Eq. 5-7).

    z [B, h, w, D]: per-pixel latents at the decoder's resolution (`LGMMSegmenter.encode`); labels
    [B, H, W]: integer labels at the image's resolution, `pixels.void_label` where unlabelled.

    * L_D (Eq. 7): log p(z|y) with theta held fixed, [B, h, w, C], upsampled bilinearly to [B, H, W, C]
      (align_corners=False, as mmseg upsamples its logits before the loss), cross-entropy averaged over
      the labelled pixels.
    * Memory bank and L_G (Eq. 5-6): the labels brought to h x w by PyTorch's nearest resizing (as
      GMMSeg), then up to `pixels.pixels_per_class` labelled pixels of every class sampled
      (`PixelConfig`); those pixels are pushed into the bank and are L_G's examples exactly as a
      classification batch's are (`collaborative_objective`: MLE with balanced targets, L_one, L_avg,
      counts for the mixture weights, Appendix G's variant).

    `key` draws the pixel sample and the bank slots (`ObjectiveConfig.bank_sample_size`). With labels
    at the decoder's resolution and no class above S labelled pixels this is `lgmm_objective` on the
    flattened labelled pixels. Returns (total, outputs); `outputs.class_log_likelihood` is the
    [B, h, w, C] map at the decoder's resolution.
    """
    if z.ndim != 4 or labels.ndim != 3 or labels.shape[0] != z.shape[0]:
        raise ValueError(
            f"expected latents [B, h, w, D] and labels [B, H, W], got {z.shape} and {labels.shape}"
        )
    batch, height, width, dim = z.shape
    num_classes = log_weights.shape[0]
    means, scales = head_gaussians(head_params, config.scale_floor, config.num_components)
    _, compact_scales = head_gaussians(head_params, config.scale_floor, config.num_components, False)
    pixel_key, slot_key = jax.random.split(key)

    flat_z = z.reshape(-1, dim)
    # Every pixel's log p(z|y): the largest term per pixel, so with shared scales [C, 1, D].
    class_log_likelihood = fixed_mixture_log_likelihood(flat_z, means, compact_scales, log_weights, config)
    class_log_likelihood = class_log_likelihood.reshape(batch, height, width, num_classes)
    discriminative = losses.pixel_cross_entropy(
        class_log_likelihood / config.discriminative_temperature, labels, pixels.void_label,
        pixels.avg_non_ignore, pixels.align_corners,
    )

    small_labels = resize_labels_nearest(labels, (height, width)).reshape(-1)
    eligible = small_labels != pixels.void_label
    if not pixels.remember_misclassified:
        predicted = jnp.argmax(class_log_likelihood.reshape(-1, num_classes), axis=-1)
        eligible &= predicted == small_labels
    picked, picked_valid = sample_per_class(
        pixel_key, small_labels, eligible, num_classes, pixels.pixels_per_class
    )
    sample_z = flat_z[picked]
    sample_labels = jnp.where(picked_valid, small_labels[picked], 0)
    memory = update_memory(memory, jax.lax.stop_gradient(sample_z), sample_labels, picked_valid)
    return collaborative_objective(
        discriminative, class_log_likelihood, sample_z, sample_labels, picked_valid, means, scales,
        log_weights, memory, config, slot_key,
    )
