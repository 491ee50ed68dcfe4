"""Whole-system checks: the one layer allowed to import every other (core, ``mdkl.lm``,
``mdkl.tasks``, ``mdkl.chem``), because it exercises every trainer; nothing in ``mdkl`` imports it.

- ``mdkl.checks.gpu`` ``make gpu-check`` (``python -m mdkl.checks.gpu``): every trainer on the GPU
  against the CPU, throughput, memory
- ``mdkl.checks.onetwo_paths`` ``make onetwo-paths``: notebook 05's grid on another numeric path, its
  headline verdicts beside the committed ones
- ``mdkl.checks.naming_paths`` ``make naming-paths``: notebook 07's naming-task Table 1 on another
  numeric path, its verdicts beside the committed ones
- ``mdkl.checks.readme`` ``make readme``: the README's results table, generated from the committed
  notebooks, result CSVs and ``data/timings.csv``
"""
