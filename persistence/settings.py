"""Runtime settings from the environment: ONE pydantic-settings class (prefix `DGMSCAN_`).

Embedded defaults (no variable set): SQLite file and local-disk object store under
`DGMSCAN_DATA_DIR` (default ./var) and an in-process Celery worker on the `memory://` broker.
Production sets `DGMSCAN_DATABASE_URL` (Postgres), `DGMSCAN_BROKER_URL` (Redis) and
`DGMSCAN_STORAGE=s3` with the `DGMSCAN_S3_*` variables.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

MiB = 1024 * 1024


class Settings(BaseSettings):
    """Every knob of the service. Read once per process through `get_settings()`."""

    model_config = SettingsConfigDict(env_prefix="DGMSCAN_", extra="ignore", frozen=True)

    data_dir: Path = Field(default=Path("var"), description="state of the embedded defaults")
    database_url: str | None = Field(default=None, description="SQLAlchemy URL; default sqlite under data_dir")
    broker_url: str | None = Field(default=None, description="Celery broker; unset = embedded in-process worker")
    result_backend: str | None = Field(default=None, description="Celery result backend (only for chords)")

    storage: Literal["local", "s3"] = "local"
    s3_endpoint: str = "127.0.0.1:9000"  # host:port, as the minio client wants it
    s3_public_endpoint: str | None = None  # host:port clients use for presigned URLs (default s3_endpoint)
    s3_access_key: SecretStr = SecretStr("")
    s3_secret_key: SecretStr = SecretStr("")
    s3_bucket: str = "dgmscan"
    s3_secure: bool = False
    s3_region: str = "us-east-1"
    presign_expiry_s: int = 900

    # upload limits: enforced while streaming, so an oversize body gets 413 before it is read whole
    max_model_bytes: int = 1024 * MiB
    max_target_bytes: int = 16 * MiB
    max_targets: int = 16
    max_config_bytes: int = 64 * 1024

    # worker
    scan_soft_time_limit_s: int = 3600
    scan_hard_time_limit_s: int = 3900
    # Redis re-delivers an unacked task after this; must exceed the longest scan (acks_late)
    broker_visibility_timeout_s: int = 7200
    # fan shardable checks (BF-OI Closest-N) out over the queue as a chord; needs a result backend
    fanout: bool = True
    worker_device: str = "cpu"  # "cuda" on GPU workers (one worker process per GPU)
    # per worker child (set when the prefork child starts): RLIMIT_DATA, so a hostile graph or a huge
    # scan fails with MemoryError instead of taking the machine down; 0 = no limit
    worker_memory_limit_mb: int = Field(default=16384, ge=0)
    # per worker child: RLIMIT_FSIZE, the largest file a scan may write (downloads, artifacts); 0 = no limit
    worker_max_file_mb: int = Field(default=8192, ge=0)
    webhook_max_retries: int = 6
    # callbacks to loopback/private/link-local addresses are refused unless allowed (SSRF guard)
    webhook_allow_private: bool = False
    webhook_timeout_s: float = 10.0

    api_base_url: str = "http://127.0.0.1:8000"

    @property
    def embedded(self) -> bool:
        """True when no broker is configured: `dgmscan serve` runs the worker in-process."""
        return self.broker_url is None

    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'dgmscan.db').resolve()}"

    @property
    def effective_broker_url(self) -> str:
        return self.broker_url or "memory://"

    @property
    def local_storage_dir(self) -> Path:
        return self.data_dir / "objects"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (cached; tests call `get_settings.cache_clear()` after changing env)."""
    return Settings()
