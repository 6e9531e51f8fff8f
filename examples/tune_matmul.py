"""Recipe 3 · Tune your own matmul with course_lib.tuning: a config space, a tuner, real builds checked against numpy.

AutoTVM's loop rebuilt on today's TVM: ``matmul_space`` lists the knobs (tile sizes, loop order, vectorize,
parallel…), a tuner proposes configs, ``TemplateMeasurer`` builds each with ``tvm.compile``, checks C against numpy
and times it; every trial goes to a JSONL log you can replay with ``best_record``. For a real search use more
trials, or MetaSchedule (``course_lib.tuning.metaschedule.tune``), as lesson 4 does.

Run: python examples/tune_matmul.py   (needs the tvm extra: pip install -e '.[tvm]')
"""

import tempfile
from pathlib import Path

from course_lib.tuning import matmul, template, tuners


def main(n: int = 64, trials: int = 8, log_dir=None):
    space = template.matmul_space(n, n, n)                  # your shape: C[n, n] = A[n, n] · B[n, n]
    measure = tuners.TemplateMeasurer(space, n, n, n, number=2, repeat=3)
    tuner = tuners.make_tuner("ga", space, seed=0)           # or "random", "grid", "xgb" (needs xgboost)
    log = Path(log_dir or tempfile.mkdtemp(prefix="tune-matmul-")) / "trials.jsonl"
    best = tuner.tune(measure, n_trial=trials, batch_size=4, log_file=log)
    print(f"{len(space):,} configs in the space · {trials} measured · best {best.score:.2f} GFLOP/s: {best.config}")

    replay = tuners.best_record(log)                         # the log is the artifact: replay its best config
    data = matmul.make_data(n, n, n)
    tuned = matmul.check_and_time(template.matmul_template(replay["config"], n, n, n), data, "tuned", repeat=5)
    print(matmul.compare(matmul.numpy_bench(data), tuned))  # vs numpy's BLAS, with the p10–p90 spread
    return {"best": best, "log": log, "tuned": tuned, "space": space}


if __name__ == "__main__":
    main()
