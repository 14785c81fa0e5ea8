"""Settings: one class, read from the environment (and `.env`) once."""

from functools import lru_cache
from typing import Annotated, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEV_CORS_ORIGINS = [
    "http://localhost:3000",
    "http://127.0.0.1:3000",
    "http://localhost:5173",
    "http://127.0.0.1:5173",
]
_DRIVER_PREFIX = "postgresql+psycopg2://"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", frozen=True
    )

    DATABASE_URL: SecretStr | None = None
    ENVIRONMENT: Literal["development", "test", "production"] = "development"
    LOG_LEVEL: Literal["debug", "info", "warning", "error", "critical"] = "info"
    CORS_ORIGINS: Annotated[list[str] | None, NoDecode] = None

    # Sized for Neon's pooled endpoint: a small pool per process, connections
    # checked before use and recycled before Neon's idle timeouts close them.
    DB_POOL_SIZE: int = Field(default=10, ge=1, le=500)
    DB_MAX_OVERFLOW: int = Field(default=5, ge=0, le=500)
    DB_POOL_TIMEOUT: float = Field(default=10.0, gt=0, le=600)
    DB_POOL_RECYCLE: int = Field(default=300, ge=-1)

    HOST: str = "127.0.0.1"
    PORT: int = Field(default=8000, ge=1, le=65535)
    WEB_CONCURRENCY: int = Field(default=1, ge=1, le=64)

    @field_validator("ENVIRONMENT", "LOG_LEVEL", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("DATABASE_URL", mode="before")
    @classmethod
    def _normalise_database_url(cls, value: object) -> object:
        """Accept `postgres://` and `postgresql://`; always use psycopg2."""
        if not isinstance(value, str) or not value.strip():
            return None
        url = value.strip()
        for prefix in ("postgres://", "postgresql://", _DRIVER_PREFIX):
            if url.startswith(prefix):
                return _DRIVER_PREFIX + url[len(prefix) :]
        raise ValueError("must start with postgresql:// or postgres://")

    @field_validator("CORS_ORIGINS", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            return [o.strip().rstrip("/") for o in value.split(",") if o.strip()]
        return value

    @model_validator(mode="after")
    def _production_needs_database(self) -> "Settings":
        if self.ENVIRONMENT == "production" and self.DATABASE_URL is None:
            raise ValueError("DATABASE_URL is required when ENVIRONMENT=production")
        return self

    @property
    def cors_origins(self) -> list[str]:
        if self.CORS_ORIGINS is not None:
            return self.CORS_ORIGINS
        return [] if self.ENVIRONMENT == "production" else DEV_CORS_ORIGINS


class ConfigError(SystemExit):
    """Start-up stops with one line naming the variable, never a traceback."""


def load_settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        first = exc.errors()[0]
        message = first["msg"].removeprefix("Value error, ")
        if first["loc"]:  # a model-level rule names its variables in its message
            message = f"{'.'.join(str(part) for part in first['loc'])}: {message}"
        raise ConfigError(f"configuration error: {message}") from None


@lru_cache
def get_settings() -> Settings:
    return load_settings()
