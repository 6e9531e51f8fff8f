"""Notebook hygiene: sources committed clean, executed copies a learner can edit and read without noise.

- :func:`clean_notebook` strips outputs and per-run metadata (``course clean``);
- :func:`merge_injected_parameters` folds papermill's injected ``# Parameters`` cell into the tagged
  ``parameters`` cell of an executed copy, so that editing that cell and re-running changes the values;
- :func:`output_problems` lists what a reader of an executed notebook should not see (stderr, warnings).
"""

from __future__ import annotations

from pathlib import Path

# The notebook metadata a Jupyter kernel writes on first save: committing it means opening a notebook in
# JupyterLab does not mark it modified (autosave would otherwise rewrite every source notebook).
KERNELSPEC = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}


def _language_info() -> dict:
    import platform

    return {
        "codemirror_mode": {"name": "ipython", "version": 3},
        "file_extension": ".py",
        "mimetype": "text/x-python",
        "name": "python",
        "nbconvert_exporter": "python",
        "pygments_lexer": "ipython3",
        "version": platform.python_version(),
    }


def _normalized(path: Path):
    """The notebook as committed: no outputs, no per-run metadata, the kernel's own metadata, cell ids."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell["outputs"] = []
            cell["execution_count"] = None
        for key in ("execution", "papermill", "collapsed", "scrolled"):
            cell.get("metadata", {}).pop(key, None)
    nb.metadata.pop("papermill", None)
    nb.metadata["kernelspec"] = dict(KERNELSPEC)
    info = _language_info()
    old_version = nb.metadata.get("language_info", {}).get("version")
    if old_version:  # the Python version differs per machine; keep the committed one when checking
        info["version"] = old_version
    nb.metadata["language_info"] = info
    nb.nbformat, nb.nbformat_minor = 4, max(5, nb.get("nbformat_minor", 5))
    nbformat.validator.normalize(nb)
    for cell in nb.cells:  # nbformat 4.5 needs an id per cell; JupyterLab adds any that are missing
        if not cell.get("id"):
            import uuid

            cell["id"] = uuid.uuid4().hex[:8]
    return nb


def clean_notebook(path: Path, check: bool = False) -> bool:
    """Strip outputs and per-run metadata and write the kernel's metadata; True if the file changed.

    With ``check=True`` nothing is written: it reports whether cleaning (or a JupyterLab autosave)
    would change the file's bytes.
    """
    import nbformat

    text = path.read_text(encoding="utf-8")
    canonical = nbformat.writes(_normalized(path))
    if not canonical.endswith("\n"):
        canonical += "\n"
    changed = canonical != text
    if changed and not check:
        path.write_text(canonical, encoding="utf-8")
    return changed


def output_problems(nb) -> list[str]:
    """What a reader of an executed notebook should not see: stderr, warnings, tracebacks (one line each)."""
    import re

    if not hasattr(nb, "cells"):
        import nbformat

        nb = nbformat.read(str(nb), as_version=4)
    found = []
    warning = re.compile(r"\b\w*Warning\b[:(]|^Traceback \(most recent call last\)", re.M)
    code_index = 0
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        code_index += 1
        for o in cell.get("outputs", []):
            kind = o.get("output_type")
            text = o.get("text", "")
            text = "".join(text) if isinstance(text, list) else str(text)
            if kind == "error":
                found.append(f"cell {i}: error {o.get('ename')}: {o.get('evalue', '')[:80]}")
            elif kind == "stream" and o.get("name") == "stderr":
                found.append(f"cell {i}: stderr: {text.strip()[:100]!r}")
            elif warning.search(text):
                found.append(f"cell {i}: warning text: {warning.search(text).group(0)!r} in {text.strip()[:100]!r}")
    return found


# --------------------------------------------------------------------------------------------
# Executed copies: one parameters cell, the one the notebook's text tells a learner to edit
# --------------------------------------------------------------------------------------------

INJECTED_TAG = "injected-parameters"  # papermill's tag on the cell it inserts after the tagged one


def _assignments(source: str) -> dict[str, tuple[int, int]]:
    """``{name: (start, end)}`` character offsets of the value of each top-level ``name = value`` in ``source``."""
    import ast

    starts = [0]
    for line in source.splitlines(keepends=True):
        starts.append(starts[-1] + len(line))
    found = {}
    for node in ast.parse(source).body:
        if isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if len(targets) == 1 and isinstance(targets[0], ast.Name):
                v = node.value
                found[targets[0].id] = (starts[v.lineno - 1] + v.col_offset, starts[v.end_lineno - 1] + v.end_col_offset)
    return found


def merge_injected_parameters(nb) -> bool:
    """Write papermill's injected values into the tagged ``parameters`` cell and drop the injected cell.

    papermill runs a notebook by inserting a ``# Parameters`` cell after the tagged one; in the executed copy
    that cell would silently undo a learner's edit of the tagged cell on the next run. Here each injected
    ``name = value`` replaces the value in the tagged cell (its comments stay); a name the tagged cell lacks
    is appended to it. Returns True when the notebook changed. ``nb`` is an nbformat notebook (changed in place).
    """
    import ast

    tags = lambda c: c.get("metadata", {}).get("tags", [])  # noqa: E731
    injected = [i for i, c in enumerate(nb.cells) if INJECTED_TAG in tags(c)]
    tagged = [i for i, c in enumerate(nb.cells) if "parameters" in tags(c) and c.cell_type == "code"]
    if len(injected) != 1 or len(tagged) != 1:
        return False
    inj, par = nb.cells[injected[0]], nb.cells[tagged[0]]
    try:
        new_src, cell_src = inj.source, par.source
        values = {k: new_src[a:b] for k, (a, b) in _assignments(new_src).items()}
        spans = _assignments(cell_src)
    except SyntaxError:  # a parameters cell with IPython magics: leave the notebook as papermill wrote it
        return False
    for name, (a, b) in sorted(spans.items(), key=lambda kv: -kv[1][0]):  # from the end: offsets stay valid
        if name in values:
            cell_src = cell_src[:a] + values[name] + cell_src[b:]
    extra = [f"{k} = {v}" for k, v in values.items() if k not in spans]
    if extra:
        cell_src = cell_src.rstrip("\n") + "\n# set by the course runner's profile\n" + "\n".join(extra)
    ast.parse(cell_src)  # never write a cell that would not run
    par.source = cell_src
    del nb.cells[injected[0]]
    return True
