"""How every page of the book shows a table: an HTML table that fits the page, ``–`` where a
value is missing, the paper's two decimals, extra columns folded under a summary (:func:`show`),
and a mean with its spread as the tables print it (:func:`format_mean_std`)."""

from __future__ import annotations

import hashlib
import math
import numbers
from typing import Any, Sequence

import pandas as pd

# The paper prints top-1/top-5 errors (and so their deltas and spreads) with two decimals.
PAPER_DECIMALS = 2


MISSING = "–"


def table_html(frame: pd.DataFrame, *, digits: int = PAPER_DECIMALS,
               formats: dict[str, str] | None = None, html: Sequence[str] = ()) -> str:
    """``frame`` as the book's HTML table: no index column, ``–`` where a value is missing,
    floats with ``digits`` decimals (``formats``: a format string per column instead, for its numbers;
    text in such a column, say a total line's label, is shown as it is). Columns in
    ``html`` hold markup ranlib built (links, anchors) and are not escaped."""
    columns = list(frame.columns)
    styler = frame.style.hide(axis="index").format(na_rep=MISSING, precision=digits, escape="html")
    for column, spec in (formats or {}).items():
        if column in columns:
            styler = styler.format(lambda v, spec=spec: MISSING if _missing(v) else
                                   spec.format(v) if isinstance(v, numbers.Number) else v, subset=[column])
    for column in html:
        if column in columns:
            styler = styler.format(lambda v: MISSING if _missing(v) else v, subset=[column], escape=None)
    # Styler draws a random table id: one from the content keeps a re-rendered page the same.
    uuid = hashlib.sha256(frame.to_json(default_handler=str).encode()).hexdigest()[:8]
    return styler.set_uuid(uuid).set_table_attributes('class="dataframe ranlib-table"').to_html()


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def show(frame: pd.DataFrame, columns: Sequence[str] | None = None, *,
         details: Sequence[str] | None = None, summary: str = "All columns",
         digits: int = PAPER_DECIMALS, formats: dict[str, str] | None = None,
         html: Sequence[str] = ()) -> None:
    """Display ``frame`` in a notebook the way every page of the book shows a table.

    Only ``columns`` (None: all; empty: none, the whole table folded) are shown, so that the
    table fits a 1280-px page; ``details`` (other columns) go to a second table folded under
    ``summary``. The frame itself is not changed (tables glued for the prose keep every column).
    ``html``: columns of markup (:func:`table_html`).
    """
    from IPython.display import HTML, display

    if columns is None or len(columns):
        shown = frame[[c for c in columns if c in frame.columns]] if columns is not None else frame
        display(HTML(table_html(shown, digits=digits, formats=formats, html=html)))
    rest = [c for c in details or [] if c in frame.columns]
    if rest and not frame.empty:
        display(HTML(f'<details class="ranlib-details"><summary>{summary}</summary>\n'
                     f"{table_html(frame[rest], digits=digits, formats=formats, html=html)}\n</details>"))


def format_mean_std(mean: float, std: float, n: int, digits: int = 2, unit: str = "") -> str:
    """``"5.52 ± 0.10 (n=2)"``; ``"5.52 (n=1)"``; ``"–"`` without values; ``unit`` after the
    numbers (``" %"``: ``"5.52 ± 0.10 % (n=2)"``)."""
    if n == 0 or not math.isfinite(mean):
        return "–"
    if n > 1 and math.isfinite(std):
        return f"{mean:.{digits}f} ± {std:.{digits}f}{unit} (n={n})"
    return f"{mean:.{digits}f}{unit} (n={n})"
