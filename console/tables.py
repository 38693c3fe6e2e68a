"""Tables the screens share: cells coloured from the theme, the row under the cursor, a table
refilled without losing its cursor, and the rows of a job table kept in step with the jobs.

The Jobs, Print and Media screens each show jobs in a table keyed by job id, newest first.
``KeyedJobRows`` keeps such a table: a changed job updates only the cells that differ and a new
job adds one row, so an event never clears and rebuilds the table.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from rich.errors import StyleSyntaxError
from rich.style import Style
from rich.text import Text
from textual.app import App
from textual.widgets import DataTable
from textual.widgets.data_table import RowDoesNotExist, RowKey

Cell = str | Text
# Column key, heading and width (None: as wide as its cells).
Column = tuple[str, str, int | None]


def styled(app: App[Any], text: str, styles: Mapping[str, str]) -> Text:
    """``text`` in the theme colour its style names (``"bold $error"``)."""
    style = styles.get(text, "")
    if not style:
        return Text(text)
    bold = "bold " if style.startswith("bold") else ""
    color = app.theme_variables.get(style.split("$")[-1], "")
    try:
        return Text(text, style=Style.parse(f"{bold}{color}".strip()))
    except StyleSyntaxError:
        # Some theme values are not rich colours (text-muted is "auto 60%"): keep the weight.
        return Text(text, style="bold" if bold else "")


def selected_key(table: DataTable[Any]) -> str | None:
    """The key of the row under the cursor, or None."""
    if table.row_count == 0:
        return None
    try:
        row_key, _ = table.coordinate_to_cell_key(table.cursor_coordinate)
    except Exception:
        return None
    return str(row_key.value) if row_key.value is not None else None


def refill_table(
    table: DataTable[Cell],
    rows: Iterable[tuple[str, Sequence[Cell]]],
    columns: Iterable[Column] | None = None,
) -> None:
    """Empty ``table`` and add ``rows`` (key, cells) in their order, after new ``columns`` when
    given; the cursor stays on its row when that row is still there. ``rows`` is read once the
    columns are in place, so a generator may render for the new columns."""
    selected = selected_key(table)
    table.clear(columns=columns is not None)
    for key, label, width in columns or ():
        table.add_column(label, key=key, width=width)
    for key, cells in rows:
        table.add_row(*cells, key=key)
    if selected is not None:
        try:
            table.move_cursor(row=table.get_row_index(selected), animate=False)
        except RowDoesNotExist:
            pass


@dataclass(eq=False)
class KeyedJobRows:
    """The rows of a job table keyed by job id, newest first: ``jobs`` (id -> job) and
    ``row_cells`` (id -> the cell texts last shown, by column key).

    ``table`` gives the table (a getter: a screen makes its table in compose, after these
    rows). ``cells`` gives a job's cell texts for every column the table may show; ``styles``
    colours a column's texts (``{"state": STATE_STYLES}``). Removing a row re-indexes the whole
    table: past ``bulk_remove`` rows leaving at once the table is refilled instead (None: never).
    """

    table: Callable[[], DataTable[Cell]]
    cells: Callable[[dict[str, Any]], dict[str, str]]
    styles: Mapping[str, Mapping[str, str]]
    bulk_remove: int | None = field(default=None, kw_only=True)
    jobs: dict[int, dict[str, Any]] = field(default_factory=dict, init=False)
    row_cells: dict[int, dict[str, str]] = field(default_factory=dict, init=False)

    def upsert(self, job_id: int, job: dict[str, Any]) -> bool:
        """Show ``job``: a new row (True), else only its changed cells updated (False)."""
        cells = self.cells(job)
        self.jobs[job_id] = job
        old = self.row_cells.get(job_id)
        self.row_cells[job_id] = cells
        table = self.table()
        if old is None:
            table.add_row(*self._row(table, cells), key=str(job_id))
            return True
        row_key = RowKey(str(job_id))
        for column in self._shown(table):
            if old[column] != cells[column]:
                table.update_cell(row_key, column, self._cell(table, column, cells[column]))
        return False

    def remove(self, job_id: int) -> None:
        self.jobs.pop(job_id, None)
        self.row_cells.pop(job_id, None)
        try:
            self.table().remove_row(str(job_id))
        except RowDoesNotExist:
            pass

    def remove_many(self, job_ids: Iterable[int]) -> None:
        """Remove rows: one by one when few, else refill the table with the rest."""
        gone = {job_id for job_id in job_ids if job_id in self.jobs}
        if self.bulk_remove is None or len(gone) <= self.bulk_remove:
            for job_id in gone:
                self.remove(job_id)
            return
        for job_id in gone:
            self.jobs.pop(job_id, None)
            self.row_cells.pop(job_id, None)
        self.refill()

    def refill(self, columns: Iterable[Column] | None = None) -> None:
        """Every job's row again, newest first (after new ``columns`` when given: a resize);
        the cursor stays on its job. The cells are computed afresh, as they may depend on the
        columns' widths."""

        def rows() -> Iterable[tuple[str, list[Cell]]]:
            table = self.table()
            for job_id in sorted(self.jobs, reverse=True):
                cells = self.row_cells[job_id] = self.cells(self.jobs[job_id])
                yield str(job_id), self._row(table, cells)

        refill_table(self.table(), rows(), columns)

    def sort(self) -> None:
        self.table().sort("id", key=lambda value: -int(str(value)))

    def replace(self, jobs: Iterable[dict[str, Any]]) -> None:
        """A fresh page of jobs: the rows not in it go, the others are added or updated."""
        fresh = {int(job["id"]): job for job in jobs}
        self.remove_many([job_id for job_id in self.jobs if job_id not in fresh])
        added = False
        for job_id, job in fresh.items():
            added |= self.upsert(job_id, job)
        if added:
            self.sort()

    def apply(
        self, briefs: Iterable[dict[str, Any]], matches: Callable[[dict[str, Any]], bool]
    ) -> bool:
        """Job events (briefs, the latest per job counts): update or add the jobs that
        ``matches`` keeps, remove the others. Whether a row was added."""
        latest = {int(b["id"]): b for b in briefs if isinstance(b.get("id"), int)}
        added = False
        for job_id, brief in latest.items():
            if matches(brief):
                added |= self.upsert(job_id, brief)
            elif job_id in self.jobs:
                self.remove(job_id)
        if added:
            self.sort()
        return added

    def retain(self, matches: Callable[[dict[str, Any]], bool]) -> None:
        """Remove the jobs ``matches`` no longer keeps (a filter changed)."""
        self.remove_many([job_id for job_id, job in self.jobs.items() if not matches(job)])

    def selected_id(self) -> int | None:
        """The id of the job under the cursor, or None."""
        key = selected_key(self.table())
        return int(key) if key is not None else None

    @staticmethod
    def _shown(table: DataTable[Cell]) -> list[str]:
        return [str(key.value) for key in table.columns]

    def _row(self, table: DataTable[Cell], cells: dict[str, str]) -> list[Cell]:
        return [self._cell(table, column, cells[column]) for column in self._shown(table)]

    def _cell(self, table: DataTable[Cell], column: str, text: str) -> Cell:
        styles = self.styles.get(column)
        return styled(table.app, text, styles) if styles is not None else text
