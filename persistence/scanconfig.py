"""The scan configuration a client may send (the `config` part of POST /v1/scans).

Validated by pydantic at the door (unknown fields are refused, so a misspelt option is a 422,
not silently ignored), stored as JSON on the scan row, and turned into the scanner's
ScanConfig / LatentSpec / OutputSpec by the worker.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field, model_validator

CheckSelector = Annotated[str, Field(pattern=r"^[a-z0-9_]+(\.[a-z0-9_]+)?$", max_length=128)]
Dim = Annotated[int, Field(ge=1, le=65536)]


class LatentIn(BaseModel):
    """The latent spec P_sample (default N(0, I) of the architecture's size)."""

    model_config = ConfigDict(extra="forbid")
    shape: list[Dim] = Field(min_length=1, max_length=4)
    distribution: Literal["normal", "uniform"] = "normal"
    low: float = -1.0
    high: float = 1.0

    @model_validator(mode="after")
    def _bounds(self) -> LatentIn:
        if self.distribution == "uniform" and not self.low < self.high:
            raise ValueError("uniform latent needs low < high")
        return self


class OutputIn(BaseModel):
    """What the generator emits, when the file does not say it."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["image", "audio"] = "image"
    shape: list[Dim] = Field(min_length=2, max_length=3)
    value_range: tuple[float, float] = (-1.0, 1.0)
    final_activation: Literal["tanh", "sigmoid", "none"] = "tanh"


class ScanConfigIn(BaseModel):
    """Options of one scan. Everything is optional; the default is the quick profile."""

    model_config = ConfigDict(extra="forbid")
    profile: Literal["quick", "standard", "full"] = "quick"
    seed: int = Field(default=0, ge=0, le=2**31 - 1)
    architecture: Annotated[str, Field(pattern=r"^[a-z0-9_]+$", max_length=64)] | None = None
    architecture_config: dict[str, int | float | str | bool] | None = None
    latent: LatentIn | None = None
    output: OutputIn | None = None
    only: list[CheckSelector] | None = Field(default=None, max_length=64)
    skip: list[CheckSelector] = Field(default_factory=list, max_length=64)
    params: dict[CheckSelector, dict[str, Any]] = Field(default_factory=dict)
    budgets: dict[CheckSelector, Annotated[float, Field(gt=0, le=86400)]] = Field(default_factory=dict)
    callback_url: AnyHttpUrl | None = Field(default=None, description="POSTed (HMAC-signed) when the scan ends")
    queue: Literal["cpu", "gpu"] | None = Field(default=None, description="default: gpu for the full profile")

    @property
    def effective_queue(self) -> str:
        return self.queue or ("gpu" if self.profile == "full" else "cpu")
