"""The LM tasks of the paper and their experiments (they import ``mdkl.lm`` and the core, never ``mdkl.chem``).

- ``mdkl.tasks.onetwo``      the "1-2" task: strict XML answer parser, reward, exact answer split (its
  prompts are the small LM's, :data:`mdkl.lm.smalllm.ONETWO_PROMPTS`)
- ``mdkl.tasks.onetwo_runs`` the 1-2 experiment: paper-like small model, parallel run grid, convergence metrics
- ``mdkl.tasks.onetwo_claims`` the 1-2 claims: the design frozen before the runs, verdicts from the per-run table
- ``mdkl.tasks.onetwo_trl``  the 1-2 task on TRL: its reward function and ``accelerate launch`` command line
- ``mdkl.tasks.creative``    creative QA with non-verifiable rewards (Table 1): judge, OOD scorer, metrics
- ``mdkl.tasks.creative_design`` Table 1's design: matched rows, each row's regularizer and effective beta,
  how often MARA acts for a group size and tau scope
- ``mdkl.tasks.naming_world`` Table 1's synthetic world ("Name a <category>."): enumerable answers, true
  quality, a length-biased reward model, a Zipf-skewed corpus, the small LM pretrained on it (cached)
- ``mdkl.tasks.naming``     the naming task for ``mdkl.lm.train``: exact metrics by enumeration (entropy,
  top-set coverage, distinct answers, both rewards, KL) and exact targets (Rem. 3.1, 3.3, B.3, Alg. 2)
- ``mdkl.tasks.naming_table1`` Table 1 as a powered test on the naming task: rows, matched beta, pilot MDEs,
  run grid, per-run table, verdicts from that table alone
- ``mdkl.tasks.naming_runs`` one cached run of that design (exact metrics), the worker grid, numeric failures

Nothing is re-exported: import the modules (``from mdkl.tasks import onetwo``).
"""
