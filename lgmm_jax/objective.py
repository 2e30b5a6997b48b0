"""The collaborative training objective of L-GMM (Section 2.1-2.2) as one differentiable function.

`lgmm_objective` returns L_D(phi; stop_gradient(theta)) + L_G(theta; stop_gradient(z)). One
`jax.value_and_grad` of it over (encoder parameters, head parameters) therefore yields exactly dL_D/dphi
for the encoder and dL_G/dtheta for the Gaussians, in one encoder pass: the discriminative loss never
moves the mixture and the generative loss never moves the encoder. The mixture weights pi are not
parameters at all: they are counted from the memory bank (see `lgmm_jax.mixture`). As in Appendix G,
a step updates the mixtures of the classes in its batch only (`batch_classes`).
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

from lgmm_jax import losses, mixture
from lgmm_jax.memory import MemoryBank, update_memory
from lgmm_jax.models.gmm import head_gaussians, log_likelihood

VARIANTS = ("equations", "appendix_g")
TRAINING_MODES = ("collaborative", "generative_only")


@dataclasses.dataclass(frozen=True)
class ObjectiveConfig:
    """What the paper leaves open, pinned down (DESIGN.md section 1; defaults from the issue-8 study).

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
    class_log_likelihood: jax.Array  # [B, C] log p(z|y) (theta held fixed)
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

    `key` draws the bank slots this step looks at (`ObjectiveConfig.bank_sample_size`); without it
    the whole bank is used.
    """
    num_components = config.num_components
    means, scales = head_gaussians(head_params, config.scale_floor, num_components)
    fixed = jax.lax.stop_gradient

    # L_D (Eq. 7): the encoder learns from the posterior of a mixture it cannot move.
    class_log_likelihood = log_likelihood(
        z, fixed(means), fixed(scales), log_weights, config.reduction
    )
    discriminative = losses.discriminative_loss(
        class_log_likelihood, labels, mask, config.discriminative_temperature
    )

    # L_G (Eq. 5-6): the mixture learns from latents it cannot move (unless generative-only).
    generative_z = z if config.training == "generative_only" else fixed(z)
    memory = update_memory(memory, fixed(z), labels, mask)
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
