"""mdkl.stats.tables: flag columns read back from the committed CSVs."""

import io

import pandas as pd
import pytest

from mdkl.stats.tables import flag_column


def test_flags_round_trip_through_csv_with_missing_cells():
    df = pd.DataFrame({"seed": [0, 1, 2, 3], "numeric_failure": [True, False, None, True]})
    back = pd.read_csv(io.StringIO(df.to_csv(index=False)))
    assert back.numeric_failure.dtype == object  # the empty cell makes pandas keep text / objects
    assert flag_column(back.numeric_failure).tolist() == [True, False, False, True]


@pytest.mark.parametrize("values, expected", [
    ([True, False], [True, False]),
    (["True", "False"], [True, False]),
    (["true", "false"], [True, False]),
    ([1, 0], [True, False]),
    ([1.0, float("nan")], [True, False]),
])
def test_flag_spellings(values, expected):
    out = flag_column(pd.Series(values, name="reward_collapse"))
    assert out.dtype == bool and out.tolist() == expected and out.name == "reward_collapse"


def test_unknown_text_is_an_error_naming_the_value():
    with pytest.raises(ValueError, match=r"numeric_failure.*'maybe'"):
        flag_column(pd.Series(["True", "maybe"], name="numeric_failure"))
