"""The creative QA prompt set (data/creative/prompts.csv): sizes, splits, categories, no duplicates or
near-duplicates, no test prompt in train, short-answer phrasing, and that git tracks it."""

import itertools
import subprocess

import numpy as np
import pandas as pd
import pytest

from mdkl.metrics import normalize_answer, words
from mdkl.runtime import ROOT

PROMPTS = ROOT / "data" / "creative" / "prompts.csv"
PAIRS = ROOT / "data" / "creative" / "equivalence_pairs.csv"


@pytest.fixture(scope="module")
def prompts():
    return pd.read_csv(PROMPTS)


def test_columns_counts_and_splits(prompts):
    assert list(prompts.columns) == ["id", "split", "category", "prompt"]
    assert prompts.id.is_unique and prompts.notna().all().all()
    counts = prompts.split.value_counts()
    assert set(counts.index) == {"train", "test"}
    assert counts["train"] >= 240 and counts["test"] >= 80 and len(prompts) >= 320
    for split, g in prompts.groupby("split"):
        assert g.category.nunique() >= 5, split
        assert g.category.value_counts().min() >= 10, split
        assert g.id.str.startswith(split + "-").all()


def test_no_duplicates_no_near_duplicates_no_test_in_train(prompts):
    norm = prompts.prompt.map(normalize_answer)
    assert norm.is_unique
    train = set(norm[prompts.split == "train"])
    assert not train & set(norm[prompts.split == "test"])
    sets = [set(words(p)) for p in prompts.prompt]
    jacc = max(len(a & b) / len(a | b) for a, b in itertools.combinations(sets, 2))
    assert jacc < 0.85  # template prompts differ in their content word(s)


def test_prompts_ask_for_short_answers(prompts):
    lengths = prompts.prompt.map(lambda p: len(words(p)))
    assert lengths.max() <= 25
    test = prompts[prompts.split == "test"].prompt.str.lower()
    short = ("one sentence", "one-line", "just the")
    assert test.map(lambda p: any(s in p for s in short)).all()


def test_git_tracks_the_data():
    for path in (PROMPTS, PAIRS):
        r = subprocess.run(["git", "check-ignore", "-q", str(path)], cwd=ROOT)
        assert r.returncode == 1, f"{path} is git-ignored"


def test_equivalence_pairs_file():
    pairs = pd.read_csv(PAIRS)
    assert list(pairs.columns) == ["prompt", "a", "b", "label"]
    assert set(pairs.label) == {0, 1} and pairs.notna().all().all()
    assert pairs.label.value_counts().min() >= 30


@pytest.mark.slow
def test_no_semantic_near_duplicates(prompts):
    from mdkl.lm.models import embed

    e = embed(list(prompts.prompt))
    sim = e @ e.T
    np.fill_diagonal(sim, -1.0)
    assert sim.max() < 0.85
    tr = (prompts.split == "train").to_numpy()
    assert sim[np.ix_(~tr, tr)].max() < 0.8  # held-out prompts are not paraphrases of training ones
