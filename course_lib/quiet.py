"""Quiet imports: one context manager for the known, harmless notes that importing transformers prints.

Used by lessons 1, 2 and 3 (``deploy``, ``parallel``, ``llm``) around their first ``transformers`` import or
model load. Nothing global changes: the loggers get their levels back and the warning filter ends with the block.
"""

from __future__ import annotations

import contextlib
import logging
import warnings

# torchao (imported by transformers' quantizer registry when installed, as in lesson 5's environment) logs that
# its CUDA-only kernels cannot load on a CPU torch; torch.utils._pytree logs an Enum register_constant note for it.
QUIET_LOGGERS = ("torchao", "torch.utils._pytree")


@contextlib.contextmanager
def quiet_transformers_import():
    """Silence, for this block only, three import-time notes that do not concern the lessons.

    transformers imports ``tqdm.auto``, which warns "IProgress not found" without ipywidgets (bars fall back
    to text); an installed torchao logs "Failed to load" for its GPU-only extensions and torch logs that two
    of its enums no longer need pytree registration. Errors still show.
    """
    loggers = [logging.getLogger(name) for name in QUIET_LOGGERS]
    levels = [lg.level for lg in loggers]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="IProgress not found")  # no ipywidgets: text bars are fine
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels):
                lg.setLevel(level)
