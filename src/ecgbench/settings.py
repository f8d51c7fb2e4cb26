"""The one typed settings object shared by every command.

Values come from, highest priority first: command-line flags, ``ECGBENCH_*`` environment variables
(nested with ``__``, e.g. ``ECGBENCH_TOKENIZER__NUM_MERGES=5000``), an optional TOML file given with
``--config`` (tables named after the groups, e.g. ``[tokenizer]``), then the defaults below.

Convention: a flag is named after its field with dashes (``num_merges`` -> ``--num-merges``), so a
validation error can always name the flag to fix. Each command group owns one model here.
"""

from __future__ import annotations

import tomllib
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from ecgbench.errors import UserError


class _Group(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class TokenizerSettings(_Group):
    """ECG-Byte symbolisation and BPE training."""

    num_merges: int = Field(3500, ge=1, le=1_000_000, description="BPE merges to learn")
    normalization: Literal["segment", "lead", "percentile"] = Field(
        "lead",
        description="min/max per segment over all leads (the peer's), per lead, or global percentiles",
    )
    percentile_low: float = Field(1.0, ge=0.0, lt=50.0, description="lower percentile (percentile mode)")
    percentile_high: float = Field(99.0, gt=50.0, le=100.0, description="upper percentile (percentile mode)")
    percentile_margin: float = Field(
        0.1, ge=0.0, le=1.0, description="widen the percentile range by this fraction on each side"
    )
    lead_boundaries: bool = Field(False, description="also stop merges at the boundary between two leads")
    encode_mode: Literal["bpe", "greedy"] = Field(
        "bpe", description="bpe: apply merges in learned order; greedy: the peer's longest match"
    )
    threads: int | None = Field(None, ge=1, description="worker threads (default: all cores)")

    @model_validator(mode="after")
    def _percentiles_ordered(self) -> TokenizerSettings:
        if self.percentile_low >= self.percentile_high:
            raise ValueError("percentile_low must be below percentile_high")
        return self


class DataSettings(_Group):
    """Preparing corpora into a segment store, mapping question sets, splitting."""

    seg_len: int = Field(1250, ge=16, description="samples per segment")
    target_fs: int = Field(250, ge=50, le=2000, description="sampling rate of the store, Hz")
    stride: int | None = Field(None, ge=1, description="samples between segment starts (default: seg_len)")
    remainder: Literal["drop", "pad"] = Field("drop", description="what to do with a short last segment")
    dtype: Literal["float16", "float32"] = Field("float32", description="sample type in the shards")
    workers: int = Field(1, ge=1, le=256, description="parallel worker processes")


class ModelSettings(_Group):
    """The language model and how it is loaded and adapted."""

    llm: str = Field("tiny-llama", description="registry name, hub id, local directory or GGUF file")
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = Field(
        "sdpa", description="attention kernel"
    )
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="weights dtype")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="ECGBENCH_",
        env_nested_delimiter="__",
        extra="forbid",
        nested_model_default_partial_update=True,
    )

    seed: int = Field(0, description="random seed for everything that draws random numbers")
    tokenizer: TokenizerSettings = TokenizerSettings()
    data: DataSettings = DataSettings()
    model: ModelSettings = ModelSettings()

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
        toml = _toml_values.get()
        if toml:
            sources.append(_DictSource(settings_cls, toml))
        return tuple(sources)


class _DictSource(PydanticBaseSettingsSource):
    """Values already read from the TOML file (read by us so a syntax error is one clear line)."""

    def __init__(self, settings_cls: type[BaseSettings], values: dict[str, Any]):
        super().__init__(settings_cls)
        self._values = values

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return self._values.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self._values)


_toml_values: ContextVar[dict[str, Any] | None] = ContextVar("_toml_values", default=None)


def read_config_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise UserError(f"config file not found: {path}")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"config file {path} is not valid TOML: {exc}") from None


def flag_name(loc: tuple[Any, ...]) -> str:
    """The command-line flag that sets a field, from a validation error location."""
    names = [str(part) for part in loc if isinstance(part, str)]
    return "--" + names[-1].replace("_", "-") if names else "--config"


def load_settings(
    config: Path | None = None, overrides: dict[str, dict[str, Any] | Any] | None = None
) -> Settings:
    """Resolve settings from flags (``overrides``; ``None`` values mean 'not given'), env and TOML."""
    flags: dict[str, Any] = {}
    for key, value in (overrides or {}).items():
        if isinstance(value, dict):
            given = {k: v for k, v in value.items() if v is not None}
            if given:
                flags[key] = given
        elif value is not None:
            flags[key] = value
    token = _toml_values.set(read_config_file(config) if config else None)
    try:
        return Settings(**flags)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = tuple(err.get("loc", ()))
        key = ".".join(str(p) for p in loc)
        value = err.get("input")
        shown = f" = {value!r}" if not isinstance(value, dict) else ""
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        if err.get("type") == "extra_forbidden":
            raise UserError(f"unknown setting {key!r}{more}") from None
        raise UserError(f"invalid value for {flag_name(loc)} ({key}{shown}): {err['msg']}{more}") from None
    finally:
        _toml_values.reset(token)
