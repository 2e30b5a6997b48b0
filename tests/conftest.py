"""Shared test setup.

- Tests run on the CPU with float32 and 64-bit off, as users run them.
- One persistent XLA compilation cache for the whole session, set before JAX starts: every in-process test
  and every subprocess a test starts (they inherit the environment) compiles a given program once. Tests
  train the same small models many times, and on 2 cores compiling is most of a small run's time. A
  cached executable is the one XLA compiled, so no number changes.
- XLA's CPU backend compiles at optimisation level 1 without LLVM's expensive passes
  (`--xla_backend_optimization_level=1 --xla_llvm_disable_expensive_passes=true`, each unless XLA_FLAGS
  already sets it). Compiling is most of the suite's time (tests/test_objective.py and test_train.py
  together: 262 s with an empty compilation cache, 80 s with a full one); level 1 makes it a third
  cheaper than the default (a cold 10-step testbed run: 51 s of CPU at the default level, 33 s at level
  1), the expensive passes off another fifth (test_objective.py: 126 s, then 103 s), and the tests'
  programs are small, so they hardly run slower (level 0 compiles faster still but runs the digits
  runs' convolutions at half speed: test_train, test_evaluate and test_export 225 s against 183 s). It
  is one more float path, like another CPU's: every comparison between runs is made under the same flags,
  with tolerances derived to hold across float paths (tests/test_distributed.py), and the comparisons
  with reference implementations (scikit-learn, the pretrained fixtures) have tolerances far above
  float32 rounding.
- pytest-xdist runs the modules on two workers (pyproject's addopts; `-n 0` runs in one process),
  whole modules in the order below: the ones that start training runs, slowest first, then the rest
  (`--no-loadscope-reorder`; xdist's default order, most tests first, started the slowest module last
  and left one worker idle while it ran);
  training runs that several modules derive checks from are made once per session
  (`tests/shared_runs.py`).
- Two tiers. `pytest tests` is the quick one: it leaves out the tests marked `slow`, each with its reason
  where it is marked: the multi-device, multi-process and fault-injection runs of test_distributed.py and
  test_faults.py, the testbed's training runs in subprocesses (test_segmentation.py, test_tasks.py's
  segmentation run), the full-width pretrained references and the published segmenter's export
  (test_pretrained.py), the paper-shape and six-step GMMSeg runs (test_gmmseg.py), the garment-classifier
  chain (test_initial_weights.py), the softmax segmenter's train step (test_tasks.py), CIFAR-100's TFDS
  step (test_train.py) and ResNet-50's initialisation (models/test_resnet.py). Every module keeps its
  unit tests in the quick tier.
  `pytest tests --slow` runs everything; README's test command and CI do.
- `LGMM_TEST_COMPILATION_CACHE=DIR` keeps the compilation cache in DIR after the session (otherwise a
  temporary folder, removed at the end): a second run with the same DIR skips compiling.
"""
import os
import shutil
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
for flag, value in (("xla_backend_optimization_level", "1"), ("xla_llvm_disable_expensive_passes", "true")):
    if flag not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --{flag}={value}".strip()
# Made here by the controller when no DIR is given (xdist's workers inherit it, and leave it alone).
CACHE_IS_TEMPORARY = "LGMM_TEST_COMPILATION_CACHE" not in os.environ
if CACHE_IS_TEMPORARY:
    os.environ["LGMM_TEST_COMPILATION_CACHE"] = tempfile.mkdtemp(prefix="lgmm_jax_tests_xla_cache_")
os.environ.update(
    JAX_COMPILATION_CACHE_DIR=os.environ["LGMM_TEST_COMPILATION_CACHE"],
    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
    JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1",
)


def pytest_unconfigure(config):
    if CACHE_IS_TEMPORARY:
        shutil.rmtree(os.environ["LGMM_TEST_COMPILATION_CACHE"], ignore_errors=True)


# Modules by their time on 2 cores (seconds of test time with --slow, measured with --durations on a full
# run in a fast hour of this shared machine: 1,117 s over the two workers), slowest first.
SLOWEST_FIRST = (
    "tests/test_faults.py",  # ~175: preempted, killed, damaged, full-disk reruns (slow: ~170)
    "tests/test_distributed.py",  # ~165: multi-device and multi-process runs (slow: ~165)
    "tests/test_segmentation.py",  # ~110
    "tests/test_folder_config.py",  # ~100: a ResNet-50 step from a weights file (slow: ~80)
    "tests/test_own_images.py",  # ~90: three CLI runs on a folder of image files (slow: ~60)
    "tests/test_heads.py",  # ~140: every (task, head, method) one step, evaluated, exported (slow: ~105)
    "tests/data/test_segfolder.py",  # ~80: a segmentation run on a segfolder (slow: ~60)
    "tests/test_pretrained.py",  # ~90
    "tests/test_train.py",  # ~85
    "tests/test_objective.py",  # ~70
    "tests/test_tasks.py",  # ~60
    "tests/models/test_segmenters.py",  # ~55
    "tests/test_gmmseg.py",  # ~55
    "tests/test_cli.py",  # ~30
    "tests/test_initial_weights.py",  # ~30
    "tests/models/test_backbones.py",  # ~20
    "tests/test_configs.py",  # ~20
    "tests/test_evaluate.py",  # ~20
    "tests/test_export.py",  # ~15
)


def pytest_addoption(parser):
    parser.addoption("--slow", action="store_true",
                     help="also run the tests marked slow (multi-process, fault-injection and full-size runs): "
                          "the whole suite, as CI and README's test command run it")


def pytest_report_header(config):
    if not config.getoption("--slow"):
        return "tests marked slow are left out (the quick tier); --slow runs the whole suite, as CI does"


def pytest_collection_modifyitems(config, items):
    if not config.getoption("--slow"):
        slow = [item for item in items if item.get_closest_marker("slow")]
        if slow:
            config.hook.pytest_deselected(items=slow)
            items[:] = [item for item in items if not item.get_closest_marker("slow")]
    rank = {module: position for position, module in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(SLOWEST_FIRST)))
