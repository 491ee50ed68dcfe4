"""Chemistry (paper §4, Table 2): REINVENT's loop with and without MARA on an offline SMILES prior.
Imports the core and ``mdkl.stats``, never ``mdkl.lm`` or ``mdkl.tasks``.

- ``mdkl.chem.smiles``      MOSES data and RDKit SMILES parsing shared by the chemistry modules
- ``mdkl.chem.prior``       SMILES LSTM prior: tokenizer, training on MOSES, sampling, likelihoods
- ``mdkl.chem.reward``      offline analogues of the chemistry rewards (DRD2, QED, HBD, SA, amide routes)
- ``mdkl.chem.aggregation`` how the components combine: weighted geometric mean (the paper's) or plain product
- ``mdkl.chem.reinvent``    REINVENT's DAP loop with and without MARA (REINVENT 4's duplicate rule optional)
- ``mdkl.chem.frozen``      the frozen reward configuration files (v1, v2): versioned, validated, tied to a prior
- ``mdkl.chem.regime``      what a calibration aims at (the paper's hit rates and narrowing) and its choice rules
- ``mdkl.chem.calibration`` the REINVENT-only calibration of a reward analogue (v1's grid; the stages, the choice)
- ``mdkl.chem.calibration_v2`` the v2 analogue (geometric mean, a potency that binds) and its calibration
- ``mdkl.chem.metrics``     Table 2's metrics of a chemistry run (yield, OB100, IntDiv1, #Circles, scaffolds)
- ``mdkl.chem.display``     what a chemist looks at: hits with their components, novelty, drift from the prior, a grid
- ``mdkl.chem.stats``       pre-registered paired test, power, minimum detectable effects, non-inferiority

``python -m mdkl.chem prior --profile P`` (``make chem-prior``) trains or reuses the profile's prior
(:func:`mdkl.chem.reinvent.main`); ``python -m mdkl.chem.calibration --profile P``
(``make chem-calibrate``) calibrates the v1 reward, ``python -m mdkl.chem.calibration_v2 --profile P``
the v2 reward. Nothing is re-exported, so importing one module
(e.g. the prior, whose cache key must not follow the RL loop's edits) loads no other.
"""
