"""The ``course`` command: list, run (papermill, per-profile parameters) and clean the notebooks.

::

    course list
    course run [NAMES...] [--profile {auto,cpu,gpu}] [--out DIR] [--force]
    course clean [NAMES...] [--check]
    course exercises [NAMES...]
    course book RUN_DIR --out DIR
    course gpu-check [--dry-run] [--device cpu] [--allow-skips]

``course run`` executes each notebook with papermill into ``DIR`` (default ``build/course``; a non-empty
folder that is not an earlier run's needs ``--force``; the sources in ``notebooks/``
are never written), passing the parameters of the chosen profile from ``ci/profiles.yaml``. It
keeps going after a failing notebook, counts a notebook that raised
:class:`course_lib.hw.SkipLesson` as *skipped* with its reason, and writes ``DIR/report.json``
and ``DIR/report.md`` (status, wall time, last error line and recorded metrics per notebook).
Exit status: 0 when nothing failed, 1 when a notebook failed, 2 for bad input (one line saying why).

The package is split by job: :mod:`~course_lib.runner.profiles` (which notebooks, which parameters),
:mod:`~course_lib.runner.execute` (checks, then papermill), :mod:`~course_lib.runner.reports`
(``report.json`` / ``report.md``), :mod:`~course_lib.runner.hygiene` (clean sources, editable executed
copies, output lint) and :mod:`~course_lib.runner.cli` (the command line). Everything public is
importable from ``course_lib.runner`` itself.
"""

from course_lib.runner.cli import main
from course_lib.runner.execute import (INLINE_BACKEND, check_kernel, check_not_foreign, check_out_dir,
                                       editable_parameters, execute_one, run, solutions_file)
from course_lib.runner.hygiene import KERNELSPEC, clean_notebook, merge_injected_parameters, output_problems
from course_lib.runner.profiles import (DEFAULT_CELL_TIMEOUT, PROFILES, NotebookSpec, UsageError, discover,
                                        load_profiles, notebook_title, resolve_profile, select)
from course_lib.runner.reports import (Layout, NotebookResult, atomic_write, exercise_counts, last_line, machine,
                                       render_markdown, write_reports)

__all__ = [
    "DEFAULT_CELL_TIMEOUT", "INLINE_BACKEND", "KERNELSPEC", "PROFILES", "Layout", "NotebookResult", "NotebookSpec",
    "UsageError", "atomic_write", "check_kernel", "check_not_foreign", "check_out_dir", "clean_notebook",
    "discover", "editable_parameters", "execute_one", "exercise_counts", "last_line", "load_profiles", "machine",
    "main", "merge_injected_parameters", "notebook_title", "output_problems", "render_markdown", "resolve_profile",
    "run", "select", "solutions_file", "write_reports",
]
