"""Importers reject control characters in ids and categories with file:line (issue 13, item 3)."""

from __future__ import annotations

from pathlib import Path

from feature_store.catalog import Catalog
from feature_store.settings import Settings
from tests.pipelines.test_movielens_import import import_cli, write_ml1m


def test_control_characters_in_categories_are_rejected_lines(tmp_path: Path, settings: Settings) -> None:
    source = write_ml1m(tmp_path / "ml", ["1::1::5::978300760", "2::2::3::978302109"])
    (source / "movies.dat").write_bytes(
        "1::Toy Story (1995)::Animation|Comedy\n2::Jumanji (1995)::Adven\x1fture\n3::Heat (1995)::Action\n".encode("latin-1")
    )
    result = import_cli(source, settings)
    assert result.exit_code == 0, result.output
    assert "movies.dat:2: categories.0: Value error, must not contain control characters (U+001F" in result.output
    catalog = Catalog(settings.catalog_dir)
    assert sorted(item.item_id for item in catalog.items()) == ["1", "3"]

    strict = import_cli(source, settings, "--strict")
    assert strict.exit_code == 2 and "movies.dat:2:" in strict.output
