"""MovieLens file layouts (ml-100k, ml-1m, ml-latest-small) and their line parsers.

Every parser takes one decoded line and returns a record or raises `ValueError` with a reason
that names what is wrong; `read_records` attaches the file name and line number.
"""

from __future__ import annotations

import codecs
import csv
import math
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, NamedTuple

from feature_store.schemas import Item, User, error_message

ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
    "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
    "War", "Western",
)  # fmt: skip
ML1M_OCCUPATIONS = (
    "other", "academic/educator", "artist", "clerical/admin", "college/grad student",
    "customer service", "doctor/health care", "executive/managerial", "farmer", "homemaker",
    "K-12 student", "lawyer", "programmer", "retired", "sales/marketing", "scientist",
    "self-employed", "technician/engineer", "tradesman/craftsman", "unemployed", "writer",
)  # fmt: skip
MAX_TIMESTAMP = 4_102_444_800  # 2100-01-01: anything later is a corrupt field, not a rating
_YEAR_IN_TITLE = re.compile(r"\((\d{4})\)\s*$")


class Rating(NamedTuple):
    """One parsed rating line: ids as strings, rating value, event time in unix seconds."""

    user_id: str
    item_id: str
    rating: float
    ts: int


class MalformedLine(ValueError):
    """A line that cannot be parsed, with its location (`u.data:17: reason`)."""

    def __init__(self, file: str, line: int, reason: str, raw: str = "") -> None:
        super().__init__(f"{file}:{line}: {reason}")
        self.file, self.line, self.reason, self.raw = file, line, reason, raw


@dataclass(frozen=True)
class Layout:
    """Which files make up one MovieLens release and how to parse each line."""

    name: str
    ratings: str
    items: str
    users: str | None
    encoding: str
    header: bool
    parse_rating: Callable[[str], Rating]
    parse_item: Callable[[str], Item]
    parse_user: Callable[[str], User] | None
    links: str | None = None

    def files(self, root: Path) -> list[Path]:
        """The source files of this layout present under `root`, in a fixed order."""
        names = [self.ratings, self.items, self.users, self.links]
        return [root / name for name in names if name and (root / name).is_file()]


class UnknownLayout(ValueError):
    """The directory holds none of the known MovieLens layouts."""


# -- shared field checks ---------------------------------------------------------------------


def _split(line: str, sep: str, expected: int, label: str) -> list[str]:
    fields = line.split(sep)
    if len(fields) != expected:
        raise ValueError(f"expected {expected} {label}-separated fields, got {len(fields)}")
    return fields


def _id(value: str, name: str) -> str:
    value = value.strip()
    if not value.isdigit():
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def _rating(value: str) -> float:
    try:
        rating = float(value)
    except ValueError:
        raise ValueError(f"rating must be a number, got {value!r}") from None
    if not math.isfinite(rating) or not 0.5 <= rating <= 5.0:
        raise ValueError(f"rating must be between 0.5 and 5, got {value!r}")
    return rating


def _timestamp(value: str) -> int:
    try:
        ts = int(value.strip())
    except ValueError:
        raise ValueError(f"timestamp must be integer unix seconds, got {value!r}") from None
    if not 0 <= ts < MAX_TIMESTAMP:
        raise ValueError(f"timestamp {ts} is out of range")
    return ts


def _year_from_title(title: str) -> dict[str, Any]:
    match = _YEAR_IN_TITLE.search(title)
    return {"year": int(match.group(1))} if match else {}


# -- ml-100k ---------------------------------------------------------------------------------


def _ml100k_rating(line: str) -> Rating:
    user, item, rating, ts = _split(line, "\t", 4, "tab")
    return Rating(_id(user, "user id"), _id(item, "item id"), _rating(rating), _timestamp(ts))


def _ml100k_item(line: str) -> Item:
    fields = _split(line, "|", 5 + len(ML100K_GENRES), "|")
    item_id, title, release, _video_release, imdb_url = fields[:5]
    flags = fields[5:]
    if any(flag not in ("0", "1") for flag in flags):
        raise ValueError("genre flags must be 0 or 1")
    metadata: dict[str, Any] = _year_from_title(title)
    created_at = None
    if release:
        try:
            created_at = datetime.strptime(release, "%d-%b-%Y").replace(tzinfo=timezone.utc)
        except ValueError:
            raise ValueError(f"release date must look like 01-Jan-1995, got {release!r}") from None
        metadata = {"release_date": created_at.date().isoformat(), "year": created_at.year}
    if imdb_url:
        metadata["imdb_url"] = imdb_url
    genres = [genre for genre, flag in zip(ML100K_GENRES, flags) if flag == "1"]
    return Item(item_id=_id(item_id, "item id"), title=title, categories=genres, created_at=created_at, metadata=metadata)


def _ml100k_user(line: str) -> User:
    user_id, age, gender, occupation, zip_code = _split(line, "|", 5, "|")
    if not age.isdigit():
        raise ValueError(f"age must be an integer, got {age!r}")
    attributes = {"age": int(age), "gender": gender, "occupation": occupation, "zip": zip_code}
    return User(user_id=_id(user_id, "user id"), attributes=attributes)


# -- ml-1m -----------------------------------------------------------------------------------


def _ml1m_rating(line: str) -> Rating:
    user, item, rating, ts = _split(line, "::", 4, "::")
    return Rating(_id(user, "user id"), _id(item, "item id"), _rating(rating), _timestamp(ts))


def _ml1m_item(line: str) -> Item:
    item_id, title, genres = _split(line, "::", 3, "::")
    categories = [genre for genre in genres.split("|") if genre]
    return Item(item_id=_id(item_id, "item id"), title=title, categories=categories, metadata=_year_from_title(title))


def _ml1m_user(line: str) -> User:
    user_id, gender, age, occupation, zip_code = _split(line, "::", 5, "::")
    if not age.isdigit() or not occupation.isdigit():
        raise ValueError(f"age and occupation must be integer codes, got {age!r} and {occupation!r}")
    code = int(occupation)
    attributes = {
        "gender": gender,
        "age_group": int(age),
        "occupation": ML1M_OCCUPATIONS[code] if code < len(ML1M_OCCUPATIONS) else str(code),
        "zip": zip_code,
    }
    return User(user_id=_id(user_id, "user id"), attributes=attributes)


# -- ml-latest-small (and the other ml-latest / ml-20m style CSV releases) -------------------


def _csv_fields(line: str, expected: int) -> list[str]:
    try:
        fields = next(csv.reader([line]))
    except csv.Error as exc:  # e.g. a bare carriage return: that line's reject, not the import's end
        raise ValueError(f"not valid CSV: {exc}") from None
    if len(fields) != expected:
        raise ValueError(f"expected {expected} comma-separated fields, got {len(fields)}")
    return fields


def _latest_rating(line: str) -> Rating:
    user, item, rating, ts = _split(line, ",", 4, "comma")
    return Rating(_id(user, "user id"), _id(item, "item id"), _rating(rating), _timestamp(ts))


def _latest_item(line: str) -> Item:
    item_id, title, genres = _csv_fields(line, 3)
    categories = [] if genres == "(no genres listed)" else [g for g in genres.split("|") if g]
    return Item(item_id=_id(item_id, "item id"), title=title, categories=categories, metadata=_year_from_title(title))


def parse_link(line: str) -> tuple[str, dict[str, Any]]:
    """One `links.csv` line -> (item id, metadata with the IMDb URL and TMDB id)."""
    item_id, imdb_id, tmdb_id = _csv_fields(line, 3)
    metadata: dict[str, Any] = {}
    if imdb_id:
        metadata["imdb_url"] = f"https://www.imdb.com/title/tt{imdb_id}/"
    if tmdb_id:
        metadata["tmdb_id"] = tmdb_id
    return _id(item_id, "item id"), metadata


LAYOUTS = (
    Layout("ml-100k", "u.data", "u.item", "u.user", "latin-1", False, _ml100k_rating, _ml100k_item, _ml100k_user),
    Layout("ml-1m", "ratings.dat", "movies.dat", "users.dat", "latin-1", False, _ml1m_rating, _ml1m_item, _ml1m_user),
    Layout(
        "ml-latest-small", "ratings.csv", "movies.csv", None, "utf-8", True,
        _latest_rating, _latest_item, None, links="links.csv",
    ),  # fmt: skip
)


def detect_layout(root: Path) -> Layout:
    """The layout whose ratings and items files are both in `root`; raises `UnknownLayout`."""
    root = Path(root)
    if not root.is_dir():
        raise UnknownLayout(f"{root} is not a directory")
    for layout in LAYOUTS:
        if (root / layout.ratings).is_file() and (root / layout.items).is_file():
            return layout
    expected = "; ".join(f"{l.name}: {l.ratings} + {l.items}" for l in LAYOUTS)
    raise UnknownLayout(f"{root} is not a MovieLens directory: expected one of {expected}")


def read_records(path: Path, encoding: str, header: bool, parse: Callable[[str], Any]) -> Iterator[tuple[int, Any]]:
    """Stream `(bytes read, record or MalformedLine)` for each non-blank line of `path`; a UTF-8
    byte order mark at the start of the file is dropped."""
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            size = len(raw)
            if number == 1:
                raw = raw.removeprefix(codecs.BOM_UTF8)
            if header and number == 1:
                yield size, None
                continue
            try:
                line = raw.decode(encoding).rstrip("\r\n")
            except UnicodeDecodeError as exc:
                yield size, MalformedLine(path.name, number, f"not valid {encoding}: {exc.reason}", repr(raw))
                continue
            if not line.strip():
                yield size, None
                continue
            try:
                yield size, parse(line)
            except ValueError as exc:
                yield size, MalformedLine(path.name, number, error_message(exc), line)
