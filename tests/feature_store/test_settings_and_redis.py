"""Settings sources and the embedded redis-server."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis
from pydantic import ValidationError

from feature_store.redis_server import EmbeddedRedis, redis_url
from feature_store.settings import Settings


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    import os

    for name in list(os.environ):
        if name.startswith("RECSYS_") or name == "REDIS_URL":
            monkeypatch.delenv(name)
    return monkeypatch


def test_environment_overrides_yaml_which_overrides_defaults(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = tmp_path / "recsys.yaml"
    config.write_text("state_dir: /srv/recsys\nspark:\n  master: spark://yaml:7077\nflink:\n  parallelism: 4\n")
    clean_env.setenv("RECSYS_CONFIG", str(config))
    clean_env.setenv("RECSYS_SPARK__MASTER", "spark://env:7077")
    settings = Settings()
    assert settings.spark.master == "spark://env:7077"
    assert settings.flink.parallelism == 4
    assert settings.state_dir == Path("/srv/recsys")
    assert settings.model_registry_dir == Path("/srv/recsys/registry")


def test_unknown_keys_are_rejected(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = tmp_path / "recsys.yaml"
    config.write_text("spark:\n  mastr: local[2]\n")
    clean_env.setenv("RECSYS_CONFIG", str(config))
    with pytest.raises(ValidationError, match="mastr"):
        Settings()


@pytest.mark.parametrize(("name", "value", "message"), [
    ("RECSYS_LEARNER__TAU", "inf", "finite number"),
    ("RECSYS_LEARNER__TAU", "1000", "less than or equal to 100"),
    ("RECSYS_EXPLORE__EPSILON", "nan", "finite number"),
    ("RECSYS_LEARNER__LR", "inf", "finite number"),
])  # fmt: skip
def test_numbers_must_be_finite(clean_env: pytest.MonkeyPatch, name: str, value: str, message: str) -> None:
    clean_env.setenv(name, value)
    with pytest.raises(ValidationError, match=message):
        Settings()


def test_a_checkpoint_uri_is_refused_not_turned_into_a_relative_path(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    clean_env.setenv("RECSYS_FLINK__CHECKPOINT_DIR", "s3://bucket/checkpoints")
    with pytest.raises(ValidationError, match="'s3://bucket/checkpoints' is a URI: give a path"):
        Settings()
    clean_env.setenv("RECSYS_FLINK__CHECKPOINT_DIR", str(tmp_path / "ckpt"))
    assert Settings().flink_checkpoint_dir == tmp_path / "ckpt"


def test_redis_url_beats_the_yaml_file_and_recsys_redis_url_beats_it(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = tmp_path / "recsys.yaml"
    config.write_text("redis: {url: 'redis://yaml:6379/0', socket_timeout_s: 3}\n")
    clean_env.setenv("RECSYS_CONFIG", str(config))
    clean_env.setenv("REDIS_URL", "redis://env:6379/0")  # the name compose and Kubernetes set
    assert (str(Settings().redis.url), Settings().redis.socket_timeout_s) == ("redis://env:6379/0", 3.0)
    clean_env.setenv("RECSYS_REDIS__URL", "redis://nested:6379/0")
    assert str(Settings().redis.url) == "redis://nested:6379/0"


def test_missing_config_file_is_a_clear_error(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    clean_env.setenv("RECSYS_CONFIG", str(tmp_path / "nope.yaml"))
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        Settings()


def test_redis_url_env_is_honoured(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("REDIS_URL", "redis://cache.internal:6380/2")
    assert Settings().redis.url == "redis://cache.internal:6380/2"


def test_api_keys_are_secret(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("RECSYS_API__API_KEYS", '["s3cret"]')
    settings = Settings()
    assert "s3cret" not in repr(settings)
    assert settings.api.api_keys[0].get_secret_value() == "s3cret"


def test_embedded_redis_starts_keeps_data_under_state_dir_and_stops(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path)
    with redis_url(settings) as url:
        client = redis.Redis.from_url(url)
        client.set("k", "v")
        assert client.get("k") == b"v"
    assert (tmp_path / "redis" / "dump.rdb").is_file()  # saved on clean shutdown
    with pytest.raises(redis.ConnectionError):
        client.ping()


def test_configured_url_is_used_without_starting_a_server(redis_server: EmbeddedRedis, tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path, redis={"url": redis_server.url})
    with redis_url(settings) as url:
        assert url == redis_server.url
    assert not (tmp_path / "redis").exists()


def test_batch_outputs_are_read_as_files_from_a_path_or_file_uri(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from pipelines.training.holdout import holdout_cutoff

    clean_env.setenv("RECSYS_BATCH__OUTPUT_URI", f"file://{tmp_path}/batch")
    clean_env.setenv("RECSYS_BATCH__CATALOG_URI", f"file://{tmp_path}/catalog-copy")
    clean_env.setenv("RECSYS_BATCH__EVENTS_URI", "s3a://bucket/events")  # only Spark reads the log
    settings = Settings()
    assert (settings.batch_dir, settings.catalog_source_dir) == (tmp_path / "batch", tmp_path / "catalog-copy")
    assert settings.batch_uri == f"file://{tmp_path}/batch"  # what Spark is given, unchanged
    manifest = tmp_path / "batch" / "samples" / "_manifest.json"
    manifest.parent.mkdir(parents=True)
    manifest.write_text('{"test_from": "2024-01-23T09:27:10+00:00"}')
    assert holdout_cutoff(settings, []).isoformat() == "2024-01-23T09:27:10+00:00"  # the manifest, not a fallback


@pytest.mark.parametrize("name", ["RECSYS_BATCH__OUTPUT_URI", "RECSYS_BATCH__CATALOG_URI"])
def test_a_batch_location_python_reads_refuses_a_remote_uri(clean_env: pytest.MonkeyPatch, name: str) -> None:
    clean_env.setenv(name, "s3a://bucket/batch")
    with pytest.raises(ValidationError, match="'s3a://bucket/batch': the training DAG, the API and the learner read this as files"):
        Settings()
