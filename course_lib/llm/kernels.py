"""Old name of :mod:`course_lib.llm.fast` (the production kernel); the benchmark harness is
:mod:`course_lib.llm.kernel_bench`. Kept so that existing imports work; new code imports ``fast``."""

from course_lib.llm.fast import (  # noqa: F401
    ACT_BLOCK,
    FAST_ACCURACY_LEVEL,
    FAST_BITS,
    FAST_GROUP_SIZES,
    KERNELS,
    PER_ROW_BLOCKS,
    FastLinear,
    check_fast_config,
    check_kernel,
    make_kernel,
    matmulnbits_session,
    to_matmulnbits,
)
