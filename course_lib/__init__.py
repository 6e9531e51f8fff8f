"""course_lib — the tested code behind the course notebooks.

One module (or subpackage) per lesson plus a few shared ones:

- :mod:`course_lib.hw`      what hardware am I on (devices, utilisation sampling, skip notes)
- :mod:`course_lib.bench`   the one timing harness every lesson uses
- :mod:`course_lib.report`  ``record()`` metrics that the runner collects into report.json
- :mod:`course_lib.paths`   where the repository, data and caches live
- :mod:`course_lib.runner`  the ``course`` command (papermill runner)
- :mod:`course_lib.show`    ``show_source()``: the real code being taught, rendered in the notebook
- :mod:`course_lib.exercises` the checks behind every notebook's exercises

Importing the package never imports a heavy optional dependency: lessons import what they need.
"""

__version__ = "0.1.0"

from course_lib.hw import SkipLesson  # noqa: E402  (re-exported: notebooks catch it by this name)
from course_lib.show import show_source  # noqa: E402  (light: standard library only until called)

__all__ = ["SkipLesson", "show_source", "__version__"]
