"""SMILES data and parsing shared by the chemistry prior, rewards and metrics (paper §4): the MOSES
training set inside the molsets wheel, and RDKit parsing / canonicalization that never raises on
a bad string. Kept apart from the rewards so that the prior's cache key (:mod:`mdkl.chem.prior`)
does not depend on the reward code.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mdkl.runtime import installed_package_dir

__all__ = ["moses_path", "load_moses", "quiet_rdkit", "mol_from_smiles", "canonical"]


def moses_path(split: str = "train") -> Path:
    """Path of MOSES ``<split>.csv.gz`` inside the molsets wheel (``import moses`` is broken)."""
    if split not in ("train", "test", "test_scaffolds"):
        raise ValueError(f"split={split!r}: use train, test or test_scaffolds")
    return installed_package_dir("moses", "molsets==0.3.1") / "dataset" / "data" / f"{split}.csv.gz"


def load_moses(n: int | None = None, seed: int = 0, split: str = "train") -> list[str]:
    """``n`` MOSES SMILES drawn without replacement with ``seed`` (all of them if ``n`` is None)."""
    import pandas as pd

    smiles = pd.read_csv(moses_path(split))["SMILES"].to_numpy()
    if n is None or n >= len(smiles):
        return smiles.tolist()
    if n <= 0:
        raise ValueError(f"n={n}: ask for a positive number of molecules")
    idx = np.random.default_rng(seed).choice(len(smiles), size=n, replace=False)
    return smiles[np.sort(idx)].tolist()


def quiet_rdkit() -> None:
    """Silence RDKit's parse warnings (a sampled batch holds many invalid SMILES)."""
    from rdkit import RDLogger

    RDLogger.DisableLog("rdApp.*")


def mol_from_smiles(smiles):
    """RDKit molecule or None for empty / non-string / unparsable / unsanitizable SMILES."""
    from rdkit import Chem

    if not isinstance(smiles, str) or not smiles.strip():
        return None
    quiet_rdkit()
    try:
        mol = Chem.MolFromSmiles(smiles)
    except Exception:  # noqa: BLE001 - RDKit raises rarely, but never crash a run on a string
        return None
    if mol is None or mol.GetNumAtoms() == 0:
        return None
    return mol


def canonical(smiles) -> str | None:
    """Canonical SMILES, or None if invalid."""
    from rdkit import Chem

    mol = mol_from_smiles(smiles)
    return None if mol is None else Chem.MolToSmiles(mol)
