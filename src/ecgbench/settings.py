"""The one typed settings object shared by every command.

Values come from, highest priority first: command-line flags, ``ECGBENCH_*`` environment variables
(nested with ``__``, e.g. ``ECGBENCH_TOKENIZER__NUM_MERGES=5000``), an optional TOML file given with
``--config`` (tables named after the groups, e.g. ``[tokenizer]``), then the defaults below.

Convention: a flag is named after its field with dashes (``num_merges`` -> ``--num-merges``), so a
validation error can always name the flag to fix. Each command group owns one model here.
"""

from __future__ import annotations

from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, SettingsError

from ecgbench.errors import UserError
from ecgbench.files import read_toml


class _Group(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class TokenizerSettings(_Group):
    """ECG-Byte symbolisation and BPE training."""

    num_merges: int = Field(3500, ge=1, le=1_000_000, description="BPE merges to learn")
    normalization: Literal["segment", "lead", "percentile"] = Field(
        "lead",
        description="min/max per segment over all leads (the peer's), per lead, or global percentiles",
    )
    # The bounds meet at 50, so percentile_low < percentile_high needs no cross-field check.
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


class DataSettings(_Group):
    """Preparing corpora into a segment store, mapping question sets, splitting."""

    seg_len: int = Field(1250, ge=16, description="samples per segment")
    target_fs: int = Field(250, ge=50, le=2000, description="sampling rate of the store, Hz")
    stride: int | None = Field(None, ge=1, description="samples between segment starts (default: seg_len)")
    remainder: Literal["drop", "pad"] = Field("drop", description="what to do with a short last segment")
    dtype: Literal["float16", "float32"] = Field("float32", description="sample type in the shards")
    workers: int = Field(1, ge=1, le=256, description="parallel worker processes")
    # Signal processing (applied at target_fs, zero-phase, SOS form); 0 turns a band edge off.
    bandpass_low: float = Field(0.5, ge=0.0, description="high-pass edge of the band-pass, Hz (0 = off)")
    bandpass_high: float = Field(100.0, ge=0.0, description="low-pass edge of the band-pass, Hz (0 = off)")
    filter_order: int = Field(4, ge=1, le=10, description="Butterworth order of each band-pass edge")
    notch: Literal["auto", "off"] | float = Field(
        "auto", description="power-line notch: auto (the corpus's mains frequency), off, or a frequency in Hz"
    )
    notch_q: float = Field(30.0, gt=0.0, description="quality factor of the power-line notch")
    baseline: Literal["off", "median"] = Field(
        "off", description="extra baseline removal: a 200 ms + 600 ms median-filter estimate subtracted"
    )
    nan_max_gap: float = Field(
        0.1, ge=0.0, description="longest NaN/Inf gap (s) filled by linear interpolation; longer rejects"
    )
    missing_leads: Literal["reject", "derive", "zero"] = Field(
        "reject",
        description="record without all 12 leads: reject it, derive limb leads from I and II, "
        "or derive and zero-fill the rest (flagged flat)",
    )
    flat_threshold: float = Field(
        0.02, ge=0.0, description="peak-to-peak (mV) under which a lead of a segment is flagged flat"
    )
    saturation_ms: float = Field(
        40.0, gt=0.0, description="a lead held at its extreme value this long (ms) flags saturation"
    )
    shard_segments: int = Field(4096, ge=1, description="segments per shard file (memory held by the writer)")
    ptbxl_source: Literal["auto", "records500", "records100"] = Field(
        "auto", description="PTB-XL waveforms to read: records500, records100, or auto (500 Hz when present)"
    )

    @field_validator("notch", mode="before")
    @classmethod
    def _notch_value(cls, value: object, info: ValidationInfo) -> object:
        if isinstance(value, str) and value.strip().lower() in ("auto", "off"):
            return value.strip().lower()
        try:
            hz = float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise ValueError("must be auto, off or a positive frequency in Hz") from None
        if not hz > 0:
            raise ValueError("must be auto, off or a positive frequency in Hz")
        target_fs = info.data.get("target_fs")
        if target_fs and hz >= target_fs / 2:
            # a notch at or above Nyquist would be skipped: the flag would do nothing
            raise ValueError(f"must be below {target_fs / 2:g} Hz (half of target_fs)")
        return hz

    @field_validator("bandpass_low", "bandpass_high")
    @classmethod
    def _below_nyquist(cls, value: float, info: ValidationInfo) -> float:
        # scipy's Butterworth design fails at or above Nyquist, which would reject every record
        target_fs = info.data.get("target_fs")
        if value > 0 and target_fs and value >= 0.45 * target_fs:
            raise ValueError(f"must be below {0.45 * target_fs:g} Hz (0.45 x target_fs), or 0 to turn it off")
        low = info.data.get("bandpass_low", 0.0)
        if info.field_name == "bandpass_high" and value > 0 and low and low >= value:
            raise ValueError("must be above --bandpass-low")
        return value


class SetsSettings(_Group):
    """Conversation sets, splits, tokenizer samples and plots (`data map | split | sample | stats | plot`)."""

    folds: int = Field(10, ge=2, le=100, description="folds of the patient-grouped split")
    split_method: Literal["patient", "strat_fold"] = Field(
        "patient", description="patient: grouped, label-stratified k-fold; strat_fold: PTB-XL's own folds"
    )
    test_fold: int = Field(-1, description="fold used as the test split (negative counts from the end)")
    val_fold: int = Field(-2, description="fold used as the validation split (negative counts from the end)")
    sample_size: int = Field(10_000, ge=1, description="segments to select for tokenizer training")
    sample_method: Literal["random", "stratified"] = Field(
        "stratified", description="random, or stratified over MiniBatchKMeans clusters of segment features"
    )
    clusters: int = Field(64, ge=1, le=10_000, description="clusters of the stratified sample")
    sample_pool: int = Field(100_000, ge=1, description="random candidates clustered (stratified sample)")
    renderer: Literal["ecgbench", "ecg-plot"] = Field(
        "ecgbench", description="12-lead figure: our Matplotlib renderer or the ecg_plot package"
    )


class ModelSettings(_Group):
    """The language model and how it is loaded and adapted."""

    llm: str = Field("tiny-llama", description="registry name, hub id, local directory or GGUF file")
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = Field(
        "sdpa", description="attention kernel"
    )
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="weights dtype")
    gradient_checkpointing: bool = Field(False, description="recompute activations in backward (less memory)")
    lora: bool = Field(False, description="train LoRA adapters instead of the full LLM")
    lora_rank: int = Field(16, ge=1, le=4096, description="LoRA rank r")
    lora_alpha: float = Field(32.0, gt=0, description="LoRA scaling numerator (scale = alpha / rank)")
    lora_dropout: float = Field(0.05, ge=0.0, lt=1.0, description="dropout on the LoRA input")
    lora_target_modules: list[str] | None = Field(
        None, description="module names to adapt (default: the family's attention and MLP projections)"
    )


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
    sets: SetsSettings = SetsSettings()
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
    token = _toml_values.set(read_toml(config, "config file") if config else None)
    try:
        return Settings(**flags)
    except SettingsError as exc:
        # An ECGBENCH_<GROUP> variable that is not a JSON object.
        raise UserError(
            f"{exc}: expected a JSON object, or set single fields as ECGBENCH_GROUP__FIELD"
        ) from None
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
