"""Post-hoc scores against numpy transcriptions of OpenOOD v1.5's postprocessors.

Each ``_openood_*`` function below writes out, in float64 numpy (sklearn where OpenOOD uses it), what the
named file of github.com/Jingkang50/OpenOOD computes; torch's Linear weight W [C, F] is our kernel.T.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special
from sklearn.covariance import EmpiricalCovariance
from sklearn.metrics import roc_auc_score

from lgmm_jax.ood import metrics, posthoc, scores

RTOL = 1e-5
# ViM and RMDS are differences of two O(1 - 100) float32 terms (energy - alpha |residual|, md_0 - md_c): a
# score near 0 keeps the terms' absolute error (~1e-7 of them), so they are also allowed ATOL.
ATOL = 1e-6


def _rng(seed=0):
    return np.random.default_rng(seed)


def _classifier(seed=0, num_features=32, num_classes=6):
    rng = _rng(seed)
    kernel = rng.normal(0.0, 0.3, size=(num_features, num_classes)).astype(np.float32)
    bias = rng.normal(0.0, 0.5, size=num_classes).astype(np.float32)
    return kernel, bias


def _relu_features(seed, count, num_features=32, offset=0.3):
    """Non-negative penultimate-like features with some exact zeros, as after a ReLU and pooling."""
    return np.maximum(_rng(seed).normal(offset, 1.0, size=(count, num_features)), 0.0).astype(np.float32)


def _labelled(seed=0, num_classes=5, num_features=16, per_class=80, offset=3.0):
    rng = _rng(seed)
    centres = rng.normal(offset, 2.0, size=(num_classes, num_features))
    mixing = rng.normal(size=(num_features, num_features)) / np.sqrt(num_features)
    labels = np.repeat(np.arange(num_classes), per_class)
    features = centres[labels] + rng.normal(size=(labels.size, num_features)) @ mixing
    order = rng.permutation(labels.size)
    return features[order].astype(np.float32), labels[order]


def _batches(count, parts=7, seed=99):
    """Uneven consecutive batches covering range(count)."""
    cuts = np.sort(_rng(seed).choice(np.arange(1, count), parts - 1, replace=False))
    return np.split(np.arange(count), cuts)


# ----------------------------------------------------------------------------------------------
# Transcriptions of OpenOOD's postprocessors.


def _openood_knn(train, test, k):
    """openood/postprocessors/knn_postprocessor.py: normalizer, faiss IndexFlatL2 (squared L2), -D[:, -1]."""
    normalizer = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True) + 1e-10  # noqa: E731
    bank, query = normalizer(train.astype(np.float64)), normalizer(test.astype(np.float64))
    squared = ((query[:, None, :] - bank[None, :, :]) ** 2).sum(-1)
    return -np.sort(squared, axis=1)[:, k - 1]


def _openood_react(val, test, kernel, bias, percentile):
    """openood/postprocessors/react_postprocessor.py with networks/react_net.py's forward_threshold."""
    threshold = np.percentile(val.astype(np.float64).flatten(), percentile)
    w, b = kernel.T.astype(np.float64), bias.astype(np.float64)
    logits = np.clip(test.astype(np.float64), None, threshold) @ w.T + b
    return special.logsumexp(logits, axis=1)


def _openood_ash_b(x, percentile):
    """networks/ash_net.py's ash_b on [B, F] features (viewed there as [B, F, 1, 1])."""
    x = x.astype(np.float64)
    s1 = x.sum(axis=1)
    n = x.shape[1]
    k = n - int(np.round(n * percentile / 100.0))
    out = np.zeros_like(x)
    for row, (values, total) in enumerate(zip(x, s1)):
        out[row, np.argsort(-values, kind="stable")[:k]] = total / k
    return out


def _openood_ash(test, kernel, bias, percentile):
    """openood/postprocessors/ash_postprocessor.py: energy of ASHNet.forward_threshold's logits."""
    logits = _openood_ash_b(test, percentile) @ kernel.astype(np.float64) + bias.astype(np.float64)
    return special.logsumexp(logits, axis=1)


def _openood_gen(logits, gamma, m):
    """openood/postprocessors/gen_postprocessor.py's generalized_entropy."""
    probs = special.softmax(logits.astype(np.float64), axis=1)
    probs_sorted = np.sort(probs, axis=1)[:, -m:]
    return -np.sum(probs_sorted ** gamma * (1 - probs_sorted) ** gamma, axis=1)


def _openood_vim(train, test, kernel, bias, dim):
    """openood/postprocessors/vim_postprocessor.py: setup, _compute_NS_and_alpha and postprocess."""
    w, b = kernel.T.astype(np.float64), bias.astype(np.float64)
    train, test = train.astype(np.float64), test.astype(np.float64)
    logit_id_train = train @ w.T + b
    u = -np.matmul(np.linalg.pinv(w), b)
    ec = EmpiricalCovariance(assume_centered=True)
    ec.fit(train - u)
    eig_vals, eigen_vectors = np.linalg.eig(ec.covariance_)
    ns = np.ascontiguousarray((eigen_vectors.T[np.argsort(eig_vals * -1)[dim:]]).T)
    vlogit_id_train = np.linalg.norm(np.matmul(train - u, ns), axis=-1)
    alpha = logit_id_train.max(axis=-1).mean() / vlogit_id_train.mean()
    logit_ood = test @ w.T + b
    vlogit_ood = np.linalg.norm(np.matmul(test - u, ns), axis=-1) * alpha
    return -vlogit_ood + special.logsumexp(logit_ood, axis=-1), logit_ood


def _openood_rmds(train, labels, test, num_classes):
    """openood/postprocessors/rmds_postprocessor.py: setup and postprocess."""
    train, test = train.astype(np.float64), test.astype(np.float64)
    class_mean = np.stack([train[labels == c].mean(0) for c in range(num_classes)])
    centered = np.concatenate([train[labels == c] - class_mean[c] for c in range(num_classes)])
    precision = EmpiricalCovariance(assume_centered=False).fit(centered).precision_
    whole_mean = train.mean(0)
    whole_precision = EmpiricalCovariance(assume_centered=False).fit(train - whole_mean).precision_
    tensor1 = test - whole_mean
    background_scores = -np.diag(tensor1 @ whole_precision @ tensor1.T)
    class_scores = np.zeros((len(test), num_classes))
    for c in range(num_classes):
        tensor = test - class_mean[c]
        class_scores[:, c] = -np.diag(tensor @ precision @ tensor.T) - background_scores
    return class_scores.max(axis=1)


def _max_relative_error(got, expected):
    got, expected = np.asarray(got, np.float64), np.asarray(expected, np.float64)
    return float(np.max(np.abs(got - expected) / np.abs(expected)))


# ----------------------------------------------------------------------------------------------
# The bounded uniform sample.


def test_uniform_sample_keeps_everything_up_to_its_bound_and_ignores_batching():
    rows = _rng(1).normal(size=(500, 3)).astype(np.float32)
    whole = posthoc.UniformSample(1000, seed=3).add(rows).rows
    np.testing.assert_array_equal(np.sort(whole, axis=0), np.sort(rows, axis=0))  # all 500, reordered.
    for bound in (1, 37, 499, 500):
        one_shot = posthoc.UniformSample(bound, seed=3).add(rows).rows
        streamed = posthoc.UniformSample(bound, seed=3)
        for batch in _batches(len(rows)):
            streamed.add(rows[batch])
        assert one_shot.shape == (bound, 3) and streamed.seen == 500
        np.testing.assert_array_equal(streamed.rows, one_shot)
    other_seed = posthoc.UniformSample(37, seed=4).add(rows).rows
    same_seed = posthoc.UniformSample(37, seed=3).add(rows).rows
    assert not np.array_equal(np.sort(other_seed, axis=0), np.sort(same_seed, axis=0))


def test_uniform_sample_is_uniform_over_positions():
    """Each of 100 positions is kept with probability 10/100: over 400 seeds, 40 times on average."""
    rows = np.arange(100, dtype=np.float32)[:, None]
    kept = np.zeros(100)
    for seed in range(400):
        sample = posthoc.UniformSample(10, seed)
        for batch in _batches(100, parts=5, seed=seed):
            sample.add(rows[batch])
        chosen = sample.rows[:, 0].astype(int)
        assert len(np.unique(chosen)) == 10
        kept[chosen] += 1
    assert abs(kept[:50].sum() - kept[50:].sum()) < 4 * np.sqrt(4000)  # first half vs second half.
    assert kept.min() > 15 and kept.max() < 70  # binomial(400, 0.1): mean 40, sd 6.


def test_uniform_sample_rejects_bad_rows():
    sample = posthoc.UniformSample(10)
    with pytest.raises(ValueError, match="empty"):
        sample.rows
    sample.add(np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"\[n, F\]"):
        sample.add(np.zeros((2, 4)))
    with pytest.raises(ValueError, match="NaN"):
        sample.add(np.full((1, 3), np.nan))


# ----------------------------------------------------------------------------------------------
# KNN.


@pytest.mark.parametrize("k", [1, posthoc.KNN_K])
def test_knn_matches_openood_knn_postprocessor(k):
    train, test = _relu_features(2, 300), _relu_features(3, 40, offset=0.0)
    fitted = posthoc.fit_knn(train)
    assert fitted.bank.shape == train.shape
    got = posthoc.knn(test, fitted, k=k)
    expected = _openood_knn(train, test, k)
    np.testing.assert_allclose(got, expected, rtol=RTOL)
    # As OpenOOD's, a training feature is its own nearest neighbour.
    np.testing.assert_allclose(posthoc.knn(train[:5], fitted, k=1), 0.0, atol=1e-6)


def test_knn_bank_is_bounded_and_streamed_equals_one_shot():
    train = _relu_features(4, 2000, num_features=8, offset=2.0)
    one_shot = posthoc.fit_knn(train, max_bank_size=300, seed=5)
    sample = posthoc.UniformSample(300, seed=5)
    for batch in _batches(len(train)):
        sample.add(train[batch])
    streamed = posthoc.knn_from_sample(sample)
    assert one_shot.bank.shape == (300, 8)
    np.testing.assert_array_equal(streamed.bank, one_shot.bank)
    unit = train / np.linalg.norm(train, axis=1, keepdims=True)
    # Every bank row is one of the training features, each at most once.
    matches = np.abs(np.asarray(one_shot.bank)[:, None, :] - unit[None]).max(-1) < 1e-6
    assert np.all(matches.sum(1) == 1) and len(np.unique(matches.argmax(1))) == 300
    test = _relu_features(6, 10, num_features=8)
    np.testing.assert_allclose(posthoc.knn(test, one_shot, k=7),
                               _openood_knn(train[matches.argmax(1)], test, 7), rtol=RTOL)
    with pytest.raises(ValueError, match="k = 301"):
        posthoc.knn(test, one_shot, k=301)


# ----------------------------------------------------------------------------------------------
# ReAct and ASH.


def test_react_matches_openood_react_postprocessor():
    kernel, bias = _classifier(7)
    val, test = _relu_features(8, 200), _relu_features(9, 50, offset=1.0)
    fitted = posthoc.fit_react(val)
    np.testing.assert_allclose(fitted.threshold, np.percentile(val.astype(np.float64), 90), rtol=1e-6)
    got = posthoc.react(test, fitted, kernel, bias)
    np.testing.assert_allclose(got, _openood_react(val, test, kernel, bias, 90), rtol=RTOL)
    assert np.mean(test > float(fitted.threshold)) > 0.1  # the clipping is exercised.
    # Bounded: streamed equals one-shot on a 50-example subsample.
    sample = posthoc.UniformSample(50, seed=1)
    for batch in _batches(len(val)):
        sample.add(val[batch])
    bounded = posthoc.fit_react(val, max_examples=50, seed=1)
    assert posthoc.react_from_sample(sample).threshold == bounded.threshold
    np.testing.assert_allclose(bounded.threshold, fitted.threshold, rtol=0.1)


@pytest.mark.parametrize("num_features, percentile", [(32, 90), (512, 90), (2048, 90), (40, 65)])
def test_ash_matches_openood_ash_b(num_features, percentile):
    kernel, bias = _classifier(10, num_features=num_features)
    test = _relu_features(11, 24, num_features=num_features)
    got = posthoc.ash(test, kernel, bias, percentile=percentile)
    np.testing.assert_allclose(got, _openood_ash(test, kernel, bias, percentile), rtol=RTOL)


def test_ash_rejects_a_percentile_that_keeps_nothing():
    kernel, bias = _classifier(12)
    with pytest.raises(ValueError, match="percentile"):
        posthoc.ash(_relu_features(13, 2), kernel, bias, percentile=100)


# ----------------------------------------------------------------------------------------------
# GEN.


@pytest.mark.parametrize("num_classes", [10, 200])
def test_gen_matches_openood_gen_postprocessor(num_classes):
    logits = _rng(14).normal(0.0, 3.0, size=(30, num_classes)).astype(np.float32)
    got = posthoc.gen(logits)
    np.testing.assert_allclose(got, _openood_gen(logits, 0.1, 100), rtol=RTOL)
    np.testing.assert_allclose(posthoc.gen(logits, 0.5, m=5), _openood_gen(logits, 0.5, 5), rtol=RTOL)


# ----------------------------------------------------------------------------------------------
# ViM.


def test_vim_dim_follows_openood_and_vim():
    assert posthoc.vim_dim(512) == 256  # OpenOOD vim.yml, ResNet-18.
    assert posthoc.vim_dim(2048) == 1000  # OpenOOD's ImageNet script, ResNet-50.
    assert posthoc.vim_dim(768) == 512  # ViM's benchmark.py below 2048.


def test_vim_matches_openood_vim_postprocessor_and_streams():
    kernel, bias = _classifier(15, num_features=24, num_classes=10)
    train = _relu_features(16, 1500, num_features=24) * np.linspace(0.2, 2.0, 24, dtype=np.float32)
    test = _relu_features(17, 40, num_features=24, offset=0.5)
    expected, logits = _openood_vim(train, test, kernel, bias, dim=12)
    fitted = posthoc.fit_vim(train, kernel, bias, dim=12)
    assert fitted.null_space.shape == (24, 12)
    got = posthoc.vim(test, logits.astype(np.float32), fitted)
    np.testing.assert_allclose(got, expected, rtol=RTOL, atol=ATOL)
    # Streamed with labelled Mahalanobis statistics: the same fit.
    labels = _rng(18).integers(0, 10, size=len(train))
    statistics, sample = None, posthoc.UniformSample()
    for batch in _batches(len(train)):
        statistics = scores.accumulate_mahalanobis(statistics, train[batch], labels[batch], 10)
        sample.add(train[batch])
    streamed = posthoc.vim_from_statistics(statistics, sample, kernel, bias, dim=12)
    np.testing.assert_allclose(streamed.alpha, fitted.alpha, rtol=1e-6)
    np.testing.assert_allclose(posthoc.vim(test, logits.astype(np.float32), streamed), expected, rtol=RTOL,
                               atol=ATOL)
    # Bounded sample: alpha is estimated from 500 of the 1500 features, streamed or not.
    bounded = posthoc.fit_vim(train, kernel, bias, dim=12, max_sample=500, seed=2)
    small = posthoc.UniformSample(500, seed=2)
    for batch in _batches(len(train)):
        small.add(train[batch])
    assert posthoc.vim_from_statistics(statistics, small, kernel, bias, dim=12).alpha == pytest.approx(
        float(bounded.alpha), rel=1e-6)
    np.testing.assert_allclose(bounded.alpha, fitted.alpha, rtol=0.05)
    with pytest.raises(ValueError, match="dim"):
        posthoc.fit_vim(train, kernel, bias, dim=24)


# ----------------------------------------------------------------------------------------------
# RMDS.


def test_rmds_matches_openood_rmds_postprocessor_and_streams():
    train, labels = _labelled(19)
    test = _labelled(20, per_class=10)[0] + np.float32(0.5)
    fitted = posthoc.fit_rmds(train, labels, 5)
    expected = _openood_rmds(train, labels, test, 5)
    got = posthoc.rmds(test, fitted)
    np.testing.assert_allclose(got, expected, rtol=RTOL, atol=ATOL)
    x = train.astype(np.float64)
    np.testing.assert_allclose(fitted.background_mean, x.mean(0), rtol=1e-6)
    np.testing.assert_allclose(fitted.background_precision, EmpiricalCovariance().fit(x).precision_,
                               rtol=1e-5, atol=1e-7)
    statistics = None
    for batch in _batches(len(train)):
        statistics = scores.accumulate_mahalanobis(statistics, train[batch], labels[batch], 5)
    streamed = posthoc.rmds_from_statistics(statistics)
    for one, other in zip(streamed, fitted):
        np.testing.assert_allclose(one, other, rtol=1e-5, atol=1e-7)


# ----------------------------------------------------------------------------------------------
# Every score separates two clearly different clouds (a sign error would give AUROC < 0.5).


def _clouds(seed=21, num_classes=6, num_features=48, count=300):
    """Known: non-negative features around class prototypes that the classifier reads; unknown: diffuse
    non-negative noise off the prototypes' span."""
    rng = _rng(seed)
    prototypes = np.maximum(rng.normal(0.0, 1.0, size=(num_classes, num_features)), 0.0) * 3.0
    kernel = (prototypes.T / np.linalg.norm(prototypes, axis=1)).astype(np.float32)
    bias = np.zeros(num_classes, np.float32)

    def known(n, seed):
        labels = np.arange(n) % num_classes
        noise = _rng(seed).normal(0.0, 0.3, size=(n, num_features))
        return np.maximum(prototypes[labels] + noise, 0.0).astype(np.float32), labels

    train, labels = known(count, seed + 1)
    test = known(count, seed + 2)[0]
    unknown = np.abs(_rng(seed + 3).normal(0.0, 1.2, size=(count, num_features))).astype(np.float32)
    return train, labels, test, unknown, kernel, bias


def test_every_posthoc_score_separates_known_from_unknown_clouds():
    train, labels, test, unknown, kernel, bias = _clouds()
    knn_fit = posthoc.fit_knn(train)
    react_fit = posthoc.fit_react(train)
    vim_fit = posthoc.fit_vim(train, kernel, bias, dim=12)
    rmds_fit = posthoc.fit_rmds(train, labels, 6)
    score_fns = {
        "knn": lambda f: posthoc.knn(f, knn_fit),
        "react": lambda f: posthoc.react(f, react_fit, kernel, bias),
        "ash": lambda f: posthoc.ash(f, kernel, bias),
        "gen": lambda f: posthoc.gen(f @ kernel + bias),
        "vim": lambda f: posthoc.vim(f, f @ kernel + bias, vim_fit),
        "rmds": lambda f: posthoc.rmds(f, rmds_fit),
    }
    assert set(score_fns) == set(posthoc.POSTHOC_SCORES)
    is_known = np.r_[np.ones(len(test)), np.zeros(len(unknown))]
    for name, score_fn in score_fns.items():
        auroc = roc_auc_score(is_known, np.r_[score_fn(test), score_fn(unknown)])
        assert auroc > 0.9, (name, auroc)


def test_scores_jit_with_fits_as_arguments():
    train, labels, test, _, kernel, bias = _clouds(seed=22)
    vim_fit = posthoc.fit_vim(train, kernel, bias, dim=12)
    rmds_fit = posthoc.fit_rmds(train, labels, 6)
    combined = jax.jit(lambda f, v, r: (posthoc.vim(f, f @ kernel, v), posthoc.rmds(f, r)))
    got_vim, got_rmds = combined(jnp.asarray(test), vim_fit, rmds_fit)
    np.testing.assert_allclose(got_vim, posthoc.vim(test, test @ kernel, vim_fit), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got_rmds, posthoc.rmds(test, rmds_fit), rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------------------
# ODIN tuned on OOD data.


def _linear_odin_numpy(weights, bias, images, temperature, epsilon):
    """ODIN (openood/postprocessors/odin_postprocessor.py) for logits = x W + b with the analytic gradient."""
    x = images.reshape(len(images), -1).astype(np.float64)
    probabilities = special.softmax((x @ weights + bias) / temperature, axis=1)
    predicted = probabilities.argmax(axis=1)
    gradient = (weights[:, predicted].T - probabilities @ weights.T) / temperature  # of log S_yhat.
    perturbed = x + epsilon * np.sign(gradient)
    return special.softmax((perturbed @ weights + bias) / temperature, axis=1).max(axis=1)


def _linear_problem(seed=23):
    rng = _rng(seed)
    weights = rng.normal(size=(12, 4)).astype(np.float32)
    bias = rng.normal(size=4).astype(np.float32)
    known = (rng.normal(size=(40, 2, 2, 3)) + 0.6 * weights[:, rng.integers(0, 4, 40)].T.reshape(40, 2, 2, 3))
    unknown = rng.normal(0.0, 0.7, size=(30, 2, 2, 3))
    logits_fn = lambda x: x.reshape(x.shape[0], -1) @ weights + bias  # noqa: E731
    return weights, bias, known.astype(np.float32), unknown.astype(np.float32), logits_fn


def test_odin_grid_scores_equal_odin_at_each_setting():
    _, _, known, _, logits_fn = _linear_problem()
    std = (0.5, 0.25, 1.0)
    table = posthoc.odin_grid_scores(logits_fn, known, (1.0, 100.0), (0.0, 0.002, 0.004), batch_size=16,
                                     input_std=std)
    assert table.shape == (2, 3, len(known))
    for t_index, temperature in enumerate((1.0, 100.0)):
        for e_index, epsilon in enumerate((0.0, 0.002, 0.004)):
            expected = scores.odin(logits_fn, known, temperature, scores.odin_step(epsilon, std))
            np.testing.assert_allclose(table[t_index, e_index], expected, rtol=1e-6)


def test_select_odin_on_ood_minimises_fpr_at_95_tpr_over_the_grid():
    weights, bias, known, unknown, logits_fn = _linear_problem()
    temperatures, epsilons = (1.0, 10.0, 1000.0), (0.0, 0.05, 0.2, 0.5)
    chosen = posthoc.select_odin_on_ood(logits_fn, known, unknown, temperatures, epsilons, batch_size=16)
    w, b = weights.astype(np.float64), bias.astype(np.float64)
    expected_fpr, expected_auroc = {}, {}
    is_known = np.r_[np.ones(len(known)), np.zeros(len(unknown))]
    for temperature in temperatures:
        for epsilon in epsilons:
            k = _linear_odin_numpy(w, b, known, temperature, epsilon)
            u = _linear_odin_numpy(w, b, unknown, temperature, epsilon)
            expected_fpr[temperature, epsilon] = metrics.fpr_at_tpr(k, u)
            expected_auroc[temperature, epsilon] = roc_auc_score(is_known, np.r_[k, u])
    assert chosen.fpr_by_setting == pytest.approx(expected_fpr)
    assert chosen.auroc_by_setting == pytest.approx(expected_auroc, abs=1e-3)
    best = min(expected_fpr, key=lambda s: (expected_fpr[s], -expected_auroc[s]))
    assert (chosen.temperature, chosen.epsilon) == best
    assert len(set(expected_fpr.values())) > 1  # the grid matters on this problem.


def test_select_odin_on_ood_defaults_and_bad_input():
    assert posthoc.ODIN_OOD_TEMPERATURES == (1.0, 10.0, 100.0, 1000.0)
    np.testing.assert_allclose(posthoc.ODIN_OOD_EPSILONS, np.linspace(0.0, 0.004, 21))
    _, _, known, unknown, logits_fn = _linear_problem(seed=24)
    chosen = posthoc.select_odin_on_ood(logits_fn, known[:8], unknown[:8])
    assert len(chosen.fpr_by_setting) == 4 * 21
    assert chosen.fpr_by_setting[chosen.temperature, chosen.epsilon] == min(chosen.fpr_by_setting.values())
    with pytest.raises(ValueError, match="unknown"):
        posthoc.select_odin_on_ood(logits_fn, known, unknown[:0])
    with pytest.raises(ValueError, match="temperature"):
        posthoc.select_odin_on_ood(logits_fn, known, unknown, temperatures=())
