"""Work items, read exactly and strictly: what a batch runs one task for.

Connectomics items are mostly 18-digit root IDs (``864691135000000001``), above 2**53, where a
float can no longer tell neighbours apart. So no value ever goes through a float, and one rule
(`exact_value`) holds for every value from every source — files, lists, generators, CAVE:

- an **int** is the item; a **float** only when it is whole and below 2**53 (it becomes that
  int): a fraction, an infinity or a whole float at or above 2**53 (already rounded) is refused,
  naming where it was and how to keep the IDs exact;
- **text** (``.txt`` lines, ``.csv`` cells, ``--item``, string columns) is an ``int`` when it
  is an integer written canonically (``42``, ``-7``); other digit strings stay the strings they
  are (``"007"``, ``"+5"``); text that writes a number another way (``3.0``, ``8.64691135e17``,
  ``864,691,135,000,000,001``) is that number, under the float rule, or refused; anything else
  is a string item (``"soma-12"``);
- **empty** (``None``, NaN, ``""``, and the NA markers pandas and R write: ``NA``, ``NaN``,
  ``null``, ...) is no item: a file's empty cells are skipped and reported by line; an empty
  value in a list or a generator is refused, naming its position.

Files are UTF-8 (a byte-order mark is allowed) in the formats of `SUFFIXES`; any other is
refused, naming them. Lists given in Python (``items=[...]``) keep their strings as given.
"""

from __future__ import annotations

import datetime
import decimal
import io
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterable, Optional

from tqflow.errors import ItemSourceError

#: Integers up to this size survive a trip through a float64; root IDs do not.
EXACT_FLOAT_LIMIT = 2**53

#: The formats an items file may have, by suffix, and whether a column is named.
SUFFIXES = {
    ".txt": "one item per line (# starts a comment)",
    ".csv": "a column of a table with a header line",
    ".tsv": "a column of a tab-separated table with a header line",
    ".parquet": "a column of a Parquet table",
    ".jsonl": "one JSON value per line, or one object per line with --column naming the key",
    ".json": "a JSON array of items",
}

#: What pandas, R and databases write for a missing value: read as an empty cell.
NA_MARKERS = frozenset({"na", "n/a", "nan", "null", "none", "<na>", "nat", "#n/a"})

_DECIMAL = re.compile(r"[+-]?(\d+\.\d*|\.\d+|\d+(\.\d*)?[eE][+-]?\d+|\.\d+[eE][+-]?\d+)")
#: Digits with commas anywhere between them ("8646911350000,0002"): not a grouping, a typo.
_DIGITS_AND_COMMAS = re.compile(r"[+-]?\d+(?:,\d+)+")
_THOUSANDS = re.compile(r"[+-]?\d{1,3}(?:([,'_ ])\d{3})(?:\1\d{3})*|[+-]?\d{1,3}(?:\.\d{3}){2,}")

_EMPTY = object()


class Items(list):
    """The items read from one source, in order, with the empty cells that were skipped."""

    def __init__(
        self, values: Iterable[Any] = (), source: str = "", empty_lines: Iterable[int] = ()
    ):
        super().__init__(values)
        #: Where they came from, for messages ("roots.csv column root_id").
        self.source = source
        #: Line (text, CSV, JSON lines) or row (Parquet) numbers of empty cells, 1-based.
        self.empty_lines = list(empty_lines)
        #: Other things worth a warning, one sentence each.
        self.notes: list[str] = []

    def report(self) -> str:
        """What was skipped and what is worth a warning, or '' when nothing is."""
        said = list(self.notes)
        if self.empty_lines:
            shown = ", ".join(map(str, self.empty_lines[:10]))
            more = f" and {len(self.empty_lines) - 10:,} more" if len(self.empty_lines) > 10 else ""
            said.insert(
                0,
                f"{self.source}: {len(self.empty_lines):,} empty cells skipped (lines {shown}{more})",
            )
        return "; ".join(said)


def parse_item(text: str, where: str = "the item") -> Any:
    """Text as an item: an ``int`` for an integer written canonically, a number written
    another way under the float rule, else the string itself (stripped). Raises
    `ItemSourceError` naming ``where`` for an empty text or a number that is not exact."""
    value = _text(text, where)
    if value is _EMPTY:
        raise ItemSourceError(f"{where} is empty: give an item, or leave it out")
    return value


def _text(text: str, where: str) -> Any:
    text = text.strip()
    if text.isascii() and text.lstrip("-").isdigit():
        value = int(text)
        # "007", "-0", "-007" stay strings: written so, they are names, not numbers
        return value if str(value) == text else text
    if not text or text.lower() in NA_MARKERS:
        return _EMPTY
    if _THOUSANDS.fullmatch(text):
        raise ItemSourceError(
            f"{where} ({text!r}) is a number written with thousands separators: write items "
            "as plain digits (864691135000000001)"
        )
    if _DIGITS_AND_COMMAS.fullmatch(text):
        raise ItemSourceError(
            f"{where} ({text!r}) is digits broken by a comma (a number mistyped, mangled, or "
            "with a decimal comma): write it as plain digits (864691135000000001); if it is a "
            f"name, not a number, give it as a JSON string in a .jsonl file ({json.dumps(text)})"
        )
    if _DECIMAL.fullmatch(text):
        return _number(float(text), where, written=text)
    return text


def _number(value: float, where: str, written: Optional[str] = None) -> int:
    """A float item under the float rule: its int when whole and exact, else refused."""
    shown = written or repr(value)
    if not math.isfinite(value) or not value.is_integer():
        raise ItemSourceError(
            f"{where} ({shown}) is not a whole number: items that are numbers must be integers "
            "(root IDs); fix the value, or write the items as strings"
        )
    if abs(value) >= EXACT_FLOAT_LIMIT:
        raise ItemSourceError(
            f"{where} ({shown}) is a floating-point number as large as {value:.0f}: integers "
            "above 2**53 (such as root IDs) cannot be stored exactly as floats, so it is already "
            "rounded. Write the IDs as integers (pandas: astype('Int64'), which keeps empty "
            "cells; a spreadsheet: a number format without exponent) or as strings"
        )
    return int(value)


def plain(value: Any) -> Any:
    """A NumPy / Arrow / pandas scalar as the Python value it holds."""
    if hasattr(value, "item") and not isinstance(value, (list, dict, str, bytes)):
        try:
            return value.item()
        except (TypeError, ValueError):  # an array of several values: leave it to the caller
            return value
    return value


def exact_value(value: Any, where: str, text: bool = True) -> Any:
    """The item ``value`` is, by the module's rule, or the empty marker (see `is_empty`).
    ``text``: whether a string is text to parse (files, columns) or an item as given (a
    list's strings)."""
    value = plain(value)
    if value is None:
        return _EMPTY
    if isinstance(value, float):
        return _EMPTY if math.isnan(value) else _number(value, where)
    if isinstance(value, str):
        if text:
            return _text(value, where)
        return value if value.strip() else _EMPTY
    if isinstance(value, decimal.Decimal):
        if value.is_nan():
            return _EMPTY
        if value != value.to_integral_value():
            raise ItemSourceError(f"{where} ({value}) is not a whole number")
        return int(value)
    if type(value).__name__ in ("NAType", "NaTType"):
        return _EMPTY
    if isinstance(value, (datetime.date, datetime.time, datetime.timedelta)):
        raise ItemSourceError(
            f"{where} ({value}) is a {type(value).__name__}, not an item: items are numbers, "
            "strings, lists or objects (JSON). Name the column that holds the items, or write "
            "this one as text first (pandas: df[column].astype(str))"
        )
    if isinstance(value, (bytes, bytearray)):
        raise ItemSourceError(
            f"{where} is binary data ({len(value):,} bytes), not an item: items are numbers, "
            "strings, lists or objects (JSON); name the column that holds the items"
        )
    return value


def is_empty(value: Any) -> bool:
    return value is _EMPTY


def from_values(
    values: Iterable[Any], source: str, where: Callable[[int], str], *, text: bool = False
) -> Items:
    """Items from a list or a generator: every value checked, an empty one refused naming its
    position (``where(index)``, from 0)."""
    items = []
    for index, value in enumerate(values):
        where_ = where(index)
        item = exact_value(value, where_, text=text)
        if item is _EMPTY:
            raise ItemSourceError(
                f"{where_} is empty ({value!r}): give an item there, or leave it out"
            )
        items.append(item)
    return Items(items, source)


def exact_column(values: Iterable[Any], source: str, first_line: int = 1) -> Items:
    """Items from one column's values (Arrow, pandas, CAVE), exactly; empty cells skipped and
    reported by row (``first_line`` is the number of the first value)."""
    items, empty = [], []
    for number, value in enumerate(values, start=first_line):
        item = exact_value(value, f"{source} row {number}")
        if item is _EMPTY:
            empty.append(number)
        else:
            items.append(item)
    return Items(items, source, empty)


# -- files -----------------------------------------------------------------------------------


def read_file(path: Path, column: Optional[str]) -> Items:
    """Items from a local file in one of the `SUFFIXES` formats (`read_items_file`)."""
    if path.is_dir():
        raise ItemSourceError(f"items file {path} is a folder: give the file of items")
    if not path.exists():  # a pipe is read too: `--items-file <(make_items)`
        raise ItemSourceError(f"items file {path} does not exist")
    return read_items_file(ItemsFile(str(path), path.read_bytes()), column)


@dataclass(frozen=True)
class ItemsFile:
    """An items file: its name as messages show it (a path, or a gs:// / s3:// URL) and its
    content."""

    name: str
    content: bytes = field(repr=False)

    @property
    def suffix(self) -> str:
        return PurePosixPath(self.name).suffix.lower()

    @property
    def basename(self) -> str:
        return PurePosixPath(self.name).name

    def __str__(self) -> str:
        return self.name


def read_items_file(file: ItemsFile, column: Optional[str]) -> Items:
    """Items from a file in one of the `SUFFIXES` formats, wherever it was read from;
    ``column`` names the column of a table or the key of JSON-lines objects, and is refused
    where it has no meaning."""
    suffix = file.suffix
    reader = _READERS.get(suffix)
    if reader is None:
        formats = "; ".join(f"{s} ({what})" for s, what in SUFFIXES.items())
        raise ItemSourceError(
            f"items file {file} is not a format tqflow reads (suffix {suffix or 'none'!r}): "
            f"give {formats}"
        )
    if column is not None and suffix in (".txt", ".json"):
        raise ItemSourceError(
            f"--column / column={column!r} has no meaning for {file}, a {suffix} file "
            f"({SUFFIXES[suffix]}): leave it out, or give a table (.csv, .tsv, .parquet) or "
            ".jsonl of objects"
        )
    return reader(file, column)


def _read_text(file: ItemsFile, column: Optional[str]) -> Items:
    values, empty, last = [], [], 0
    for number, line in enumerate(_utf8(file).splitlines(), start=1):
        if line.strip().startswith("#"):
            continue
        value = _text(line, f"{file} line {number}")
        if value is _EMPTY:
            empty.append(number)
            continue
        values.append(value)
        last = number
    # Blank lines after the last item are the end of the file, not empty cells.
    return Items(values, str(file), [n for n in empty if n < last])


def _utf8(file: ItemsFile) -> str:
    try:
        return file.content.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ItemSourceError(_not_utf8(file, exc)) from None


def _not_utf8(file: ItemsFile, exc: UnicodeDecodeError) -> str:
    return (
        f"items file {file} is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset "
        f"{exc.start:,}; written as Latin-1 or Windows-1252?): save it as UTF-8, e.g. "
        f"`iconv -f latin1 -t utf-8 {file.basename} > utf8-{file.basename}`"
    )


def _read_table(file: ItemsFile, column: Optional[str]) -> Items:
    import pandas as pd

    try:
        frame = pd.read_csv(
            io.BytesIO(file.content),
            sep="\t" if file.suffix == ".tsv" else ",",
            dtype=str,
            keep_default_na=False,
            skip_blank_lines=False,
            skipinitialspace=True,
            encoding="utf-8-sig",
        )
    except pd.errors.EmptyDataError:
        raise ItemSourceError(
            f"{file} is empty: a table of items needs a header line naming its columns, "
            "e.g. 'root_id', then one item per line"
        ) from None
    except UnicodeDecodeError as exc:
        raise ItemSourceError(_not_utf8(file, exc)) from None
    except pd.errors.ParserError as exc:
        raise ItemSourceError(f"{file} is not a readable table ({exc})") from None
    names = [str(c) for c in frame.columns]
    if all(_value_like(name) for name in names):
        # Items where the column names belong: read as a header, the first line's items would
        # be dropped, whichever column is named.
        first = ",".join(names) if len(names) > 1 else repr(names[0])
        fix = (
            "a header line naming the column (e.g. 'root_id'), or give the items as a .txt "
            "file, one per line"
            if len(names) == 1
            else "a header line naming the columns (e.g. 'root_id,score'), then "
            "--column root_id (column='root_id')"
        )
        raise ItemSourceError(
            f"{file} has no header line: its first line ({first}) holds items, not column "
            f"names, and would be dropped. Add {fix}"
        )
    column = _pick_column(file, names, column)
    return exact_column(frame[column].tolist(), f"{file} column {column}", first_line=2)


def _value_like(name: str) -> bool:
    """Whether a header cell reads as an item (a number) rather than a column's name."""
    try:
        value = _text(name, "the header")
    except ItemSourceError:  # a number, just not an exact one
        return True
    return isinstance(value, int) or (isinstance(value, str) and value.lstrip("-").isdigit())


def _read_parquet(file: ItemsFile, column: Optional[str]) -> Items:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(io.BytesIO(file.content))
    except (pa.ArrowInvalid, OSError) as exc:
        raise ItemSourceError(f"{file} is not a readable Parquet file ({exc})") from None
    column = _pick_column(file, list(schema.names), column)
    array = pq.read_table(io.BytesIO(file.content), columns=[column]).column(column)
    return exact_column(array.to_pylist(), f"{file} column {column}")


def _read_json_lines(file: ItemsFile, column: Optional[str]) -> Items:
    values, empty, last = [], [], 0
    for number, line in enumerate(_utf8(file).splitlines(), start=1):
        where = f"{file} line {number}"
        if not line.strip():
            empty.append(number)
            continue
        try:
            value = json.loads(line)
        except ValueError as exc:
            raise ItemSourceError(f"{where} is not JSON ({exc}): one JSON value per line") from None
        if column is not None:
            if not isinstance(value, dict) or column not in value:
                raise ItemSourceError(
                    f"{where} has no key {column!r}: with --column, every line is a JSON "
                    "object holding it"
                )
            value = value[column]
        elif isinstance(value, dict):
            raise ItemSourceError(
                f"{where} is a JSON object: name the key that holds the item with --column "
                f"(its keys: {', '.join(map(str, list(value)[:10]))})"
            )
        item = exact_value(value, where, text=False)
        if item is _EMPTY:
            empty.append(number)
            continue
        values.append(item)
        last = number
    source = f"{file} key {column}" if column else str(file)
    return Items(values, source, [n for n in empty if n < last])


def _read_json(file: ItemsFile, column: Optional[str]) -> Items:
    try:
        value = json.loads(_utf8(file))
    except ValueError as exc:
        raise ItemSourceError(f"{file} is not JSON ({exc})") from None
    if not isinstance(value, list):
        raise ItemSourceError(
            f"{file} holds a JSON {type(value).__name__}, not an array of items: write "
            "[864691135000000001, ...], or one item per line in a .jsonl file"
        )
    return from_values(value, str(file), lambda i: f"{file} element {i + 1}")


_READERS: dict[str, Callable[[ItemsFile, Optional[str]], Items]] = {
    ".txt": _read_text,
    ".csv": _read_table,
    ".tsv": _read_table,
    ".parquet": _read_parquet,
    ".jsonl": _read_json_lines,
    ".json": _read_json,
}


def _pick_column(file: ItemsFile, columns: list[str], column: Optional[str]) -> str:
    if column is None:
        if len(columns) != 1:
            raise ItemSourceError(
                f"{file} has columns {columns}: name the one holding the items "
                "(column=... / --column)"
            )
        return columns[0]
    if column not in columns:
        raise ItemSourceError(f"{file} has no column {column!r}; it has {columns}")
    return column
