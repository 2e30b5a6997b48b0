"""bench/study.py's bookkeeping: which runs a plan holds and how --collect gathers the finished ones."""

import json
import os

import pytest

from tests import bench_scripts


@pytest.fixture(scope="module")
def study():
    return bench_scripts.load("study")


def finished_results(top1: float, auroc: float) -> dict:
    metrics = {"auroc": auroc, "fpr95": 0.5, "aupr_in": 0.9, "aupr_out": 0.4}
    return {"closed_set": {"top1": top1}, "open_set": {"mnist": {"likelihood": metrics}},
            "components": {"mean_effective_components": 2.5}}


def write_run(study, root, protocol, variant, seed, results):
    workdir = study.run_workdir(root, "fashion_mnist", protocol, variant, seed)
    os.makedirs(workdir)
    with open(os.path.join(workdir, "results.json"), "w") as f:
        json.dump(results, f)


def test_the_plan_runs_seed_by_seed_then_candidates_then_ablations_on_the_first_protocol(study):
    plan = study.study_plan(["a", "b"], ["lgmm", "softmax"], [0, 1], True, [0])
    assert plan[:4] == [("a", "lgmm", 0, True), ("a", "softmax", 0, True), ("b", "lgmm", 0, True),
                        ("b", "softmax", 0, True)]
    assert [(p, v) for p, v, _, _ in plan[8:8 + 2 * len(study.CANDIDATES)]] == [
        (p, v) for p in ("a", "b") for v in study.CANDIDATES]
    ablations = plan[8 + 2 * len(study.CANDIDATES):]
    assert [v for _, v, _, _ in ablations] == list(study.ABLATIONS)
    assert {p for p, _, _, _ in ablations} == {"a"} and not any(curve for *_, curve in ablations)


def test_the_levers_run_once_each_on_their_own_protocol_after_the_ablations(study):
    protocols = ["fashion_mnist_vs_mnist", "fashion_mnist_6_4"]
    plan = study.study_plan(protocols, ["lgmm"], [0], True, [1, 2])
    levers = [(p, v, s) for p, v, s, _ in plan if v in study.LEVERS.get(p, ())]
    assert levers == [(p, v, 1) for p in protocols for v in study.LEVERS[p]]
    assert plan[-len(levers):] == [(*lever, False) for lever in levers]


def test_collect_gathers_the_finished_runs_and_trains_nothing(study, tmp_path, monkeypatch):
    root, output = str(tmp_path / "runs"), str(tmp_path / "study.json")
    protocol = "fashion_mnist_vs_mnist"
    write_run(study, root, protocol, "lgmm", 0, finished_results(0.88, 0.80))
    write_run(study, root, protocol, "lgmm", 2, finished_results(0.90, 0.90))
    write_run(study, root, protocol, "lgmm_k1", 1, finished_results(0.895, 0.75))
    from lgmm_jax.training import train

    monkeypatch.setattr(train, "train_and_evaluate", lambda *args, **kwargs: pytest.fail("--collect trained"))
    study.main(["--collect", "--only=lgmm", "--seeds=0,1,2", "--ablation_seeds=0,1", f"--root={root}",
                f"--output={output}", f"--curve_plot={tmp_path / 'curve.png'}"])
    with open(output) as f:
        written = json.load(f)
    lgmm = written["rows"]["lgmm"][protocol]
    assert lgmm["seed_ids"] == [0, 2]
    assert lgmm["summary"]["closed_set"]["top1"]["mean"] == pytest.approx(0.89)
    assert lgmm["summary"]["open_set"]["mnist"]["likelihood"]["auroc"]["std"] == pytest.approx(0.05)
    assert written["rows"]["lgmm_k1"][protocol]["seed_ids"] == [1]
    assert set(written["rows"]) == {"lgmm", "lgmm_k1"} and "minutes" not in written


def test_an_unknown_protocol_is_refused_by_name(study, capsys):
    with pytest.raises(SystemExit) as raised:
        study.main(["--protocols=cifar10_6_4", "--collect"])
    assert raised.value.code == 2
    assert "unknown protocols ['cifar10_6_4']" in capsys.readouterr().err


def test_reuse_takes_the_recorded_runs_and_trains_only_the_rest(study, tmp_path, monkeypatch):
    """A new checkout has lost studies/: --reuse of the committed partial output gives the same rows for
    the runs it recorded, and only the runs it lacks are trained."""
    root, first = str(tmp_path / "lost"), str(tmp_path / "partial.json")
    protocol = "fashion_mnist_vs_mnist"
    write_run(study, root, protocol, "lgmm", 0, finished_results(0.88, 0.80))
    common = ["--only=lgmm", "--seeds=0,1", "--protocols=" + protocol, "--no-ablations",
              f"--curve_plot={tmp_path / 'curve.png'}"]
    study.main(["--collect", f"--root={root}", f"--output={first}", *common])
    trained = []
    from lgmm_jax.training import train

    def train_and_evaluate(config, workdir):
        trained.append((config.seed, workdir))
        return finished_results(0.90, 0.90)

    monkeypatch.setattr(train, "train_and_evaluate", train_and_evaluate)
    second = str(tmp_path / "study.json")
    study.main([f"--reuse={first}", f"--root={tmp_path / 'new'}", f"--output={second}", *common])
    assert [seed for seed, _ in trained] == [1]
    with open(first) as f, open(second) as g:
        before, after = json.load(f)["rows"]["lgmm"][protocol], json.load(g)["rows"]["lgmm"][protocol]
    assert after["seed_ids"] == [0, 1] and after["seeds"][0] == before["seeds"][0]
    assert after["summary"]["closed_set"]["top1"]["mean"] == pytest.approx(0.89)


def test_reuse_of_another_suite_is_refused_in_one_line(study, tmp_path):
    recorded = tmp_path / "digits.json"
    recorded.write_text(json.dumps({"suite": "digits", "epochs": 10, "rows": {}}))
    with pytest.raises(SystemExit, match="its suite is 'digits'.*same suite and epochs"):
        study.main([f"--reuse={recorded}", "--collect", f"--output={tmp_path / 'out.json'}"])


def test_no_curve_evaluates_each_run_once_at_the_end(study, tmp_path, monkeypatch):
    from lgmm_jax.training import train

    seen = []
    monkeypatch.setattr(train, "train_and_evaluate",
                        lambda config, workdir: seen.append(tuple(config.eval.epochs)) or finished_results(0.9, 0.9))
    common = ["--only=lgmm", "--seeds=0", "--protocols=fashion_mnist_6_4", "--no-ablations",
              f"--curve_plot={tmp_path / 'curve.png'}"]
    study.main([*common, f"--root={tmp_path / 'a'}", f"--output={tmp_path / 'a.json'}"])
    study.main([*common, "--no-curve", f"--root={tmp_path / 'b'}", f"--output={tmp_path / 'b.json'}"])
    assert seen == [(1, 3), ()]


def test_the_scenes_2x_suite_trains_the_testbed_at_128_pixels_and_reports_miou(study, tmp_path, monkeypatch,
                                                                                capsys):
    """`--suite=scenes_2x` runs configs/scenes_2x.py: 128x128 crops and evaluation, 24 epochs, the
    testbed's unknown sets; its table is the segmentation one (mIoU, pixel AUROC / AP / FPR95)."""
    from lgmm_jax.training import train

    seen = []
    metrics = {"auroc": 0.8, "ap": 0.3, "fpr95": 0.4}

    def train_and_evaluate(config, workdir):
        seen.append(config)
        return {"task": "segmentation", "closed_set": {"miou": 0.5},
                "open_set": {"near": {"msp": metrics}, "far": {"msp": metrics}}}

    monkeypatch.setattr(train, "train_and_evaluate", train_and_evaluate)
    study.main(["--suite=scenes_2x", "--only=softmax", "--seeds=0", "--no-ablations", "--no-curve",
                f"--root={tmp_path / 'runs'}", f"--output={tmp_path / 'scenes_2x.json'}",
                f"--curve_plot={tmp_path / 'curve.png'}"])  # not into the repository's bench/results/
    (config,) = seen
    assert tuple(config.segmentation.crop_size) == tuple(config.segmentation.eval_scale) == (128, 128)
    assert config.num_epochs == 24 and config.model.head == "softmax" and config.dataset == "scenes"
    assert config.ood_datasets == ("scenes:test_near", "scenes:test_far")
    row = "| softmax | 1 | 50.00 ± 0.00 | far | msp | 80.00 ± 0.00 | 30.00 ± 0.00 | 40.00 ± 0.00 |"
    assert row in capsys.readouterr().out
