"""Post-hoc open-set scores that OpenOOD v1.5 ranks highest; higher = more in-distribution.

Each follows OpenOOD's postprocessor (github.com/Jingkang50/OpenOOD, ``openood/postprocessors/``) at the
default hyper-parameters of its ``configs/postprocessors/*.yml`` (OpenOOD's evaluator can instead search
them on a held-out OOD set, its "APS" mode; we do not):

* ``knn``: minus the squared L2 distance to the K-th nearest training feature, features L2-normalised,
  K = 50 (Sun et al., 2022; ``knn_postprocessor.py``).
* ``vim``: energy minus alpha times the norm of the feature's residual off the training features'
  principal subspace (Wang et al., 2022; ``vim_postprocessor.py``).
* ``react``: energy of the logits recomputed from features clipped at the 90th percentile of held-out
  known activations (Sun et al., 2021; ``react_postprocessor.py``).
* ``ash``: energy of the logits recomputed from ASH-B features, percentile 90 (Djurisic et al., 2023;
  ``ash_postprocessor.py`` with ``networks/ash_net.py``).
* ``gen``: minus the generalized entropy of the top-M probabilities, gamma 0.1, M 100 (Liu et al.,
  2023; ``gen_postprocessor.py``).
* ``rmds``: relative Mahalanobis distance, class-conditional minus class-agnostic Gaussian (Ren et
  al., 2021; ``rmds_postprocessor.py``).
* ``select_odin_on_ood``: ODIN's temperature and step chosen on held-out OOD data (Liang et al., 2018).

Fitting runs on the host in bounded memory: Gaussian statistics are streamed with
``scores.accumulate_mahalanobis`` (O(C F + F^2)); the KNN bank and the ReAct / ViM estimates that need
examples use ``UniformSample``, a uniform subsample of at most ``max_size`` rows that does not depend on
how the data was batched. The scoring functions are jitted and work on a batch.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lgmm_jax.ood import metrics, scores
from lgmm_jax.ood.scores import HIGHEST, _as_float, _require_rank

POSTHOC_SCORES = ("knn", "vim", "react", "ash", "gen", "rmds")  # the softmax model's
# L-GMM has no linear classifier (ViM, ReAct, ASH and GEN need one): KNN on its latents z and on its
# backbone's pooled features, RMDS on the features. Not RMDS on the latents: they lie on the unit sphere,
# so their covariance is near-singular along the radial direction and its pseudo-inverse amplifies float32
# rounding; evaluating with another batch shape moved its AUROC by 1e-3 on digits (every other score: 1e-5).
LGMM_POSTHOC_SCORES = ("knn_latent", "knn_features", "rmds_features")
# Scores whose hyper-parameters are chosen on held-out images of the unknown set they are scored on (so
# they are not deployable and each unknown set is scored without its held-out images): the paper's
# Table 3 "ODIN", `select_odin_on_ood`.
OOD_TUNED_SCORES = ("odin_ood",)

DEFAULT_SAMPLE_SIZE = 50_000
KNN_K = 50  # knn.yml
REACT_PERCENTILE = 90.0  # react.yml
ASH_PERCENTILE = 90  # ash.yml
GEN_GAMMA = 0.1  # gen.yml
GEN_M = 100  # gen.yml
# odin_ood: OpenOOD's odin.yml temperature sweep; ODIN's (Liang et al., 2018) step grid, 21 evenly spaced
# values from 0 to 0.004 in [0, 1] pixel units.
ODIN_OOD_TEMPERATURES = (1.0, 10.0, 100.0, 1000.0)
ODIN_OOD_EPSILONS = tuple(round(0.0002 * i, 4) for i in range(21))


# ----------------------------------------------------------------------------------------------
# A bounded uniform subsample.


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser, a bijection of uint64 (wrapping arithmetic)."""
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


class UniformSample:
    """At most `max_size` rows, a uniform random subset without replacement of all rows `add`-ed so far.

    Row i (counted over every call) gets the key splitmix64(i + splitmix64(seed)), distinct for distinct
    i; the sample is the `max_size` rows of smallest key. It therefore depends on the seed and the rows'
    order, not on how they were split into batches, and holds every row while at most `max_size` came.
    Memory: `max_size` x F float32 plus one batch. The sample is filled in place (not a pure value).
    """

    def __init__(self, max_size: int = DEFAULT_SAMPLE_SIZE, seed: int = 0):
        if max_size < 1:
            raise ValueError(f"max_size must be >= 1, got {max_size}.")
        self.max_size, self.seed, self.seen = int(max_size), int(seed), 0
        self._offset = _splitmix64(np.array([seed], np.uint64))
        self._keys = np.zeros(0, np.uint64)
        self._rows: np.ndarray | None = None

    def add(self, rows) -> UniformSample:
        """Offers a batch [n, F] of finite rows; returns self."""
        rows = np.asarray(rows, np.float32)
        if rows.ndim != 2 or (self._rows is not None and rows.shape[1] != self._rows.shape[1]):
            raise ValueError(f"rows must be [n, F] with the F of earlier batches, got {rows.shape}.")
        if not np.all(np.isfinite(rows)):
            raise ValueError("rows contain NaN or inf; fix the encoder output before fitting.")
        keys = _splitmix64(np.arange(self.seen, self.seen + len(rows), dtype=np.uint64) + self._offset)
        self.seen += len(rows)
        if self._rows is None:
            self._rows = np.zeros((0, rows.shape[1]), np.float32)
        if len(self._keys) + len(rows) <= self.max_size:  # not full: keep everything.
            self._keys = np.concatenate([self._keys, keys])
            self._rows = np.concatenate([self._rows, rows])
            return self
        if len(self._keys) < self.max_size:  # fills up now: keep the max_size smallest keys.
            keys, rows = np.concatenate([self._keys, keys]), np.concatenate([self._rows, rows])
            keep = np.argpartition(keys, self.max_size - 1)[:self.max_size]
            self._keys, self._rows = keys[keep], rows[keep]
            return self
        entering = keys < self._keys.max()  # full: replace the largest keys in place.
        if entering.any():
            keys, rows = keys[entering], rows[entering]
            cut = np.partition(np.concatenate([self._keys, keys]), self.max_size - 1)[self.max_size - 1]
            leaving, entering = np.flatnonzero(self._keys > cut), keys <= cut
            self._keys[leaving], self._rows[leaving] = keys[entering], rows[entering]
        return self

    @property
    def rows(self) -> np.ndarray:
        """The sampled rows [min(seen, max_size), F] float32, in key order (a copy)."""
        if self._rows is None:
            raise ValueError("the sample is empty; add at least one batch of rows.")
        return self._rows[np.argsort(self._keys)]


# ----------------------------------------------------------------------------------------------
# KNN.


class KnnFit(NamedTuple):
    """The bank of L2-normalised training features [M, F] float32 that ``knn`` searches."""

    bank: jax.Array


def _l2_normalise(features: np.ndarray) -> np.ndarray:
    features = np.asarray(features, np.float64)
    norms = np.linalg.norm(features, axis=-1, keepdims=True)
    return features / np.maximum(norms, np.finfo(np.float32).tiny)


def knn_from_sample(sample: UniformSample) -> KnnFit:
    """The KNN bank from a ``UniformSample`` of training features (what ``fit_knn`` streams)."""
    return KnnFit(jnp.asarray(_l2_normalise(sample.rows), jnp.float32))


def fit_knn(features, max_bank_size: int = DEFAULT_SAMPLE_SIZE, seed: int = 0) -> KnnFit:
    """The KNN bank (Sun et al., 2022; OpenOOD ``knn_postprocessor.py``): training features, L2-normalised.

    OpenOOD puts every training feature in a faiss ``IndexFlatL2``; for ImageNet's 1.28M x 2048 that is
    10 GB, so the bank here is a uniform subsample of at most `max_bank_size` features (default 50,000:
    CIFAR's whole training set, 4% of ImageNet's). Sun et al. (2022) likewise sample a fraction of
    ImageNet's training set and scale K with it (their code: K = 1000 on all of it; ViM's code uses 200k
    random training images). Memory: `max_bank_size` x F float32. To stream, ``add`` each batch to a
    ``UniformSample(max_bank_size, seed)`` and call ``knn_from_sample``.

    Args:
      features: [N, F] penultimate features of the training (known-class) examples.
      max_bank_size: M, the most features kept.
      seed: chooses the subsample when N > M.
    """
    return knn_from_sample(UniformSample(max_bank_size, seed).add(features))


@functools.partial(jax.jit, static_argnames="k")
def knn(features: jax.Array, fitted: KnnFit, k: int = KNN_K) -> jax.Array:
    """s(x) = -|x/|x| - b_(k)|^2, b_(k) the k-th nearest bank feature: [B, F] -> [B] (OpenOOD: K = 50).

    The squared distance, as faiss ``IndexFlatL2`` returns it (OpenOOD scores ``-D[:, -1]``), computed
    as 2 - 2 x.b for unit vectors and clamped at 0; the k nearest are the k largest dot products.
    Memory: a [B, M] block of dot products.
    """
    _require_rank(features, 2, "features", "[B, F]")
    if fitted.bank.shape[0] < k or fitted.bank.shape[1] != features.shape[1]:
        raise ValueError(f"the bank {fitted.bank.shape} needs >= k = {k} rows of the features' width "
                         f"{features.shape[1]}; fit it on more features of the same encoder or lower k.")
    features = _as_float(features)
    unit = features / jnp.maximum(jnp.linalg.norm(features, axis=-1, keepdims=True),
                                  jnp.finfo(jnp.float32).tiny)
    similarity = jnp.matmul(unit, fitted.bank.T, precision=HIGHEST)  # [B, M]
    kth_similarity = jax.lax.top_k(similarity, k)[0][:, -1]
    return -jnp.maximum(2.0 - 2.0 * kth_similarity, 0.0)


# ----------------------------------------------------------------------------------------------
# ReAct and ASH: energy of logits recomputed through the final linear layer.


def _energy_of(features: jax.Array, kernel: jax.Array, bias: jax.Array) -> jax.Array:
    """logsumexp(features @ kernel + bias): the energy score (T = 1) of a Dense layer's logits."""
    logits = jnp.matmul(features, _as_float(kernel), precision=HIGHEST) + _as_float(bias)
    return jax.nn.logsumexp(logits, axis=-1)


class ReactFit(NamedTuple):
    """ReAct's clipping threshold c (a float32 scalar)."""

    threshold: jax.Array


def react_from_sample(sample: UniformSample, percentile: float = REACT_PERCENTILE) -> ReactFit:
    """The `percentile`-th percentile (numpy's linear interpolation) of every sampled activation value."""
    return ReactFit(jnp.asarray(np.percentile(sample.rows.ravel(), percentile), jnp.float32))


def fit_react(features, percentile: float = REACT_PERCENTILE, max_examples: int = DEFAULT_SAMPLE_SIZE,
              seed: int = 0) -> ReactFit:
    """ReAct's threshold (Sun et al., 2021; OpenOOD ``react_postprocessor.py``, percentile 90).

    OpenOOD takes ``np.percentile`` of all activation values of the held-out known *validation* split
    (``id_loader_dict['val']``); here of a uniform subsample of at most `max_examples` examples (all of
    them up to that), max_examples x F float32 in memory. To stream, ``add`` each batch to a
    ``UniformSample(max_examples, seed)`` and call ``react_from_sample``.

    Args:
      features: [N, F] penultimate features of held-out known-class examples.
    """
    return react_from_sample(UniformSample(max_examples, seed).add(features), percentile)


@jax.jit
def react(features: jax.Array, fitted: ReactFit, kernel: jax.Array, bias: jax.Array) -> jax.Array:
    """s(x) = logsumexp(min(f, c) W + b): [B, F], threshold, kernel [F, C], bias [C] -> [B].

    OpenOOD's ``ReactNet.forward_threshold`` clips the penultimate features from above and reapplies
    the final linear layer (flax's Dense kernel [F, C] is torch's weight transposed); then the energy.
    """
    _require_rank(features, 2, "features", "[B, F]")
    return _energy_of(jnp.minimum(_as_float(features), fitted.threshold), kernel, bias)


@functools.partial(jax.jit, static_argnames="percentile")
def ash(features: jax.Array, kernel: jax.Array, bias: jax.Array, percentile: int = ASH_PERCENTILE
        ) -> jax.Array:
    """ASH-B then energy (Djurisic et al., 2023): [B, F], kernel [F, C], bias [C] -> [B]. No fitting.

    OpenOOD's ``ASHNet.forward_threshold`` applies ``ash_b`` to the penultimate features at percentile
    90 (ash.yml): of F activations the k = F - round(F p / 100) largest are kept and each set to the
    example's activation sum / k, the rest to 0; the final linear layer is reapplied and the energy read
    off. Ties among the k-th largest values are broken by ``lax.top_k``'s order.
    """
    _require_rank(features, 2, "features", "[B, F]")
    num_features = features.shape[1]
    k = num_features - int(np.round(num_features * percentile / 100.0))
    if not 0 < k <= num_features:
        raise ValueError(
            f"percentile {percentile} keeps {k} of {num_features} activations; use 0 <= p < 100.")
    features = _as_float(features)
    kept = jax.lax.top_k(features, k)[1]  # [B, k]
    mask = jnp.zeros_like(features).at[jnp.arange(features.shape[0])[:, None], kept].set(1.0)
    return _energy_of(mask * (jnp.sum(features, axis=-1, keepdims=True) / k), kernel, bias)


# ----------------------------------------------------------------------------------------------
# GEN.


@functools.partial(jax.jit, static_argnames="m")
def gen(logits: jax.Array, gamma: float | jax.Array = GEN_GAMMA, m: int = GEN_M) -> jax.Array:
    """s(x) = -sum_{j in top-M} p_j^gamma (1 - p_j)^gamma, p = softmax(logits): [B, C] -> [B].

    Generalized entropy (Liu et al., 2023; OpenOOD ``gen_postprocessor.py``, gamma 0.1 and M 100 in
    gen.yml) over the M largest probabilities (all of them when C <= M). No fitting.
    """
    _require_rank(logits, 2, "logits", "[B, C]")
    probabilities = jax.nn.softmax(_as_float(logits), axis=-1)
    top = jax.lax.top_k(probabilities, min(m, logits.shape[1]))[0]
    return -jnp.sum(top ** gamma * (1.0 - top) ** gamma, axis=-1)


# ----------------------------------------------------------------------------------------------
# ViM.


class VimFit(NamedTuple):
    """ViM's origin u [F], the residual (null) space basis [F, F - D] and alpha, float32."""

    origin: jax.Array
    null_space: jax.Array
    alpha: jax.Array


def vim_dim(num_features: int) -> int:
    """D, the principal subspace's dimension: 1000 for F >= 2048 and 512 for F >= 768 (ViM's
    ``benchmark.py``; OpenOOD's ImageNet ResNet-50 setting), else F // 2 (OpenOOD's vim.yml: 256 for
    ResNet-18's 512)."""
    return 1000 if num_features >= 2048 else 512 if num_features >= 768 else num_features // 2


def vim_from_statistics(statistics: scores.MahalanobisStatistics, sample: UniformSample, kernel, bias,
                        dim: int | None = None) -> VimFit:
    """ViM fitted from streamed training statistics (labels play no part) and a sample of the same features.

    The scatter about u comes from ``statistics`` exactly (all N examples); alpha from the ``sample``
    (exact while N <= its max_size, else an estimate from a uniform subsample).
    """
    kernel, bias = np.asarray(kernel, np.float64), np.asarray(bias, np.float64)
    num_features = statistics.scatter.shape[0]
    dim = vim_dim(num_features) if dim is None else int(dim)
    if not 0 < dim < num_features or kernel.shape[0] != num_features:
        raise ValueError(f"need 0 < dim < F = {num_features} and a kernel [F, C], got dim {dim} and "
                         f"kernel {kernel.shape}.")
    origin = -np.linalg.pinv(kernel.T) @ bias  # torch's weight is kernel.T.
    # sum_i (f_i - u)(f_i - u)^T from the scatter about `shift`: f - u = g + (shift - u).
    count, total, offset = statistics.counts.sum(), statistics.sums.sum(axis=0), statistics.shift - origin
    scatter = (statistics.scatter + np.outer(total, offset) + np.outer(offset, total)
               + count * np.outer(offset, offset))
    eigenvalues, eigenvectors = np.linalg.eigh(scatter / count)
    null_space = eigenvectors[:, np.argsort(-eigenvalues)[dim:]]  # [F, F - D]
    rows = sample.rows.astype(np.float64)
    residual_norm = np.linalg.norm((rows - origin) @ null_space, axis=-1)
    alpha = np.max(rows @ kernel + bias, axis=-1).mean() / residual_norm.mean()
    return VimFit(jnp.asarray(origin, jnp.float32), jnp.asarray(null_space, jnp.float32),
                  jnp.asarray(alpha, jnp.float32))


def fit_vim(features, kernel, bias, dim: int | None = None, max_sample: int = DEFAULT_SAMPLE_SIZE,
            seed: int = 0) -> VimFit:
    """ViM (Wang et al., 2022; OpenOOD ``vim_postprocessor.py``) on training features.

    u = -pinv(W) b with W = kernel^T; the principal subspace is spanned by the eigenvectors of the D
    largest eigenvalues of (1/N) sum (f - u)(f - u)^T (OpenOOD: ``EmpiricalCovariance(assume_centered=
    True)`` then ``np.linalg.eig``; here ``eigh``, its symmetric form); the residual space is the rest.
    alpha = mean_i max_c logit_ic / mean_i |(f_i - u) R| over training features. D: ``vim_dim(F)``.
    Memory: O(F^2) plus a sample of `max_sample` rows. To stream, feed every batch to
    ``scores.accumulate_mahalanobis`` (any labels; the Mahalanobis / RMDS statistics do) and to a
    ``UniformSample(max_sample, seed)``, then call ``vim_from_statistics``.

    Args:
      features: [N, F] penultimate training features; kernel [F, C], bias [C]: the final Dense layer.
    """
    features = np.asarray(features)
    statistics = scores.accumulate_mahalanobis(None, features, np.zeros(len(features), np.int64), 1)
    return vim_from_statistics(statistics, UniformSample(max_sample, seed).add(features), kernel, bias, dim)


@jax.jit
def vim(features: jax.Array, logits: jax.Array, fitted: VimFit) -> jax.Array:
    """s(x) = logsumexp(logits) - alpha |(f - u) R|: [B, F], [B, C] -> [B] (the virtual logit's negation)."""
    _require_rank(features, 2, "features", "[B, F]")
    _require_rank(logits, 2, "logits", "[B, C]")
    residual = jnp.matmul(_as_float(features) - fitted.origin, fitted.null_space, precision=HIGHEST)
    return jax.nn.logsumexp(_as_float(logits), axis=-1) - fitted.alpha * jnp.linalg.norm(residual, axis=-1)


# ----------------------------------------------------------------------------------------------
# RMDS.


class RmdsFit(NamedTuple):
    """Class means [C, F] and tied precision [F, F]; the class-agnostic mean [F] and precision [F, F]."""

    class_means: jax.Array
    precision: jax.Array
    background_mean: jax.Array
    background_precision: jax.Array


def rmds_from_statistics(statistics: scores.MahalanobisStatistics) -> RmdsFit:
    """RMDS from ``scores.accumulate_mahalanobis`` statistics of labelled training features."""
    class_means, precision = scores.mahalanobis_from_statistics(statistics)
    count = statistics.counts.sum()
    shifted_mean = statistics.sums.sum(axis=0) / count
    covariance = (statistics.scatter - count * np.outer(shifted_mean, shifted_mean)) / count
    background_precision = scores.pinvh(covariance)
    return RmdsFit(class_means, precision, jnp.asarray(shifted_mean + statistics.shift, jnp.float32),
                   jnp.asarray(background_precision, jnp.float32))


def fit_rmds(features, labels, num_classes: int) -> RmdsFit:
    """Relative Mahalanobis distance (Ren et al., 2021; OpenOOD ``rmds_postprocessor.py``, no
    hyper-parameters) fitted on labelled training features [N, F], labels [N] in [0, C).

    Class-conditional Gaussians share the maximum-likelihood tied covariance (as ``fit_mahalanobis``);
    the background Gaussian has the mean and covariance of all features (OpenOOD: sklearn's
    ``EmpiricalCovariance``; precision by ``pinvh``). Streamed: ``rmds_from_statistics``.
    """
    return rmds_from_statistics(scores.accumulate_mahalanobis(None, features, labels, num_classes))


@jax.jit
def rmds(features: jax.Array, fitted: RmdsFit) -> jax.Array:
    """s(x) = max_c -(md_c(f) - md_0(f)) = md_0(f) - min_c md_c(f), squared Mahalanobis distances."""
    background = _as_float(features) - fitted.background_mean
    md_background = jnp.sum(jnp.matmul(background, fitted.background_precision, precision=HIGHEST)
                            * background, axis=-1)
    class_part = scores.mahalanobis(features, fitted.class_means, fitted.precision)  # -min_c md_c
    return jnp.maximum(md_background, 0.0) + class_part


# ----------------------------------------------------------------------------------------------
# ODIN tuned on OOD data.


class OdinOodHyperparameters(NamedTuple):
    """What ``select_odin_on_ood`` chose, and each (temperature, epsilon)'s FPR at 95% TPR and AUROC."""

    temperature: float
    epsilon: float
    fpr_by_setting: dict[tuple[float, float], float]
    auroc_by_setting: dict[tuple[float, float], float]


def _odin_grid_function(logits_fn: Callable[[jax.Array], jax.Array]):
    """Jitted (batch, temperature, steps [E, ...]) -> ODIN scores [E, B]: one input gradient per batch and
    temperature (it does not depend on the step), then one forward pass per step."""

    @jax.jit
    def grid(batch, temperature, steps):
        direction = scores.odin_perturbation(logits_fn, batch, temperature)
        return jax.lax.map(
            lambda step: scores.msp(_as_float(logits_fn(batch + step * direction)) / temperature), steps)

    return grid


def _odin_grid(grid, images, temperatures, epsilons, batch_size, input_std) -> np.ndarray:
    """[T, E, N] scores; the last batch is padded with copies of its first image (scored, then dropped) so
    that every batch has one shape and `grid` compiles once."""
    images = np.asarray(images, np.float32)
    steps = jnp.stack([scores.odin_step(epsilon, input_std) for epsilon in epsilons])
    size = min(batch_size, len(images))
    table = np.empty((len(temperatures), len(epsilons), len(images)), np.float32)
    for start in range(0, len(images), size):
        batch = images[start:start + size]
        padded = np.concatenate([batch, np.repeat(batch[:1], size - len(batch), axis=0)])
        for index, temperature in enumerate(temperatures):
            table[index, :, start:start + len(batch)] = np.asarray(
                grid(padded, jnp.float32(temperature), steps))[:, :len(batch)]
    return table


def odin_grid_scores(logits_fn: Callable[[jax.Array], jax.Array], images, temperatures: Sequence[float],
                     epsilons: Sequence[float], batch_size: int = 256,
                     input_std: float | Sequence[float] = 1.0) -> np.ndarray:
    """ODIN scores [T, E, N] of `images` [N, ...] for every temperature and step (steps in [0, 1] pixel
    units, divided per channel by `input_std` as ``scores.odin_step``); each equals ``scores.odin``."""
    grid = _odin_grid_function(logits_fn)
    return _odin_grid(grid, images, temperatures, epsilons, batch_size, input_std)


def select_odin_on_ood(
    logits_fn: Callable[[jax.Array], jax.Array],
    known_images,
    unknown_images,
    temperatures: Sequence[float] = ODIN_OOD_TEMPERATURES,
    epsilons: Sequence[float] = ODIN_OOD_EPSILONS,
    batch_size: int = 256,
    input_std: float | Sequence[float] = 1.0,
    tpr: float = metrics.DEFAULT_TPR,
) -> OdinOodHyperparameters:
    """ODIN's temperature and step tuned with OOD data, as the ODIN paper does (the paper's Table 3 "ODIN").

    Liang et al. (2018) hold out a slice of each OOD set (1,000 images) with known-class images and choose
    (T, eps) minimising the FPR at 95% TPR on them (``metrics.fpr_at_tpr``); ties go to the higher
    AUROC, then to the first in grid order (temperatures outer). The result is tuned per unknown set:
    evaluate that set without its held-out images. Defaults: OpenOOD's odin.yml temperatures {1, 10,
    100, 1000} (ODIN's paper searches {1, 2, 5, ..., 1000}) and ODIN's 21 steps 0, 0.0002, ..., 0.004.
    Cost: one forward-backward plus len(epsilons) forwards per image per temperature.

    Args:
      logits_fn: images [B, ...] -> logits [B, C] (see ``scores.odin``).
      known_images, unknown_images: [N, ...] held-out known-class and OOD images.
      input_std: the per-channel std the images were standardised by (see ``scores.odin_step``).
    """
    known_images, unknown_images = np.asarray(known_images), np.asarray(unknown_images)
    if min(len(known_images), len(unknown_images)) == 0 or known_images.ndim < 2:
        raise ValueError(f"pass non-empty held-out known and unknown images [N, ...], got "
                         f"{known_images.shape} and {unknown_images.shape}.")
    if not temperatures or not epsilons or min(temperatures) <= 0:
        raise ValueError("pass at least one temperature > 0 and one epsilon.")
    grid = _odin_grid_function(logits_fn)
    known = _odin_grid(grid, known_images, temperatures, epsilons, batch_size, input_std)
    unknown = _odin_grid(grid, unknown_images, temperatures, epsilons, batch_size, input_std)
    fprs, aurocs = {}, {}
    for t_index, temperature in enumerate(temperatures):
        for e_index, epsilon in enumerate(epsilons):
            setting = (float(temperature), float(epsilon))
            known_row, unknown_row = known[t_index, e_index], unknown[t_index, e_index]
            fprs[setting] = metrics.fpr_at_tpr(known_row, unknown_row, tpr)
            aurocs[setting] = metrics.auroc(known_row, unknown_row)
    best = min(fprs, key=lambda setting: (fprs[setting], -aurocs[setting]))  # min keeps the first of ties.
    return OdinOodHyperparameters(best[0], best[1], fprs, aurocs)
