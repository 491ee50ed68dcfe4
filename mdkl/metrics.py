"""Evaluation metrics shared by the notebooks: entropy, the mode coverage of Definition 3.5,
sampling errors, and the text-diversity metrics of the creative QA table (the paper's
Table 1): n-gram EAD, semantic diversity, NoveltyBench-style distinct answers, bootstrap SEM.
Molecule metrics live with their task. Everything here is pure numpy (embeddings are computed
by :func:`mdkl.lm.models.embed`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

__all__ = ["pareto_front", "hypervolume", "entropy", "coverage", "is_multimodal", "binary_entropy_with_se", "max_min_ratio",
           "check_texts", "words", "ngrams", "ead", "mean_ead", "EAD_VOCAB_SIZE", "semantic_diversity",
           "normalize_answer", "distinct_answers", "n_distinct", "equivalence_accuracy",
           "EQUIVALENCE_THRESHOLD", "bootstrap_sem"]


def entropy(p, axis: int = -1) -> np.ndarray:
    """Shannon entropy in nats, sum -p log p (0 log 0 = 0), of probability vectors along ``axis``
    (finite, non-negative, each summing to 1 within 1e-6; else ``ValueError``)."""
    p = np.asarray(p, dtype=np.float64)
    if p.size == 0 or p.ndim == 0:
        raise ValueError(f"entropy needs a non-empty probability vector (got shape {p.shape})")
    if not np.isfinite(p).all() or (p < 0).any():
        raise ValueError("p must be finite and non-negative: pass probabilities, not logits")
    if not np.all(np.abs(p.sum(axis=axis) - 1.0) <= 1e-6):
        raise ValueError(f"p must sum to 1 along axis {axis}: normalize it first (p / p.sum(axis, keepdims=True))")
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(p > 0, p * np.log(p), 0.0)
    return -t.sum(axis=axis)


def max_min_ratio(p, mask) -> float:
    """max / min of ``p`` over ``mask`` (1.0 = perfectly uniform there, inf if some entry is 0)."""
    p, m = np.asarray(p, dtype=np.float64), np.asarray(mask)
    if p.shape != m.shape:
        raise ValueError(f"p has shape {p.shape} but mask {m.shape}: give one mask entry per probability")
    if m.dtype != bool:
        raise ValueError(f"mask must be boolean (got dtype {m.dtype}): e.g. mask = rewards >= tau")
    v = p[m]
    if v.size == 0:
        raise ValueError("empty mask: select at least one output")
    if not np.isfinite(v).all() or (v < 0).any():
        raise ValueError("p must be finite and non-negative on the mask")
    return float(v.max() / v.min()) if v.min() > 0 else float("inf")


def coverage(pi, rewards, tau: float) -> float:
    """Definition 3.5 made measurable: min over high-reward outputs (R >= tau) of pi(y), divided by
    the max over them. 1 means every high-reward output is equally likely (fully multimodal);
    0 means some high-reward output is dropped (collapsed).
    """
    r = np.asarray(rewards, dtype=np.float64)
    if r.ndim != 1 or r.size == 0 or not np.isfinite(r).all():
        raise ValueError(f"rewards must be a non-empty 1-D array of finite values (got shape {r.shape})")
    if np.shape(pi) != r.shape:
        raise ValueError(f"pi has shape {np.shape(pi)} but rewards {r.shape}: one probability per output")
    if not np.isfinite(float(tau)):
        raise ValueError(f"tau must be finite (got {tau})")
    good = r >= tau
    if not good.any():
        raise ValueError(f"tau={tau} is above every reward (max R = {r.max()}): choose tau <= max R")
    return 1.0 / max_min_ratio(pi, good)


def is_multimodal(pi, rewards, tau: float, min_coverage: float = 0.5) -> bool:
    """Definition 3.5: all high-reward samples have high probability (coverage >= ``min_coverage``)."""
    if not 0 <= min_coverage <= 1:
        raise ValueError(f"min_coverage is a ratio in [0, 1] (got {min_coverage})")
    return coverage(pi, rewards, tau) >= min_coverage


def binary_entropy_with_se(n_a: int, n_b: int) -> tuple[float, float]:
    """Entropy (nats) of the empirical split n_a : n_b and its delta-method standard error.

    H(p) = -p log p - (1-p) log(1-p), dH/dp = log((1-p)/p), Var(p_hat) = p(1-p)/n. Used for the
    valid-answer entropy of the "1-2" task (max ln 2). Returns (nan, nan) when n = 0.
    """
    for name, c in (("n_a", n_a), ("n_b", n_b)):
        if isinstance(c, bool) or not float(c).is_integer() or c < 0:
            raise ValueError(f"{name} must be a count, an integer >= 0 (got {c!r})")
    n = n_a + n_b
    if n == 0:
        return float("nan"), float("nan")
    p = n_a / n
    h = float(entropy([p, 1 - p]))
    if p in (0.0, 1.0):
        return h, 0.0
    se = abs(np.log((1 - p) / p)) * np.sqrt(p * (1 - p) / n)
    return h, float(se)


# ----------------------------------------------------------------------------------------------
# text diversity (creative QA, Table 1)
# ----------------------------------------------------------------------------------------------
#: V in EAD: the default of Kirk et al. (ICLR 2024, facebookresearch/rlfh-gen-div,
#: ``ExpectationAdjustedDistinctNgrams``), the implementation diversity papers use, with the same V
#: for every n (as there and in Liu et al.'s reference code); = GPT-2's vocabulary size.
EAD_VOCAB_SIZE = 50257

#: cosine-similarity threshold of :func:`distinct_answers` (all-MiniLM-L6-v2 embeddings): the argmax
#: of :func:`equivalence_accuracy` over thresholds 0.50, 0.51, ..., 0.98 on the 85 hand-labelled answer
#: pairs of ``data/creative/equivalence_pairs.csv`` (42 paraphrases, 43 different answers). Measured:
#: accuracy 0.906 (77/85) at 0.76, 0.85-0.87 over 0.70-0.82; choosing the threshold on one half of the
#: pairs and scoring the other half gives 0.857 and 0.907 (2-fold). Errors: short same-category
#: answers MiniLM puts close ("Tuesday"/"Thursday", "Light blue"/"Dark blue") count as one answer, and
#: loose paraphrases ("73"/"Seventy-three") as two. ``tests/test_models.py`` re-measures this.
EQUIVALENCE_THRESHOLD = 0.76

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z0-9]+)*")


def check_texts(texts) -> list[str]:
    """``texts`` as a non-empty list of strings, else ``ValueError`` naming the fix."""
    if isinstance(texts, str):
        raise ValueError("texts must be a list of strings, not one string: wrap it as [text]")
    texts = list(texts)
    if not texts:
        raise ValueError("empty text list: pass at least one string (e.g. the k sampled answers of one prompt)")
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    if bad:
        raise ValueError(f"texts[{bad[0]}] is {type(texts[bad[0]]).__name__}, not str: decode "
                         f"generations to strings first (empty generations as '')")
    return texts


def words(text: str) -> list[str]:
    """The tokenization of the n-gram metrics: lower-cased words, i.e. maximal runs of letters and
    digits (an inner apostrophe is kept: "don't"); all other characters (punctuation, emoji,
    whitespace) separate words and are dropped. Model-independent, so every method in the table is
    counted on the same units."""
    return _WORD.findall(text.lower())


def ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    """Contiguous n-grams of one token list (none if it is shorter than n)."""
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def ead(texts, n: int, vocab_size: int | None = None) -> float:
    """Expectation-adjusted distinct n-grams of a set of texts (Liu et al., ACL 2022, "Rethinking and
    Refining the Distinct Metric"; used by Kirk et al., ICLR 2024 and the paper's Table 1):

        EAD = N / ( V * (1 - ((V - 1) / V) ** C) )

    N = number of distinct n-grams, C = total number of n-grams (pooled over ``texts``; n-grams do
    not cross text boundaries), V = ``vocab_size`` (default :data:`EAD_VOCAB_SIZE`, the same V for
    every n, as in Kirk et al.'s and Liu et al.'s code). The denominator is the expected number of
    distinct items among C uniform draws from V, so EAD removes Distinct-n's length bias; for
    C << V it is close to Distinct-n = N / C. Tokens: :func:`words`. Texts with fewer than n words
    (including empty generations) contribute no n-grams; if no text has n words, EAD = 0.0.
    Compute it per prompt over its k samples and average over prompts.
    """
    texts = check_texts(texts)
    if int(n) != n or n < 1:
        raise ValueError(f"n must be a positive integer (got {n})")
    v = EAD_VOCAB_SIZE if vocab_size is None else vocab_size
    if int(v) != v or v < 1:
        raise ValueError(f"vocab_size must be a positive integer (got {vocab_size})")
    grams = [g for t in texts for g in ngrams(words(t), int(n))]
    c = len(grams)
    if c == 0:
        return 0.0
    expected_distinct = v * -np.expm1(c * np.log1p(-1.0 / v))  # V (1 - (1 - 1/V)^C), stable
    return float(len(set(grams)) / expected_distinct)


def mean_ead(texts, n_max: int = 5, vocab_size: int | None = None) -> float:
    """Mean of :func:`ead` over n = 1..``n_max`` (the paper's "Ngram EAD", n = 1..5)."""
    if int(n_max) != n_max or n_max < 1:
        raise ValueError(f"n_max must be a positive integer (got {n_max})")
    texts = check_texts(texts)
    return float(np.mean([ead(texts, n, vocab_size) for n in range(1, int(n_max) + 1)]))


def _unit_rows(embeddings, what: str = "embeddings") -> np.ndarray:
    e = np.asarray(embeddings, dtype=np.float64)
    if e.ndim != 2 or e.shape[0] == 0:
        raise ValueError(f"{what} must be a 2-D array [n_texts, dim] with n_texts >= 1 "
                         f"(got shape {e.shape}): use mdkl.lm.models.embed(texts)")
    if not np.isfinite(e).all():
        raise ValueError(f"{what} contain NaN/inf: re-embed the texts")
    norms = np.linalg.norm(e, axis=1, keepdims=True)
    if (norms == 0).any():
        raise ValueError(f"{what} have an all-zero row (cannot L2-normalise): re-embed the texts")
    return e / norms


def semantic_diversity(embeddings) -> float:
    """Mean pairwise cosine distance, 1 - mean_{i<j} cos(e_i, e_j), of a set of sentence embeddings
    (rows are L2-normalised here). The paper's "Semantic Div" with all-MiniLM-L6-v2 embeddings
    (Kirk et al., ICLR 2024, "sent_bert" diversity; Tevet & Berant, EACL 2021). Needs >= 2 rows."""
    e = _unit_rows(embeddings)
    k = e.shape[0]
    if k < 2:
        raise ValueError("semantic diversity needs at least 2 texts (pairwise distances)")
    sim = e @ e.T
    iu = np.triu_indices(k, 1)
    return float(1.0 - sim[iu].mean())


_ARTICLES = ("a", "an", "the")


def normalize_answer(text: str) -> str:
    """Normalised text for exact-match equivalence: lower-cased :func:`words` joined by one space,
    without a leading article (punctuation, case, spacing and "a"/"an"/"the" do not make two
    answers different: "An apple." == "apple")."""
    w = words(text)
    if len(w) > 1 and w[0] in _ARTICLES:
        w = w[1:]
    return " ".join(w)


def distinct_answers(texts, embeddings, threshold: float = EQUIVALENCE_THRESHOLD) -> np.ndarray:
    """Equivalence-class label (0, 1, ...) of each text: an offline stand-in for NoveltyBench's
    partition (Zhang et al. 2025, "NoveltyBench", ``partition_responses``). As there, the texts are
    partitioned greedily in order: each text joins the first existing class whose *first member*
    it is equivalent to, else it opens a new class. NoveltyBench's equivalence is a fine-tuned
    DeBERTa classifier (a hub model); here two answers are equivalent if their
    :func:`normalize_answer` forms match or the cosine similarity of their embeddings is >=
    ``threshold`` (default :data:`EQUIVALENCE_THRESHOLD`, chosen on hand-labelled pairs).
    Empty texts are equivalent to each other."""
    texts = check_texts(texts)
    e = _unit_rows(embeddings)
    if e.shape[0] != len(texts):
        raise ValueError(f"{len(texts)} texts but {e.shape[0]} embedding rows: embed exactly these texts")
    if not -1.0 <= threshold <= 1.0:
        raise ValueError(f"threshold is a cosine similarity in [-1, 1] (got {threshold})")
    norm = [normalize_answer(t) for t in texts]
    labels = np.full(len(texts), -1, dtype=np.int64)
    reps: list[int] = []
    for j in range(len(texts)):
        for c, i in enumerate(reps):
            if norm[i] == norm[j] or float(e[i] @ e[j]) >= threshold:
                labels[j] = c
                break
        else:
            labels[j] = len(reps)
            reps.append(j)
    return labels


def n_distinct(texts, embeddings, threshold: float = EQUIVALENCE_THRESHOLD) -> int:
    """Number of distinct answers (equivalence classes of :func:`distinct_answers`) among the k
    samples of one prompt: the paper's "Mean Distinct" once averaged over prompts (k = 10)."""
    return int(distinct_answers(texts, embeddings, threshold).max()) + 1


def equivalence_accuracy(texts_a, texts_b, emb_a, emb_b, labels, thresholds) -> np.ndarray:
    """Accuracy, at each threshold, of the equivalence rule of :func:`distinct_answers` on labelled
    answer pairs (``labels`` 1 = same answer / paraphrase, 0 = different answers): the measurement
    that fixes :data:`EQUIVALENCE_THRESHOLD`. Returns one accuracy per threshold."""
    texts_a, texts_b = check_texts(texts_a), check_texts(texts_b)
    ea, eb = _unit_rows(emb_a, "emb_a"), _unit_rows(emb_b, "emb_b")
    y = np.asarray(labels)
    if not (len(texts_a) == len(texts_b) == ea.shape[0] == eb.shape[0] == y.shape[0]):
        raise ValueError("texts_a, texts_b, emb_a, emb_b and labels must have one entry per pair")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 (different answers) or 1 (equivalent)")
    same_text = np.array([normalize_answer(a) == normalize_answer(b) for a, b in zip(texts_a, texts_b)])
    sim = (ea * eb).sum(1)
    t = np.atleast_1d(np.asarray(thresholds, dtype=np.float64))
    if not np.isfinite(t).all():
        raise ValueError("thresholds contain NaN/inf: pass cosine similarities in [-1, 1]")
    pred = same_text[None, :] | (sim[None, :] >= t[:, None])
    return (pred == y.astype(bool)[None, :]).mean(1)


def bootstrap_sem(values, n_boot: int = 1000, seed: int = 0) -> float:
    """Standard error of the mean over prompts by the bootstrap: the standard deviation of the means
    of ``n_boot`` resamples (with replacement, same size) of ``values`` (one value per prompt).
    The "+-" of the paper's Table 1. One value gives 0.0."""
    v = np.asarray(values, dtype=np.float64).ravel()
    if v.size == 0:
        raise ValueError("bootstrap_sem needs at least one value (one per prompt)")
    if not np.isfinite(v).all():
        raise ValueError("values contain NaN/inf: drop or fix the failed prompts first")
    if int(n_boot) != n_boot or n_boot < 2:
        raise ValueError(f"n_boot must be an integer >= 2 (got {n_boot})")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, v.size, size=(int(n_boot), v.size))
    return float(v[idx].mean(1).std(ddof=1))


def pareto_front(reward: Sequence[float], entropy: Sequence[float]) -> np.ndarray:
    """Boolean mask of the non-dominated points when maximizing both reward and valid-answer
    entropy (Fig. 6b)."""
    r, h = np.asarray(reward, float), np.nan_to_num(np.asarray(entropy, float), nan=-np.inf)
    dominated = ((r[None, :] >= r[:, None]) & (h[None, :] >= h[:, None])
                 & ((r[None, :] > r[:, None]) | (h[None, :] > h[:, None]))).any(1)
    return ~dominated


def hypervolume(reward: Sequence[float], entropy: Sequence[float]) -> float:
    """Area of the (reward, entropy) region weakly dominated by the points, above the origin (0, 0)
    when maximizing both: the size of a Pareto front (Fig. 6b) as one number, so two methods' fronts
    can be compared per seed with an interval. Points with a non-finite or negative coordinate are
    refused; no point gives 0."""
    r, h = np.asarray(reward, float).ravel(), np.asarray(entropy, float).ravel()
    if r.shape != h.shape:
        raise ValueError(f"reward and entropy need one value per point (got {r.size} and {h.size})")
    if not (np.isfinite(r).all() and np.isfinite(h).all()) or (r < 0).any() or (h < 0).any():
        raise ValueError("hypervolume needs finite, non-negative rewards and entropies: drop the failed checkpoints first")
    if r.size == 0:
        return 0.0
    order = np.argsort(-r, kind="stable")  # sweep from the highest reward down
    area, best_h = 0.0, 0.0
    rs, hs = r[order], h[order]
    for i in range(r.size):
        best_h = max(best_h, hs[i])
        nxt = rs[i + 1] if i + 1 < r.size else 0.0
        area += (rs[i] - nxt) * best_h
    return float(area)
