"""jaxuq.report: TU-style result tables (rich) and JSON output.

``jaxuq/report/plots.py`` (matplotlib figures) is imported on demand, not here, so that printing a
table does not need matplotlib.
"""

from jaxuq.report.table import build_tables, format_value, print_table, write_json

__all__ = ["build_tables", "format_value", "print_table", "write_json"]
