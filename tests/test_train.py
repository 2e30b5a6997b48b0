"""Training end to end: the default config on digits (both heads), resume, the TFDS path on mock data."""
import json
import os
import shutil
from unittest import mock

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds
from sklearn.metrics import roc_auc_score

from configs import cifar10, cifar100
from lgmm_jax.data import protocols
from lgmm_jax import tasks
from lgmm_jax.training import experiment, train
from lgmm_jax.heads import base as head_base
from lgmm_jax.heads import create_model
from lgmm_jax.ood import posthoc, scores
from tests.shared_runs import default_config, tiny_default_run, tiny_softmax_run


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def read_results(workdir):
    with open(os.path.join(workdir, "results.json")) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def lgmm_run(tmp_path_factory):
    """The session's default L-GMM run (`default_config()`, shared with other modules): (workdir, results)."""
    workdir = str(tiny_default_run(tmp_path_factory, "train"))
    return workdir, read_results(workdir)


def test_lgmm_default_config_end_to_end(lgmm_run):
    workdir, results = lgmm_run
    assert results["closed_set"]["top1"] > 0.5  # 6 known classes: chance is 1/6
    assert set(results["open_set"]) == {"unknown_classes"}
    assert set(results["open_set"]["unknown_classes"]) >= set(scores.LGMM_SCORES)
    for name in posthoc.LGMM_POSTHOC_SCORES:  # KNN / RMDS on the latents and features: each learned something
        assert results["open_set"]["unknown_classes"][name]["auroc"] > 0.5, name
    likelihood = results["open_set"]["unknown_classes"]["likelihood"]
    assert set(likelihood) == {"auroc", "fpr95", "fpr95_ood_positive", "aupr_in", "aupr_out", "detection_error"}
    assert 1.0 <= results["components"]["mean_effective_components"] <= 3.0
    records = read_jsonl(os.path.join(workdir, "metrics.jsonl"))
    assert {10, 20, 30} <= {r["step"] for r in records}
    for name in ("loss", "discriminative", "nll", "one_hot", "average_usage", "generative",
                 "learning_rate", "images_per_second", "input_wait", "effective_components"):
        assert all(np.isfinite(r[name]) for r in records), name
    assert os.listdir(os.path.join(workdir, "tensorboard"))
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["15", "30"]


def test_tensorboard_events_readable_without_tensorflow(lgmm_run):
    from tensorboardX.event_file_writer import EventFileWriter  # noqa: F401 (tensorboardX writes them)
    from tensorboard.backend.event_processing import event_accumulator  # noqa: F401

    workdir, _ = lgmm_run
    events = event_accumulator.EventAccumulator(os.path.join(workdir, "tensorboard"))
    events.Reload()
    assert "train/loss" in events.Tags()["scalars"]


def test_softmax_counterpart_end_to_end(tmp_path_factory):
    """The session's softmax run (`default_config(model.head=softmax)`, every softmax score)."""
    tmp_path = tiny_softmax_run(tmp_path_factory, "train")
    results = read_results(tmp_path)
    assert results["closed_set"]["top1"] > 0.5
    open_set = results["open_set"]["unknown_classes"]
    assert set(open_set) >= set(scores.SOFTMAX_SCORES)
    for name in posthoc.POSTHOC_SCORES + posthoc.OOD_TUNED_SCORES:  # each learned something
        assert open_set[name]["auroc"] > 0.5, name
    assert "components" not in results
    # odin_ood is tuned on the first min(1000, N // 2) unknown images and scored on the others, against
    # the whole known test split; its AUROC is scikit-learn's on the stored scores.
    tuned = results["tuned_on_ood"]["odin_ood"]["unknown_classes"]
    num_unknown = open_set["num_examples"]
    assert tuned["held_out"] == min(1000, num_unknown // 2) and tuned["scored"] == num_unknown - tuned["held_out"]
    assert tuned["temperature"] in posthoc.ODIN_OOD_TEMPERATURES and tuned["epsilon"] in posthoc.ODIN_OOD_EPSILONS
    with np.load(tmp_path / "scores.npz") as stored:
        known, unknown = stored["test_vs_unknown_classes/odin_ood"], stored["unknown_classes/odin_ood"]
        assert "validation/odin_ood" not in stored.files  # not deployable: no threshold
    assert (len(known), len(unknown)) == (results["closed_set"]["num_examples"], tuned["scored"])
    is_known = np.r_[np.ones(len(known)), np.zeros(len(unknown))]
    assert roc_auc_score(is_known, np.r_[known, unknown]) == pytest.approx(open_set["odin_ood"]["auroc"], abs=1e-12)
    assert "odin_ood †" in (tmp_path / "report.md").read_text()


def test_resume_continues_exactly(tmp_path_factory, monkeypatch):
    """The shared 30-step run with its last checkpoint deleted, run again to 30 steps, resumes at step 15
    (after the k-means re-seed of step 9, on the cosine schedule) and ends where the run that went straight
    through ended: the same results.json and the same last logged metrics. The workdir is relative, as
    README's command passes it (--workdir=workdir; orbax's array writer only takes absolute paths)."""
    straight = tiny_default_run(tmp_path_factory, "resume_straight")
    workdir = tiny_default_run(tmp_path_factory, "resume")
    shutil.rmtree(workdir / "checkpoints" / "30")
    monkeypatch.chdir(workdir.parent)
    resumed = train.train_and_evaluate(default_config(), workdir.name)
    assert sorted(os.listdir(workdir / "checkpoints")) == ["15", "30"]
    assert json.loads(json.dumps(resumed)) == read_results(straight)
    last = lambda d: read_jsonl(d / "metrics.jsonl")[-1]  # noqa: E731
    a, b = last(straight), last(workdir)
    assert (a["step"], b["step"]) == (30, 30)
    for key in ("loss", "nll", "discriminative", "accuracy"):
        assert a[key] == b[key]


@pytest.fixture
def mock_cifar():
    """TFDS served from memory: mock_data with records of the right shape, labels from the records."""

    def records_for(num_classes):
        rng = np.random.default_rng(0)
        return [
            {"image": rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), "label": int(i % num_classes), "id": str(i)}
            for i in range(40)
        ]

    def data_source(builder, split, decoders=None, **kwargs):
        return records_for(builder.info.features["label"].num_classes)

    with mock.patch.object(tfds.core.DatasetBuilder, "is_prepared", return_value=True):
        with tfds.testing.mock_data(as_data_source_fn=data_source):
            yield


@pytest.mark.parametrize("config_module", [  # CIFAR-100's case (its 100 classes, CIFAR-10 as unknown): ~15 s
    cifar10, pytest.param(cifar100, marks=pytest.mark.slow)], ids=["cifar10", "cifar100"])
def test_one_step_on_the_tfds_path(mock_cifar, config_module, tmp_path):
    config = config_module.get_config()
    config.model.encoder = "small_cnn"  # the config's ResNet-101 is minutes per step on this CPU
    config.num_train_steps = 1
    config.batch_size = 8
    config.eval_batch_size = 16
    config.memory_size = 4
    config.eval.scores = ("likelihood",)
    results = train.train_and_evaluate(config, str(tmp_path))
    assert results["closed_set"]["num_examples"] == 40
    assert set(results["open_set"]) == {"svhn_cropped", "cifar100" if config_module is cifar10 else "cifar10"}
    record = read_jsonl(tmp_path / "metrics.jsonl")[-1]
    assert record["step"] == 1 and np.isfinite(record["loss"])


@pytest.mark.parametrize("gmm_update", ["moment_matching", "gradient"])
def test_a_step_updates_only_the_mixtures_of_the_batch_classes(gmm_update):
    """Appendix G's rule (`objective.batch_classes`): with fewer examples than classes, the counted weights
    (and, with M-steps, the Gaussians) of a class absent from the batch stay as they were, though its
    remembered latents are there. (Gradient steps still move its Gaussians by Adam's momentum.)"""
    from lgmm_jax.training import state as state_lib
    from lgmm_jax.runtime.sharding import make_mesh

    num_classes = 6
    config = default_config(batch_size=4, **{"model.gmm_update": gmm_update})
    mesh = make_mesh()
    model = create_model(config.model, num_classes)
    optimizer, _ = state_lib.create_optimizer(config, 10, 100)
    train_state, shardings = state_lib.create_sharded_train_state(
        config, model, optimizer, (8, 8, 1), num_classes, mesh
    )
    step = train.make_train_step(config, model, optimizer, shardings, mesh, num_classes)
    images = np.random.default_rng(0).uniform(size=(2, 4, 8, 8, 1)).astype(np.float32)

    def mixture_of(state):
        return jax.device_get((state.params["head"], state.mixture["head"]["log_weights"]))

    train_state, _ = step(train_state, {"image": images[0], "label": np.array([1, 3, 5, 1]), "mask": np.ones(4, bool)})
    (head, log_weights) = mixture_of(train_state)
    train_state, _ = step(train_state, {"image": images[1], "label": np.array([0, 2, 2, 4]), "mask": np.ones(4, bool)})
    (new_head, new_log_weights) = mixture_of(train_state)
    absent, present = [1, 3, 5], [0, 2, 4]
    np.testing.assert_array_equal(new_log_weights[absent], log_weights[absent])
    assert not np.allclose(new_log_weights[present], log_weights[present])
    assert not np.allclose(new_head["means"][present], head["means"][present])
    if gmm_update == "moment_matching":
        np.testing.assert_array_equal(new_head["means"][absent], head["means"][absent])
        np.testing.assert_array_equal(new_head["raw_scales"][absent], head["raw_scales"][absent])


def real_batches(config, count):
    """The first `count` training batches of the config's real data, as the trainer reads them."""
    protocol = experiment.resolve_protocol(config)
    source = experiment.data_source(protocol.dataset, protocol.train_split, config=config)
    stream = experiment.train_stream(config, protocol, source)
    return [train.step_inputs(next(stream))[0] for _ in range(count)]


def trained_parameters(config, num_steps=3):
    """(initial params, params after `num_steps` real train steps) of the config's model."""
    from lgmm_jax.training import experiment
    from lgmm_jax.training import state as state_lib
    from lgmm_jax.runtime.sharding import make_mesh

    protocol = experiment.resolve_protocol(config)
    source = experiment.data_source(protocol.dataset, protocol.train_split, config=config)
    num_classes = protocols.num_known_classes(protocol, source)
    mesh = make_mesh()
    model = create_model(config.model, num_classes)
    optimizer, _ = state_lib.create_optimizer(config, 10, 100)
    train_state, shardings = state_lib.create_sharded_train_state(
        config, model, optimizer, experiment.model_input_shape(config, protocol, source), num_classes, mesh
    )
    initial = jax.device_get(train_state.params)
    step = train.make_train_step(config, model, optimizer, shardings, mesh, num_classes)
    for batch in real_batches(config, num_steps):
        train_state, _ = step(train_state, batch)
    return initial, jax.device_get(train_state.params)


@pytest.mark.parametrize("gmm_update", ["moment_matching", "gradient"])
@pytest.mark.parametrize("head", ["lgmm", "softmax"])
def test_every_trainable_parameter_moves(head, gmm_update):
    """Issue 12: the softmax counterpart's classifier sat in the GMM's optimiser group, which M-steps
    replace by optax.set_to_zero(), so it never left its initialisation. Every leaf must move."""
    config = default_config(**{"model.head": head, "model.gmm_update": gmm_update})
    initial, trained = trained_parameters(config)
    flat_initial = jax.tree_util.tree_leaves_with_path(initial)
    flat_trained = jax.tree_util.tree_leaves(trained)
    assert len(flat_initial) == len(flat_trained)
    frozen = [jax.tree_util.keystr(path) for (path, a), b in zip(flat_initial, flat_trained) if np.array_equal(a, b)]
    assert not frozen, f"parameters that did not move: {frozen}"


def test_under_moment_matching_the_gaussians_move_by_the_m_step_only():
    """model.gmm_update=moment_matching: theta takes no optimiser step. With a moment rate of 0 the
    M-step moves nothing, so the means and scales must stay bit-equal while the encoder trains."""
    config = default_config(**{"model.gmm_update": "moment_matching", "model.moment_rate": 0.0})
    initial, trained = trained_parameters(config)
    for name in initial["head"]:
        np.testing.assert_array_equal(trained["head"][name], initial["head"][name], err_msg=name)
    assert not np.array_equal(trained["projection"]["kernel"], initial["projection"]["kernel"])


def test_learning_curve_evaluations_leave_the_run_unchanged(tmp_path_factory, tmp_path):
    """eval.epochs=(0.5,) writes curve/epoch_0.5/results.json mid-run; the final numbers (returned, and
    as written to results.json) are those of the shared run without it (the same config otherwise)."""
    plain = read_results(tiny_default_run(tmp_path_factory, "curve_plain"))
    with_curve = train.train_and_evaluate(default_config(**{"eval.epochs": (0.5,)}), str(tmp_path))
    assert json.loads(json.dumps(with_curve)) == read_results(tmp_path) == plain
    point = tmp_path / "curve" / "epoch_0.5" / "results.json"
    midway = json.loads(point.read_text())
    assert 1 / 6 < midway["closed_set"]["top1"] and midway["closed_set"]["num_examples"] == plain["closed_set"]["num_examples"]
    assert set(midway["open_set"]["unknown_classes"]) == set(plain["open_set"]["unknown_classes"])


def test_paper_method_pins_section_2_as_written(tmp_path):
    """--config.method=paper: gradient steps on L_G, Eq. 7 untempered, a scale per component, argmax
    assignments, no re-seed, the whole bank; config.json records the settings the run used."""
    config = default_config(num_train_steps=3, method="paper", **{"eval.scores": ("likelihood",)})
    results = train.train_and_evaluate(config, str(tmp_path))
    written = json.loads((tmp_path / "config.json").read_text())
    assert written["model"]["gmm_update"] == "gradient" and written["model"]["share_scale"] is False
    assert written["loss"]["discriminative_temperature"] == 1.0 and written["loss"]["assignment"] == "posterior"
    assert written["loss"]["reseed_epochs"] == [] and written["loss"]["bank_sample_size"] == config.memory_size
    assert written["model"]["latent_normalization"] == "none"
    assert results["closed_set"]["num_examples"] > 0
    assert config.model.gmm_update == "moment_matching"  # the caller's config is left as it was


def test_method_except_undoes_only_the_departures_it_names():
    """method=paper with method_except=(loss.assignment,): Sinkhorn's assignments (the default config's),
    every other key of Section 2 still pinned; a key the method does not pin, or an exception without a
    method, is refused by name."""
    resolved = experiment.resolve_method(default_config(method="paper", method_except=("loss.assignment",)))
    assert resolved.loss.assignment == "sinkhorn"
    assert resolved.loss.discriminative_temperature == 1.0 and resolved.model.latent_normalization == "none"
    assert resolved.model.share_scale is False and resolved.loss.reseed_epochs == ()
    with pytest.raises(ValueError, match=r"method_except names \['optimizer.learning_rate'\], which method='paper'"):
        experiment.resolve_method(default_config(method="paper", method_except=("optimizer.learning_rate",)))
    with pytest.raises(ValueError, match="needs method='paper' or 'gmmseg'"):
        experiment.resolve_method(default_config(method_except=("loss.assignment",)))


def test_an_unknown_method_is_refused():
    with pytest.raises(ValueError, match="method='papper' is not one of"):
        train.train_and_evaluate(default_config(method="papper"), "/nonexistent/never/written")


def test_softmax_label_smoothing_is_the_cross_entropy_of_smoothed_targets():
    """config.softmax.label_smoothing=0.1: the first step's loss equals optax's smoothed cross-entropy of
    the initial model's logits, computed here apart from the train step."""
    import optax

    from lgmm_jax.training import experiment
    from lgmm_jax.training import state as state_lib
    from lgmm_jax.runtime.sharding import make_mesh

    config = default_config(**{"model.head": "softmax", "softmax.label_smoothing": 0.1})
    protocol = experiment.resolve_protocol(config)
    source = experiment.data_source(protocol.dataset, protocol.train_split, config=config)
    mesh = make_mesh()
    model = create_model(config.model, 6)
    optimizer, _ = state_lib.create_optimizer(config, 10, 100)
    train_state, shardings = state_lib.create_sharded_train_state(config, model, optimizer, (8, 8, 1), 6, mesh)
    batch = real_batches(config, 1)[0]
    variables = {"params": train_state.params, "batch_stats": train_state.batch_stats}
    images = head_base.network_images(batch, tasks.get(config).step_losses(config, 6))  # as the step takes them
    logits, _ = model.apply(variables, images, train=True, mutable=["batch_stats"])
    targets = optax.smooth_labels(jax.nn.one_hot(batch["label"], 6), 0.1)
    expected = float(np.mean(optax.softmax_cross_entropy(logits, targets)))
    step = train.make_train_step(config, model, optimizer, shardings, mesh, 6)
    _, metrics = step(train_state, batch)
    assert float(metrics["loss"]) == pytest.approx(expected, rel=1e-5)
    assert protocols.num_known_classes(protocol, source) == 6


def test_softmax_with_mixup_and_cutmix_trains_every_parameter():
    config = default_config(**{"model.head": "softmax", "softmax.label_smoothing": 0.1,
                             "softmax.mixup_alpha": 0.8, "softmax.cutmix_alpha": 1.0})
    initial, trained = trained_parameters(config)
    moved = [not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(initial), jax.tree.leaves(trained))]
    assert all(moved)
