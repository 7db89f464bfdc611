"""Readers for interaction files: MovieLens 100K / 1M / CSV family and generic files.

:func:`read_interactions` turns a file (or a dataset directory) into a
:class:`RawData`: raw user and item ids, ratings, timestamps and, for the
MovieLens formats, item side information (genres, year) and user side
information (gender, age).  Supported formats:

``"ml-100k"``
    ``u.data`` (``user<TAB>item<TAB>rating<TAB>timestamp``) with optional
    ``u.item``, ``u.genre`` and ``u.user`` next to it.
``"ml-1m"``
    ``ratings.dat`` (``UserID::MovieID::Rating::Timestamp``) with optional
    ``movies.dat`` and ``users.dat``.
``"ml-csv"``
    The MovieLens CSV family (ml-latest, ml-20m, ml-25m): ``ratings.csv``
    (``userId,movieId,rating,timestamp``) with optional ``movies.csv``.
``"generic"``
    Any CSV / TSV (separator sniffed from the header) or Parquet file with
    user and item columns and optional rating and timestamp columns.

Malformed input raises :class:`DataFormatError`; its message names the file,
the 1-based line number (header lines count) where one applies, and the
problem.  Large files are parsed with vectorised pandas code: a fast typed
parse is tried first and, only when it fails, the file is re-read as text to
locate and describe the first bad line.
"""

from __future__ import annotations

import csv
import io
import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import islice
from os import PathLike
from pathlib import Path

import numpy as np
import pandas as pd

from fedrec.data.registry import REGISTRY, cached_dataset, missing_dataset_message

__all__ = [
    "DataFormatError",
    "ItemInfo",
    "UserInfo",
    "RawData",
    "read_interactions",
    "interactions_file",
    "bundled_path",
    "FORMATS",
    "ML100K_GENRES",
]

#: Values of ``format`` besides ``"auto"``.
FORMATS = ("ml-100k", "ml-1m", "ml-csv", "generic")
_DUPLICATE_POLICIES = ("error", "first", "last")

#: Genre columns of ``u.item`` when no ``u.genre`` file is present.
ML100K_GENRES = (
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
)

_GENERIC_DEFAULTS = {
    "sep": None,
    "user_col": "user",
    "item_col": "item",
    "rating_col": None,
    "timestamp_col": None,
}
_GENERIC_OPTIONS = tuple(_GENERIC_DEFAULTS)
_INTERACTION_FILES = {"ml-100k": "u.data", "ml-1m": "ratings.dat", "ml-csv": "ratings.csv"}
_ML_CSV_COLUMNS = ("userId", "movieId", "rating", "timestamp")
_ROLES = ("user", "item", "rating", "timestamp")
_TEXT_SUFFIXES = (".csv", ".tsv", ".txt")
_PARQUET_SUFFIXES = (".parquet", ".pq")
_SNIFF_SEPARATORS = (",", "\t", ";", "|")
_HINT_SEPARATORS = (",", "\t", ";", "|", "::", " ")
_SEPARATOR_NAMES = {"\t": "tab", ",": "comma", ";": "semicolon", " ": "space"}
_NO_GENRES = ("", "(no genres listed)")
_INTEGER = r"[ \t]*[+-]?[0-9]+[ \t]*"  # ASCII classes: pyarrow runs it natively
_SUBSTITUTE_SEP = "\x1f"  # stands in for a multi-character separator such as "::"
_EXTRA = "_extra"  # catches surplus fields in headerless files
_BLOCK = 1 << 24


class DataFormatError(ValueError):
    """A data file is malformed.  The message names the file, the line and the problem."""


@dataclass(frozen=True)
class ItemInfo:
    """Item side information of a MovieLens dataset.

    Attributes
    ----------
    item_ids : np.ndarray
        Raw item ids (``int64``), one per catalogue entry, in file order.
    genres : np.ndarray or None
        ``(n, G)`` float32 multi-hot genre matrix.
    genre_names : tuple of str
        Names of the ``G`` genre columns.
    year : np.ndarray or None
        ``(n,)`` float64 release year, NaN when unknown.
    """

    item_ids: np.ndarray  # raw ids, same dtype as RawData.item
    genres: np.ndarray | None  # (n, G) float32 multi-hot
    genre_names: tuple[str, ...]
    year: np.ndarray | None  # (n,) float64, NaN unknown


@dataclass(frozen=True)
class UserInfo:
    """User side information of a MovieLens dataset.

    Attributes
    ----------
    user_ids : np.ndarray
        Raw user ids (``int64``) in file order.
    gender : np.ndarray or None
        ``(n,)`` object array of strings such as ``"M"``/``"F"``.
    age : np.ndarray or None
        ``(n,)`` int64 ages (ML-1M: the age-group code).
    """

    user_ids: np.ndarray
    gender: np.ndarray | None  # (n,) object strings
    age: np.ndarray | None  # (n,) int64


@dataclass(frozen=True)
class RawData:
    """Interactions as read from a file, with raw ids.

    Attributes
    ----------
    user, item : np.ndarray
        Raw ids, ``int64`` (object arrays of ``str`` for generic files whose
        ids are not all integers).
    rating : np.ndarray
        float64 ratings, NaN where the file has none.
    timestamp : np.ndarray
        int64 times; the row order ``0..n-1`` where the file has none.
    item_info, user_info : ItemInfo or UserInfo or None
        Side information where the format provides it.
    source : str
        Path of the interactions file.
    format : str
        ``"ml-100k"``, ``"ml-1m"``, ``"ml-csv"`` or ``"generic"``.
    name : str
        Short name for reports: the format name for ML-100K/ML-1M, the
        directory name for ``"ml-csv"``, the file stem for generic files.
    """

    user: np.ndarray  # raw user ids (int64, or object/str for generic files)
    item: np.ndarray  # raw item ids
    rating: np.ndarray  # float64, NaN where the file has none
    timestamp: np.ndarray  # int64; row order where the file has none
    item_info: ItemInfo | None
    user_info: UserInfo | None
    source: str  # path of the interactions file
    format: str  # "ml-100k" | "ml-1m" | "ml-csv" | "generic"
    name: str  # short name for reports, e.g. "ml-100k"


def bundled_path(name: str = "ml-latest-small") -> Path:
    """Path of a dataset shipped inside the package.

    Parameters
    ----------
    name
        Dataset directory name under ``fedrec/datasets``.

    Returns
    -------
    Path
        The directory (it may not exist for names that are not shipped).

    Notes
    -----
    A Flower App bundle (what ``flwr run`` copies to ``~/.flwr/apps``) carries
    only code and config files, not the data files; the copy of fedrec it
    runs then finds the data in the installed ``fedrec`` distribution.
    """
    here = Path(__file__).resolve().parent.parent / "datasets" / name
    if here.is_dir() and any(here.iterdir()):
        return here
    for candidate in _installed_dataset_dirs(name):
        if candidate.is_dir():
            return candidate
    return here


def _installed_dataset_dirs(name: str) -> list[Path]:
    """Where the installed ``fedrec`` distribution keeps its bundled datasets."""
    import json
    from importlib import metadata
    from urllib.parse import unquote, urlparse

    try:
        dist = metadata.distribution("fedrec")
    except metadata.PackageNotFoundError:
        return []
    out = [Path(str(dist.locate_file(f"fedrec/datasets/{name}")))]
    direct = dist.read_text("direct_url.json")
    if direct:  # editable install: the source tree
        url = json.loads(direct).get("url", "")
        if url.startswith("file://"):
            out.append(Path(unquote(urlparse(url).path)) / "fedrec" / "datasets" / name)
    return out


# --------------------------------------------------------------------------- #
# Public entry point
# --------------------------------------------------------------------------- #


def read_interactions(
    path: str | PathLike[str], *, format: str = "auto", **options
) -> RawData:
    """Read an interaction file or dataset directory.

    Parameters
    ----------
    path
        A dataset directory, an interactions file, or the name of a bundled
        dataset (``"ml-100k"``) when no such path exists.
    format
        ``"auto"`` (default) or one of ``"ml-100k"``, ``"ml-1m"``,
        ``"ml-csv"``, ``"generic"``.  Auto-detection looks for ``u.data``,
        ``ratings.dat`` or a ``ratings.csv`` with a ``userId,movieId`` header
        in a directory; for a file it uses the file name, the CSV header and
        the extension (other ``.csv``/``.tsv``/``.txt``/``.parquet``/``.pq``
        files are ``"generic"``).
    **options
        Keyword-only options:

        ``duplicates`` : ``"error"`` (default), ``"first"`` or ``"last"``
            What to do when a (user, item) pair occurs more than once:
            raise, or keep its first / last occurrence.
        ``sep`` : str, generic text files only
            Field separator; sniffed from the header line among
            ``,`` ``\\t`` ``;`` ``|`` when not given.
        ``user_col``, ``item_col`` : str, generic only
            Names of the id columns (default ``"user"`` and ``"item"``).
        ``rating_col``, ``timestamp_col`` : str or None, generic only
            Names of the optional rating and timestamp columns (default
            ``None``: ratings are NaN and timestamps are the row order).

    Returns
    -------
    RawData
        Interactions in file order (after duplicate handling) with side
        information where the format provides it.

    Raises
    ------
    DataFormatError
        If a file is missing or malformed; the message names the file, the
        line and the problem.
    ValueError
        For an unknown ``format`` or ``duplicates`` value.
    TypeError
        For an unknown option, or a generic-only option with another format.
    """
    location, defaults = _locate(path)
    if defaults:  # a fetched dataset: its registry entry says how to read it; given options win
        given = {k: v for k, v in options.items() if v is not None and v != _GENERIC_DEFAULTS.get(k)}
        options = {**{k: v for k, v in defaults.items() if k != "format"}, **given}
        format = defaults.get("format", "auto") if format == "auto" else format
    if format != "auto" and format not in FORMATS:
        allowed = ", ".join(repr(f) for f in ("auto", *FORMATS))
        raise ValueError(f"unknown format {format!r}; expected one of {allowed}")
    duplicates = options.pop("duplicates", "error")
    if duplicates not in _DUPLICATE_POLICIES:
        allowed = ", ".join(repr(p) for p in _DUPLICATE_POLICIES)
        raise ValueError(f"duplicates must be one of {allowed}, got {duplicates!r}")
    if format == "auto":
        fmt, data_file = _detect_format(location)
    else:
        fmt, data_file = format, _interactions_file(location, format)
    _check_options(fmt, options)
    if fmt == "generic":
        return _read_generic(data_file, duplicates=duplicates, **options)
    readers = {"ml-100k": _read_ml100k, "ml-1m": _read_ml1m, "ml-csv": _read_ml_csv}
    return readers[fmt](data_file, duplicates=duplicates)


# --------------------------------------------------------------------------- #
# Locating files and detecting the format
# --------------------------------------------------------------------------- #


def interactions_file(path: str | PathLike[str], format: str = "auto") -> Path:
    """The absolute path of the interactions file :func:`read_interactions` reads for
    ``path`` (a bundled or fetched name, a directory or a file), for run records."""
    location, defaults = _locate(path)
    if format == "auto":
        format = defaults.get("format", "auto")
    _, data_file = _detect_format(location) if format == "auto" else (format, _interactions_file(location, format))
    return Path(data_file).resolve()


def _locate(path: str | PathLike[str]) -> tuple[Path, dict]:
    """The existing path meant by ``path``, and the reader defaults of a fetched dataset.

    A bare name is looked up as a bundled dataset, then in the dataset cache
    (:func:`fedrec.data.registry.data_root`); a registered name that is in neither
    raises the one line that says how to fetch it.
    """
    location = Path(path)
    if location.exists():
        return location, {}
    name = str(path)
    if location.name == name and name:
        if bundled_path(name).is_dir():
            return bundled_path(name), {}
        cached = cached_dataset(name)
        entry = REGISTRY.get(name)
        if cached is not None:
            if entry is not None and entry.file_name:
                return cached / entry.file_name, dict(entry.reader)
            return cached, dict(entry.reader) if entry is not None else {}
        if entry is not None:
            raise DataFormatError(missing_dataset_message(name))
    raise _error(location, "missing file: no such file or directory")


def _detect_format(location: Path) -> tuple[str, Path]:
    """Format and interactions file of an existing path."""
    if location.is_dir():
        return _detect_directory(location)
    if location.name in ("u.data", "ratings.dat"):
        fmt = "ml-100k" if location.name == "u.data" else "ml-1m"
        return fmt, location
    suffix = location.suffix.lower()
    if suffix == ".csv" and _has_ml_csv_header(location):
        return "ml-csv", location
    if suffix in _TEXT_SUFFIXES or suffix in _PARQUET_SUFFIXES:
        return "generic", location
    raise _error(
        location,
        "cannot detect the format from the file name; pass format= one of "
        + ", ".join(repr(f) for f in FORMATS),
    )


def _detect_directory(directory: Path) -> tuple[str, Path]:
    if (directory / "u.data").is_file():
        return "ml-100k", directory / "u.data"
    if (directory / "ratings.dat").is_file():
        return "ml-1m", directory / "ratings.dat"
    ratings_csv = directory / "ratings.csv"
    if ratings_csv.is_file():
        if _has_ml_csv_header(ratings_csv):
            return "ml-csv", ratings_csv
        raise _error(
            ratings_csv,
            "header does not start with 'userId,movieId' (not a MovieLens ratings.csv); "
            "pass format='generic' with user_col=/item_col= to read it",
            line=1,
        )
    raise _error(
        directory,
        "cannot detect the dataset format: the directory has no u.data (ml-100k), "
        "ratings.dat (ml-1m) or ratings.csv (ml-csv)",
    )


def _has_ml_csv_header(path: Path) -> bool:
    """Whether the first line of a CSV file starts with ``userId,movieId``."""
    with open(path, encoding="utf-8-sig", errors="replace", newline="") as fh:
        first = fh.readline()
    fields = next(csv.reader([first]), [])
    return [f.strip() for f in fields[:2]] == ["userId", "movieId"]


def _interactions_file(location: Path, fmt: str) -> Path:
    """The interactions file of ``location`` read as format ``fmt``."""
    if not location.is_dir():
        return location
    if fmt == "generic":
        raise _error(location, "format 'generic' needs a file, got a directory")
    data_file = location / _INTERACTION_FILES[fmt]
    if not data_file.is_file():
        raise _error(data_file, f"missing file: a {fmt} directory must contain {data_file.name}")
    return data_file


def _check_options(fmt: str, options: dict) -> None:
    """Reject unknown options, and generic-only options set for another format.

    Passing a generic option at its default value is harmless for any format.
    """
    unknown = sorted(set(options) - set(_GENERIC_OPTIONS))
    if unknown:
        raise TypeError(
            f"read_interactions() got unknown option(s) {', '.join(unknown)}; "
            f"allowed: duplicates, {', '.join(_GENERIC_OPTIONS)}"
        )
    if fmt != "generic":
        misplaced = sorted(k for k, v in options.items() if v != _GENERIC_DEFAULTS[k])
        if misplaced:
            raise TypeError(
                f"option(s) {', '.join(misplaced)} only apply to format='generic', "
                f"not {fmt!r}"
            )


# --------------------------------------------------------------------------- #
# Format readers
# --------------------------------------------------------------------------- #


def _read_ml100k(data_file: Path, *, duplicates: str) -> RawData:
    layout = _Layout(sep="\t", fields=4)
    frame = _read_ratings(data_file, layout, _ROLES, duplicates=duplicates)
    folder = data_file.parent
    genre_names = ML100K_GENRES
    if (folder / "u.genre").is_file():
        genre_names = _read_u_genre(folder / "u.genre")
    item_info = user_info = None
    if (folder / "u.item").is_file():
        item_info = _read_u_item(folder / "u.item", genre_names)
    if (folder / "u.user").is_file():
        user_info = _read_u_user(folder / "u.user")
    return _raw_data(frame, item_info, user_info, data_file, "ml-100k", "ml-100k")


def _read_ml1m(data_file: Path, *, duplicates: str) -> RawData:
    layout = _Layout(sep="::", fields=4)
    frame = _read_ratings(data_file, layout, _ROLES, duplicates=duplicates)
    folder = data_file.parent
    item_info = user_info = None
    if (folder / "movies.dat").is_file():
        item_info = _read_movies_dat(folder / "movies.dat")
    if (folder / "users.dat").is_file():
        user_info = _read_users_dat(folder / "users.dat")
    return _raw_data(frame, item_info, user_info, data_file, "ml-1m", "ml-1m")


def _read_ml_csv(data_file: Path, *, duplicates: str) -> RawData:
    layout = _Layout(sep=",", header=True, quoted=True, encoding="utf-8-sig")
    frame = _read_ratings(data_file, layout, _ML_CSV_COLUMNS, duplicates=duplicates)
    movies = data_file.parent / "movies.csv"
    item_info = _read_movies_csv(movies) if movies.is_file() else None
    name = data_file.resolve().parent.name
    return _raw_data(frame, item_info, None, data_file, "ml-csv", name)


def _read_generic(
    data_file: Path,
    *,
    duplicates: str,
    sep: str | None = None,
    user_col: str = "user",
    item_col: str = "item",
    rating_col: str | None = None,
    timestamp_col: str | None = None,
) -> RawData:
    columns = {"user": user_col, "item": item_col}
    # a column called as a user would call it is used without a flag, and said so
    found = _column_names(data_file, sep)
    for role, given, names in (("rating", rating_col, _RATING_NAMES), ("timestamp", timestamp_col, _TIME_NAMES)):
        if given is None:
            given = next((c for c in found if c.strip().lower() in names and c not in columns.values()), None)
            if given is not None:
                _said(f"{data_file}: column {given!r} read as the {role} (name another with --{role}-col)")
        if given is not None:
            columns[role] = given
    if data_file.suffix.lower() in _PARQUET_SUFFIXES:
        frame = _read_parquet_columns(data_file, columns, duplicates=duplicates)
    else:
        frame = _read_generic_text(data_file, columns, sep=sep, duplicates=duplicates)
    n = len(frame)
    if "rating" not in frame:
        frame["rating"] = np.full(n, np.nan)
    if "timestamp" not in frame:
        frame["timestamp"] = np.arange(n, dtype=np.int64)
    return _raw_data(frame, None, None, data_file, "generic", data_file.stem)


_RATING_NAMES = ("rating", "ratings", "score")
_TIME_NAMES = ("timestamp", "time", "ts")


def _column_names(data_file: Path, sep: str | None) -> list[str]:
    """The header's column names of a generic file (empty when it cannot be read: the
    reader then says what is wrong)."""
    try:
        if data_file.suffix.lower() in _PARQUET_SUFFIXES:
            import pyarrow.parquet as pq

            return list(pq.read_schema(data_file).names)
        header, _ = _first_line(data_file, "utf-8-sig")
        return [c.strip().strip('"') for c in header.rstrip("\r\n").split(sep or _sniff_separator(data_file))]
    except (OSError, ValueError, UnicodeDecodeError):
        return []


def _said(line: str) -> None:
    import logging

    logging.getLogger("fedrec.data").warning(line)


def _raw_data(
    frame: pd.DataFrame,
    item_info: ItemInfo | None,
    user_info: UserInfo | None,
    data_file: Path,
    fmt: str,
    name: str,
) -> RawData:
    return RawData(
        user=_ids_array(frame["user"]),
        item=_ids_array(frame["item"]),
        rating=frame["rating"].to_numpy(dtype=np.float64),
        timestamp=frame["timestamp"].to_numpy(dtype=np.int64),
        item_info=item_info,
        user_info=user_info,
        source=str(data_file),
        format=fmt,
        name=name,
    )


def _ids_array(values: pd.Series) -> np.ndarray:
    if pd.api.types.is_integer_dtype(values.dtype):
        return values.to_numpy(dtype=np.int64)
    return values.to_numpy(dtype=object)


# --------------------------------------------------------------------------- #
# Ratings files (MovieLens): fast typed parse, strict fallback
# --------------------------------------------------------------------------- #


@dataclass(frozen=True)
class _Layout:
    """How a delimited text file is laid out.

    ``sep`` is the separator as written in the file (it may be ``"::"``);
    ``fields`` is the number of fields of a headerless file; ``quoted``
    says whether ``"`` quotes fields (CSV) or is an ordinary character.
    """

    sep: str
    fields: int | None = None
    header: bool = False
    quoted: bool = False
    encoding: str = "latin-1"

    @property
    def quoting(self) -> int:
        return csv.QUOTE_MINIMAL if self.quoted else csv.QUOTE_NONE


def _read_ratings(
    path: Path, layout: _Layout, columns: Sequence[str], *, duplicates: str
) -> pd.DataFrame:
    """User, item, rating and timestamp of a MovieLens ratings file.

    ``columns`` names the four columns (header names, or the roles for a
    headerless file).  Returns a frame with columns ``user``, ``item``,
    ``rating`` and ``timestamp``.
    """
    frame = _ratings_fast(path, layout, columns)
    if frame is None:
        frame, lines = _ratings_strict(path, layout, columns)
        return _handle_duplicates(frame, path, duplicates, lambda: lines)
    return _handle_duplicates(frame, path, duplicates, lambda: _data_lines(path, layout))


def _ratings_fast(path: Path, layout: _Layout, columns: Sequence[str]) -> pd.DataFrame | None:
    """Typed parse of a well-formed ratings file; ``None`` if anything is off."""
    dtypes = dict(zip(columns, ("int64", "int64", "float64", "int64")))
    try:
        src, sep = _pandas_source(path, layout)
        if layout.header:
            frame = _read_csv(
                src, sep=sep, header=0, dtype=dtypes,
                quoting=layout.quoting, encoding=layout.encoding,
            )
        else:
            frame = _read_csv(
                src, sep=sep, header=None, names=[*columns, _EXTRA],
                dtype=dtypes, quoting=layout.quoting, encoding=layout.encoding,
            )
            if frame.pop(_EXTRA).notna().any():
                return None
    except (ValueError, OverflowError, pd.errors.ParserWarning):
        return None
    if not _plain_frame(frame, columns) or frame[columns[2]].isna().any():
        return None
    return frame.rename(columns=dict(zip(columns, _ROLES)))[list(_ROLES)]


def _plain_frame(frame: pd.DataFrame, columns: Sequence[str]) -> bool:
    """Whether a fast parse produced rows and all ``columns``."""
    return not frame.empty and all(column in frame.columns for column in columns)


def _read_csv(src: object, **options) -> pd.DataFrame:
    """:func:`pandas.read_csv` that never drops surplus fields silently.

    With ``index_col=False`` pandas neither turns a surplus first field into
    the index nor keeps surplus fields; it only warns that they are lost, and
    that warning is raised here as :class:`pandas.errors.ParserWarning`.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("error", category=pd.errors.ParserWarning)
        return pd.read_csv(src, index_col=False, **options)


def _ratings_strict(
    path: Path, layout: _Layout, columns: Sequence[str]
) -> tuple[pd.DataFrame, np.ndarray]:
    """Parse a ratings file as text, raising on its first bad line."""
    wanted = columns if layout.header else range(len(columns))
    labels = ("user id", "item id", "rating", "timestamp")
    cells, lines = _read_columns(path, layout, wanted, labels=labels)
    frame = pd.DataFrame(
        {
            "user": _int_values(cells[0], lines, path, "user id"),
            "item": _int_values(cells[1], lines, path, "item id"),
            "rating": _float_values(cells[2], lines, path, "rating"),
            "timestamp": _int_values(cells[3], lines, path, "timestamp"),
        }
    )
    return frame, lines


# --------------------------------------------------------------------------- #
# Generic files
# --------------------------------------------------------------------------- #


def _read_generic_text(
    path: Path, columns: dict[str, str], *, sep: str | None, duplicates: str
) -> pd.DataFrame:
    """Roles in ``columns`` (``user``, ``item``, optional ``rating``/``timestamp``)."""
    if sep is None:
        sep = _sniff_separator(path)
    if not sep:
        raise ValueError("sep must be a non-empty string")
    layout = _Layout(sep=sep, header=True, quoted=len(sep) == 1, encoding="utf-8-sig")
    frame = _generic_fast(path, layout, columns)
    if frame is None:
        frame, lines = _generic_strict(path, layout, columns)
        return _handle_duplicates(frame, path, duplicates, lambda: lines)
    return _handle_duplicates(frame, path, duplicates, lambda: _data_lines(path, layout))


def _sniff_separator(path: Path) -> str:
    """The most frequent of ``, \\t ; |`` on the header line (``,`` if none)."""
    header, _ = _first_line(path, "utf-8-sig")
    counts = [header.count(sep) for sep in _SNIFF_SEPARATORS]
    return _SNIFF_SEPARATORS[int(np.argmax(counts))]


def _generic_fast(path: Path, layout: _Layout, columns: dict[str, str]) -> pd.DataFrame | None:
    dtypes = {}
    if "rating" in columns:
        dtypes[columns["rating"]] = "float64"
    if "timestamp" in columns:
        dtypes[columns["timestamp"]] = "int64"
    try:
        src, sep = _pandas_source(path, layout)
        frame = _read_csv(
            src, sep=sep, header=0, dtype=dtypes, keep_default_na=False, na_values=[""],
            quoting=layout.quoting, encoding=layout.encoding,
        )
    except (ValueError, OverflowError, pd.errors.ParserWarning):
        return None
    if not _plain_frame(frame, list(columns.values())):
        return None
    out = {}
    for role, column in columns.items():
        values = frame[column]
        if role in ("user", "item"):
            values = _fast_ids(values)
        elif values.isna().any():
            values = None
        if values is None:
            return None
        out[role] = values
    return pd.DataFrame(out)


def _fast_ids(values: pd.Series) -> pd.Series | None:
    """Ids as pandas inferred them, or ``None`` when the strict path must decide."""
    if values.dtype == np.int64:
        return values
    if not pd.api.types.is_string_dtype(values.dtype) or values.isna().any():
        return None
    if values.str.fullmatch(_INTEGER).all():
        return None  # integers pandas did not convert (e.g. out of range)
    return pd.Series(values.to_numpy(dtype=object), dtype=object)


def _generic_strict(
    path: Path, layout: _Layout, columns: dict[str, str]
) -> tuple[pd.DataFrame, np.ndarray]:
    cells, lines = _read_columns(path, layout, list(columns.values()))
    parsers = {
        "user": lambda v: _id_values(v, lines, path, "user id"),
        "item": lambda v: _id_values(v, lines, path, "item id"),
        "rating": lambda v: _float_values(v, lines, path, "rating"),
        "timestamp": lambda v: _int_values(v, lines, path, "timestamp"),
    }
    frame = pd.DataFrame(
        {role: parsers[role](values) for role, values in zip(columns, cells)}
    )
    return frame, lines


def _read_parquet_columns(
    path: Path, columns: dict[str, str], *, duplicates: str
) -> pd.DataFrame:
    """Roles in ``columns`` of a Parquet file; problems are reported by row."""
    import pyarrow.parquet as pq

    try:
        found = pq.read_schema(path).names
    except (OSError, ValueError) as exc:
        raise _error(path, f"not a readable Parquet file ({exc})") from exc
    _require_columns(path, list(columns.values()), found, line=None)
    table = pd.read_parquet(path, columns=list(dict.fromkeys(columns.values())))
    if table.empty:
        raise _error(path, "empty file: no data rows")
    rows = np.arange(1, len(table) + 1)
    parsers = {
        "user": lambda v: _parquet_ids(v, rows, path, "user id"),
        "item": lambda v: _parquet_ids(v, rows, path, "item id"),
        "rating": lambda v: _parquet_numbers(v, rows, path, "rating"),
        "timestamp": lambda v: _parquet_times(v, rows, path),
    }
    frame = pd.DataFrame({role: parsers[role](table[col]) for role, col in columns.items()})
    return _handle_duplicates(frame, path, duplicates, lambda: rows, unit="row")


def _parquet_ids(values: pd.Series, rows: np.ndarray, path: Path, what: str) -> np.ndarray:
    _reject_missing(values, rows, path, what, unit="row")
    if pd.api.types.is_integer_dtype(values.dtype):
        return values.to_numpy(dtype=np.int64)
    if pd.api.types.is_float_dtype(values.dtype):
        numbers = values.to_numpy(dtype=np.float64)
        if np.all(numbers == np.round(numbers)) and np.all(np.abs(numbers) < 2**53):
            return numbers.astype(np.int64)
    return _id_values(values.astype(str), rows, path, what, unit="row")


def _parquet_numbers(values: pd.Series, rows: np.ndarray, path: Path, what: str) -> np.ndarray:
    if pd.api.types.is_numeric_dtype(values.dtype) and not pd.api.types.is_bool_dtype(
        values.dtype
    ):
        _reject_missing(values, rows, path, what, unit="row")
        return values.to_numpy(dtype=np.float64)
    return _float_values(values.astype(str), rows, path, what, unit="row")


def _parquet_times(values: pd.Series, rows: np.ndarray, path: Path) -> np.ndarray:
    """Integer timestamps; datetimes become Unix seconds."""
    _reject_missing(values, rows, path, "timestamp", unit="row")
    if isinstance(values.dtype, pd.DatetimeTZDtype):
        values = values.dt.tz_convert("UTC").dt.tz_localize(None)
    if pd.api.types.is_datetime64_dtype(values.dtype):
        return values.astype("datetime64[s]").to_numpy().astype(np.int64)
    if pd.api.types.is_integer_dtype(values.dtype):
        return values.to_numpy(dtype=np.int64)
    return _int_values(values.astype(str), rows, path, "timestamp", unit="row")


def _reject_missing(values: pd.Series, rows: np.ndarray, path: Path, what: str, unit: str) -> None:
    missing = values.isna().to_numpy()
    if missing.any():
        raise _error(path, f"missing {what}", line=rows[np.argmax(missing)], unit=unit)


# --------------------------------------------------------------------------- #
# Side files
# --------------------------------------------------------------------------- #


def _read_u_genre(path: Path) -> tuple[str, ...]:
    """Genre names of ``u.genre`` (``name|index``), ordered by index."""
    labels = ("genre name", "genre index")
    frame, lines = _read_fields(path, _Layout(sep="|", fields=2), required=(0, 1), labels=labels)
    index = _int_values(frame[1], lines, path, "genre index")
    bad = (index < 0) | (index >= len(index))
    if bad.any() or len(np.unique(index)) != len(index):
        k = int(np.argmax(bad)) if bad.any() else _first_duplicate(pd.Series(index))[1]
        raise _error(
            path, f"genre indices must be 0..{len(index) - 1} without repeats, got {index[k]}",
            line=lines[k],
        )
    return tuple(frame[0].to_numpy(dtype=object)[np.argsort(index)].tolist())


def _read_u_item(path: Path, genre_names: tuple[str, ...]) -> ItemInfo:
    """``id|title|release date|video release date|url|<one flag per genre>``."""
    n_genres = len(genre_names)
    layout = _Layout(sep="|", fields=5 + n_genres)
    frame, lines = _read_fields(path, layout, required=(0, *range(5, 5 + n_genres)))
    ids = _int_values(frame[0], lines, path, "item id")
    _check_unique(ids, lines, path, "item id")
    flags = np.column_stack(
        [
            _flag_values(frame[5 + g], lines, path, f"genre flag {name!r}")
            for g, name in enumerate(genre_names)
        ]
    )
    year = _release_years(frame[2], lines, path)
    return ItemInfo(item_ids=ids, genres=flags, genre_names=genre_names, year=year)


def _read_u_user(path: Path) -> UserInfo:
    """``id|age|gender|occupation|zip``."""
    labels = ("user id", "age", "gender", "occupation", "zip code")
    frame, lines = _read_fields(path, _Layout(sep="|", fields=5), required=range(5), labels=labels)
    ids = _int_values(frame[0], lines, path, "user id")
    _check_unique(ids, lines, path, "user id")
    age = _int_values(frame[1], lines, path, "age")
    gender = frame[2].str.strip().to_numpy(dtype=object)
    return UserInfo(user_ids=ids, gender=gender, age=age)


def _read_movies_dat(path: Path) -> ItemInfo:
    """``MovieID::Title (Year)::Genre1|Genre2``."""
    labels = ("movie id", "title", "genres")
    frame, lines = _read_fields(path, _Layout(sep="::", fields=3), required=range(3), labels=labels)
    ids = _int_values(frame[0], lines, path, "movie id")
    _check_unique(ids, lines, path, "movie id")
    return _movie_info(ids, frame[1], frame[2])


def _read_users_dat(path: Path) -> UserInfo:
    """``UserID::Gender::Age::Occupation::Zip-code``."""
    labels = ("user id", "gender", "age", "occupation", "zip code")
    frame, lines = _read_fields(path, _Layout(sep="::", fields=5), required=range(5), labels=labels)
    ids = _int_values(frame[0], lines, path, "user id")
    _check_unique(ids, lines, path, "user id")
    age = _int_values(frame[2], lines, path, "age")
    gender = frame[1].str.strip().to_numpy(dtype=object)
    return UserInfo(user_ids=ids, gender=gender, age=age)


def _read_movies_csv(path: Path) -> ItemInfo:
    """``movieId,title,genres`` with a header; titles may be quoted."""
    layout = _Layout(sep=",", header=True, quoted=True, encoding="utf-8-sig")
    cells, lines = _read_columns(
        path, layout, ["movieId", "title", "genres"], required=["movieId"]
    )
    ids = _int_values(cells[0], lines, path, "movie id")
    _check_unique(ids, lines, path, "movie id")
    return _movie_info(ids, cells[1], cells[2])


def _movie_info(ids: np.ndarray, titles: pd.Series, genres: pd.Series) -> ItemInfo:
    """Genres (``|``-separated names) and year (trailing ``(YYYY)`` of the title)."""
    dummies = genres.str.strip().str.get_dummies(sep="|")
    dummies = dummies.drop(columns=[c for c in _NO_GENRES if c in dummies.columns])
    dummies = dummies[sorted(dummies.columns)]
    year = titles.str.extract(r"\((\d{4})\)\s*$", expand=False)
    return ItemInfo(
        item_ids=ids,
        genres=dummies.to_numpy(dtype=np.float32).reshape(len(ids), -1),
        genre_names=tuple(dummies.columns),
        year=pd.to_numeric(year).to_numpy(dtype=np.float64),
    )


def _release_years(dates: pd.Series, lines: np.ndarray, path: Path) -> np.ndarray:
    """Year of ``dd-Mon-YYYY`` dates; NaN where the date is empty."""
    dates = dates.str.strip()
    year = dates.str.extract(r"^\d{1,2}-[A-Za-z]{3}-(\d{4})$", expand=False)
    bad = (dates.ne("") & year.isna()).to_numpy()
    if bad.any():
        k = int(np.argmax(bad))
        raise _error(
            path, f"release date is not dd-Mon-YYYY: {dates.iloc[k]!r}", line=lines[k]
        )
    return pd.to_numeric(year).to_numpy(dtype=np.float64)


def _flag_values(values: pd.Series, lines: np.ndarray, path: Path, what: str) -> np.ndarray:
    flags = _int_values(values, lines, path, what)
    bad = (flags != 0) & (flags != 1)
    if bad.any():
        k = int(np.argmax(bad))
        raise _error(path, f"{what} must be 0 or 1, got {values.iloc[k]!r}", line=lines[k])
    return flags.astype(np.float32)


# --------------------------------------------------------------------------- #
# Strict text reading: every field as a string, with its line number
# --------------------------------------------------------------------------- #


def _read_columns(
    path: Path,
    layout: _Layout,
    wanted: Sequence[str] | Sequence[int],
    *,
    required: Sequence[str] | Sequence[int] | None = None,
    labels: Sequence[str] | None = None,
) -> tuple[list[pd.Series], np.ndarray]:
    """The ``wanted`` columns as strings and the line number of every row.

    ``wanted`` holds header names for files with a header, else positions.
    Columns in ``required`` (default: all wanted) must not be empty.
    ``labels`` names the fields of a headerless file in messages.
    """
    required = wanted if required is None else required
    if layout.header:
        header, header_line = _read_header(path, layout)
        _require_columns(path, wanted, header, line=header_line)
        positions = [header.index(name) for name in wanted]
        required_positions = [header.index(name) for name in required]
        n_fields, labels = len(header), [f"column {name!r}" for name in header]
    else:
        positions, required_positions, n_fields = list(wanted), list(required), layout.fields
    frame, lines = _read_fields(
        path, layout, required=required_positions, n_fields=n_fields, labels=labels
    )
    return [frame[p] for p in positions], lines


def _read_fields(
    path: Path,
    layout: _Layout,
    *,
    required: Sequence[int],
    n_fields: int | None = None,
    labels: Sequence[str] | None = None,
) -> tuple[pd.DataFrame, np.ndarray]:
    """Data rows as string columns ``0..n_fields-1`` plus their line numbers.

    Blank lines are skipped (they still count for line numbers).  A row with
    the wrong number of fields or an empty ``required`` field raises; the
    message calls field ``j`` ``labels[j]`` when labels are given.
    """
    n_fields = layout.fields if n_fields is None else n_fields
    labels = labels or [f"field {j + 1}" for j in range(n_fields)]
    try:
        src, sep = _pandas_source(path, layout)
        frame = _read_csv(
            src, sep=sep, header=None, names=range(n_fields + 1),
            dtype=str, keep_default_na=False, quoting=layout.quoting,
            encoding=layout.encoding,
        )
    except pd.errors.ParserWarning:  # the first row has surplus fields
        first = _content_lines(path, layout)[0]
        _raise_bad_row(path, layout, first, n_fields, (), labels)
    except pd.errors.EmptyDataError:
        frame = pd.DataFrame(columns=range(n_fields + 1), dtype=str)
    except pd.errors.ParserError as exc:
        _raise_parser_error(path, layout, n_fields, exc, labels)
    except UnicodeDecodeError as exc:
        raise _error(
            path, f"not valid {layout.encoding} text ({exc.reason})",
            line=_first_undecodable_line(path, layout.encoding),
        ) from exc
    lines = _content_lines(path, layout)
    if len(lines) != len(frame):  # quoted line breaks: line numbers are approximate
        lines = np.arange(1, len(frame) + 1)
    if layout.header:
        frame, lines = frame.iloc[1:].reset_index(drop=True), lines[1:]
    if frame.empty:
        what = "no data rows after the header" if layout.header else "no data rows"
        raise _error(path, f"empty file: {what}")
    bad = frame[n_fields].ne("")
    for position in required:
        bad |= frame[position].eq("")
    if bad.any():
        k = int(np.argmax(bad.to_numpy()))
        _raise_bad_row(path, layout, lines[k], n_fields, required, labels)
    return frame.drop(columns=n_fields), lines


def _raise_parser_error(
    path: Path,
    layout: _Layout,
    n_fields: int,
    exc: pd.errors.ParserError,
    labels: Sequence[str],
) -> None:
    message = str(exc)
    match = re.search(r"line (\d+), saw", message)
    if match:
        _raise_bad_row(path, layout, int(match.group(1)), n_fields, (), labels)
    match = re.search(r"EOF inside string starting at row (\d+)", message)
    if match:  # pandas counts rows from 0 here, blank lines included
        raise _error(path, "unterminated quote", line=int(match.group(1)) + 1) from exc
    raise _error(path, f"cannot parse the file: {message}") from exc


def _raise_bad_row(
    path: Path,
    layout: _Layout,
    line: int,
    n_fields: int,
    required: Sequence[int],
    labels: Sequence[str],
) -> None:
    """Describe what is wrong with line ``line`` (wrong field count or empty field)."""
    text = _raw_line(path, line, layout.encoding)
    fields = _split_line(text, layout)
    if len(fields) != n_fields:
        raise _error(path, _field_count_problem(text, fields, n_fields, layout.sep), line=line)
    for position in required:
        if fields[position] == "":
            raise _error(path, f"missing {labels[position]} (empty field)", line=line)
    raise _error(path, f"malformed line: {_clip(text)!r}", line=line)


def _field_count_problem(text: str, fields: list[str], expected: int, sep: str) -> str:
    problem = (
        f"expected {expected} {_separator_name(sep)}-separated fields, "
        f"found {len(fields)}: {_clip(text)!r}"
    )
    for other in _HINT_SEPARATORS:
        if other != sep and len(text.split(other)) == expected:
            return problem + f" (the line looks {_separator_name(other)}-separated)"
    return problem


def _read_header(path: Path, layout: _Layout) -> tuple[list[str], int]:
    """Fields of the first non-blank line and its line number."""
    text, line = _first_line(path, layout.encoding)
    if line == 0:
        raise _error(path, "empty file: no header and no data rows")
    return [field.strip() for field in _split_line(text, layout)], line


def _require_columns(
    path: Path, wanted: Sequence[str], found: Sequence[str], *, line: int | None
) -> None:
    missing = [name for name in dict.fromkeys(wanted) if name not in found]
    if missing:
        raise _error(
            path,
            f"missing required column(s) {', '.join(map(repr, missing))}; "
            f"found columns: {', '.join(map(repr, found))}",
            line=line,
        )


# --------------------------------------------------------------------------- #
# Values: strings -> typed arrays, reporting the first bad line
# --------------------------------------------------------------------------- #


def _int_values(
    values: pd.Series, lines: np.ndarray, path: Path, what: str, *, unit: str = "line"
) -> np.ndarray:
    """int64 array of integer strings; raises at the first non-integer."""
    values = values.reset_index(drop=True)
    ok = values.str.fullmatch(_INTEGER).to_numpy(dtype=bool)
    if not ok.all():
        k = int(np.argmax(~ok))
        raise _error(path, _bad_value(what, values.iloc[k], "an integer"), line=lines[k], unit=unit)
    try:
        return values.str.strip().astype(np.int64).to_numpy(dtype=np.int64)
    except (ValueError, OverflowError):
        k = _first_out_of_range(values)
        raise _error(
            path, f"{what} {values.iloc[k].strip()} does not fit in int64", line=lines[k], unit=unit
        ) from None


def _float_values(
    values: pd.Series, lines: np.ndarray, path: Path, what: str, *, unit: str = "line"
) -> np.ndarray:
    """float64 array of numeric strings; raises at the first non-number."""
    values = values.reset_index(drop=True)
    numbers = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64)
    bad = np.isnan(numbers)
    if bad.any():
        k = int(np.argmax(bad))
        raise _error(path, _bad_value(what, values.iloc[k], "a number"), line=lines[k], unit=unit)
    return numbers


def _id_values(
    values: pd.Series, lines: np.ndarray, path: Path, what: str, *, unit: str = "line"
) -> np.ndarray:
    """Generic ids: int64 if every id is an integer, else an object array of str."""
    values = values.reset_index(drop=True)
    empty = values.str.strip().eq("").to_numpy(dtype=bool)
    if empty.any():
        k = int(np.argmax(empty))
        raise _error(path, f"missing {what}", line=lines[k], unit=unit)
    if values.str.fullmatch(_INTEGER).all():
        try:
            return values.str.strip().astype(np.int64).to_numpy(dtype=np.int64)
        except (ValueError, OverflowError):
            pass  # integers beyond int64: keep them as strings
    return values.to_numpy(dtype=object)


def _first_out_of_range(values: pd.Series) -> int:
    """Position of the first integer string outside the int64 range."""
    limit = np.iinfo(np.int64)
    candidates = np.flatnonzero(values.str.strip().str.len().to_numpy() >= 19)
    for k in candidates:
        if not limit.min <= int(values.iloc[k]) <= limit.max:
            return int(k)
    return int(candidates[0]) if len(candidates) else 0


def _bad_value(what: str, value: str, expected: str) -> str:
    if value.strip() == "":
        return f"missing {what} (empty field)"
    return f"{what} is not {expected}: {_clip(value)!r}"


# --------------------------------------------------------------------------- #
# Duplicates
# --------------------------------------------------------------------------- #


def _handle_duplicates(
    frame: pd.DataFrame,
    path: Path,
    policy: str,
    lines_of: Callable[[], np.ndarray],
    *,
    unit: str = "line",
) -> pd.DataFrame:
    """Apply the ``duplicates`` policy to repeated (user, item) pairs."""
    keys = _pair_keys(frame)
    found = _first_duplicate(keys)
    if found is None:
        return frame
    if policy == "error":
        first, again = found
        lines = lines_of()
        user, item = frame["user"].iloc[again], frame["item"].iloc[again]
        raise _error(
            path,
            f"duplicate row: user {_plain(user)!r}, item {_plain(item)!r} already appears "
            f"on {unit} {lines[first]} (keep one with --duplicates first or last; in Python duplicates='first')",
            line=lines[again],
            unit=unit,
        )
    keep = ~keys.duplicated(keep=policy).to_numpy()
    return frame[keep].reset_index(drop=True)


def _pair_keys(frame: pd.DataFrame) -> pd.Series | pd.DataFrame:
    """One int64 key per (user, item) pair when the ids allow it, else the two columns."""
    user, item = frame["user"].to_numpy(), frame["item"].to_numpy()
    if user.dtype == np.int64 and item.dtype == np.int64 and len(user):
        user_min, item_min = int(user.min()), int(item.min())
        span = int(item.max()) - item_min + 1
        if (int(user.max()) - user_min + 1) * span < 2**63:
            return pd.Series((user - user_min) * span + (item - item_min))
    return frame[["user", "item"]]


def _first_duplicate(keys: pd.Series | pd.DataFrame) -> tuple[int, int] | None:
    """Positions of the first repeated key and of its earlier occurrence."""
    if isinstance(keys, pd.Series) and keys.dtype == np.int64:
        ordered = np.sort(keys.to_numpy())
        if not (ordered[1:] == ordered[:-1]).any():  # the common case, cheaper than hashing
            return None
    repeated = keys.duplicated(keep="first").to_numpy()
    if not repeated.any():
        return None
    again = int(np.argmax(repeated))
    columns = [keys] if isinstance(keys, pd.Series) else [keys[c] for c in keys.columns]
    same = np.ones(len(keys), dtype=bool)
    for column in columns:
        values = column.to_numpy()
        same &= values == values[again]
    return int(np.argmax(same)), again


def _plain(value: object) -> object:
    """A numpy scalar as the Python value (so messages show ``5``, not ``np.int64(5)``)."""
    return value.item() if isinstance(value, np.generic) else value


def _check_unique(ids: np.ndarray, lines: np.ndarray, path: Path, what: str) -> None:
    found = _first_duplicate(pd.Series(ids))
    if found is not None:
        first, again = found
        raise _error(
            path,
            f"duplicate {what} {ids[again].item()!r}, already on line {lines[first]}",
            line=lines[again],
        )


# --------------------------------------------------------------------------- #
# Low-level text helpers
# --------------------------------------------------------------------------- #


def _pandas_source(path: Path, layout: _Layout) -> tuple[object, str]:
    """What to hand to :func:`pandas.read_csv`, and the separator to use.

    The C parser only takes single-character separators, so a multi-character
    one (``"::"``) is replaced by a control character in memory.
    """
    if len(layout.sep) == 1:
        return path, layout.sep
    text = path.read_text(encoding=layout.encoding)
    return io.StringIO(text.replace(layout.sep, _SUBSTITUTE_SEP)), _SUBSTITUTE_SEP


def _data_lines(path: Path, layout: _Layout) -> np.ndarray:
    """Line numbers of the data rows (non-blank lines after any header)."""
    lines = _content_lines(path, layout)
    return lines[1:] if layout.header else lines


def _content_lines(path: Path, layout: _Layout) -> np.ndarray:
    """1-based numbers of the lines pandas does not skip as blank.

    A line is blank when it holds only spaces, tabs (unless the tab is the
    separator) and carriage returns.  The file is scanned in blocks.
    """
    blank = [ord(c) for c in " \t\r" if c != layout.sep]
    found: list[np.ndarray] = []
    done = 0  # lines finished before the current block
    pending = False  # whether the unfinished line has content so far
    with open(path, "rb") as fh:
        while block := fh.read(_BLOCK):
            data = np.frombuffer(block, dtype=np.uint8)
            ends = np.flatnonzero(data == 10)
            content = ~np.isin(data, [*blank, 10])
            seen = np.concatenate(([0], np.cumsum(content, dtype=np.int64)))
            starts = np.concatenate(([0], ends + 1))
            has = seen[ends + 1] > seen[starts[:-1]]
            if len(has):
                has[0] |= pending
                found.append(done + 1 + np.flatnonzero(has))
                pending = bool(seen[-1] > seen[ends[-1] + 1])
            else:
                pending = pending or bool(seen[-1] > 0)
            done += len(ends)
    if pending:
        found.append(np.array([done + 1]))
    return np.concatenate(found) if found else np.zeros(0, dtype=np.int64)


def _first_line(path: Path, encoding: str) -> tuple[str, int]:
    """The first non-blank line and its number (``("", 0)`` for a blank file)."""
    with open(path, encoding=encoding, errors="replace", newline="") as fh:
        for number, line in enumerate(fh, 1):
            if line.strip():
                return line.rstrip("\r\n"), number
    return "", 0


def _raw_line(path: Path, line: int, encoding: str) -> str:
    """Text of line ``line`` (1-based) without its line break."""
    with open(path, encoding=encoding, errors="replace", newline="") as fh:
        text = next(islice(fh, line - 1, None), "")
    return text.rstrip("\r\n")


def _split_line(text: str, layout: _Layout) -> list[str]:
    if layout.quoted:
        return next(csv.reader([text], delimiter=layout.sep), [""])
    return text.split(layout.sep)


def _first_undecodable_line(path: Path, encoding: str) -> int | None:
    with open(path, "rb") as fh:
        for number, raw in enumerate(fh, 1):
            try:
                raw.decode(encoding)
            except UnicodeDecodeError:
                return number
    return None


def _separator_name(sep: str) -> str:
    return _SEPARATOR_NAMES.get(sep, repr(sep))


def _clip(text: str, width: int = 80) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def _error(
    path: Path, problem: str, *, line: int | np.integer | None = None, unit: str = "line"
) -> DataFormatError:
    where = str(path) if line is None else f"{path}, {unit} {int(line)}"
    return DataFormatError(f"{where}: {problem}")
