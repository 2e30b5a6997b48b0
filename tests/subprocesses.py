"""Helpers for tests that run the command-line tools in subprocesses."""
import subprocess


def finish(process: subprocess.Popen, timeout: float = 240) -> subprocess.CompletedProcess:
    """Wait for a started process and return what it printed."""
    stdout, stderr = process.communicate(timeout=timeout)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def one_line_error(completed: subprocess.CompletedProcess) -> str:
    """The stderr of a failed CLI call: exactly one line, `error: ...`, no traceback."""
    lines = [line for line in completed.stderr.splitlines() if line.strip()]
    assert completed.returncode != 0 and len(lines) == 1 and lines[0].startswith("error: "), completed.stderr
    return lines[0]
