"""Statistics of the experiments, shared by the LM tasks' notebooks and the chemistry: imports nothing
of ``mdkl`` (it sits above the core only because the paper's results, not its method, use it).

- ``mdkl.stats.paired`` paired comparisons over prompts / seeds: bootstrap intervals, minimum
  detectable effect, power of the paired t-test
- ``mdkl.stats.verdicts`` the one rule set every notebook's verdicts come from: gates (acted,
  control trained, powered by the planned MDE), then holds / holds, smaller than the paper's /
  inconclusive / FAILS; Holm-adjusted p-values for a family of primary claims
- ``mdkl.stats.tables`` reading the committed per-run tables back: flag columns as booleans

Nothing is re-exported: ``from mdkl.stats import paired``.
"""
