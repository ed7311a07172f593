"""Work items, read exactly: what a batch runs one task for.

Connectomics items are mostly 18-digit root IDs (``864691135000000001``), above 2**53, where a
float can no longer tell neighbours apart. So no value ever goes through a float:

- text (``.txt`` lines, ``.csv`` cells, ``--item`` arguments, string columns) becomes an
  ``int`` only when it is an integer written canonically (``42``, ``-7``), and otherwise stays
  the string it is (``"007"``, ``"abc"``, ``"1e3"``);
- CSV columns are read as strings, never parsed by pandas' type inference (which turns a column
  of integers with one empty cell into float64);
- Parquet integer columns are read through Arrow, nulls included, as Python ints; a float
  column is accepted only where every value is integral and exactly representable;
- empty cells are not items: they are skipped, counted and reported by line.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Iterable, Optional

from tqflow.errors import ItemSourceError

#: Integers up to this size survive a trip through a float64; root IDs do not.
EXACT_FLOAT_LIMIT = 2**53

logger = logging.getLogger("tqflow.items")


class Items(list):
    """The items read from one source, in order, with the empty cells that were skipped."""

    def __init__(
        self, values: Iterable[Any] = (), source: str = "", empty_lines: Iterable[int] = ()
    ):
        super().__init__(values)
        #: Where they came from, for messages ("roots.csv column root_id").
        self.source = source
        #: Line (text, CSV) or row (Parquet) numbers of empty cells, 1-based.
        self.empty_lines = list(empty_lines)

    def report(self) -> str:
        """One sentence on what was skipped, or '' when nothing was."""
        if not self.empty_lines:
            return ""
        shown = ", ".join(map(str, self.empty_lines[:10]))
        more = f" and {len(self.empty_lines) - 10:,} more" if len(self.empty_lines) > 10 else ""
        return f"{self.source}: {len(self.empty_lines):,} empty cells skipped (lines {shown}{more})"


def parse_item(text: str) -> Any:
    """``int`` for an integer written canonically, else the string itself (stripped)."""
    text = text.strip()
    if text.lstrip("-").isdigit() and text.isascii():
        value = int(text)
        if str(value) == text:  # "007", "-0", "+5" stay strings
            return value
    return text


def plain(value: Any) -> Any:
    """A NumPy / Arrow scalar as the Python value it holds."""
    return value.item() if hasattr(value, "item") and not isinstance(value, (list, dict)) else value


def read_file(path: Path, column: Optional[str]) -> Items:
    """Items from ``.txt`` (one per line; ``#`` comments), ``.csv`` or ``.parquet`` (a column)."""
    if path.is_dir():
        raise ItemSourceError(f"items file {path} is a folder: give the file of items")
    if not path.is_file():
        raise ItemSourceError(f"items file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return _read_csv(path, column)
    if suffix == ".parquet":
        return _read_parquet(path, column)
    return _read_text(path)


def _read_text(path: Path) -> Items:
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        raise ItemSourceError(
            f"items file {path} is not text: give a .txt (one item per line), .csv or .parquet"
        ) from None
    values, empty, last = [], [], 0
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if line.startswith("#"):
            continue
        if not line:
            empty.append(number)
            continue
        values.append(parse_item(line))
        last = number
    # Blank lines after the last item are the end of the file, not empty cells.
    return Items(values, str(path), [n for n in empty if n < last])


def _read_csv(path: Path, column: Optional[str]) -> Items:
    import pandas as pd

    try:
        frame = pd.read_csv(
            path, dtype=str, keep_default_na=False, skip_blank_lines=False, skipinitialspace=True
        )
    except pd.errors.EmptyDataError:
        raise ItemSourceError(
            f"{path} is empty: a CSV of items needs a header line naming its columns, "
            "e.g. 'root_id', then one item per line"
        ) from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise ItemSourceError(f"{path} is not a readable CSV file ({exc})") from None
    column = _pick_column(path, list(frame.columns), column)
    values, empty = [], []
    for index, cell in enumerate(frame[column].tolist()):
        if cell.strip() == "":
            empty.append(index + 2)  # the header is line 1
        else:
            values.append(parse_item(cell))
    if not values and not empty and _looks_headerless(column):
        raise ItemSourceError(
            f"{path} has a header ({column!r}) and no rows: if {column!r} is an item, the file "
            "has no header line; add one naming the column, e.g. 'root_id'"
        )
    return Items(values, f"{path} column {column}", empty)


def _looks_headerless(column: str) -> bool:
    return isinstance(parse_item(column), int)


def _read_parquet(path: Path, column: Optional[str]) -> Items:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise ItemSourceError(f"{path} is not a readable Parquet file ({exc})") from None
    column = _pick_column(path, list(schema.names), column)
    array = pq.read_table(path, columns=[column]).column(column)
    return exact_column(array.to_pylist(), str(array.type), f"{path} column {column}", first_line=1)


def exact_column(values: list[Any], dtype: str, source: str, first_line: int = 1) -> Items:
    """Items from one column's values (Arrow / pandas), exactly.

    ``None`` / NaN are empty cells. Floats are accepted only when every value is integral and
    below 2**53 (then they become ints); a float column holding larger IDs has already lost
    them, and the error says how to keep them. Strings are parsed as text is.
    """
    items, empty = [], []
    for index, value in enumerate(values):
        value = plain(value)
        if _missing(value):
            empty.append(index + first_line)
            continue
        if isinstance(value, float):
            if not value.is_integer():
                items.append(value)
                continue
            if abs(value) >= EXACT_FLOAT_LIMIT:
                raise ItemSourceError(
                    f"{source} holds floating-point numbers ({dtype}) as large as {value:.0f}: "
                    "integers above 2**53 (such as root IDs) cannot be stored exactly as floats, "
                    "so these are already rounded. Write the column as int64 (pandas: "
                    "astype('Int64'), which keeps empty cells) or as strings"
                )
            value = int(value)
        elif isinstance(value, str):
            if not value.strip():
                empty.append(index + first_line)
                continue
            value = parse_item(value)
        items.append(value)
    return Items(items, source, empty)


def _missing(value: Any) -> bool:
    """None, NaN, or pandas' NA / NaT: an empty cell."""
    if value is None:
        return True
    if isinstance(value, float):
        return math.isnan(value)
    return type(value).__name__ in ("NAType", "NaTType")


def _pick_column(path: Path, columns: list[str], column: Optional[str]) -> str:
    if column is None:
        if len(columns) != 1:
            raise ItemSourceError(
                f"{path} has columns {columns}: name the one holding the items "
                "(column=... / --column)"
            )
        return columns[0]
    if column not in columns:
        raise ItemSourceError(f"{path} has no column {column!r}; it has {columns}")
    return column
