"""Helpers for tests that run the command-line tools in subprocesses."""
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def start(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    """`python args` (from the repository root) started in the background, stdout and stderr piped: a test's
    CLI calls run side by side, each read back with `finish`."""
    return subprocess.Popen([sys.executable, *args], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def finish(process: subprocess.Popen, timeout: float = 240) -> subprocess.CompletedProcess:
    """Wait for a started process and return what it printed."""
    stdout, stderr = process.communicate(timeout=timeout)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def one_line_error(completed: subprocess.CompletedProcess) -> str:
    """The stderr of a failed CLI call: exactly one line, `error: ...`, no traceback."""
    lines = [line for line in completed.stderr.splitlines() if line.strip()]
    assert completed.returncode != 0 and len(lines) == 1 and lines[0].startswith("error: "), completed.stderr
    return lines[0]


# Runs an export's model.stablehlo in a process where lgmm_jax cannot be imported: argv = export folder,
# inputs .npz ("images"), outputs .npz, batch sizes; writes "<batch size>/<output name>" arrays.
STABLEHLO_WITHOUT_THE_LIBRARY = """
import sys
sys.modules["lgmm_jax"] = None  # any import of this library fails
import jax
import numpy as np
folder, inputs, outputs, *sizes = sys.argv[1:]
with open(f"{folder}/model.stablehlo", "rb") as f:
    compiled = jax.export.deserialize(bytearray(f.read()))
images = np.load(inputs)["images"]
results = {}
for size in map(int, sizes):
    out = compiled.call(images[:size])
    results.update({f"{size}/{name}": np.asarray(value) for name, value in out.items()})
np.savez(outputs, **results)
"""


def run_stablehlo(folder, images, work, batch_sizes) -> dict:
    """What `folder`'s model.stablehlo returns for the first n `images`, per n in `batch_sizes`, run in a
    fresh process without lgmm_jax: {n: {name: array}}."""
    import numpy as np

    np.savez(f"{work}/stablehlo_inputs.npz", images=images)
    completed = subprocess.run(
        [sys.executable, "-c", STABLEHLO_WITHOUT_THE_LIBRARY, str(folder), f"{work}/stablehlo_inputs.npz",
         f"{work}/stablehlo_outputs.npz", *map(str, batch_sizes)], capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    with np.load(f"{work}/stablehlo_outputs.npz") as out:
        return {n: {key.split("/")[1]: out[key] for key in out.files if key.startswith(f"{n}/")} for n in batch_sizes}
