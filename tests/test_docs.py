"""README.md and docs/*.md stay true: their commands and snippets run, their links and paths resolve.

Every fenced ```bash and ```python block of README.md and docs/*.md is a test case, run as written. An
HTML comment on the line right before the fence (at the fence's indentation) says how; several
directives share one comment, separated by ';' (`not run:` last: its reason runs to the comment's end),
e.g. `<!-- slow; run with: --config.num_train_steps=20 -->`:

    <!-- not run: REASON -->   never run. REASON (required) says what it needs that a test machine lacks
                               (prepared CIFAR/ImageNet/ADE20K/Cityscapes data, published .pth or
                               .safetensors files, a GPU, a pod or a cluster) or why it must not run here
                               (it creates a virtual environment; it is the test suite itself). Such a
                               block is still checked without running it: bash syntax (`bash -n`),
                               Python syntax and imports, that every `python -m MODULE` exists and every
                               `--config=FILE` is a file of the repository.
    <!-- slow -->              run only with --slow (pytest's `slow` marker): training runs.
    <!-- run with: ARGS -->    ARGS are appended to every `python -m lgmm_jax.main` command of the block
                               (before its trailing `# comment`). For training commands that take minutes
                               to hours as written: with e.g. `--config.num_train_steps=20` they write the
                               same files, quickly. Nothing else is ever added to a command.
    <!-- run with NAME: ARGS -->
                               the same, for the block's `python -m lgmm_jax.main --config=configs/NAME.py`
                               commands only (after the ARGS of `run with:`), e.g. evaluation settings that
                               only that config's head takes.
    <!-- uses: NAME ... -->    the block starts from what an earlier command of the docs makes, copied
                               into its sandbox: `workdir` (Quick start's run, `python -m lgmm_jax.main
                               --workdir=workdir`, with --config.num_train_steps=20) or `exported` (its
                               export, `python -m lgmm_jax.export --workdir=workdir --output=exported`),
                               both made once per session.
    <!-- needs: /ABS/PATH -->  skipped, with that reason, where the path does not exist (Debian's
                               `dataset-fashion-mnist` package, as tests/ skips).

A block without a comment runs in the quick tier. A block repeated on another page with the same comment
(README's own-images commands, in full in docs/data.md) runs once.

Where a block runs: in a sandbox of its own, an empty temporary folder with links to the repository's
configs/, bench/ and launch/ (so the docs' relative paths work) and the inputs the docs name: `PATH/` (a
labelled image folder: 8x8 digit images as PNG files in the class folders tshirt, trouser, pullover,
dress and sandal), `NEW_IMAGES/` and `photos/` (digit PNGs), `a.png`, `b.png` and `extra.png`. The one
substitution made in a block: `/tmp/` becomes the sandbox's `tmp/` (runs never write into the machine's
/tmp). Bash blocks run with `bash -e -o pipefail`, Python blocks as a file with this interpreter; both
with this interpreter's folder first on PATH (so `python` is it) and the repository first on PYTHONPATH.

Also checked: README.md is at most 250 lines and keeps Quick start's two commands exactly (CI's .ci/run
runs the test command); every relative link resolves to a file of the repository (and its #anchor to a
heading); every repository path quoted in backticks exists; no page cites documents outside the
repository.
"""
from __future__ import annotations

import ast
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
PAGES = [REPO / "README.md"] + sorted((REPO / "docs").glob("*.md"))
README_MAX_LINES = 250
TEST_COMMAND = ("python3 -m venv .venv && .venv/bin/pip install -e '.[test]' && "
                ".venv/bin/python -m pytest -q tests --slow")
RUN_COMMAND = "python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/python -m lgmm_jax.main --workdir=workdir"
USES_STEPS = "--config.num_train_steps=20"  # the `uses: workdir` run's length
SANDBOX_LINKS = ("configs", "bench", "launch")
LANGUAGES_RUN = ("bash", "python")
LANGUAGES_NOT_RUN = ("", "text")  # trees, tables of output: no commands
QUICK_TIMEOUT_S = 300
SLOW_TIMEOUT_S = 1200


@dataclass
class Block:
    page: Path
    line: int  # 1-based line of the opening fence
    language: str
    code: str
    not_run: str | None = None
    slow: bool = False
    run_with: str = ""
    run_with_config: dict[str, str] = field(default_factory=dict)  # config name -> ARGS
    uses: tuple[str, ...] = ()
    needs: tuple[str, ...] = ()
    errors: list[str] = field(default_factory=list)

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(REPO)}:{self.line}"


FENCE = re.compile(r"^(\s*)```(\S*)\s*$")
COMMENT = re.compile(r"^\s*<!--(.*)-->\s*$")


def parse_directives(block: Block, comment: str) -> None:
    comment, marker, reason = comment.partition("not run:")  # a reason runs to the comment's end
    if marker:
        block.not_run = reason.strip()
        if not block.not_run:
            block.errors.append("`not run` without a reason")
    for part in (p.strip() for p in comment.split(";")):
        if not part:
            continue
        name, _, value = part.partition(":")
        name, value = name.strip(), value.strip()
        if name == "slow" and not value:
            block.slow = True
        elif name == "run with" and value:
            block.run_with = value
        elif name.startswith("run with ") and value:
            block.run_with_config[name.removeprefix("run with ").strip()] = value
        elif name == "uses" and value:
            block.uses = tuple(value.split())
        elif name == "needs" and value:
            block.needs = tuple(value.split())
        else:
            block.errors.append(f"unknown directive {part!r}")


def blocks_of(page: Path) -> list[Block]:
    lines = page.read_text().split("\n")
    blocks, i = [], 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        indent, language = opening.groups()
        end = i + 1
        while end < len(lines) and lines[end].strip() != "```":
            end += 1
        body = [line[len(indent):] if line.startswith(indent) else line for line in lines[i + 1:end]]
        block = Block(page, i + 1, language, "\n".join(body) + "\n")
        comment = COMMENT.match(lines[i - 1]) if i > 0 else None
        if comment:
            parse_directives(block, comment.group(1))
        blocks.append(block)
        i = end + 1
    return blocks


ALL_BLOCKS = [block for page in PAGES for block in blocks_of(page)]


def blocks_to_run() -> list[Block]:
    """The blocks that run, a block repeated on another page (README's, in full in docs/) run once."""
    seen, found = set(), []
    for b in ALL_BLOCKS:
        key = (b.language, b.code, b.slow, b.run_with, tuple(b.run_with_config.items()), b.uses, b.needs)
        if b.language in LANGUAGES_RUN and b.not_run is None and key not in seen:
            seen.add(key)
            found.append(b)
    return found


RUN_BLOCKS = blocks_to_run()


def logical_lines(code: str) -> list[list[int]]:
    """Indices of the physical lines of each shell command (lines ending in `\\` continue)."""
    groups, current = [], []
    for index, line in enumerate(code.split("\n")):
        current.append(index)
        if not line.rstrip().endswith("\\"):
            groups.append(current)
            current = []
    if current:
        groups.append(current)
    return groups


def is_main_command(text: str) -> bool:
    return re.match(r"\s*python3? -m lgmm_jax\.main\b", text) is not None


def split_comment(line: str) -> tuple[str, str]:
    """`command  # comment` -> (command, '  # comment'), a `#` inside quotes left alone."""
    quote = None
    for position, char in enumerate(line):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (position == 0 or line[position - 1].isspace()):
            start = position
            while start > 0 and line[start - 1].isspace():
                start -= 1
            return line[:start], line[start:]
    return line, ""


def config_of(command: str) -> str | None:
    """`--config=configs/NAME.py` -> NAME."""
    found = re.search(r"--config=(?:\S*/)?(\w+)\.py", command)
    return found.group(1) if found else None


def with_args(code: str, args: str, per_config: dict[str, str] | None = None) -> str:
    """ARGS appended to every `python -m lgmm_jax.main` command, and per_config[NAME] to those of
    configs/NAME.py, before the command's trailing comment."""
    lines = code.split("\n")
    for group in logical_lines(code):
        if is_main_command(lines[group[0]]):
            extra = (per_config or {}).get(config_of(" ".join(lines[i] for i in group)), "")
            command, comment = split_comment(lines[group[-1]])
            lines[group[-1]] = f"{command}{' ' + args if args else ''}{' ' + extra if extra else ''}{comment}"
    return "\n".join(lines)


def commands(code: str) -> list[str]:
    """The block's shell commands, continuation lines joined, comments dropped."""
    lines = code.split("\n")
    joined = [" ".join(split_comment(lines[i])[0].rstrip().rstrip("\\") for i in group) for group in logical_lines(code)]
    return [line.strip() for line in joined if line.strip()]


# --- the inputs the docs name, made once ------------------------------------------------------------


def digit_images() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits as uint8 8x8 images, as lgmm_jax's digits source stores them."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    return np.round(digits.images * (255.0 / 16.0)).astype(np.uint8), digits.target


def write_inputs(root: Path) -> None:
    from PIL import Image

    images, labels = digit_images()
    classes = ("tshirt", "trouser", "pullover", "dress", "sandal")  # any names: folders are classes
    for label, name in enumerate(classes):
        (root / "PATH" / name).mkdir(parents=True)
        for i, index in enumerate(np.flatnonzero(labels == label)[:80]):
            Image.fromarray(images[index]).save(root / "PATH" / name / f"{i:03d}.png")
    for folder in ("NEW_IMAGES", "photos"):
        (root / folder).mkdir()
        for i, index in enumerate(np.flatnonzero(labels >= 5)[:6]):
            Image.fromarray(images[index]).save(root / folder / f"{folder.lower()}_{i}.png")
    for name, index in (("a.png", 0), ("b.png", 1), ("extra.png", 2)):
        Image.fromarray(images[index]).save(root / name)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("doc_inputs")
    write_inputs(root)
    return root


def environment() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env.setdefault("JAX_PLATFORMS", "cpu")
    return env


def run_shell(code: str, cwd: Path, timeout: int) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-e", "-o", "pipefail", "-c", code], cwd=cwd, env=environment(),
                          capture_output=True, text=True, timeout=timeout)


def check(result: subprocess.CompletedProcess, what: str) -> None:
    if result.returncode != 0:
        pytest.fail(f"{what} exited with {result.returncode}\n--- stdout (tail) ---\n{result.stdout[-4000:]}"
                    f"\n--- stderr (tail) ---\n{result.stderr[-6000:]}", pytrace=False)


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> dict[str, Path]:
    """`workdir` and `exported`, made on first use: Quick start's run (with USES_STEPS) and its export."""
    root = tmp_path_factory.mktemp("doc_uses")
    cache: dict[str, Path] = {}

    def make(name: str) -> Path:
        if name not in cache:
            if name == "workdir":
                check(run_shell(f"python -m lgmm_jax.main --workdir=workdir {USES_STEPS}", root, SLOW_TIMEOUT_S),
                      "Quick start's run")
            elif name == "exported":
                make("workdir")
                check(run_shell("python -m lgmm_jax.export --workdir=workdir --output=exported", root,
                                SLOW_TIMEOUT_S), "its export")
            cache[name] = root / name
        return cache[name]

    return make


def sandbox_for(block: Block, path: Path, inputs: Path, made) -> Path:
    for name in SANDBOX_LINKS:
        (path / name).symlink_to(REPO / name)
    for entry in inputs.iterdir():
        (path / entry.name).symlink_to(entry)
    (path / "tmp").mkdir()
    for name in block.uses:
        shutil.copytree(made(name), path / name, symlinks=True)
    return path


# --- the blocks run ---------------------------------------------------------------------------------


def block_param(block: Block):
    marks = [pytest.mark.slow] if block.slow else []
    return pytest.param(block, id=block.where, marks=marks)


@pytest.mark.parametrize("block", [block_param(b) for b in RUN_BLOCKS])
def test_block_runs(block: Block, tmp_path, inputs, made):
    for path in block.needs:
        if not os.path.exists(path):
            pytest.skip(f"{block.where} needs {path}")
    sandbox = sandbox_for(block, tmp_path, inputs, made)
    code = with_args(block.code, block.run_with, block.run_with_config)
    code = code.replace("/tmp/", f"{sandbox}/tmp/")
    timeout = SLOW_TIMEOUT_S if block.slow else QUICK_TIMEOUT_S
    if block.language == "bash":
        result = run_shell(code, sandbox, timeout)
    else:
        (sandbox / "doc_block.py").write_text(code)
        result = subprocess.run([sys.executable, "doc_block.py"], cwd=sandbox, env=environment(),
                                capture_output=True, text=True, timeout=timeout)
    check(result, f"{block.where} ({block.language})")


# --- every block, run or not ------------------------------------------------------------------------


def test_every_block_says_how_it_runs():
    problems = [f"{b.where}: {e}" for b in ALL_BLOCKS for e in b.errors]
    for b in ALL_BLOCKS:
        if b.language not in LANGUAGES_RUN + LANGUAGES_NOT_RUN:
            problems.append(f"{b.where}: a ```{b.language} block is never run: use ```bash or ```python")
        if b.language in LANGUAGES_NOT_RUN and (b.not_run or b.slow or b.run_with or b.uses):
            problems.append(f"{b.where}: a directive on a block that is not bash or python")
        if b.run_with and not any(is_main_command(c) for c in commands(b.code)):
            problems.append(f"{b.where}: `run with` but no `python -m lgmm_jax.main` command")
        if (b.run_with or b.run_with_config) and b.not_run is not None:
            problems.append(f"{b.where}: `run with` on a block that is not run")
        configs = {config_of(c) for c in commands(b.code) if is_main_command(c)}
        for name in b.run_with_config:
            if name not in configs:
                problems.append(f"{b.where}: `run with {name}` but no `python -m lgmm_jax.main` of configs/{name}.py")
        if b.uses and not b.slow:
            problems.append(f"{b.where}: `uses` makes a training run: mark the block `slow`")
        for name in b.uses:
            if name not in ("workdir", "exported"):
                problems.append(f"{b.where}: `uses: {name}`: only workdir and exported are made")
        for path in b.needs:
            if not os.path.isabs(path):
                problems.append(f"{b.where}: `needs: {path}` is not an absolute path")
    assert not problems, "\n".join(problems)
    assert RUN_BLOCKS, "no block runs"


def test_bash_blocks_parse():
    for block in ALL_BLOCKS:
        if block.language == "bash":
            result = subprocess.run(["bash", "-n"], input=block.code, capture_output=True, text=True)
            assert result.returncode == 0, f"{block.where}: {result.stderr}"


def test_commands_name_what_exists():
    """Run or not: every `python -m MODULE` is importable, every --config= file and script exists."""
    problems = []
    for block in ALL_BLOCKS:
        if block.language != "bash":
            continue
        for command in commands(block.code):
            module = re.match(r"python3? -m ([\w.]+)", command)
            if module and module.group(1).startswith("lgmm_jax") and importlib.util.find_spec(module.group(1)) is None:
                problems.append(f"{block.where}: no module {module.group(1)}")
            for config in re.findall(r"--config=(\S+\.py)", command):
                if not (REPO / config).is_file():
                    problems.append(f"{block.where}: no config {config}")
            script = re.match(r"((?:launch|bench)/\S+)", command)
            if script and not (REPO / script.group(1)).is_file():
                problems.append(f"{block.where}: no script {script.group(1)}")
    assert not problems, "\n".join(problems)


def test_python_blocks_compile_and_import():
    """Run or not: every Python block compiles, and its imports import (so module paths follow the code)."""
    imports = []
    for block in ALL_BLOCKS:
        if block.language == "python":
            tree = ast.parse(block.code, filename=block.where)
            imports += [ast.unparse(node) for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))]
    result = subprocess.run([sys.executable, "-c", "\n".join(dict.fromkeys(imports))], cwd=REPO,
                            env=environment(), capture_output=True, text=True, timeout=QUICK_TIMEOUT_S)
    assert result.returncode == 0, result.stderr[-3000:]


def test_run_with_appends_before_comments():
    code = ("python -m lgmm_jax.main --config=a.py \\\n    --workdir=W   # a run\n"
            "python -m lgmm_jax.export --workdir=W  # not a training run\n"
            "python -m lgmm_jax.main --config.known_classes=\"('a#b',)\"\n")
    assert with_args(code, "--x=1", {"a": "--y=2"}) == (
        "python -m lgmm_jax.main --config=a.py \\\n    --workdir=W --x=1 --y=2   # a run\n"
        "python -m lgmm_jax.export --workdir=W  # not a training run\n"
        "python -m lgmm_jax.main --config.known_classes=\"('a#b',)\" --x=1\n")


# --- README -----------------------------------------------------------------------------------------


def test_readme_is_a_guide():
    lines = (REPO / "README.md").read_text().count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; details belong in docs/"


def test_readme_keeps_quick_start_commands():
    readme = [b for b in ALL_BLOCKS if b.page.name == "README.md" and b.language == "bash"]
    lines = {line for block in readme for line in block.code.split("\n")}
    assert TEST_COMMAND in lines and RUN_COMMAND in lines
    assert TEST_COMMAND in (REPO / ".ci" / "run").read_text().split("\n"), "CI runs README's test command"


# --- links and paths --------------------------------------------------------------------------------

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def anchors(page: Path) -> set[str]:
    """GitHub's heading ids: lower case, punctuation but '-' and '_' dropped, spaces as '-'."""
    found, inside_fence = set(), False
    for line in page.read_text().split("\n"):
        if FENCE.match(line):
            inside_fence = not inside_fence
        heading = None if inside_fence else re.match(r"#{1,6}\s+(.*)", line)
        if heading:
            text = heading.group(1).strip().lower()
            found.add(re.sub(r"\s", "-", re.sub(r"[^\w\- ]", "", text)))
    return found


def test_links_resolve():
    problems = []
    for page in PAGES:
        text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
        for target in LINK.findall(text):
            if re.match(r"[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            resolved = (page.parent / path).resolve() if path else page
            if not resolved.is_relative_to(REPO):
                problems.append(f"{page.name}: {target} leaves the repository")
            elif not resolved.exists():
                problems.append(f"{page.name}: {target} does not exist")
            elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
                problems.append(f"{page.name}: {target}: no heading #{anchor} in {resolved.name}")
    assert not problems, "\n".join(problems)


def test_no_documents_outside_the_repository():
    for page in PAGES:
        text = page.read_text()
        for word in ("../shared", "DESIGN.md", "/work/"):
            assert word not in text, f"{page.name} cites {word}"


PATH_IN_BACKTICKS = re.compile(r"`((?:lgmm_jax|tests|bench|configs|launch|docs|\.ci)/[^`\s]*)`")


def test_quoted_repository_paths_exist():
    """`lgmm_jax/training/train.py` and the like name files of the repository as it is now (patterns and
    upper-case placeholders aside)."""
    problems = []
    for page in PAGES:
        for path in PATH_IN_BACKTICKS.findall(page.read_text()):
            if any(char in path for char in "*<>{}") or "..." in path or re.search(r"(^|/)[A-Z][A-Z_]+(\.|/|$)", path):
                continue  # a pattern or a placeholder (configs/NAME.py)
            if not (REPO / path.rstrip("/")).exists():
                problems.append(f"{page.name}: `{path}`")
    assert not problems, "\n".join(problems)
