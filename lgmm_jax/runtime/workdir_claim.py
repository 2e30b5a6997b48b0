"""One training run per workdir at a time.

A run claims its workdir for as long as it runs: it writes its owner (host, pid, since when) into
`<workdir>/owner.json` and deletes the file when it ends. A second run on the same workdir refuses at
once, with one line naming the owner, and changes nothing there. Several processes of one run claim it
once: process 0 claims, and all of them stop if it could not.

How a claim left by a run that was killed (SIGKILL, a lost machine) is told from a live one:

- Where the file system has locks (local disks, tmpfs, NFSv4, Lustre or GPFS mounted with `flock`):
  the owner holds an exclusive `flock` on owner.json while it runs. The kernel drops the lock when the
  process dies, however it dies (on NFS once the dead client's lease expires, about 90 s), so a run
  that gets the lock is the owner, whatever the file still says. Exact, and atomic.
- Where there are none (`gs://` buckets, file systems without `flock`): the file alone. A claim
  written on this host is live while its pid is alive; one from another host while its heartbeat,
  renewed every `HEARTBEAT_SECONDS` by the owner, is younger than `STALE_AFTER_SECONDS`. A stale claim
  is taken over. This is not atomic: two runs started within a second or two of each other can both
  start (GCS has no create-if-absent through `etils.epath`); one started after another's claim is
  written is refused.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import json
import os
import socket
import threading
import time
from typing import Callable, Iterator

import jax
import numpy as np
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

OWNER_FILE = "owner.json"
HEARTBEAT_SECONDS = 60
STALE_AFTER_SECONDS = 300
# flock errors that mean "this file system has no locks" (not "someone holds it").
NO_LOCKS = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)


class WorkdirBusyError(RuntimeError):
    """Another run holds the workdir."""


@dataclasses.dataclass(frozen=True)
class Owner:
    """Who holds a workdir: host name, process id, start (ISO time) and latest heartbeat (epoch s)."""

    host: str
    pid: int
    since: str
    heartbeat: float

    @classmethod
    def this_process(cls) -> Owner:
        now = time.time()
        return cls(socket.gethostname(), os.getpid(), time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(now)), now)

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host} since {self.since}"

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    def beating(self) -> Owner:
        return dataclasses.replace(self, heartbeat=time.time())


def parse_owner(text: str) -> Owner | None:
    """The owner a claim file names; None for an empty or half-written one."""
    try:
        fields = json.loads(text)
        return Owner(str(fields["host"]), int(fields["pid"]), str(fields["since"]), float(fields["heartbeat"]))
    except (ValueError, KeyError, TypeError):
        return None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


def is_stale(owner: Owner, host: str, now: float) -> bool:
    """Whether a claim found without a lock belongs to a run that is gone (see the module docstring)."""
    if owner.host == host:
        return not pid_alive(owner.pid)
    return now - owner.heartbeat > STALE_AFTER_SECONDS


def busy_message(workdir: str, owner: Owner | None, *, locked: bool) -> str:
    who = owner.describe() if owner else "another run (starting up)"
    message = f"workdir {workdir} is in use by {who}: wait until that run ends, or use another --workdir"
    if not locked and owner is not None:
        message += (
            f" (if that run is gone, its claim expires {STALE_AFTER_SECONDS // 60} minutes after its last "
            f"heartbeat; deleting {epath.Path(workdir) / OWNER_FILE} takes it over now)"
        )
    return message


# ----------------------------------------------------------------------------------------------------------
# With locks (local and POSIX shared file systems)
# ----------------------------------------------------------------------------------------------------------


def lock_file(path: str) -> int | None:
    """An open descriptor of `path` holding its exclusive flock, or None when another process holds it.

    Raises OSError (errno in NO_LOCKS) when the file system has no locks.
    """
    while True:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(descriptor)
            return None
        except OSError:
            os.close(descriptor)
            raise
        if same_file(descriptor, path):
            return descriptor
        os.close(descriptor)  # the owner deleted it between our open and our lock: take the new one


def same_file(descriptor: int, path: str) -> bool:
    try:
        return os.stat(path).st_ino == os.fstat(descriptor).st_ino
    except FileNotFoundError:
        return False


def write_in_place(descriptor: int, text: str) -> None:
    os.ftruncate(descriptor, 0)
    os.pwrite(descriptor, text.encode(), 0)
    os.fsync(descriptor)


def claim_with_lock(workdir: str, me: Owner) -> Callable[[], None]:
    """Hold the lock on owner.json and write `me` into it; the function that releases both.

    Raises WorkdirBusyError (another process holds it) or OSError (no locks here).
    """
    path = os.path.join(workdir, OWNER_FILE)
    descriptor = lock_file(path)
    if descriptor is None:
        owner = parse_owner(epath.Path(path).read_text()) if os.path.exists(path) else None
        raise WorkdirBusyError(busy_message(workdir, owner, locked=True))
    write_in_place(descriptor, me.to_json())

    def release() -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # still locked: whoever opened it meanwhile sees it is gone (`same_file`)
        os.close(descriptor)

    return release


# ----------------------------------------------------------------------------------------------------------
# Without locks (gs://, file systems without flock)
# ----------------------------------------------------------------------------------------------------------


def claim_with_heartbeat(workdir: str, me: Owner) -> Callable[[], None]:
    """Write `me` into owner.json unless a live claim is there; renew it every HEARTBEAT_SECONDS.

    Returns the function that stops the heartbeat and deletes the claim (if it is still ours).
    """
    path = epath.Path(workdir) / OWNER_FILE
    found = parse_owner(path.read_text()) if path.exists() else None
    if found is not None and not is_stale(found, me.host, time.time()):
        raise WorkdirBusyError(busy_message(workdir, found, locked=False))
    if found is not None:
        logging.warning("taking over the stale claim of %s on %s", found.describe(), workdir)
    path.write_text(me.to_json())
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(HEARTBEAT_SECONDS):
            try:
                path.write_text(me.beating().to_json())
            except OSError as error:  # a full disk, a storage outage: the run itself reports those
                logging.warning("could not renew the claim on %s: %s", workdir, error)

    heart = threading.Thread(target=beat, name="workdir-claim-heartbeat", daemon=True)
    heart.start()

    def release() -> None:
        stop.set()
        heart.join()
        current = parse_owner(path.read_text()) if path.exists() else None
        if current is not None and (current.host, current.pid) == (me.host, me.pid):
            path.unlink()

    return release


# ----------------------------------------------------------------------------------------------------------
# The claim
# ----------------------------------------------------------------------------------------------------------


def claim(workdir: str) -> Callable[[], None]:
    """Claim `workdir` for this process (with a lock where the file system has locks)."""
    me = Owner.this_process()
    if "://" not in workdir:
        try:
            return claim_with_lock(workdir, me)
        except OSError as error:
            if error.errno not in NO_LOCKS:
                raise
            logging.warning("no file locks on %s (%s): claiming it by heartbeat", workdir, error)
    return claim_with_heartbeat(workdir, me)


def created_folder(workdir: str) -> bool:
    """Create `workdir` if it is not there; whether it was created."""
    path = epath.Path(workdir)
    if path.exists():
        return False
    path.mkdir(parents=True, exist_ok=True)
    return True


def remove_if_empty(workdir: str) -> None:
    path = epath.Path(workdir)
    if path.is_dir() and not any(path.iterdir()):
        path.rmdir()


def agree_on_refusal(refusal: WorkdirBusyError | None) -> WorkdirBusyError | None:
    """Every process of a multi-process run learns whether process 0 was refused."""
    if jax.process_count() == 1:
        return refusal
    refused = multihost_utils.broadcast_one_to_all(np.int32(refusal is not None))
    if refused and refusal is None:
        return WorkdirBusyError("process 0 found the workdir in use by another run (see its output)")
    return refusal


@contextlib.contextmanager
def claimed(workdir: str) -> Iterator[None]:
    """The workdir belongs to this run inside the block (see the module docstring).

    Raises WorkdirBusyError, on every process, when another run holds it. A workdir this claim had to
    create is removed again if the run left nothing in it (a run refused for bad input).
    """
    created, release, refusal = False, None, None
    if jax.process_index() == 0:
        created = created_folder(workdir)
        try:
            release = claim(workdir)
        except WorkdirBusyError as busy:
            refusal = busy
    refusal = agree_on_refusal(refusal)
    if refusal is not None:
        raise refusal
    try:
        yield
    finally:
        if release is not None:
            release()
        if created:
            remove_if_empty(workdir)
