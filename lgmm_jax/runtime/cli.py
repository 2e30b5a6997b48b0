"""What every command-line entry point shares: one-line errors, flag parsing, distributed start-up.

A user's mistake (unknown config key, missing file, data not prepared, incompatible workdir ...) ends
the process with one line on stderr that names the cause and what to do, and a non-zero exit; never a
traceback. SIGTERM during training saves a checkpoint and exits with status 0.
"""

from __future__ import annotations

import logging as std_logging
import os
import sys
from typing import Callable

from absl import app, flags, logging

USAGE_ERROR = 2
# Every config starts from this one, so its keys are the keys --config.KEY=VALUE may override.
REPOSITORY = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # lgmm_jax/runtime/cli.py
DEFAULT_CONFIG = os.path.join(REPOSITORY, "configs", "default.py")
RUN_ERROR = 1
WORKDIR_BUSY = 75  # EX_TEMPFAIL: try again once the other run is over
DISK_FULL = 74  # EX_IOERR
ORBAX_PATH = f"{os.sep}orbax{os.sep}"
INTERRUPTED = 130


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
        if "config" in flags.FLAGS and flags.FLAGS.config is not None:
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
    if isinstance(error, flags.UnrecognizedFlagError):
        return f"unknown flag --{error.flagname}: see --helpfull for the flags"
    if isinstance(error, (AttributeError, KeyError)) or "has no attribute" in text or "not found" in text:
        return f"unknown config key {text}: see configs/default.py for every key and its meaning"
    return f"bad --config: {text}"


def run_app(main: Callable) -> int:
    """absl's app.run with the one-line flag errors above."""
    return app.run(main, flags_parser=parse_flags_or_fail)


def run_guarded(task: Callable[[], object]) -> int:
    """Run `task`; turn the errors a user can fix into one line and an exit status."""
    from lgmm_jax.runtime.checkpointing import (
        DamagedCheckpointError,
        DiskFullError,
        IncompatibleCheckpointError,
        Preempted,
        UnreadableCheckpointError,
    )
    from lgmm_jax.data.sources import DatasetNotAvailableError
    from lgmm_jax.runtime.workdir_claim import WorkdirBusyError

    try:
        task()
    except Preempted as stop:
        print(str(stop), file=sys.stderr, flush=True)
        return 0
    except KeyboardInterrupt:
        fail("interrupted (Ctrl-C): rerun the same command to resume from the last checkpoint", INTERRUPTED)
    except WorkdirBusyError as error:
        fail(str(error), WORKDIR_BUSY)
    except DiskFullError as error:
        fail(str(error), DISK_FULL)
    except (IncompatibleCheckpointError, DamagedCheckpointError, UnreadableCheckpointError,
            DatasetNotAvailableError, FileNotFoundError) as error:
        fail(str(error), RUN_ERROR)
    except OSError as error:  # an unwritable workdir, a file where a folder should be, ...
        fail(f"{error}: check --workdir and --config.data_dir", RUN_ERROR)
    except ValueError as error:
        fail(str(error), USAGE_ERROR)
    except RuntimeError as error:
        if type(error).__name__ == "TrainingDivergedError":
            fail(str(error), RUN_ERROR)
        raise
    return 0


def quiet_libraries() -> None:
    """Warnings and errors only from absl-logging libraries (orbax logs every file it writes), unless
    the user asked for more with --verbosity; and no tracebacks from orbax's background threads and
    coroutines, whose errors reach the caller too and are reported there in one line."""
    silence_orbax_leftovers()
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
        std_logging.getLogger("absl").addFilter(lambda record: not is_orbax_noise(record))
        std_logging.getLogger("asyncio").addFilter(lambda record: not is_orbax_noise(record))


def raised_in_orbax(traceback) -> bool:
    """Whether a traceback passes through orbax's code."""
    while traceback is not None:
        if ORBAX_PATH in traceback.tb_frame.f_code.co_filename:
            return True
        traceback = traceback.tb_next
    return False


def is_orbax_noise(record: std_logging.LogRecord) -> bool:
    """An error orbax logs with its traceback from a background thread (a failed async save), or asyncio's
    "exception was never retrieved" about one of orbax's reads or writes, all of them raised again in
    the caller, where `run_guarded` reports it in one line; or orbax's notices that a manager opened
    read-only (evaluation, export) does not save."""
    if record.exc_info and raised_in_orbax(record.exc_info[2]):
        return True
    if ORBAX_PATH not in record.pathname:
        return False
    message = record.getMessage()
    return record.exc_info is not None or "read_only=True" in message or "is read only" in message


def is_orbax_leftover(unraisable) -> bool:
    """What a failed orbax read or write leaves to the garbage collector: TensorStore callbacks that
    reach an asyncio loop orbax already closed, and orbax coroutines that never finished. Noise after
    an error that is reported anyway."""
    error = unraisable.exc_value
    closed_loop = isinstance(error, RuntimeError) and "Event loop is closed" in str(error)
    return closed_loop or raised_in_orbax(unraisable.exc_traceback)


def silence_orbax_leftovers() -> None:
    default_hook = sys.unraisablehook
    sys.unraisablehook = lambda unraisable: None if is_orbax_leftover(unraisable) else default_hook(unraisable)


# JAX's own cluster environments that never start from a plain environment check: k8s needs the
# `kubernetes` package and warns without it, mpi4py is opt-in. `--distributed` still reaches them.
NOT_AUTO_DETECTED = ("k8s", "mpi4py")


def detected_cluster() -> str | None:
    """The multi-process launch this process belongs to, by name; None on one machine.

    Either an explicit coordinator (JAX_COORDINATOR_ADDRESS, with JAX_NUM_PROCESSES and JAX_PROCESS_ID),
    or one of the environments `jax.distributed.initialize()` configures itself, asked through JAX's own
    detection: a Cloud TPU pod slice (`gcetpu`: the TPU VM's metadata; `gketpu`: TPU_WORKER_HOSTNAMES;
    multislice: MEGASCALE_*), SLURM (inside `srun`), Open MPI (`mpirun`) -- when it has more than one
    process. A single TPU VM or a one-task SLURM job is one machine.
    """
    if os.environ.get("JAX_COORDINATOR_ADDRESS"):
        return "explicit coordinator (JAX_COORDINATOR_ADDRESS)"
    try:  # the detection jax.distributed.initialize() runs (it has no public API)
        from jax._src.clusters import ClusterEnv

        environments = list(ClusterEnv._cluster_types)  # pylint: disable=protected-access
    except (ImportError, AttributeError):
        logging.warning("this JAX cannot list its cluster environments: pass --distributed on a cluster")
        return None
    for environment in environments:
        if environment.opt_in_only_method or environment.name in NOT_AUTO_DETECTED:
            continue
        try:
            if environment.is_env_present() and environment.get_process_count() > 1:
                return environment.name
        except (OSError, RuntimeError, ValueError, KeyError) as error:  # half-configured: not a launch
            logging.warning("ignoring cluster environment %s: %s", environment.name, error)
    return None


def explicit_coordinator() -> dict:
    """jax.distributed.initialize's arguments from JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID."""
    names = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")
    missing = [name for name in names if not os.environ.get(name)]
    if missing:
        verb = "is" if len(missing) == 1 else "are"
        fail(f"JAX_COORDINATOR_ADDRESS is set but {' and '.join(missing)} {verb} not: set all three "
             "(host:port of process 0, the number of processes, this process's index 0..N-1)")
    try:
        count, index = int(os.environ["JAX_NUM_PROCESSES"]), int(os.environ["JAX_PROCESS_ID"])
    except ValueError:
        fail("JAX_NUM_PROCESSES and JAX_PROCESS_ID must be integers")
    if not 0 <= index < count:
        fail(f"JAX_PROCESS_ID={index} is not in 0..JAX_NUM_PROCESSES-1 ({count} processes)")
    return dict(coordinator_address=os.environ["JAX_COORDINATOR_ADDRESS"], num_processes=count, process_id=index)


def maybe_initialize_distributed(requested: bool | None) -> None:
    """jax.distributed.initialize() when asked to (`--distributed`) or on a detected multi-process launch
    (`detected_cluster`); a no-op on one machine or with `--nodistributed`. Call before anything touches
    a JAX device."""
    if requested is False:
        return
    cluster = detected_cluster()
    if requested is None and cluster is None:
        return
    import jax

    arguments = explicit_coordinator() if os.environ.get("JAX_COORDINATOR_ADDRESS") else {}
    try:
        jax.distributed.initialize(**arguments)
    except (ValueError, RuntimeError) as error:
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        fail(f"cannot start jax.distributed ({first_line}): launch one process per host with srun, "
             "mpirun or gcloud ... ssh --worker=all, or set JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES "
             "and JAX_PROCESS_ID; on one machine leave out --distributed", RUN_ERROR)
    logging.info("jax.distributed (%s): process %d of %d", cluster or "requested", jax.process_index(),
                 jax.process_count())


def define_config_overrides(help_text: str) -> None:
    """--config.KEY=VALUE flags for a command that reads a saved run's config (evaluate, export): parsed
    against configs/default.py, whose keys every config has; `config_overrides` returns what was given."""
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", DEFAULT_CONFIG, help_text, lock_config=True)


def config_overrides() -> dict:
    """The --config.KEY=VALUE overrides given on the command line, as a flat {dotted key: value} dict."""
    from ml_collections import config_flags

    flag = flags.FLAGS["config"]
    if os.path.abspath(config_flags.get_config_filename(flag)) != DEFAULT_CONFIG:
        fail("this command reads the run's own config.json: pass only --config.KEY=VALUE overrides, not --config=FILE")
    return dict(config_flags.get_override_values(flag))
