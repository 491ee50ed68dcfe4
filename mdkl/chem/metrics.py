"""Table 2's metrics of a chemistry RL run (paper §4): yield and OB100 of high-reward molecules,
their internal diversity (IntDiv1), #Circles and Murcko scaffolds, the per-run summary, and the
one-sided Welch t-test the notebook compares algorithms with. Runs come from :func:`mdkl.chem.reinvent.run_rl`.
"""

from __future__ import annotations

import warnings

import numpy as np

from mdkl.chem.smiles import mol_from_smiles

__all__ = ["morgan_fps", "reward_first_last", "tanimoto_matrix", "yield_", "ob100", "int_div1", "int_div1_both",
           "int_div1_of_fps", "n_circles", "n_circles_of_fps", "n_scaffolds", "summarize_run", "welch_greater"]


def morgan_fps(smiles, radius: int = 2, n_bits: int = 2048) -> np.ndarray:
    """Morgan (ECFP4-like) bit fingerprints as a uint8 matrix of SMILES strings or RDKit molecules
    (invalid SMILES raise ValueError)."""
    from rdkit.Chem import rdFingerprintGenerator

    gen = rdFingerprintGenerator.GetMorganGenerator(radius=radius, fpSize=n_bits)
    out = np.zeros((len(smiles), n_bits), dtype=np.uint8)
    for i, s in enumerate(smiles):
        m = mol_from_smiles(s) if isinstance(s, str) or s is None else s
        if m is None:
            raise ValueError(f"invalid SMILES {s!r} in a metric: pass valid (canonical) hits only")
        out[i] = gen.GetFingerprintAsNumPy(m)
    return out


def tanimoto_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Tanimoto similarity between rows of two bit matrices (0 for two empty fingerprints)."""
    a32, b32 = a.astype(np.float32), b.astype(np.float32)
    inter = a32 @ b32.T
    union = a32.sum(1)[:, None] + b32.sum(1)[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / union, 0.0)


def _calls(canon, rewards) -> tuple[list, np.ndarray]:
    """One run's calls as (canonical SMILES, rewards), checked: one reward per molecule, no NaN."""
    canon = list(canon)
    r = np.asarray(rewards, dtype=np.float64).ravel()
    if len(canon) != len(r):
        raise ValueError(f"{len(canon)} molecules but {len(r)} rewards: pass one reward per molecule, in the same "
                         f"order (a run log's 'canonical' and 'reward' columns)")
    if np.isnan(r).any():
        raise ValueError(f"{int(np.isnan(r).sum())} reward(s) are NaN: the scorer gives 0 to a molecule with a failed "
                         f"component (and counts it, Scorer.n_nan); replace NaN by 0 or drop those calls")
    return canon, r


def yield_(canon, rewards, threshold: float) -> int:
    """Number of unique valid molecules with reward >= threshold (raises on mismatched lengths or NaN)."""
    canon, rewards = _calls(canon, rewards)
    return len({c for c, r in zip(canon, rewards) if c is not None and r >= threshold})


def ob100(canon, rewards, threshold: float, k: int = 100) -> float:
    """Reward calls (1-based) needed to find ``k`` unique molecules above threshold; NaN if never
    (raises on mismatched lengths, NaN rewards or k < 1)."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k={k!r}: OB-k counts the calls to the k-th unique hit; use an integer k >= 1 (OB100: 100)")
    canon, rewards = _calls(canon, rewards)
    seen = set()
    for i, (c, r) in enumerate(zip(canon, rewards)):
        if c is not None and r >= threshold and c not in seen:
            seen.add(c)
            if len(seen) >= k:
                return float(i + 1)
    return float("nan")


def int_div1(smiles, chunk: int = 2000, self_pairs: bool = True) -> float:
    """IntDiv1 (MOSES): 1 - mean Tanimoto over all ordered pairs of the set's Morgan fingerprints
    (radius 2, 1024 bits as MOSES), self-pairs included as MOSES counts them (each adds a
    similarity of 1, so a small set looks less diverse); ``self_pairs=False`` averages over the
    n (n - 1) pairs of distinct molecules. NaN for an empty set (and for one molecule without self-pairs)."""
    return int_div1_both(smiles, chunk)[0 if self_pairs else 1]


def int_div1_both(smiles, chunk: int = 2000) -> tuple[float, float]:
    """:func:`int_div1` with and without self-pairs from one pass over the similarity matrix."""
    if len(smiles) == 0:
        return float("nan"), float("nan")
    return int_div1_of_fps(morgan_fps(smiles, 2, 1024), chunk)


def int_div1_of_fps(fp: np.ndarray, chunk: int = 2000) -> tuple[float, float]:
    """:func:`int_div1_both` of a fingerprint matrix (MOSES: Morgan radius 2, 1024 bits)."""
    n = len(fp)
    if n == 0:
        return float("nan"), float("nan")
    tot, diag = 0.0, 0.0
    for i in range(0, n, chunk):
        sim = tanimoto_matrix(fp[i:i + chunk], fp)
        tot += float(sim.sum())
        diag += float(np.trace(sim[:, i:i + chunk]))
    return 1.0 - tot / n ** 2, (1.0 - (tot - diag) / (n * (n - 1)) if n > 1 else float("nan"))


def n_circles(smiles, distance: float = 0.75) -> int:
    """#Circles (Xie et al. 2023) by greedy sphere exclusion in the given order: a molecule opens
    a new circle if its Tanimoto distance to every centre so far is > ``distance`` (ECFP4, 2048)."""
    return n_circles_of_fps(morgan_fps(smiles, 2, 2048), distance) if len(smiles) else 0


def n_circles_of_fps(fp: np.ndarray, distance: float = 0.75) -> int:
    """:func:`n_circles` of a fingerprint matrix (ECFP4, 2048 bits), rows in discovery order."""
    if len(fp) == 0:
        return 0
    centres = np.zeros((0, fp.shape[1]), dtype=np.uint8)
    for i in range(len(fp)):
        if len(centres) == 0 or (1.0 - tanimoto_matrix(fp[i:i + 1], centres)).min() > distance:
            centres = np.vstack([centres, fp[i:i + 1]])
    return int(len(centres))


def n_scaffolds(smiles) -> int:
    """Number of unique Bemis-Murcko scaffolds (acyclic molecules share the empty scaffold)."""
    from rdkit.Chem.Scaffolds import MurckoScaffold

    out = set()
    for s in smiles:
        m = mol_from_smiles(s)
        if m is not None:
            out.add(MurckoScaffold.MurckoScaffoldSmiles(mol=m))
    return len(out)


def summarize_run(log, threshold: float) -> dict:
    """Table-2 metrics of one run's call log at one screening threshold (hits = unique molecules
    with reward >= threshold, in order of discovery)."""
    canon, r = _calls(log["canonical"].tolist(), log["reward"].to_numpy())
    hits = list(dict.fromkeys(c for c, x in zip(canon, r) if c is not None and x >= threshold))
    div, div_distinct = int_div1_both(hits)
    return {"yield": len(hits), "ob100": ob100(canon, r, threshold), "intdiv1": div,
            "intdiv1_distinct": div_distinct, "circles": n_circles(hits), "scaffolds": n_scaffolds(hits)}


def reward_first_last(log, share: float = 0.2) -> dict:
    """Mean reward over the first and the last ``share`` of a run's reward calls (invalid SMILES
    count as 0): whether the agent's reward rose, the control-trained gate of the primary test
    (:func:`mdkl.chem.stats.control_trained`)."""
    if not 0 < share <= 0.5:
        raise ValueError(f"share={share}: take a fraction in (0, 0.5] so the two parts do not overlap")
    r = log["reward"].fillna(0.0).to_numpy(np.float64)
    k = int(len(r) * share)
    if k < 1:
        raise ValueError(f"a log of {len(r)} calls has no {share:.0%} part: run longer or raise share")
    return {"reward_first": float(r[:k].mean()), "reward_last": float(r[-k:].mean())}


def welch_greater(a, b) -> float:
    """One-sided Welch t-test p-value for mean(a) > mean(b) (NaN-free inputs, >= 2 each)."""
    from scipy import stats

    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    a, b = a[~np.isnan(a)], b[~np.isnan(b)]
    if len(a) < 2 or len(b) < 2:
        return float("nan")
    with warnings.catch_warnings():
        # seeds with (nearly) identical values, e.g. equal #Circles: scipy warns of precision loss
        # and returns NaN or an extreme p-value, which the tables show as they are
        warnings.filterwarnings("ignore", message="Precision loss occurred", category=RuntimeWarning)
        return float(stats.ttest_ind(a, b, equal_var=False, alternative="greater").pvalue)
