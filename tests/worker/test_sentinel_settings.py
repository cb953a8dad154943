"""REDIS_SENTINELS and REDIS_WAIT_*: read and checked at start-up, and the broker URL they make."""

from __future__ import annotations

import pytest

from worker.config.settings import ConfigError, Settings, load_settings

KEY = "a-caller-key-of-24-characters-or-more"


def settings(environment: dict[str, str]) -> Settings:
    """Settings from these variables (and the caller key every shim needs)."""
    return load_settings(
        **{name.lower(): value for name, value in {"SHIM_API_KEYS": KEY, **environment}.items()}
    )


def test_the_broker_follows_the_store_through_the_same_sentinels() -> None:
    loaded = settings(
        {
            "REDIS_URL": "redis://:s%40cret@ignored:6379/2",
            "REDIS_SENTINELS": "10.0.0.1:26379, 10.0.0.2:26379,10.0.0.3:26379",
            "REDIS_SENTINEL_MASTER": "okc",
        }
    )

    assert loaded.redis_sentinels == ["10.0.0.1:26379", "10.0.0.2:26379", "10.0.0.3:26379"]
    assert loaded.broker_url == loaded.store_as_broker_url
    assert loaded.broker_url == ";".join(f"sentinel://:s%40cret@10.0.0.{n}:26379/2" for n in (1, 2, 3))


def test_a_broker_elsewhere_is_kept() -> None:
    loaded = settings(
        {
            "REDIS_SENTINELS": "10.0.0.1:26379",
            "REDIS_SENTINEL_MASTER": "okc",
            "CELERY_BROKER_URL": "redis://broker.internal:6379/0",
        }
    )

    assert loaded.broker_url == "redis://broker.internal:6379/0"


def test_without_sentinels_nothing_changes() -> None:
    loaded = settings({"REDIS_URL": "redis://r:6379/1"})

    assert loaded.broker_url == loaded.store_as_broker_url == "redis://r:6379/1"
    assert loaded.redis_wait_replicas == 0
    assert loaded.redis_wait_timeout_ms == 100


@pytest.mark.parametrize(
    ("environment", "named"),
    [
        ({"REDIS_SENTINELS": "10.0.0.1:26379"}, "REDIS_SENTINEL_MASTER"),
        ({"REDIS_SENTINELS": "10.0.0.1", "REDIS_SENTINEL_MASTER": "okc"}, "REDIS_SENTINELS"),
        ({"REDIS_SENTINELS": "host:99999", "REDIS_SENTINEL_MASTER": "okc"}, "REDIS_SENTINELS"),
        ({"REDIS_WAIT_REPLICAS": "-1"}, "REDIS_WAIT_REPLICAS"),
        ({"REDIS_WAIT_TIMEOUT_MS": "0"}, "REDIS_WAIT_TIMEOUT_MS"),
        ({"WORKER_SHUTDOWN_GRACE_SECONDS": "-1"}, "WORKER_SHUTDOWN_GRACE_SECONDS"),
    ],
)
def test_a_bad_setting_is_refused_with_its_name(environment: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        settings(environment)
