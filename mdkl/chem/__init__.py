"""Chemistry (paper §4, Table 2): REINVENT's loop with and without MARA on an offline SMILES prior.
Imports the core and ``mdkl.stats``, never ``mdkl.lm`` or ``mdkl.tasks``.

- ``mdkl.chem.smiles``      MOSES data and RDKit SMILES parsing shared by the chemistry modules
- ``mdkl.chem.prior``       SMILES LSTM prior: tokenizer, training on MOSES, sampling, likelihoods
- ``mdkl.chem.reward``      offline analogues of the chemistry rewards (DRD2, QED, HBD, SA, amide routes)
- ``mdkl.chem.reinvent``    REINVENT's DAP loop with and without MARA (REINVENT 4's duplicate rule optional)
- ``mdkl.chem.calibration`` versioned, frozen reward configuration calibrated on REINVENT runs only
- ``mdkl.chem.metrics``     Table 2's metrics of a chemistry run (yield, OB100, IntDiv1, #Circles, scaffolds)
- ``mdkl.chem.stats``       pre-registered paired test, power, minimum detectable effects, non-inferiority

``python -m mdkl.chem prior --profile P`` (``make chem-prior``) trains or reuses the profile's prior
(:func:`mdkl.chem.reinvent.main`); ``python -m mdkl.chem.calibration --profile P``
(``make chem-calibrate``) calibrates the reward. Nothing is re-exported, so importing one module
(e.g. the prior, whose cache key must not follow the RL loop's edits) loads no other.
"""
