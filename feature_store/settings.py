"""The one settings object for every process.

Sources, strongest first: constructor arguments, `RECSYS_*` environment variables (nested with
`__`, e.g. `RECSYS_SPARK__MASTER`), the YAML file named by `RECSYS_CONFIG`, then the defaults
below. Unknown keys are rejected. `REDIS_URL` is honoured as an alias of `RECSYS_REDIS__URL`.

It lives in `feature_store` because that is the bottom layer: every other package may import it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RedisSettings(_Section):
    url: str | None = Field(default=None, description="Unset: start an embedded redis-server.")
    socket_timeout_s: float = Field(default=0.5, gt=0)
    connect_timeout_s: float = Field(default=0.5, gt=0)
    key_prefix: str = "recsys"


class EventLogSettings(_Section):
    roll_max_bytes: int = Field(default=64 * 1024 * 1024, gt=0)
    roll_max_age_s: float = Field(default=60.0, gt=0)
    max_open_files: int = Field(default=32, gt=0)
    fsync: bool = True


class SparkSettings(_Section):
    master: str = "local[*]"
    driver_memory: str = "2g"
    shuffle_partitions: int = Field(default=8, gt=0)
    extra_conf: dict[str, str] = Field(default_factory=dict)


class FlinkSettings(_Section):
    parallelism: int = Field(default=1, gt=0)
    checkpoint_interval_ms: int = Field(default=5_000, gt=0)
    checkpoint_dir: Path | None = Field(default=None, description="Default: <state_dir>/flink-checkpoints")


class ApiSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    workers: int = Field(default=1, ge=1)
    api_keys: list[SecretStr] = Field(default_factory=list)
    require_key_for_reads: bool = False
    max_body_bytes: int = Field(default=1024 * 1024, gt=0)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="RECSYS_",
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
    )

    state_dir: Path = Path(".recsys")
    registry_dir: Path | None = Field(default=None, description="Default: <state_dir>/registry")
    redis: RedisSettings = Field(default_factory=RedisSettings)
    event_log: EventLogSettings = Field(default_factory=EventLogSettings)
    spark: SparkSettings = Field(default_factory=SparkSettings)
    flink: FlinkSettings = Field(default_factory=FlinkSettings)
    api: ApiSettings = Field(default_factory=ApiSettings)

    @model_validator(mode="before")
    @classmethod
    def _redis_url_alias(cls, data: Any) -> Any:
        url = os.environ.get("REDIS_URL")
        if url and isinstance(data, dict):
            redis = dict(data.get("redis") or {})
            redis.setdefault("url", url)
            data = {**data, "redis": redis}
        return data

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = os.environ.get("RECSYS_CONFIG")
        if config_file:
            if not Path(config_file).is_file():
                raise FileNotFoundError(f"RECSYS_CONFIG points at {config_file!r}, which is not a file")
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=config_file))
        return tuple(sources)

    @property
    def event_log_dir(self) -> Path:
        return self.state_dir / "events"

    @property
    def catalog_dir(self) -> Path:
        return self.state_dir / "catalog"

    @property
    def model_registry_dir(self) -> Path:
        return self.registry_dir or self.state_dir / "registry"

    @property
    def flink_checkpoint_dir(self) -> Path:
        return self.flink.checkpoint_dir or self.state_dir / "flink-checkpoints"
