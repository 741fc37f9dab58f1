"""Shared by the workflow's scripts: send everything a job prints to its log file."""

import logging
import os
import sys


def log_to(path):
    """Redirect stdout, stderr (also of TensorFlow's C++ code) and Python logging to `path`: scquery's
    own lines from INFO, other libraries' (faiss's loader, anndata, …) from WARNING."""
    handle = open(path, "w", buffering=1)  # stays open for the whole job
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
        os.dup2(handle.fileno(), stream.fileno())
    sys.stdout = sys.stderr = handle
    logging.basicConfig(
        stream=handle, level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s", force=True
    )
    logging.getLogger("scquery").setLevel(logging.INFO)
    logging.captureWarnings(True)


#: Style of the report's tables (scoped to them: the overview is also inlined into the landing page);
#: a caption wraps within the window, not the width of a wide table.
TABLE_STYLE = """<style>
table.scquery { border-collapse: collapse; font: 13px/1.4 system-ui, sans-serif; margin: 0.5em 0; }
table.scquery caption { caption-side: top; text-align: left; font-weight: 600; padding-bottom: 0.4em;
  max-width: 95vw; }
table.scquery th, table.scquery td { padding: 3px 10px; border-bottom: 1px solid #e5e5e5; }
table.scquery th { text-align: right; background: #f6f6f6; }
table.scquery td { text-align: right; font-variant-numeric: tabular-nums; }
table.scquery td.text { text-align: left; white-space: nowrap; }
</style>
"""


def html_table(table, path, *, caption, formats=None):
    """Write `table` (its index left out) as an HTML fragment: the report shows it as a table.

    `formats` maps columns to format strings such as `"{:.1%}"`; missing values show as an en dash.
    """
    import pandas as pd

    numeric = [c for c in table.columns if pd.api.types.is_numeric_dtype(table[c])]
    integers = {c: "{:,}" for c in numeric if pd.api.types.is_integer_dtype(table[c])}
    classes = pd.DataFrame({c: "" if c in numeric else "text" for c in table.columns}, index=table.index)
    headings = [
        {"selector": f"th.col_heading.col{i}", "props": "text-align: left"}
        for i, c in enumerate(table.columns)
        if c not in numeric
    ]
    headings += [  # a one-word heading (macro-F1) is not broken at its hyphen
        {"selector": f"th.col_heading.col{i}", "props": "white-space: nowrap"}
        for i, c in enumerate(table.columns)
        if " " not in str(c)
    ]
    styler = (
        table.style.hide(axis="index")
        .format(na_rep="–")
        .format({**integers, **(formats or {})}, na_rep="–")
        .set_caption(caption)
        .set_table_attributes('class="scquery"')
        .set_td_classes(classes)
        .set_table_styles(headings)
    )
    with open(path, "w") as handle:
        handle.write(TABLE_STYLE + styler.to_html())


def save_figure(fig, path):
    """Save a matplotlib figure for the report (legends outside the axes included)."""
    fig.savefig(path, dpi=110, bbox_inches="tight")
