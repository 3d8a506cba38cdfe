"""Tables a person reads on the terminal, drawn by `rich`.

Only for what is printed: a table that is also saved (a Markdown table pasted into
docs/, the text kept in a results JSON) keeps its own plain format, since rich's box
drawing is for screens, not files.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from rich.console import Console
from rich.markup import escape
from rich.table import Table


def print_table(rows: Sequence[Sequence[object]], headers: Sequence[str] | None = None,
                title: str | None = None, left_columns: int | Collection[int] = 1,
                console: Console | None = None) -> None:
    """Rows of cells (None shows as "-"); the first `left_columns` columns (or the columns
    at those indices) left-aligned (labels, text), the rest right-aligned (figures).
    Without `headers` the table has none (a list of name / value pairs). Cells are
    escaped: `[min-max]` is text, not rich markup."""
    width = max((len(r) for r in rows), default=len(headers or ()))
    left = set(range(left_columns)) if isinstance(left_columns, int) else set(left_columns)
    if headers is not None and len(headers) != width:
        raise ValueError(f"{len(headers)} headers for rows of {width} cells")
    table = Table(title=None if title is None else escape(title), show_header=headers is not None)
    for i in range(width):
        table.add_column(escape(headers[i]) if headers is not None else None,
                         justify="left" if i in left else "right", no_wrap=True)
    for row in rows:
        table.add_row(*("-" if c is None else escape(str(c)) for c in row))
    console = console or Console()
    if not console.is_terminal:
        # rich assumes 80 columns off a terminal (a log file, a pipe) and would fold the
        # table; give it the width it needs instead.
        needed = console.measure(table, options=console.options.update_width(10_000)).maximum
        console.width = max(console.width, needed)
    console.print(table)
