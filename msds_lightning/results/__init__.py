"""Result files and what is computed from them.

* :mod:`.tsv` — the one resumable row-file appender, scanner and merger (certification and attacks);
* :mod:`.certification` — the certification row (Cohen et al.'s columns first), its writer and reader;
* :mod:`.prediction` — the ``msds predict`` row (Cohen et al.'s ``predict.py`` columns first) and its summary;
* :mod:`.analysis` — certified accuracy, ACR and abstention tables and plots (``msds analyze``);
* :mod:`.compare` — paired comparisons of two result files (``msds compare``).
"""

from msds_lightning.results.certification import (
    COHEN_COLUMNS,
    Results,
    ResultWriter,
    done_indices,
    format_radius,
    format_row,
    header,
    merge_result_files,
    read_results,
    row_problem,
    scan_result_files,
)
from msds_lightning.results.tsv import RowAppender, ScannedRows, merge_row_files, scan_row_files

__all__ = [
    "COHEN_COLUMNS",
    "ResultWriter",
    "Results",
    "RowAppender",
    "ScannedRows",
    "done_indices",
    "format_radius",
    "format_row",
    "header",
    "merge_result_files",
    "merge_row_files",
    "read_results",
    "row_problem",
    "scan_result_files",
    "scan_row_files",
]
