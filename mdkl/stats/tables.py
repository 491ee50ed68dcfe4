"""Reading the committed per-run tables (``data/results/*.csv``) back for the verdicts.

A boolean column written by pandas reads back as ``bool`` when every cell is set, but as text
("True" / "False") or object when some cells are empty or the table was concatenated from older
files; :func:`flag_column` turns any of these into a clean boolean series, so a verdict recomputed
from a CSV reads a flag exactly as the run that wrote it did.
"""

from __future__ import annotations

import pandas as pd

__all__ = ["flag_column"]

_TRUE = ("true", "1", "1.0")


def flag_column(values: pd.Series) -> pd.Series:
    """``values`` as booleans: ``True`` / ``"True"`` / ``"true"`` / 1 are True; ``False``, 0, empty
    and missing cells are False (a run that logged no flag did not raise it). Any other text is an
    error naming the value, never read as False."""
    text = values.astype(object).where(values.notna(), "").map(str).str.strip().str.lower()
    known = text.isin(_TRUE + ("false", "0", "0.0", "", "nan", "none"))
    if not known.all():
        bad = sorted(set(values[~known].astype(str)))[:5]
        raise ValueError(f"flag column {values.name!r} holds {bad}: expected True / False (rewrite the "
                         f"table with the notebook that owns it)")
    return text.isin(_TRUE).rename(values.name)
