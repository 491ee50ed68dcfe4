"""What a chemist looks at in a chemistry run (paper §4, Table 2), beyond the yield: the hits
themselves, their components, their novelty and how far the agent moved from the prior.

- :func:`hit_table`: one row per unique hit of a run at a screen (in order of discovery): the call at
  which it was first sampled, its reward, the four components that made it (from the run's scorer,
  so exactly the values the reward used) and the raw values behind two of them, P(DRD2 active) and
  the SA score,
- :func:`prior_drift`: the agent's samples under the prior along a run, per window of calls: their
  negative log-likelihood under the prior and the mean log-ratio log pi_agent - log pi_prior (a
  one-sample estimate of KL(agent || prior), which DAP's sigma prices),
- :func:`drift_first_last`: the same over the first and the last fifth of the calls (per-run record),
- :func:`novelty`: the share of hits absent from the prior's training set,
- :func:`hits_grid`: an RDKit grid image of example hits (``rdkit.Chem.Draw.MolsToGridImage``).

Display only: nothing here changes a run or a verdict.
"""

from __future__ import annotations

import numpy as np

__all__ = ["HIT_COLUMNS", "hit_table", "prior_drift", "drift_first_last", "novelty", "hits_grid"]

#: columns of :func:`hit_table`
HIT_COLUMNS = ("call", "canonical", "reward", "potency", "qed", "hbd_ok", "synth", "p_active", "sa")


def _check_log(log, need) -> None:
    missing = set(need) - set(log.columns)
    if missing:
        raise ValueError(f"the run log lacks columns {sorted(missing)}: pass mdkl.chem.reinvent.run_rl(...)['log']")


def hit_table(log, scorer, screen: float = 0.85):
    """The unique hits (valid, reward >= ``screen``) of a run, first occurrence each, with the call
    at which each was found, its components (:data:`mdkl.chem.reward.COMPONENTS`, from ``scorer``'s
    memo of the run: call this before the scorer is reset for the next run), P(DRD2 active) and the
    SA score. Empty (with the columns) when the run found none."""
    import pandas as pd

    from mdkl.chem.reward import drd2_proba, sa_score
    from mdkl.chem.smiles import mol_from_smiles

    _check_log(log, ("call", "smiles", "canonical", "reward"))
    if not 0 < screen <= 1:
        raise ValueError(f"screen={screen}: rewards lie in [0, 1]; use a screen in (0, 1], e.g. 0.85")
    first = log[log["canonical"].notna() & (log["reward"] >= screen)].drop_duplicates("canonical")
    if first.empty:
        return pd.DataFrame(columns=list(HIT_COLUMNS))
    missing = [s for s in first["smiles"] if s not in scorer.memo]
    if missing:
        raise ValueError(f"{len(missing)} hit(s) are not in the scorer's memo: call hit_table right after run_rl, "
                         f"before the scorer scores another run")
    comp = np.stack([scorer.memo[s][2] for s in first["smiles"]])
    mols = [mol_from_smiles(s) for s in first["canonical"]]
    out = pd.DataFrame({"call": first["call"].to_numpy(), "canonical": first["canonical"].to_numpy(),
                        "reward": first["reward"].to_numpy(), "potency": comp[:, 0], "qed": comp[:, 1],
                        "hbd_ok": comp[:, 2], "synth": comp[:, 3], "p_active": drd2_proba(mols),
                        "sa": [sa_score(m) for m in mols]})
    return out


def prior_drift(log, windows: int = 20):
    """Per window of calls (``windows`` equal parts of the run): the last call of the window, the mean
    negative log-likelihood of the valid samples under the prior (``nll_prior``, nats per molecule)
    and the mean of log pi_agent - log pi_prior over all samples (``log_ratio``: a Monte Carlo
    estimate of KL(agent || prior), 0 at the start)."""
    import pandas as pd

    _check_log(log, ("call", "valid", "logp_prior", "logp_agent"))
    if windows < 1 or windows > len(log):
        raise ValueError(f"windows={windows}: use 1 to {len(log)} (the run's calls)")
    part = np.arange(len(log)) * windows // len(log)
    g = log.assign(part=part, nll=-log["logp_prior"].where(log["valid"]),
                   ratio=log["logp_agent"] - log["logp_prior"]).groupby("part")
    return pd.DataFrame({"call": g["call"].max(), "nll_prior": g["nll"].mean(), "log_ratio": g["ratio"].mean()})


def drift_first_last(log, share: float = 0.2) -> dict:
    """:func:`prior_drift` over the first and the last ``share`` of the calls: ``nll_prior_first``,
    ``nll_prior_last``, ``log_ratio_last`` (the per-run record)."""
    _check_log(log, ("valid", "logp_prior", "logp_agent"))
    if not 0 < share <= 0.5:
        raise ValueError(f"share={share}: take a fraction in (0, 0.5] so the two parts do not overlap")
    k = max(1, int(len(log) * share))
    nll = -log["logp_prior"].where(log["valid"])
    return {"nll_prior_first": float(nll.iloc[:k].mean()), "nll_prior_last": float(nll.iloc[-k:].mean()),
            "log_ratio_last": float((log["logp_agent"] - log["logp_prior"]).iloc[-k:].mean())}


def novelty(canonical, reference) -> float:
    """Share of the molecules ``canonical`` (canonical SMILES) absent from ``reference`` (a set of
    canonical SMILES, e.g. the prior's training set); NaN for no molecule."""
    canonical = list(canonical)
    if not canonical:
        return float("nan")
    if not isinstance(reference, (set, frozenset)):
        raise ValueError("reference must be a set of canonical SMILES (e.g. set(training_set_canonical(cfg)))")
    return float(np.mean([c not in reference for c in canonical]))


def hits_grid(smiles, legends, per_row: int = 4, size: tuple = (240, 190)):
    """A PIL image of the molecules ``smiles`` in a grid, each with its legend (RDKit's
    ``MolsToGridImage``); None when there is none to draw."""
    from rdkit.Chem import Draw

    from mdkl.chem.smiles import mol_from_smiles

    smiles, legends = list(smiles), list(legends)
    if len(smiles) != len(legends):
        raise ValueError(f"{len(smiles)} molecules but {len(legends)} legends: give one legend per molecule")
    mols = [mol_from_smiles(s) for s in smiles]
    if any(m is None for m in mols):
        raise ValueError("a hit does not parse: pass the canonical SMILES of hit_table")
    if not mols:
        return None
    return Draw.MolsToGridImage(mols, molsPerRow=per_row, subImgSize=size, legends=legends, returnPNG=False)
