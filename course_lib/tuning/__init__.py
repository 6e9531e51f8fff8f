"""Lesson 4 (``04_tvm_autotuning.ipynb``): TVM auto-tuning, from hand schedules to MetaSchedule.

Modules (import them directly; each imports TVM lazily and names the ``tvm`` extra when it is missing):

* :mod:`course_lib.tuning.common`       — TVM import check, host target, CPU peak estimate, GFLOP/s timing.
* :mod:`course_lib.tuning.matmul`       — C = A·B with ``te.compute`` and the hand schedule, step by step.
* :mod:`course_lib.tuning.template`     — AutoTVM's idea rebuilt: config space (``define_split``/``define_knob``) + template.
* :mod:`course_lib.tuning.tuners`       — random, grid, genetic-algorithm and XGBoost cost-model tuners + JSONL records.
* :mod:`course_lib.tuning.metaschedule` — MetaSchedule ``tune_tir`` with a fast builder, committed database replay.
* :mod:`course_lib.tuning.relax_model`  — a small PyTorch MLP through ``torch.export`` → Relax, tuned and run on the VM.

Importing this package never imports TVM.
"""
