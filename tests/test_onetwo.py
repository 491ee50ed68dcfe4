"""The 1-2 task (mdkl.tasks.onetwo): the parser never crashes, rewards, valid-answer entropy."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from mdkl.tasks import onetwo
from mdkl.metrics import binary_entropy_with_se


@pytest.mark.parametrize("text,code", [
    ("<answer>1</answer>", 1), ("<answer>2</answer>", 2), (" <answer> 2 </answer>\n", 2),
    ("<answer>\n1\n</answer>", 1), ("  <answer>2</answer>", 0), ("<answer>1</answer>\n\n", 0),
    ("<answer>\t1</answer>", 0), ("<answer> \n1</answer>", 0), ("\r\n<answer>1</answer>", 0),
    ("", 0), ("1", 0), ("<answer>3</answer>", 0), ("<answer>one</answer>", 0), ("<answer>1", 0),
    ("answer>1</answer>", 0), ("<answer></answer>", 0), ("<answer>12</answer>", 0),
    ("<answer>1</answer><answer>2</answer>", 0), ("Sure! <answer>1</answer>", 0),
    ("<answer>1</answer> Done.", 0), ("<ANSWER>1</ANSWER>", 0), ("<answer>1.0</answer>", 0),
])
def test_strict_parser(text, code):
    assert onetwo.parse_answer(text) == code


def test_lenient_parser_takes_the_first_element():
    assert onetwo.parse_answer("Sure! <answer>2</answer> ok", strict=False) == 2
    assert onetwo.parse_answer("<answer>2</answer><answer>1</answer>", strict=False) == 2
    assert onetwo.parse_answer("<answer>x</answer><answer>1</answer>", strict=False) == 0
    assert onetwo.parse_answer("no tags 1", strict=False) == 0


@pytest.mark.parametrize("bad", [None, 3, 1.5, b"<answer>1</answer>", b"\xff\xfe", object(), ["<answer>1</answer>"]])
def test_parser_never_raises_on_non_strings(bad):
    code = onetwo.parse_answer(bad)
    assert code in (0, 1, 2)
    assert onetwo.parse_answer(b"<answer>1</answer>") == 1  # bytes are decoded


def test_the_valid_set_is_exactly_the_enumeration():
    """The strict parser accepts exactly the 2 x 81 enumerated strings: every enumerated string
    parses to its digit, and no string one edit away from a valid one (every insertion, deletion
    and substitution of a character from an alphabet of whitespace, tag characters, digits and
    letters) is valid unless it is itself enumerated."""
    sets = onetwo.valid_answer_strings()
    valid = {t: code for code, texts in sets.items() for t in texts}
    assert len(valid) == 162 and all(len(v) == 81 for v in sets.values())
    assert all(onetwo.parse_answer(t) == code for t, code in valid.items())
    alphabet = sorted(set(" \n\t\r\x0b\x0c<>/answerANSWER0123456789xyz.") | {"\u00a0", "\u2003"})
    checked = 0
    for t in valid:
        for i in range(len(t) + 1):
            edits = [t[:i] + c + t[i:] for c in alphabet]  # insertions
            if i < len(t):
                edits.append(t[:i] + t[i + 1:])  # deletion
                edits += [t[:i] + c + t[i + 1:] for c in alphabet]  # substitutions
            for e in edits:
                checked += 1
                assert onetwo.parse_answer(e) == valid.get(e, 0), repr(e)
    assert checked > 100_000


def test_the_prefixed_set_is_the_valid_set_after_the_prefix():
    """SmolLM2's answers are pre-filled with '<answer>': its 27 continuations per digit are exactly
    the valid strings that start with the prefix, and the parser sees prefix + completion."""
    pre = onetwo.valid_answer_strings("<answer>")
    full = onetwo.valid_answer_strings()
    for code in (1, 2):
        assert len(pre[code]) == 27
        assert sorted("<answer>" + c for c in pre[code]) == sorted(t for t in full[code] if t.startswith("<answer>"))
    task = onetwo.OneTwoTask(answer_prefix="<answer>")
    assert task.rewards(pre[1] + pre[2] + ["1</answer>\n\n", "12</answer>"]).tolist() == [1.0] * 54 + [0.0, 0.0]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(list("<>/answer12 \n\t") + ["<answer>", "</answer>"]), max_size=30).map("".join))
def test_parser_total_on_random_text(text):
    for strict in (True, False):
        code = onetwo.parse_answer(text, strict)
        assert code in (0, 1, 2)
        if code:  # a valid parse really contains the digit inside answer tags
            assert "<answer>" in text and str(code) in text
    assert (onetwo.parse_answer(text) != 0) == (text in set(sum(onetwo.valid_answer_strings().values(), [])))


def test_rewards_and_counts():
    texts = ["<answer>1</answer>", "<answer>2</answer>", "junk", "", "<answer>1</answer>", None]
    r = onetwo.rewards(texts)
    assert r.dtype == torch.float32
    assert r.tolist() == [1.0, 1.0, 0.0, 0.0, 1.0, 0.0]
    assert onetwo.answer_counts(texts) == {"n1": 2, "n2": 1, "invalid": 3, "n": 6}


def test_valid_entropy_matches_shared_metric_and_ignores_invalid():
    texts = ["<answer>1</answer>"] * 30 + ["<answer>2</answer>"] * 10 + ["nope"] * 50
    h, se = onetwo.valid_entropy(texts)
    assert (h, se) == binary_entropy_with_se(30, 10)
    assert h == pytest.approx(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)))
    h, se = onetwo.valid_entropy(["x", ""])
    assert math.isnan(h) and math.isnan(se)
    assert onetwo.valid_entropy(["<answer>1</answer>"] * 5) == (0.0, 0.0)


def test_task_metrics_fractions():
    task = onetwo.OneTwoTask()
    m = task.metrics(["<answer>1</answer>"] * 3 + ["<answer>2</answer>"] + ["bad"] * 4)
    assert m["p1"] + m["p2"] + m["invalid"] == pytest.approx(1.0)
    assert m["p1_valid"] == pytest.approx(0.75)
    assert m["valid_entropy"] == pytest.approx(binary_entropy_with_se(3, 1)[0])
    empty = task.metrics([])
    assert np.isnan(empty["p1_valid"]) and empty["invalid"] == 0.0
    assert onetwo.OneTwoTask(strict=False).rewards(["ok <answer>1</answer>"]).item() == 1.0
    assert task.rewards(["ok <answer>1</answer>"]).item() == 0.0


def test_prompt_text_without_template_is_plain():
    class NoTemplate:
        chat_template = None

    assert onetwo.prompt_text(NoTemplate()) == onetwo.PROMPT + "\n"


def test_answer_prefix_is_put_back_before_parsing():
    task = onetwo.OneTwoTask(answer_prefix="<answer>")
    assert task.rewards(["1</answer>", "2 </answer>", "<answer>1</answer>", ""]).tolist() == [1, 1, 0, 0]
    assert task.metrics(["1</answer>", "2</answer>"])["valid_entropy"] == pytest.approx(math.log(2))

    class NoTemplate:
        chat_template = None

    assert task.prompts(NoTemplate())[0].endswith("\n<answer>")
