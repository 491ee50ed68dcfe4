"""Offline analogues of the paper's chemistry rewards (Table 2), scored in parallel.

The paper's reward combines four components (Saturn's "product" aggregator, a weighted geometric
mean: :mod:`mdkl.chem.aggregation`): docking against ClpP (reverse-sigmoid transform, low -16,
high 0, k 0.15), QED, fewer than 4 hydrogen-bond donors, and synthesizability from a retrosynthesis
server (task SYNTH: any reaction; task ALL-AMIDE: amide couplings only). Docking and the server are
out of reach offline; the substitutes here (documented in ``notebooks/06_chemistry.ipynb``):

- potency: PMO's DRD2 activity classifier (an sklearn SVC shipped in the ``molscore`` wheel), its
  probability P of activity mapped to [0, 1] by :func:`potency`: REINVENT's sigmoid either of
  log10 P (``'sigmoid'``, saturating at ``10**potency_ceiling``) or of the log-odds log10(P / (1 - P))
  (``'logit_sigmoid'``: Saturn's docking transform carried over to the classifier's own score, see
  :func:`potency`); ``'log_linear'`` is a clipped line in log10 P,
- QED and the H-bond-donor constraint straight from RDKit, as in the paper,
- SYNTH analogue: the SA score (Ertl & Schuffenhauer, RDKit Contrib) mapped to [0, 1] by
  :func:`sa_desirability` (1 at SA <= ``sa_good``, linear to 0 at SA = ``sa_bad``),
- ALL-AMIDE analogue: :func:`amide_solved`, 1 if the molecule is in the building-block stock or
  can be cut, by an RDKit retro-amide-coupling reaction template applied recursively, into pieces
  that are all in the stock, else 0. The stock (:func:`amide_stock`) is every leaf (acid or amine)
  of the full amide disconnection of a seeded subset of the MOSES training set, plus every building
  block with at most ``RewardConfig.stock_max_heavy_atoms`` heavy atoms: a documented, reproducible
  substitute for a vendor catalogue, which lists most small acids and amines.

The values come from a frozen calibration (:mod:`mdkl.chem.calibration`), not from the defaults of
:class:`RewardConfig`. Two analogues are frozen: **v1** (``data/chem_reward_cpu.json``: the plain
product of the components, potency a sigmoid of log10 P between 1e-4 and 1e-2, which already scores
0.9 at P = 0.24%, so its hits are molecules the classifier calls inactive) and **v2**
(``data/chem_reward_cpu_v2.json``, :mod:`mdkl.chem.calibration_v2`: the weighted geometric mean as
in the paper, potency a sigmoid of the classifier's log-odds centred on its call, P = 0.5, so a hit
must be a molecule the classifier calls active). Notebook 06 runs v2; v1 is the earlier analogue, shown there
from its committed runs.

Aggregation: :func:`aggregate_reward` (``RewardConfig.aggregator``; 'product' by default, the v1
analogue's). A component that returns NaN makes the reward 0 and is counted (``Scorer.n_nan``); an
invalid or empty SMILES gets reward 0 and is counted (``Scorer.n_invalid``). Nothing raises on bad
molecules.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mdkl.chem.aggregation import aggregate, check_aggregator
from mdkl.chem.smiles import load_moses, mol_from_smiles, quiet_rdkit
from mdkl.runtime import installed_package_dir

__all__ = ["RewardConfig", "COMPONENTS", "drd2_features",
           "drd2_proba", "libsvm_binary_proba", "potency", "qed", "n_hbd", "sa_score", "sa_desirability", "amide_solved",
           "amide_leaves", "amide_stock", "aggregate_reward", "score_batch", "score_smiles", "Scorer"]

TASKS = ("synth", "amide")
POTENCY_TRANSFORMS = ("log_linear", "sigmoid", "logit_sigmoid")
#: libsvm clips P(active) to [1e-7, 1 - 1e-7]: the log10-odds of the classifier lie in [-7, 7]
LOGIT_RANGE = 7.0
COMPONENTS = ("drd2", "qed", "hbd_ok", "synth")


@dataclass(frozen=True)
class RewardConfig:
    """Reward of one Table-2 task (defaults: the SYNTH analogue)."""

    task: str = "synth"
    """'synth' (SA-score synthesizability, SYNTH analogue) or 'amide' (ALL-AMIDE analogue)."""
    potency_floor: float = -4.0
    """'log_linear': log10 P(DRD2 active) mapped to potency 0; 'sigmoid': the sigmoid's ``low`` in
    log10 P; 'logit_sigmoid': the sigmoid's ``low`` in log10 odds, log10(P / (1 - P))."""
    potency_ceiling: float = 0.0
    """'log_linear': log10 P at which the potency term reaches 1 (linear in log10 P from the floor,
    so 0 saturates only at P = 1); 'sigmoid': the sigmoid's ``high`` in log10 P (<= 0); 'logit_sigmoid':
    its ``high`` in log10 odds."""
    potency_transform: str = "log_linear"
    """'log_linear' (clipped line in log10 P, a log-affinity scale like a docking score),
    'sigmoid' (REINVENT's sigmoid transform of log10 P between floor and ceiling: saturates, as
    the reverse sigmoid of a docking score does) or 'logit_sigmoid' (REINVENT's sigmoid of the
    classifier's log10 odds, :func:`potency`)."""
    potency_k: float = 0.5
    """steepness of the sigmoid transforms (REINVENT's ``k``; unused by 'log_linear')."""
    max_hbd: int = 3
    """H-bond donors allowed (paper: fewer than 4)."""
    sa_good: float = 3.5
    """SA score at or below which the SYNTH term is 1."""
    sa_bad: float = 4.5
    """SA score at or above which the SYNTH term is 0 (linear in between)."""
    stock_molecules: int = 50_000
    """MOSES training molecules whose amide-disconnection leaves form the building-block stock."""
    stock_seed: int = 0
    """seed of the MOSES subset that defines the stock."""
    stock_max_heavy_atoms: int = 14
    """molecules (building blocks) with at most this many heavy atoms also count as in stock:
    14 is the median size of the MOSES-leaf stock. Vendor catalogues list most small acids and
    amines, while 50k MOSES molecules only supply the specific ones they contain (without this
    rule ~2% of the SYNTH-analogue hits had an amide route vs 27% with it). 0 turns the rule off."""
    aggregator: str = "product"
    """how the components combine (:func:`mdkl.chem.aggregation.aggregate`): 'product' (the plain
    product: the v1 analogue's, hence the default) or 'geomean' (the weighted geometric mean of
    Saturn and REINVENT 4, the paper's)."""
    weights: tuple = (1.0, 1.0, 1.0, 1.0)
    """weight of each component (:data:`COMPONENTS` order) in the geometric mean (equal by default;
    the plain product takes no weights)."""
    version: str = ""
    """version of the calibrated reward configuration these values come from
    (:class:`mdkl.chem.calibration.RewardCalibration`; '' for the uncalibrated defaults). Part of
    every run's cache key through this config."""

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"task={self.task!r}: use one of {TASKS}")
        if self.potency_transform == "logit_sigmoid":
            if not -LOGIT_RANGE <= self.potency_floor < self.potency_ceiling <= LOGIT_RANGE:
                raise ValueError(f"potency_transform='logit_sigmoid' needs -{LOGIT_RANGE:g} <= potency_floor < "
                                 f"potency_ceiling <= {LOGIT_RANGE:g} (log10 odds of P, which libsvm clips to "
                                 f"[1e-7, 1 - 1e-7]), got {self.potency_floor}, {self.potency_ceiling}")
        elif not self.potency_floor < self.potency_ceiling <= 0:
            raise ValueError(f"need potency_floor < potency_ceiling <= 0 (log10 of probabilities), got "
                             f"{self.potency_floor}, {self.potency_ceiling}")
        if self.potency_transform not in POTENCY_TRANSFORMS or not 0 < self.potency_k <= 10:
            raise ValueError(f"potency_transform={self.potency_transform!r}, potency_k={self.potency_k}: use one of "
                             f"{POTENCY_TRANSFORMS} and 0 < k <= 10 (REINVENT's default k: 0.5)")
        if not 1 <= self.sa_good < self.sa_bad <= 10:
            raise ValueError(f"need 1 <= sa_good < sa_bad <= 10 (the SA score's range; got {self.sa_good}, {self.sa_bad})")
        object.__setattr__(self, "weights", check_aggregator(self.aggregator, self.weights, len(COMPONENTS)))
        if not 0 <= self.stock_max_heavy_atoms <= 100 or self.max_hbd < 0 or self.stock_molecules < 1:
            raise ValueError(f"stock_max_heavy_atoms={self.stock_max_heavy_atoms} (0: off, at most 100), "
                             f"max_hbd={self.max_hbd} (>= 0), stock_molecules={self.stock_molecules} (>= 1)")


# ----------------------------------------------------------------------------------------------
# components
# ----------------------------------------------------------------------------------------------
_DRD2 = None
_SA = None


def _drd2_model():
    global _DRD2
    if _DRD2 is None:
        f = installed_package_dir("molscore", "molscore==1.9.5") / "data" / "models" / "molopt" / "drd2_current.pkl"
        with warnings.catch_warnings():  # pickled with sklearn 0.23; loads and predicts correctly
            warnings.simplefilter("ignore")
            with open(f, "rb") as fh:
                _DRD2 = pickle.load(fh)
    return _DRD2


def drd2_features(mols) -> np.ndarray:
    """PMO's DRD2 features: Morgan radius 3 feature-invariant counts folded ``idx % 2048``."""
    from rdkit.Chem import AllChem

    quiet_rdkit()
    x = np.zeros((len(mols), 2048), dtype=np.float64)
    for i, m in enumerate(mols):
        fp = AllChem.GetMorganFingerprint(m, 3, useCounts=True, useFeatures=True)
        for k, v in fp.GetNonzeroElements().items():
            x[i, k % 2048] += v
    return x


def libsvm_binary_proba(dec: np.ndarray, prob_a: float, prob_b: float) -> np.ndarray:
    """Vectorized copy of libsvm's ``svm_predict_probability`` for 2 classes as bundled with
    scikit-learn: Platt's sigmoid of the decision values, clipped to [1e-7, 1 - 1e-7], then
    libsvm's iterative pairwise coupling (``multiclass_probability``, which for 2 classes stops at
    a tolerance of 0.0025, so it is *not* the sigmoid itself). Returns (n, 2) probabilities in
    libsvm's label order; bit-for-bit the same steps as the C code (tested against sklearn)."""
    dec = np.asarray(dec, dtype=np.float64)
    f = dec * prob_a + prob_b
    with np.errstate(over="ignore"):
        sig = np.where(f >= 0, np.exp(-f) / (1.0 + np.exp(-f)), 1.0 / (1.0 + np.exp(f)))
    r01 = np.minimum(np.maximum(sig, 1e-7), 1 - 1e-7)
    r10 = 1 - r01
    n = len(dec)
    q = np.empty((n, 2, 2))
    q[:, 0, 0], q[:, 0, 1], q[:, 1, 1] = r10 * r10, -r10 * r01, r01 * r01
    q[:, 1, 0] = q[:, 0, 1]
    p = np.full((n, 2), 0.5)
    active = np.ones(n, dtype=bool)
    for _ in range(100):  # libsvm: max_iter = max(100, k), eps = 0.005 / k
        qp = np.einsum("ntj,nj->nt", q, p)
        pqp = (p * qp).sum(1)
        active &= np.abs(qp - pqp[:, None]).max(1) >= 0.0025
        if not active.any():
            break
        a = active
        for t in range(2):
            diff = (-qp[a, t] + pqp[a]) / q[a, t, t]
            p[a, t] += diff
            pqp[a] = (pqp[a] + diff * (diff * q[a, t, t] + 2 * qp[a, t])) / (1 + diff) / (1 + diff)
            qp[a] = (qp[a] + diff[:, None] * q[a, t, :]) / (1 + diff)[:, None]
            p[a] /= (1 + diff)[:, None]
    return p


def _svc_proba(model, x: np.ndarray) -> np.ndarray:
    """P(class 1) of a fitted binary RBF ``sklearn.svm.SVC(probability=True)``: the same numbers
    as ``model.predict_proba(x)[:, 1]`` (to ~1e-13), with the RBF kernel computed as one BLAS
    matrix product over the batch instead of libsvm's per-pair loop (~50x faster for PMO's DRD2
    model: 2,159 support vectors x 2,048 features). Other models fall back to ``predict_proba``."""
    if (getattr(model, "kernel", None) != "rbf" or len(getattr(model, "classes_", ())) != 2
            or not getattr(model, "probability", False)):
        return model.predict_proba(x)[:, 1]
    sv = model.support_vectors_
    sv_sq = getattr(model, "_mdkl_sv_sq", None)
    if sv_sq is None:
        sv_sq = model._mdkl_sv_sq = np.einsum("ij,ij->i", sv, sv)
    d2 = np.einsum("ij,ij->i", x, x)[:, None] + sv_sq[None, :] - 2.0 * (x @ sv.T)
    k = np.exp(-model._gamma * np.maximum(d2, 0.0))
    dec = k @ model._dual_coef_[0] + model._intercept_[0]  # libsvm's sign: -decision_function
    return libsvm_binary_proba(dec, model._probA[0], model._probB[0])[:, 1]  # probA_: deprecated alias


def drd2_proba(mols) -> np.ndarray:
    """P(active at DRD2) from PMO's SVC for a list of RDKit molecules (potency analogue);
    equal to the SVC's ``predict_proba`` (see :func:`_svc_proba`)."""
    if len(mols) == 0:
        return np.zeros(0)
    return _svc_proba(_drd2_model(), drd2_features(mols))


def potency(p, floor: float = -4.0, ceiling: float = 0.0, transform: str = "log_linear", k: float = 0.5):
    """Potency term from P(active); NaN stays NaN.

    On x = log10 P (a log scale, like a docking score's log affinity):

    - 'log_linear': clip((x - floor) / (ceiling - floor), 0, 1): 0 at P <= 10**floor, 1 at
      P >= 10**ceiling (ceiling 0: only at P = 1),
    - 'sigmoid': REINVENT's sigmoid transform 1 / (1 + 10**(10 k (mid - x) / (ceiling - floor))),
      mid = (floor + ceiling) / 2: 0.5 at mid, ~0.997 at the ceiling for k = 0.5 (saturating).

    On the log-odds x = log10(P / (1 - P)) ('logit_sigmoid'; floor and ceiling in log10 odds): the
    same sigmoid. This carries Saturn's docking transform over to the classifier. A docking score is
    linear in the log of an affinity; the classifier's own score is the SVM decision value, which
    Platt's calibration maps *linearly* onto the log-odds of P, so the log-odds is the classifier's
    score on a probability scale, and 0 is its call (P = 0.5). Saturn's reverse sigmoid (low -16,
    high 0, k 0.15) is a gentle ramp over the whole range of docking scores: 0.5 at -8 kcal/mol,
    0.15 and 0.85 at the ends, no plateau, so the reward is graded over every molecule and only the
    best binders come near 1. Here: 0.5 at the classifier's call for a range centred on 0, graded
    over every prior sample (whose median P is ~0.1%: log-odds -3), so REINVENT has a slope to climb,
    as the docking term gives it, where a transform of P itself is flat (all but ~0.3% of MOSES
    molecules have P < 0.1).
    """
    if not floor < ceiling or transform not in POTENCY_TRANSFORMS:
        raise ValueError(f"potency: need floor < ceiling and transform in {POTENCY_TRANSFORMS} "
                         f"(got {floor}, {ceiling}, {transform!r})")
    p = np.asarray(p, dtype=np.float64)
    if transform == "logit_sigmoid":
        with np.errstate(divide="ignore", invalid="ignore"):
            x = np.log10(np.clip(p, 1e-300, None)) - np.log10(np.clip(1.0 - p, 1e-300, None))
    else:
        with np.errstate(divide="ignore", invalid="ignore"):
            x = np.log10(np.clip(p, 1e-300, None))
    if transform == "log_linear":
        out = np.clip((x - floor) / (ceiling - floor), 0.0, 1.0)
    else:
        with np.errstate(over="ignore", invalid="ignore"):
            out = 1.0 / (1.0 + 10.0 ** (10.0 * k * ((floor + ceiling) / 2 - x) / (ceiling - floor)))
    return np.where(np.isnan(p), np.nan, out)


def qed(mol) -> float:
    """RDKit's QED (paper: used as is)."""
    from rdkit.Chem import QED

    return float(QED.qed(mol))


def n_hbd(mol) -> int:
    """Number of H-bond donors (RDKit's Lipinski definition, CalcNumHBD)."""
    from rdkit.Chem import rdMolDescriptors

    return int(rdMolDescriptors.CalcNumHBD(mol))


def sa_score(mol) -> float:
    """Synthetic accessibility score (1 easy ... 10 hard), RDKit Contrib's sascorer."""
    global _SA
    if _SA is None:
        from rdkit.Chem import RDConfig

        sys.path.append(os.path.join(RDConfig.RDContribDir, "SA_Score"))
        import sascorer  # noqa: E402

        _SA = sascorer
    return float(_SA.calculateScore(mol))


def sa_desirability(sa, good: float = 3.5, bad: float = 4.5):
    """SYNTH analogue: 1 for SA <= ``good``, 0 for SA >= ``bad``, linear in between (NaN stays NaN)."""
    sa = np.asarray(sa, dtype=np.float64)
    return np.clip((bad - sa) / (bad - good), 0.0, 1.0)  # np.clip keeps NaN


# ----------------------------------------------------------------------------------------------
# ALL-AMIDE analogue
# ----------------------------------------------------------------------------------------------
#: retro amide coupling: C(=O)-N (acyclic bond, acyl carbon bound to carbon, non-aromatic N that
#: is not part of an imide / urea / carbamate on the N side) -> carboxylic acid + amine
RETRO_AMIDE = "[#6:4][C;X3:1](=[O;X1:2])-!@[N;X3;!a;!$(N(C=O)C=O):3]>>[#6:4][C:1](=[O:2])[OH].[N:3]"
_RXN = None


def _retro_amide():
    global _RXN
    if _RXN is None:
        from rdkit.Chem import AllChem

        _RXN = AllChem.ReactionFromSmarts(RETRO_AMIDE)
    return _RXN


def _disconnect(mol) -> list[tuple[str, ...]]:
    """All single retro-amide disconnections of ``mol``: list of canonical (acid, amine) pairs."""
    from rdkit import Chem

    out = set()
    for prods in _retro_amide().RunReactants((mol,)):
        pair = []
        for p in prods:
            try:
                Chem.SanitizeMol(p)
                pair.append(Chem.MolToSmiles(p))
            except Exception:  # noqa: BLE001 - an unsanitizable product is no route
                pair = None
                break
        if pair:
            out.add(tuple(pair))
    return sorted(out)


def amide_leaves(smiles: str) -> list[str]:
    """Building blocks of the *full* amide disconnection of a molecule ([] if it has no amide or
    is invalid). Used to build the stock."""
    mol = mol_from_smiles(smiles)
    if mol is None:
        return []
    first = _disconnect(mol)
    if not first:
        return []
    leaves, todo, seen = [], list(first[0]), set()
    while todo:
        s = todo.pop()
        if s in seen:
            continue
        seen.add(s)
        m = mol_from_smiles(s)
        d = _disconnect(m) if m is not None else []
        if d:
            todo.extend(d[0])
        else:
            leaves.append(s)
    return leaves


def amide_solved(mol, stock, memo: dict | None = None, _depth: int = 0, max_heavy_atoms: int = 0) -> bool:
    """ALL-AMIDE analogue: the molecule is in stock (in ``stock``, a set of canonical SMILES, or
    at most ``max_heavy_atoms`` heavy atoms; 0: no size rule) or some retro-amide disconnection
    splits it into pieces that are all solved (recursively). ``memo`` may be shared across calls
    with the same stock and size rule."""
    from rdkit import Chem

    memo = {} if memo is None else memo
    smi = Chem.MolToSmiles(mol)
    if smi in memo:
        return memo[smi]
    if smi in stock or mol.GetNumHeavyAtoms() <= max_heavy_atoms:
        memo[smi] = True
        return True
    memo[smi] = False  # guards against cycles while exploring
    ok = False
    if _depth < 6:
        for pair in _disconnect(mol):
            if all((m := mol_from_smiles(s)) is not None
                   and amide_solved(m, stock, memo, _depth + 1, max_heavy_atoms) for s in pair):
                ok = True
                break
    memo[smi] = ok
    return ok


def _build_stock(n: int, seed: int) -> frozenset:
    leaves = set()
    for s in load_moses(n, seed):
        leaves.update(amide_leaves(s))
    return frozenset(leaves)


def amide_stock(cfg: RewardConfig = RewardConfig(), force: bool = False) -> frozenset:
    """The building-block stock: leaves of the full amide disconnection of ``cfg.stock_molecules``
    MOSES training molecules (seed ``cfg.stock_seed``); cached (a couple of minutes to build)."""
    from mdkl.runtime import cached

    key = {"n": cfg.stock_molecules, "seed": cfg.stock_seed, "rxn": RETRO_AMIDE}
    return cached("chem-amide-stock", key, lambda: _build_stock(cfg.stock_molecules, cfg.stock_seed),
                  code=[_build_stock], force=force)


# ----------------------------------------------------------------------------------------------
# aggregation and scoring
# ----------------------------------------------------------------------------------------------
def aggregate_reward(components: np.ndarray, aggregator: str = "product", weights=None) -> tuple[np.ndarray, np.ndarray]:
    """The reward of each row (molecule) of the component matrix: the plain product (the default,
    the v1 analogue's) or the weighted geometric mean (``'geomean'``; :func:`mdkl.chem.aggregation.aggregate`).
    Returns ``(reward, is_nan)``: a row with any NaN component gets reward 0 and ``is_nan`` True
    (so it is counted, never propagated)."""
    return aggregate(components, aggregator, weights)


_STOCK: frozenset | None = None


def _potency_of(p, cfg: RewardConfig) -> np.ndarray:
    return potency(p, cfg.potency_floor, cfg.potency_ceiling, cfg.potency_transform, cfg.potency_k)


def score_batch(smiles: list, cfg: RewardConfig, stock=None) -> tuple[list, np.ndarray]:
    """Canonical SMILES (None if invalid) and component matrix (len(smiles) x 4: drd2, qed,
    hbd_ok, synth) of any SMILES strings, each parsed once. A component that fails on a molecule,
    and every component of an invalid one, is NaN (the caller turns the row's reward into 0)."""
    from rdkit import Chem

    stock = _STOCK if stock is None else stock
    if cfg.task == "amide" and stock is None:
        raise ValueError("task 'amide' needs the stock: pass stock=amide_stock(cfg)")
    mols = [mol_from_smiles(s) for s in smiles]
    can = [None if m is None else Chem.MolToSmiles(m) for m in mols]
    out = np.full((len(smiles), len(COMPONENTS)), np.nan)
    ok = [i for i, m in enumerate(mols) if m is not None]
    if not ok:
        return can, out
    try:
        out[ok, 0] = _potency_of(drd2_proba([mols[i] for i in ok]), cfg)
    except Exception:  # noqa: BLE001 - fall back to one at a time, NaN where it fails
        for i in ok:
            try:
                out[i, 0] = _potency_of(drd2_proba([mols[i]]), cfg)[0]
            except Exception:  # noqa: BLE001
                pass
    memo: dict = {}
    for i in ok:
        m = mols[i]
        for j, f in ((1, qed), (2, lambda m: float(n_hbd(m) <= cfg.max_hbd))):
            try:
                out[i, j] = f(m)
            except Exception:  # noqa: BLE001
                pass
        try:
            if cfg.task == "synth":
                out[i, 3] = sa_desirability(sa_score(m), cfg.sa_good, cfg.sa_bad)
            else:
                out[i, 3] = float(amide_solved(m, stock, memo, max_heavy_atoms=cfg.stock_max_heavy_atoms))
        except Exception:  # noqa: BLE001
            pass
    return can, out


def score_smiles(smiles: list[str], cfg: RewardConfig, stock=None) -> np.ndarray:
    """Component matrix of :func:`score_batch` (without the canonical SMILES)."""
    return score_batch(smiles, cfg, stock)[1]


def _init_worker(stock) -> None:
    global _STOCK
    _STOCK = stock
    quiet_rdkit()
    warnings.simplefilter("ignore")
    try:  # one BLAS thread per worker: the pool already uses every core
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
        pass
    _drd2_model()


class _Pending:
    """A batch submitted to :meth:`Scorer.submit`; ``get()`` returns :meth:`Scorer.score`'s dict."""

    def __init__(self, scorer: "Scorer", smiles: list, todo: list[str], job):
        self.scorer, self.smiles, self.todo, self.job = scorer, smiles, todo, job

    def get(self) -> dict:
        return self.scorer._finish(self)


class Scorer:
    """Scores SMILES with the task's reward (``cfg.aggregator`` of the components) on a process pool (one process per core).

    Every reward call is counted. Identical SMILES strings are scored once per run: the result is
    memoized (deterministic: the same string always gets the same components) until ``reset()``
    (called by :func:`mdkl.chem.reinvent.run_rl` at the start of each run); different spellings of the same
    molecule are scored separately (with equal results). Parsing and canonicalization run in the
    workers. ``submit(smiles)`` starts a batch and returns at once (``.get()`` waits), so the caller
    can compute while the pool scores; ``score(smiles)`` = ``submit(smiles).get()``.
    Counters: ``n_calls``, ``n_invalid``, ``n_nan``. Use as a context manager or call ``close()``.
    """

    def __init__(self, cfg: RewardConfig = RewardConfig(), n_workers: int | None = None,
                 stock=None):
        self.cfg = cfg
        self.stock = stock if stock is not None else (amide_stock(cfg) if cfg.task == "amide" else None)
        self.n_workers = n_workers if n_workers is not None else (os.cpu_count() or 1)
        self._pool = None
        if self.n_workers > 1:
            ctx = mp.get_context("spawn")  # no fork of a process holding torch / BLAS threads
            self._pool = ctx.Pool(self.n_workers, initializer=_init_worker, initargs=(self.stock,))
        else:
            _init_worker(self.stock)
        self.reset()

    def reset(self) -> None:
        """Clear the memo and the counters (start of a run)."""
        self.memo: dict[str, tuple] = {}
        self.n_calls = self.n_invalid = self.n_nan = 0

    def close(self) -> None:
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()
            self._pool = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def submit(self, smiles) -> _Pending:
        """Start scoring a batch (non-blocking on a pool); ``.get()`` on the result waits for it."""
        smiles = list(smiles)
        todo = sorted({s for s in smiles if isinstance(s, str) and s not in self.memo})
        if self._pool is None or len(todo) < 2:
            return _Pending(self, smiles, todo, score_batch(todo, self.cfg, self.stock) if todo else None)
        chunks = [c.tolist() for c in np.array_split(np.array(todo, dtype=object), self.n_workers) if len(c)]
        job = self._pool.starmap_async(score_batch, [(c, self.cfg, None) for c in chunks])
        return _Pending(self, smiles, todo, job)

    def _finish(self, pending: _Pending) -> dict:
        job = pending.job
        if job is not None:
            if isinstance(job, tuple):
                can, comp = job
            else:
                parts = job.get()
                can = [c for p in parts for c in p[0]]
                comp = np.concatenate([p[1] for p in parts], axis=0)
            rew, bad = aggregate_reward(comp, self.cfg.aggregator, self.cfg.weights)
            for i, s in enumerate(pending.todo):
                self.memo[s] = (can[i], float(rew[i]), comp[i], bool(bad[i]))
        smiles = pending.smiles
        n = len(smiles)
        reward = np.zeros(n)
        comps = np.full((n, len(COMPONENTS)), np.nan)
        canon: list = [None] * n
        nan = np.zeros(n, dtype=bool)
        for i, s in enumerate(smiles):
            if isinstance(s, str):
                canon[i], reward[i], comps[i], nan[i] = self.memo[s]
        valid = np.array([c is not None for c in canon], dtype=bool)
        nan &= valid  # an invalid SMILES has all-NaN components: counted as invalid, not as NaN
        reward[~valid] = 0.0
        self.n_calls += n
        self.n_invalid += int((~valid).sum())
        self.n_nan += int(nan.sum())
        return {"reward": reward, "components": comps, "canonical": canon, "valid": valid, "nan": nan}

    def score(self, smiles) -> dict:
        """Score a batch. Returns a dict of arrays aligned with ``smiles``: ``reward``,
        ``components`` (n x 4), ``canonical`` (None if invalid), ``valid``, ``nan``."""
        return self.submit(smiles).get()

    __call__ = score
