"""`recsys data import-movielens`: layouts, counts, idempotency, malformed lines and --strict."""

from __future__ import annotations

import re
from pathlib import Path

from typer.testing import CliRunner, Result

from feature_store.catalog import Catalog
from feature_store.event_log import EventLogReader
from feature_store.settings import Settings
from services.cli import app

GENRES_OFF = "|".join(["0"] * 19)


def _genres(*on: int) -> str:
    flags = ["0"] * 19
    for index in on:
        flags[index] = "1"
    return "|".join(flags)


def write_ml100k(root: Path, ratings: list[str]) -> Path:
    root.mkdir(parents=True)
    (root / "u.data").write_text("\n".join(ratings) + "\n")
    (root / "u.item").write_bytes(
        (
            f"1|Toy Story (1995)|01-Jan-1995||http://us.imdb.com/M/title-exact?Toy%20Story%20(1995)|{_genres(3, 4, 5)}\n"
            f"2|Café Society (1995)|01-Jan-1995||http://us.imdb.com/x|{_genres(8)}\n"
            f"3|unknown||||{GENRES_OFF}\n"
        ).encode("latin-1")
    )
    (root / "u.user").write_text("1|24|M|technician|85711\n2|53|F|other|94043\n")
    return root


def write_ml1m(root: Path, ratings: list[str]) -> Path:
    root.mkdir(parents=True)
    (root / "ratings.dat").write_text("\n".join(ratings) + "\n")
    (root / "movies.dat").write_bytes("1::Toy Story (1995)::Animation|Children's|Comedy\n2::Jumanji (1995)::Adventure\n".encode("latin-1"))
    (root / "users.dat").write_text("1::F::1::10::48067\n2::M::56::16::70072\n")
    return root


def write_latest_small(root: Path, ratings: list[str]) -> Path:
    root.mkdir(parents=True)
    (root / "ratings.csv").write_text("userId,movieId,rating,timestamp\n" + "\n".join(ratings) + "\n")
    (root / "movies.csv").write_text(
        'movieId,title,genres\n1,Toy Story (1995),Adventure|Animation\n2,"American President, The (1995)",Comedy|Drama|Romance\n'
        "3,Some Film (2018),(no genres listed)\n"
    )
    (root / "links.csv").write_text("movieId,imdbId,tmdbId\n1,0114709,862\n2,0112346,9087\n")
    return root


def run_cli(*args: str) -> Result:
    return CliRunner().invoke(app, list(args))


def import_cli(path: Path, settings: Settings, *extra: str) -> Result:
    return run_cli("data", "import-movielens", str(path), "--state-dir", str(settings.state_dir), *extra)


def test_ml100k_imports_every_rating_user_and_item_once(ml100k_path: Path, settings: Settings) -> None:
    result = import_cli(ml100k_path, settings)
    assert result.exit_code == 0, result.output
    reader = EventLogReader(settings.event_log_dir)
    events = list(reader.read())
    assert len(events) == 100_000
    assert len({e.event_id for e in events}) == 100_000
    assert {e.type for e in events} == {"rating"}
    catalog = Catalog(settings.catalog_dir)
    assert catalog.count_users() == 943 and catalog.count_items() == 1_682
    toy_story = catalog.get_item("1")
    assert toy_story is not None and toy_story.categories == ["Animation", "Children's", "Comedy"]
    assert toy_story.metadata["year"] == 1995 and "imdb_url" in toy_story.metadata
    assert catalog.get_user("1") is not None and catalog.get_user("1").attributes["occupation"] == "technician"  # type: ignore[union-attr]

    files_before = sorted(reader.files())
    again = import_cli(ml100k_path, settings)
    assert again.exit_code == 0, again.output
    assert "already imported" in again.output
    assert sorted(reader.files()) == files_before
    assert sum(1 for _ in reader.read()) == 100_000


def test_layouts_are_detected_and_imported(tmp_path: Path, settings: Settings) -> None:
    write_ml100k(tmp_path / "a", ["1\t1\t5\t874965758", "2\t2\t3\t876893171", "1\t3\t4\t878542960"])
    write_ml1m(tmp_path / "b", ["1::1::5::978300760", "2::2::3::978302109"])
    write_latest_small(tmp_path / "c", ["1,1,4.0,964982703", "7,2,3.5,964981247", "7,3,0.5,964982224"])
    for name, expected in (("a", "ml-100k"), ("b", "ml-1m"), ("c", "ml-latest-small")):
        result = import_cli(tmp_path / name, settings)
        assert result.exit_code == 0, result.output
        assert expected in result.output
    events = list(EventLogReader(settings.event_log_dir).read())
    assert len(events) == 3 + 2 + 3
    ids = {e.event_id for e in events}
    assert {"ml-100k:1:1:874965758", "ml-1m:2:2:978302109", "ml-latest-small:7:3:964982224"} <= ids
    assert {e.value for e in events if e.event_id.startswith("ml-latest-small")} == {4.0, 3.5, 0.5}

    catalog = Catalog(settings.catalog_dir)
    president = catalog.get_item("2")  # ml-latest-small was imported last, so its row wins
    assert president is not None and president.title == "American President, The (1995)"
    assert president.categories == ["Comedy", "Drama", "Romance"]
    assert president.metadata["imdb_url"] == "https://www.imdb.com/title/tt0112346/"
    assert catalog.get_item("3").categories == []  # type: ignore[union-attr]
    assert catalog.get_user("1").attributes["occupation"] == "K-12 student"  # type: ignore[union-attr]  # ml-1m
    assert catalog.get_user("7") is not None  # ml-latest has no users file: raters become users


def test_malformed_lines_are_reported_with_file_and_line_and_the_rest_is_imported(tmp_path: Path, settings: Settings) -> None:
    source = write_ml100k(
        tmp_path / "ml",
        ["1\t1\t5\t874965758", "2\t2\t3\t876893171", "1\t3\t4", "2\t1\tfive\t876893171", "2\t3\t4\tyesterday", "1\t2\t2\t878542960"],
    )
    result = import_cli(source, settings)
    assert result.exit_code == 0, result.output
    output = result.output
    assert "u.data:3: expected 4 tab-separated fields, got 3" in output
    assert "u.data:4: rating must be a number, got 'five'" in output
    assert "u.data:5: timestamp must be integer unix seconds, got 'yesterday'" in output
    assert len(list(EventLogReader(settings.event_log_dir).read())) == 3
    rejects = list((settings.state_dir / "imports").glob("*.rejects.txt"))
    assert len(rejects) == 1
    lines = rejects[0].read_text().splitlines()
    assert [line.split(":")[1] for line in lines] == ["3", "4", "5"]
    assert re.search(r"rejected lines\s*│\s*3", result.output)


def test_a_movies_csv_line_the_csv_module_cannot_parse_is_that_lines_reject(tmp_path: Path, settings: Settings) -> None:
    source = write_latest_small(tmp_path / "ml", ["1,1,4.0,964982703"])
    with (source / "movies.csv").open("a", newline="") as movies:
        movies.write("4,Broken\rTitle (1999),Drama\n5,Fine (2000),Drama\n")
    result = import_cli(source, settings)
    assert result.exit_code == 0, result.output
    assert "movies.csv:5: not valid CSV" in result.output
    catalog = Catalog.from_settings(settings)
    assert catalog.get_item("5") is not None and catalog.get_item("4") is None


def test_a_rejected_line_is_printed_verbatim(tmp_path: Path, settings: Settings) -> None:
    source = write_ml100k(tmp_path / "ml", ["1\t1\t5\t874965758", "2\t1\t[red]\t876893171"])
    result = import_cli(source, settings)
    assert result.exit_code == 0, result.output
    assert "rejected u.data:2: rating must be a number, got '[red]'\n" in result.output


def test_strict_fails_on_the_first_malformed_line_and_writes_nothing(tmp_path: Path, settings: Settings) -> None:
    source = write_ml1m(tmp_path / "ml", ["1::1::5::978300760", "2::2::3::978302109"])
    (source / "movies.dat").write_text("1::Toy Story (1995)::Animation\n2::Jumanji (1995)\n")
    result = import_cli(source, settings, "--strict")
    assert result.exit_code == 2
    assert "movies.dat:2: expected 3 ::-separated fields, got 2" in result.output
    assert not settings.state_dir.exists() or not any(settings.state_dir.rglob("*"))


def test_strict_reports_bad_encoding_and_bad_timestamps_in_csv(tmp_path: Path, settings: Settings) -> None:
    source = write_latest_small(tmp_path / "ml", ["1,1,4.0,964982703", "1,2,4.0,-5"])
    result = import_cli(source, settings, "--strict")
    assert result.exit_code == 2
    assert "ratings.csv:3: timestamp -5 is out of range" in result.output

    (source / "ratings.csv").write_bytes(b"userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,2,4.0,964982704\n")
    (source / "movies.csv").write_bytes(b"movieId,title,genres\n1,Caf\xe9 (1995),Drama\n")  # latin-1, not UTF-8
    result = import_cli(source, settings, "--strict")
    assert result.exit_code == 2
    assert "movies.csv:2: not valid utf-8" in result.output
    lenient = import_cli(source, settings)
    assert lenient.exit_code == 0, lenient.output
    assert len(list(EventLogReader(settings.event_log_dir).read())) == 2


def test_unrecognised_directory_names_the_expected_files(tmp_path: Path, settings: Settings) -> None:
    (tmp_path / "empty").mkdir()
    result = import_cli(tmp_path / "empty", settings)
    assert result.exit_code == 2
    output = result.output
    assert f"error: {tmp_path / 'empty'} is not a MovieLens directory" in output and "u.data + u.item" in output and "ratings.csv + movies.csv" in output
    missing = import_cli(tmp_path / "nope", settings)
    assert missing.exit_code == 2 and f"error: {tmp_path / 'nope'} is not a directory\n" in missing.output


def test_a_future_rating_time_is_that_lines_reject(tmp_path: Path, settings: Settings) -> None:
    """As the interactions importer: `compact` would drop it, and the learner's watermark took it."""
    root = write_ml100k(tmp_path / "ml-100k", ["1\t1\t4\t881250949", "2\t2\t3\t4070908800"])  # 2099
    result = import_cli(root, settings)
    assert result.exit_code == 0 and "u.data:2: timestamp 4070908800 is in the future" in result.output, result.output
    assert [e.user_id for e in EventLogReader(settings.event_log_dir).read()] == ["1"]
    strict = import_cli(root, settings.model_copy(update={"state_dir": tmp_path / "strict"}), "--strict")
    assert strict.exit_code == 2 and "u.data:2: timestamp 4070908800 is in the future" in strict.output


def test_a_grown_release_imported_again_keeps_an_items_retirement(tmp_path: Path, settings: Settings) -> None:
    root = write_ml100k(tmp_path / "ml-100k", ["1\t1\t5\t874965758"])
    assert import_cli(root, settings).exit_code == 0
    catalog = Catalog.from_settings(settings)
    catalog.upsert_items([catalog.get_item("1").model_copy(update={"available": False})])  # retired by a PUT
    (root / "u.data").write_text("1\t1\t5\t874965758\n2\t2\t3\t876893171\n")  # the release grew
    assert import_cli(root, settings).exit_code == 0
    again = catalog.get_item("1")
    assert not again.available and again.title == "Toy Story (1995)"  # the release's fields, the PUT's retirement
