"""What both tasks' reports are made of: percentages, markdown tables, report.md, PNG figures written
through etils.epath (so a gs:// output folder works like a local one). Each task renders its own tables
(`lgmm_jax.tasks.<task>.report`)."""

from __future__ import annotations

import io

from etils import epath

REPORT_FILE = "report.md"


def percent(value: float) -> str:
    return f"{100 * value:.2f}"


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def write_report(folder: str, markdown: str) -> str:
    """report.md in `folder`."""
    path = epath.Path(folder) / REPORT_FILE
    path.write_text(markdown)
    return str(path)


def save_figure(figure, folder: str, name: str) -> str:
    """PNG bytes through etils.epath, so a gs:// workdir works like a local one."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    path = epath.Path(folder) / name
    path.write_bytes(buffer.getvalue())
    return str(path)
