"""Training runs made once per test session and shared by the modules that derive checks from them.

`shared_folder(tmp_path_factory, name, make)` is `session root / name`, filled once by `make(folder)`;
under pytest-xdist the first worker to ask makes it under a file lock and the others wait and read it.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from filelock import FileLock


def session_root(tmp_path_factory) -> Path:
    """The session's temporary root, the same for every xdist worker (each worker's basetemp is below it)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def shared_folder(tmp_path_factory, name: str, make) -> Path:
    """`session root / name`, made once per session by `make(folder)` and shared by every test and worker.
    A `make` that fails leaves nothing behind: the next caller tries again."""
    folder = session_root(tmp_path_factory) / name
    complete = Path(f"{folder}.complete")  # beside the folder: the folder holds only what `make` wrote
    with FileLock(f"{folder}.lock"):
        if not complete.exists():
            shutil.rmtree(folder, ignore_errors=True)
            make(folder)
            complete.touch()
    return folder


def copy_of_shared_run(tmp_path_factory, name: str, make, into: str) -> Path:
    """A private copy of the shared run `name` (a module that writes into its run works on its own copy)."""
    copy = tmp_path_factory.mktemp(into) / name
    shutil.copytree(shared_folder(tmp_path_factory, name, make), copy)
    return copy


def shared_export(tmp_path_factory, run: Path) -> Path:
    """`lgmm_jax.export` of the shared run folder `run` (read only), made once per session in-process;
    read only too."""

    def make(folder):
        from lgmm_jax import export

        export.export_model(str(run), str(folder))

    return shared_folder(tmp_path_factory, f"{run.name}_export", make)


def default_config(**overrides):
    """configs/default.py (digits 6/4, L-GMM) at the tests' size: 30 steps (the k-means re-seed after the
    first epoch, about step 9, included), metrics logged every 10 steps, checkpoints at 15 and 30.
    `overrides` are flattened keys, e.g. `default_config(**{"model.head": "softmax"})`."""
    import configs.default

    config = configs.default.get_config()
    config.num_train_steps = 30
    config.log_every_steps = 10
    config.checkpoint_every_steps = 15
    config.eval.figures = False  # no test reads these runs' PNGs
    config.update_from_flattened_dict(overrides)
    return config


def train_default_in_process(workdir: Path, **overrides) -> None:
    """`default_config(**overrides)` trained and evaluated in this process into `workdir`."""
    from lgmm_jax.training import train

    train.train_and_evaluate(default_config(**overrides), str(workdir))


def train_default_softmax_in_process(workdir: Path) -> None:
    """The softmax counterpart of the default run: the same config with `model.head=softmax`."""
    train_default_in_process(workdir, **{"model.head": "softmax"})


def shared_default_run(tmp_path_factory) -> Path:
    """The shared default L-GMM run itself (`default_config()`, made once per session): read only."""
    return shared_folder(tmp_path_factory, "tiny_default_run", train_default_in_process)


def tiny_default_run(tmp_path_factory, into: str) -> Path:
    """A private copy of the default L-GMM run (`default_config()`, made once per session); its workdir
    holds the training run's results.json, scores.npz, report and checkpoints 15 and 30."""
    return copy_of_shared_run(tmp_path_factory, "tiny_default_run", train_default_in_process, into)


def tiny_softmax_run(tmp_path_factory, into: str) -> Path:
    """A private copy of the default run's softmax counterpart (every softmax score; made once per session)."""
    return copy_of_shared_run(tmp_path_factory, "tiny_softmax_run", train_default_softmax_in_process, into)


def initial_parameters(config) -> dict:
    """The params a run of `config` starts from (its seed), built as training builds them."""
    import jax

    from lgmm_jax.data import protocols
    from lgmm_jax.heads import create_model
    from lgmm_jax.runtime.sharding import make_mesh
    from lgmm_jax.training import experiment, state

    protocol = experiment.resolve_protocol(config)
    source = experiment.data_source(protocol.dataset, protocol.train_split, config=config)
    num_classes = protocols.num_known_classes(protocol, source)
    model = create_model(config.model, num_classes)
    optimizer, _ = state.create_optimizer(config, steps_per_epoch=1, total_steps=1)
    initial, _ = state.create_sharded_train_state(
        config, model, optimizer, experiment.model_input_shape(config, protocol, source), num_classes, make_mesh())
    return jax.device_get(initial.params)
