"""Open-set scores, batched and jittable; higher = more in-distribution.

L-GMM needs no post-processing: its scores are read off the class-conditional log-likelihoods
``log p(z|y)`` [B, C] of the density head ("During inference, the out-of-detection data are
recognized by applying a threshold to the probability", Section 2.2 after Eq. 7):

* ``likelihood``: ``max_y log p(z|y)`` (the default; reject when below tau).
* ``marginal``: ``log p(z) = logsumexp_y log p(z|y) - log C`` under the uniform class prior.
* ``posterior``: the log-odds of ``max_y p(y|z)`` with ``p(y|z) = softmax_y(log p(z|y) / T)``, the class
  posterior that L_D trains (Eq. 7 at its temperature T): it reads how ambiguous z is between the known
  classes, where the likelihood reads how far z is from all of them (docs/results.md: the near-OOD
  read-out).

The discriminative counterpart is scored from its logits [B, C] (paper Table 3 and Table 10):

* ``msp``: maximum softmax probability (Hendrycks & Gimpel, 2017).
* ``maxlogit``: maximum logit (Hendrycks et al., 2022).
* ``energy``: ``T logsumexp(logits / T)``, the negative free energy (Liu et al., 2020).
* ``odin``: temperature-scaled MSP after an input perturbation (Liang et al., 2018); needs the
  network as a callable. ``select_odin_hyperparameters`` picks epsilon without OOD data (ODIN*).
* ``kl_matching``: ``-min_k KL(p(y|x) || d_k)`` against per-class mean softmax templates fitted on
  held-out data by ``fit_kl_templates`` (Hendrycks et al., 2022).
* ``mahalanobis``: ``-min_c`` squared Mahalanobis distance of features to class means under a tied
  covariance fitted by ``fit_mahalanobis`` (Lee et al., 2018, without input preprocessing or
  feature ensembles).

Everything computes in at least float32. Non-finite inputs are not checked here (the functions are
jitted); they propagate, and ``ood_metrics`` rejects a non-finite score with a ValueError.

This module knows nothing of models, training or data: it works on arrays, and ODIN on a callable.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

HIGHEST = jax.lax.Precision.HIGHEST

LGMM_SCORES = ("likelihood", "marginal", "posterior")
SOFTMAX_SCORES = ("msp", "maxlogit", "energy", "odin", "kl_matching", "mahalanobis")

# ODIN's defaults (Liang et al., 2018) and Generalized ODIN's epsilon grid (Hsu et al., 2020, Sec. 3.2).
ODIN_TEMPERATURE = 1000.0
ODIN_EPSILON = 0.0014
ODIN_STAR_EPSILONS = (0.0025, 0.005, 0.01, 0.02, 0.04, 0.08)


def _require_rank(array: jax.Array, rank: int, name: str, shape_hint: str) -> None:
    """Raises ValueError at trace time when `array` does not have `rank` dimensions."""
    if array.ndim != rank:
        raise ValueError(
            f"{name} must have shape {shape_hint}, got {array.shape}; reshape it before scoring.")


def _as_float(array) -> jax.Array:
    """`array` as a floating jax array of at least float32 precision (bfloat16 logits are upcast)."""
    array = jnp.asarray(array)
    return array.astype(jnp.promote_types(array.dtype, jnp.float32))


# ----------------------------------------------------------------------------------------------
# L-GMM scores.


@jax.jit
def likelihood(class_log_likelihood: jax.Array) -> jax.Array:
    """s(x) = max_y log p(z|y): [B, C] -> [B]. The paper's open-set score (reject when s < tau).

    Finite input gives finite output. A class at -inf is ignored unless every class is -inf (then the
    score is -inf); NaN propagates.
    """
    _require_rank(class_log_likelihood, 2, "class_log_likelihood", "[B, C]")
    return jnp.max(_as_float(class_log_likelihood), axis=-1)


@jax.jit
def marginal(class_log_likelihood: jax.Array) -> jax.Array:
    """s(x) = log p(z) = logsumexp_y log p(z|y) - log C (uniform class prior): [B, C] -> [B].

    Finite input gives finite output (``logsumexp`` subtracts the maximum first, so it never
    underflows to -inf). A class at -inf contributes nothing; a row that is all -inf gives -inf.
    """
    _require_rank(class_log_likelihood, 2, "class_log_likelihood", "[B, C]")
    num_classes = class_log_likelihood.shape[-1]
    return jax.nn.logsumexp(_as_float(class_log_likelihood), axis=-1) - math.log(num_classes)


@jax.jit
def posterior(class_log_likelihood: jax.Array, temperature: float | jax.Array = 1.0) -> jax.Array:
    """s(x) = log(p / (1 - p)) with p = max_y p(y|z), p(y|z) = softmax_y(log p(z|y) / T): [B, C] -> [B].

    p is the most probable class's posterior under L_D's tempered class posterior (Eq. 7 with
    `loss.discriminative_temperature` T), the MSP of the logits log p(z|y) / T. It is high where z is far
    more likely under one class than under the others and low where z lies between classes, however
    likely z is under them. The score is p's log-odds, max_y l_y - logsumexp_{y != argmax} l_y with
    l = log p(z|y) / T: it ranks exactly as p does, but p itself rounds to 1.0 in float32 once the
    runner-up is 17 nats behind, which ties the confident known images. Needs C >= 2.
    """
    _require_rank(class_log_likelihood, 2, "class_log_likelihood", "[B, C]")
    scaled = _as_float(class_log_likelihood) / temperature
    best = jnp.argmax(scaled, axis=-1)
    others = jnp.where(jax.nn.one_hot(best, scaled.shape[-1], dtype=bool), -jnp.inf, scaled)
    return jnp.max(scaled, axis=-1) - jax.nn.logsumexp(others, axis=-1)


# ----------------------------------------------------------------------------------------------
# Softmax-classifier scores.


@jax.jit
def msp(logits: jax.Array) -> jax.Array:
    """Maximum softmax probability max_y softmax(logits)_y: [B, C] -> [B] (Hendrycks & Gimpel)."""
    _require_rank(logits, 2, "logits", "[B, C]")
    return jnp.max(jax.nn.softmax(_as_float(logits), axis=-1), axis=-1)


@jax.jit
def maxlogit(logits: jax.Array) -> jax.Array:
    """Maximum logit max_y logits_y: [B, C] -> [B]."""
    _require_rank(logits, 2, "logits", "[B, C]")
    return jnp.max(_as_float(logits), axis=-1)


@jax.jit
def energy(logits: jax.Array, temperature: float | jax.Array = 1.0) -> jax.Array:
    """Negative free energy T logsumexp(logits / T): [B, C] -> [B] (Liu et al., 2020)."""
    _require_rank(logits, 2, "logits", "[B, C]")
    return temperature * jax.nn.logsumexp(_as_float(logits) / temperature, axis=-1)


def _log_max_softmax_sum(logits_fn: Callable[[jax.Array], jax.Array], images: jax.Array,
                         temperature: float | jax.Array) -> jax.Array:
    """sum over the batch of log max_y softmax(logits_fn(images) / T)_y."""
    log_probs = jax.nn.log_softmax(_as_float(logits_fn(images)) / temperature, axis=-1)
    return jnp.sum(jnp.max(log_probs, axis=-1))


def odin_perturbation(logits_fn: Callable[[jax.Array], jax.Array], images: jax.Array,
                      temperature: float | jax.Array = ODIN_TEMPERATURE) -> jax.Array:
    """The direction of ODIN's input step: sign(d/dx log S_yhat(x; T)), same shape as `images`.

    ODIN writes x~ = x - eps sign(-grad_x log S_yhat(x; T)) = x + eps sign(grad_x log S_yhat(x; T)),
    with S_yhat the largest temperature-scaled softmax probability. The batch is differentiated as a
    sum, which is exact when `logits_fn` treats examples independently (BatchNorm in inference mode).
    """
    gradient = jax.grad(_log_max_softmax_sum, argnums=1)(logits_fn, images, temperature)
    return jnp.sign(gradient)


def odin(logits_fn: Callable[[jax.Array], jax.Array], images: jax.Array,
         temperature: float | jax.Array = ODIN_TEMPERATURE,
         epsilon: float | jax.Array = ODIN_EPSILON) -> jax.Array:
    """ODIN (Liang et al., 2018): MSP of logits_fn(x~) / T with x~ = x + eps sign(grad log S_yhat).

    Args:
      logits_fn: images [B, ...] -> logits [B, C]; must be differentiable in its input and treat the
        examples of a batch independently.
      images: [B, ...] inputs, in the units `logits_fn` expects.
      temperature: T > 0 (ODIN: 1000).
      epsilon: the step, in the units of `images` (ODIN: 0.0014). ODIN's original code takes the step
        in [0, 1] pixel units; for inputs standardised by a per-channel std s, pass ``epsilon / s``
        (an array broadcasting against the images' trailing channel axis).

    Returns:
      [B] scores. Not jitted itself, because `logits_fn` usually closes over parameters: jit the
      caller, e.g. ``jax.jit(lambda p, x: odin(functools.partial(apply, p), x))``.
    """
    images = _as_float(images)
    perturbed = images + epsilon * odin_perturbation(logits_fn, images, temperature)
    return msp(_as_float(logits_fn(perturbed)) / temperature)


def odin_step(epsilon: float, input_std: float | Sequence[float] = 1.0) -> jax.Array:
    """ODIN's step in the units of standardised inputs: epsilon (in [0, 1] pixel units) divided by each
    channel's own std, float32 [C] (a scalar for a scalar std), broadcasting on the images' last axis."""
    return jnp.asarray(np.float32(epsilon) / np.asarray(input_std, np.float32))


class OdinHyperparameters(NamedTuple):
    """What ``select_odin_hyperparameters`` chose, with the criterion it maximised for each epsilon."""

    temperature: float
    epsilon: float
    mean_id_score_by_epsilon: dict[float, float]


def select_odin_hyperparameters(
    logits_fn: Callable[[jax.Array], jax.Array],
    id_val_images,
    temperature: float = ODIN_TEMPERATURE,
    epsilons: Sequence[float] = ODIN_STAR_EPSILONS,
    batch_size: int = 256,
    input_std: float | Sequence[float] = 1.0,
) -> OdinHyperparameters:
    """ODIN* hyperparameters chosen on held-out ID data only, without any OOD data.

    The choice (Generalized ODIN, Hsu et al., 2020, Sec. 3.2; the "ODIN*" of the paper's Table 3):
    epsilon is the value of `epsilons` that maximises the mean ODIN score over `id_val_images`; the
    first of equal means wins. The temperature is fixed (default 1000, ODIN's choice) rather than
    searched: on ID data alone the mean MSP always prefers the smallest temperature, so that
    criterion cannot select it.

    Args:
      logits_fn: images [B, ...] -> logits [B, C] (see ``odin``).
      id_val_images: [N, ...] held-out known-class images (never the test or OOD sets).
      temperature: T > 0, fixed.
      epsilons: the candidate steps, in [0, 1] pixel units as ODIN's (with ``input_std`` 1: the units of
        the images).
      batch_size: images scored per call; the last batch may be smaller.
      input_std: the per-channel std the images were standardised by (broadcast on their trailing axis):
        each channel steps by epsilon / its own std, as ODIN's and OpenOOD's code do (``odin_step``).

    Returns:
      OdinHyperparameters(temperature, epsilon, mean_id_score_by_epsilon).
    """
    id_val_images = np.asarray(id_val_images)
    if id_val_images.ndim < 2 or id_val_images.shape[0] == 0:
        raise ValueError(
            f"id_val_images must be a non-empty batch [N, ...], got shape {id_val_images.shape}; "
            "pass held-out ID images.")
    if len(epsilons) == 0 or temperature <= 0 or batch_size < 1:
        raise ValueError("pass at least one epsilon, a temperature > 0 and a batch_size >= 1.")
    batched_odin = jax.jit(lambda images, epsilon: odin(logits_fn, images, temperature, epsilon))
    mean_scores = {}
    for epsilon in epsilons:
        score_sum = 0.0
        for start in range(0, id_val_images.shape[0], batch_size):
            batch = id_val_images[start:start + batch_size]
            score_sum += float(jnp.sum(batched_odin(batch, odin_step(epsilon, input_std))))
        mean_scores[float(epsilon)] = score_sum / id_val_images.shape[0]
    best_epsilon = max(mean_scores, key=mean_scores.get)  # the first maximum in `epsilons` order.
    return OdinHyperparameters(float(temperature), best_epsilon, mean_scores)


def fit_kl_templates(logits, num_classes: int) -> jax.Array:
    """Per-class mean softmax templates d_k for KL matching (Hendrycks et al., 2022).

    d_k is the mean of softmax(logits) over the held-out examples whose predicted class (argmax) is
    k. Classes that are never predicted get no template (the template set then has fewer than C
    rows); entries are clipped at the smallest normal float32 so that log d_k stays finite.

    Args:
      logits: [N, C] logits of held-out ID examples (labels are not needed).
      num_classes: C, checked against the logits.

    Returns:
      templates [K, C], K <= C, one row per predicted class, in increasing class order.
    """
    logits = np.asarray(logits)
    if logits.ndim != 2 or logits.shape[1] != num_classes or logits.shape[0] == 0:
        raise ValueError(
            f"logits must have shape [N > 0, {num_classes}], got {logits.shape}; pass held-out logits.")
    if not np.all(np.isfinite(logits)):
        raise ValueError("logits contain NaN or inf; fix the model output before fitting templates.")
    probabilities = np.asarray(jax.nn.softmax(jnp.asarray(logits, jnp.float32), axis=-1), np.float64)
    predicted = logits.argmax(axis=1)
    templates = [probabilities[predicted == k].mean(axis=0) for k in np.unique(predicted)]
    tiny = np.finfo(np.float32).tiny
    return jnp.asarray(np.clip(np.stack(templates), tiny, None), dtype=jnp.float32)


@jax.jit
def kl_matching(logits: jax.Array, templates: jax.Array) -> jax.Array:
    """s(x) = -min_k KL(p(y|x) || d_k): [B, C] logits, [K, C] templates -> [B].

    KL(p || d) = sum_y p_y (log p_y - log d_y), with log p from ``log_softmax`` (so p_y = 0 adds 0).
    """
    _require_rank(logits, 2, "logits", "[B, C]")
    _require_rank(templates, 2, "templates", "[K, C]")
    if templates.shape[1] != logits.shape[1]:
        raise ValueError(
            f"templates have {templates.shape[1]} classes but logits have {logits.shape[1]}; "
            "fit the templates on logits of the same classifier.")
    log_probs = jax.nn.log_softmax(_as_float(logits), axis=-1)
    probs = jnp.exp(log_probs)
    negative_entropy = jnp.sum(probs * log_probs, axis=-1, keepdims=True)  # [B, 1]
    cross_entropy = -jnp.matmul(probs, jnp.log(_as_float(templates)).T, precision=HIGHEST)  # [B, K]
    return -jnp.min(negative_entropy + cross_entropy, axis=-1)


class MahalanobisStatistics(NamedTuple):
    """Sufficient statistics of class-conditional Gaussians with a tied covariance, float64, taken about a
    fixed `shift` (the first batch's mean feature, against cancellation): per-class `counts` [C] and
    feature `sums` [C, F], and the `scatter` sum_i (f_i - shift)(f_i - shift)^T [F, F]. Memory is
    O(C*F + F^2) whatever the number of examples."""

    counts: np.ndarray
    sums: np.ndarray
    scatter: np.ndarray
    shift: np.ndarray


def _check_features(features: np.ndarray, labels: np.ndarray, num_classes: int) -> None:
    if features.ndim != 2 or labels.shape != features.shape[:1] or features.shape[0] == 0:
        raise ValueError(
            f"features must be [N > 0, F] with labels [N], got {features.shape} and {labels.shape}.")
    if not np.all(np.isfinite(features)):
        raise ValueError("features contain NaN or inf; fix the encoder output before fitting.")
    if not (np.issubdtype(labels.dtype, np.integer) and labels.min() >= 0 and labels.max() < num_classes):
        raise ValueError(f"labels must be integers in [0, {num_classes}); fit on the known classes' data.")


def accumulate_mahalanobis(statistics: MahalanobisStatistics | None, features, labels,
                           num_classes: int) -> MahalanobisStatistics:
    """`statistics` (None: empty) plus one batch of features [N, F] with labels [N] in [0, C)."""
    features = np.asarray(features, dtype=np.float64)
    labels = np.asarray(labels)
    _check_features(features, labels, num_classes)
    if statistics is None:
        num_features = features.shape[1]
        statistics = MahalanobisStatistics(
            counts=np.zeros(num_classes, np.int64),
            sums=np.zeros((num_classes, num_features)),
            scatter=np.zeros((num_features, num_features)),
            shift=features.mean(axis=0),
        )
    shifted = features - statistics.shift
    sums = statistics.sums.copy()
    np.add.at(sums, labels, shifted)
    return statistics._replace(
        counts=statistics.counts + np.bincount(labels, minlength=num_classes),
        sums=sums,
        scatter=statistics.scatter + shifted.T @ shifted,
    )


def pinvh(matrix: np.ndarray) -> np.ndarray:
    """The pseudo-inverse of a symmetric matrix, `scipy.linalg.pinvh`. scipy is imported here, not with
    this module: only fitting needs it, and training processes import this module too."""
    import scipy.linalg

    return scipy.linalg.pinvh(matrix, check_finite=False)


def mahalanobis_from_statistics(statistics: MahalanobisStatistics) -> tuple[jax.Array, jax.Array]:
    """(class_means [C, F], precision [F, F]) float32 from accumulated statistics (see fit_mahalanobis).

    The tied covariance is the within-class scatter over N: (sum_i g_i g_i^T - sum_c n_c m_c m_c^T) / N
    with g = f - shift and m_c the mean of class c's g; its pseudo-inverse is taken with
    `scipy.linalg.pinvh`, as `sklearn.covariance.EmpiricalCovariance` does.
    """
    counts = statistics.counts
    if np.any(counts == 0):
        raise ValueError(
            f"classes {np.flatnonzero(counts == 0).tolist()} have no example; fit on data that holds "
            "every known class.")
    shifted_means = statistics.sums / counts[:, None]
    within = statistics.scatter - (shifted_means * counts[:, None]).T @ shifted_means
    covariance = within / counts.sum()
    precision = pinvh(covariance)
    class_means = shifted_means + statistics.shift
    return jnp.asarray(class_means, jnp.float32), jnp.asarray(precision, jnp.float32)


def fit_mahalanobis(features, labels, num_classes: int) -> tuple[jax.Array, jax.Array]:
    """Class means and the tied precision for the Mahalanobis score (Lee et al., 2018, Eq. 1).

    mu_c is the mean feature of class c; Sigma = 1/N sum_c sum_{i: y_i = c} (f_i - mu_c)(f_i - mu_c)^T
    (the maximum-likelihood tied covariance); the precision is its pseudo-inverse, as Lee et al.'s code
    computes it (sklearn's EmpiricalCovariance). Fitted in float64 from streamed sufficient statistics:
    for data that does not fit in memory, call `accumulate_mahalanobis` batch by batch and then
    `mahalanobis_from_statistics`.

    Args:
      features: [N, F] penultimate features of training (or held-out) ID examples.
      labels: [N] integer class labels in [0, num_classes).
      num_classes: C; every class needs at least one example.

    Returns:
      (class_means [C, F], precision [F, F]), float32.
    """
    return mahalanobis_from_statistics(accumulate_mahalanobis(None, features, labels, num_classes))


@jax.jit
def mahalanobis(features: jax.Array, class_means: jax.Array, precision: jax.Array) -> jax.Array:
    """s(x) = -min_c (f - mu_c)^T Sigma^-1 (f - mu_c): [B, F], [C, F], [F, F] -> [B].

    The quadratic form is expanded into matmuls (no [B, C, F] tensor), after centring on the mean of
    the class means to limit cancellation, and clamped at 0.
    """
    _require_rank(features, 2, "features", "[B, F]")
    _require_rank(class_means, 2, "class_means", "[C, F]")
    _require_rank(precision, 2, "precision", "[F, F]")
    if not features.shape[1] == class_means.shape[1] == precision.shape[0] == precision.shape[1]:
        raise ValueError(
            f"feature sizes disagree: features {features.shape}, class_means {class_means.shape}, "
            f"precision {precision.shape}; fit on features of the same encoder.")
    centre = jnp.mean(_as_float(class_means), axis=0)
    f = _as_float(features) - centre
    mu = _as_float(class_means) - centre
    precision = _as_float(precision)
    f_precision = jnp.matmul(f, precision, precision=HIGHEST)  # [B, F]
    mu_precision = jnp.matmul(mu, precision, precision=HIGHEST)  # [C, F]
    squared = (jnp.sum(f_precision * f, axis=-1, keepdims=True)
               - 2.0 * jnp.matmul(f_precision, mu.T, precision=HIGHEST)
               + jnp.sum(mu_precision * mu, axis=-1))
    return -jnp.min(jnp.maximum(squared, 0.0), axis=-1)


SCORE_FUNCTIONS: dict[str, Callable[..., jax.Array]] = {
    "likelihood": likelihood,  # (class_log_likelihood [B, C])
    "marginal": marginal,  # (class_log_likelihood [B, C])
    "posterior": posterior,  # (class_log_likelihood [B, C], temperature=1.0)
    "msp": msp,  # (logits [B, C])
    "maxlogit": maxlogit,  # (logits [B, C])
    "energy": energy,  # (logits [B, C], temperature=1.0)
    "odin": odin,  # (logits_fn, images [B, ...], temperature, epsilon)
    "kl_matching": kl_matching,  # (logits [B, C], templates from fit_kl_templates)
    "mahalanobis": mahalanobis,  # (features [B, F], *fit_mahalanobis(...))
}
