"""Statistics of the experiments, shared by the LM tasks' notebooks and the chemistry: imports nothing
of ``mdkl`` (it sits above the core only because the paper's results, not its method, use it).

- ``mdkl.stats.paired`` paired comparisons over prompts / seeds: bootstrap intervals, minimum
  detectable effect, power of the paired t-test, verdicts

Nothing is re-exported: ``from mdkl.stats import paired``.
"""
