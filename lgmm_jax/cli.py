"""What every command-line entry point shares: one-line errors, flag parsing, distributed start-up.

A user's mistake (unknown config key, missing file, data not prepared, incompatible workdir ...) ends
the process with one line on stderr that names the cause and what to do, and a non-zero exit; never a
traceback. SIGTERM during training saves a checkpoint and exits with status 0.
"""

from __future__ import annotations

import os
import sys
from typing import Callable

from absl import app, flags, logging

USAGE_ERROR = 2
RUN_ERROR = 1


def fail(message: str, status: int = USAGE_ERROR):
    """Print `error: message` (one line) to stderr and exit with `status`."""
    print(f"error: {' '.join(str(message).split())}", file=sys.stderr, flush=True)
    sys.exit(status)


def make_config_package_importable(argv: list[str]) -> None:
    """Config files import their siblings as `configs.<name>`: put the folder above `configs/` on the path."""
    for arg in argv:
        if arg.startswith("--config="):
            config_dir = os.path.dirname(os.path.abspath(arg.split("=", 1)[1]))
            sys.path.insert(0, os.path.dirname(config_dir))


def parse_flags_or_fail(argv: list[str]) -> list[str]:
    """absl flag parsing (config files included) with a one-line error instead of usage dumps."""
    make_config_package_importable(argv)
    try:
        remaining = flags.FLAGS(argv)
        if "config" in flags.FLAGS:
            flags.FLAGS.config.keys()  # ml_collections defers a bad config file's error to first use
        return remaining
    except flags.Error as error:
        fail(config_error_message(error))
    except OSError as error:
        fail(f"cannot load --config: {str(error).splitlines()[-1].strip()}")
    except (ImportError, SyntaxError, AttributeError, KeyError, ValueError, TypeError) as error:
        fail(config_error_message(error))


def define_flags_or_fail(define: Callable[[], None], argv: list[str]) -> None:
    """Define flags; ml_collections already applies --config.* overrides of the default config here."""
    make_config_package_importable(argv)
    try:
        define()
    except (flags.Error, ImportError, SyntaxError, AttributeError, KeyError, ValueError, TypeError) as error:
        fail(config_error_message(error))


def config_error_message(error: Exception) -> str:
    """A config problem in one line; an unknown key is named as such."""
    text = str(error).strip().strip('"').strip("'")
    if isinstance(error, (AttributeError, KeyError)) or "has no attribute" in text or "not found" in text:
        return f"unknown config key {text}: see configs/default.py for every key and its meaning"
    return f"bad --config: {text}"


def run_app(main: Callable) -> int:
    """absl's app.run with the one-line flag errors above."""
    return app.run(main, flags_parser=parse_flags_or_fail)


def run_guarded(task: Callable[[], object]) -> int:
    """Run `task`; turn the errors a user can fix into one line and an exit status."""
    from lgmm_jax.checkpointing import IncompatibleCheckpointError, Preempted
    from lgmm_jax.data.sources import DatasetNotAvailableError

    try:
        task()
    except Preempted as stop:
        logging.warning("%s", stop)
        print(str(stop), file=sys.stderr, flush=True)
        return 0
    except (IncompatibleCheckpointError, DatasetNotAvailableError, FileNotFoundError) as error:
        fail(str(error), RUN_ERROR)
    except ValueError as error:
        fail(str(error), USAGE_ERROR)
    except RuntimeError as error:
        if type(error).__name__ == "TrainingDivergedError":
            fail(str(error), RUN_ERROR)
        raise
    return 0


def quiet_libraries() -> None:
    """Warnings and errors only from absl-logging libraries (orbax logs every file it writes), unless
    the user asked for more with --verbosity."""
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)


CLUSTER_ENVIRONMENT = ("JAX_COORDINATOR_ADDRESS", "TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS")


def running_on_cluster() -> bool:
    """A multi-process launch that jax.distributed can auto-configure (Cloud TPU pod, SLURM, explicit)."""
    if any(os.environ.get(name) for name in CLUSTER_ENVIRONMENT):
        hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
        return "," in hosts or "TPU_WORKER_HOSTNAMES" not in os.environ or bool(
            os.environ.get("JAX_COORDINATOR_ADDRESS")
        )
    return int(os.environ.get("SLURM_NTASKS", "1")) > 1


def maybe_initialize_distributed(requested: bool | None) -> None:
    """jax.distributed.initialize() when asked to, or on a detected cluster; a no-op on one machine."""
    if requested is False or (requested is None and not running_on_cluster()):
        return
    import jax

    coordinator = os.environ.get("JAX_COORDINATOR_ADDRESS")
    if coordinator:
        jax.distributed.initialize(
            coordinator_address=coordinator,
            num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
            process_id=int(os.environ["JAX_PROCESS_ID"]),
        )
    else:
        jax.distributed.initialize()
    logging.info("jax.distributed: process %d of %d", jax.process_index(), jax.process_count())
