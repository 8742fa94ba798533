"""The main job's report: one formatting for the terminal table and the Markdown that BENCHMARKS quotes."""

from __future__ import annotations

from bitalloc.evaluate.perplexity import EvalResult
from bitalloc.main_job import HEADER, Report, Row


def test_markdown_and_table_carry_the_same_cells():
    wiki, play = EvalResult(13.8, 0.0, 100), EvalResult(41.25, 0.01234, 100)
    report = Report(
        (
            Row("float reference", None, None, {"wiki": wiki, "shakespeare": wiki}),
            Row("mixed", 3.4567, 61_234_567, {"wiki": play, "shakespeare": play}),
        )
    )
    lines = report.markdown().splitlines()
    assert lines[0] == "| " + " | ".join(HEADER) + " |" and len(lines) == 4
    assert lines[3] == "| mixed | 3.457 | 61.23 | 41.250 | 0.0123 | 41.250 | 0.0123 |"
    assert lines[2].startswith("| float reference | - | - | 13.800 |")
    table = report.table()
    assert table.row_count == 2 and [c.header for c in table.columns] == list(HEADER)
