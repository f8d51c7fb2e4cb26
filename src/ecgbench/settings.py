"""The one typed settings object shared by every command.

Values come from, highest priority first: command-line flags, ``ECGBENCH_*`` environment variables
(nested with ``__``, e.g. ``ECGBENCH_TOKENIZER__NUM_MERGES=5000``), an optional TOML file given with
``--config`` (tables named after the groups, e.g. ``[tokenizer]``), then the defaults below.

Convention: a flag is named after its field with dashes (``num_merges`` -> ``--num-merges``), so a
validation error can always name the flag to fix. Each command group owns one model here.
"""

from __future__ import annotations

import functools
from contextvars import ContextVar
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from ecgbench.errors import UserError
from ecgbench.models.config import ModelSettings  # the user-settable part of every ELM config

if TYPE_CHECKING:
    from pydantic_settings import BaseSettings


class _Group(BaseModel):
    # defer_build: the validators are built on first use, so command-line help (which only reads the
    # fields) does not pay for them. validate_default: checks that span fields (a band edge below the
    # Nyquist rate of target_fs) also hold when only one of the fields was given.
    model_config = ConfigDict(
        extra="forbid", validate_assignment=True, validate_default=True, defer_build=True
    )


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
    questions_per_record: int = Field(
        4, ge=1, le=1000, description="questions on each record's labels and report (set `labels`)"
    )


class OptimizationSettings(_Group):
    """How a trainer optimises: shared by stage-1 encoder training and ELM training."""

    max_steps: int | None = Field(
        None, ge=1, description="optimizer updates to run (default: --epochs passes)"
    )
    epochs: int = Field(1, ge=1, description="passes over the training split (when --max-steps is not given)")
    lr: float = Field(1e-4, gt=0.0, description="peak learning rate")
    weight_decay: float = Field(0.05, ge=0.0, description="AdamW weight decay on weight matrices")
    warmup_steps: int = Field(0, ge=0, description="optimizer updates of linear warmup")
    schedule: Literal["cosine", "linear", "constant"] = Field(
        "cosine", description="learning-rate decay after warmup"
    )
    eval_every: int = Field(100, ge=1, description="optimizer updates between validation runs")
    mixed_precision: Literal["no", "bf16", "fp16"] = Field(
        "no", description="autocast dtype (fp16 needs a GPU)"
    )
    grad_accum: int = Field(1, ge=1, description="micro-batches accumulated into each optimizer update")
    train_split: Literal["train", "val", "test"] = Field("train", description="split to train on")
    val_split: Literal["train", "val", "test"] = Field(
        "val", description="split whose loss picks the best checkpoint"
    )

    @field_validator("val_split")
    @classmethod
    def _distinct_splits(cls, value: str, info: ValidationInfo) -> str:
        if value == info.data.get("train_split"):
            raise ValueError("must differ from --train-split: the best checkpoint is chosen on held-out data")
        return value


class EncoderTrainSettings(OptimizationSettings):
    """Stage-1 encoder training and feature extraction (`encoder train | embed`)."""

    # The names of ecgbench.models.encoders.ENCODER_NAMES (kept here so reading settings imports no torch).
    encoder: Literal["st-mem", "mlae", "mtae", "merl", "vit", "clip", "siglip", "dinov2"] = Field(
        "st-mem", description="encoder to train and its objective"
    )
    preset: Literal["tiny", "base"] = Field(
        "base",
        description="tiny: small random init; base: paper size (ECG) or the family's hub weights (vision)",
    )
    representation: Literal["signal", "stacked", "image"] | None = Field(
        None, description="input of the encoder (default: signal for ECG encoders, image for vision towers)"
    )
    batch_size: int = Field(64, ge=1, description="segments per batch on each device")


class LoopSettings(OptimizationSettings):
    """The ELM optimizer loop (supervised and DPO): batches, checkpoints, logging."""

    batch_size: int = Field(8, ge=1, description="conversations per micro-batch on each device")
    max_length: int = Field(1024, ge=16, description="tokens per conversation (ECG runs shrink first)")
    max_grad_norm: float = Field(1.0, ge=0.0, description="clip gradients to this global norm (0 = off)")
    min_lr_ratio: float = Field(
        0.0, ge=0.0, le=1.0, description="final learning rate / peak (cosine, linear)"
    )
    save_every: int = Field(
        0, ge=0, description="optimizer updates between resumable checkpoints (0 = at each evaluation)"
    )
    keep_checkpoints: int = Field(2, ge=1, description="resumable checkpoints kept (the oldest go first)")
    patience: int | None = Field(
        None, ge=1, description="stop after this many evaluations without a better val loss (default: never)"
    )
    deterministic: bool = Field(False, description="deterministic kernels and data order (exact resume)")
    num_workers: int = Field(2, ge=0, le=64, description="DataLoader worker processes building examples")
    group_by_length: bool = Field(True, description="batch conversations of similar length (less padding)")
    system_prompt: str | None = Field(None, description="system prompt of every conversation (default: none)")
    log_every: int = Field(10, ge=1, description="optimizer updates between logged training losses")
    report_to: Literal["tensorboard", "wandb", "none"] = Field(
        "tensorboard", description="experiment tracker (metrics.jsonl is always written)"
    )


class TrainSettings(LoopSettings):
    """ELM training (`train <paradigm>`): data, batches, checkpoints, logging."""

    val_max_conversations: int | None = Field(
        None, ge=1, description="evaluate on at most this many val conversations (default: all)"
    )
    set_weights: list[float] | None = Field(
        None, description="mixing weight of each --sets, in order (default: 1 each)"
    )
    rag: Path | None = Field(
        None,
        description="RAG index folder (`data rag build`): reports of similar ECGs of other patients go into "
        "each conversation (default: none)",
    )
    rag_k: int = Field(3, ge=1, le=50, description="retrieved records per ECG (with --rag)")
    rag_placement: Literal["system", "user"] = Field(
        "system",
        description="where retrieved reports go: the system prompt or the first user turn (with --rag)",
    )


class DPOSettings(LoopSettings):
    """Preference optimisation of a trained ELM (`train dpo`); loss names and defaults as trl's."""

    lr: float = Field(1e-6, gt=0.0, description="peak learning rate")
    batch_size: int = Field(4, ge=1, description="preference pairs per micro-batch on each device")
    beta: float = Field(0.1, gt=0.0, description="strength of the pull towards the reference model")
    loss: Literal["sigmoid", "ipo", "hinge", "robust"] = Field(
        "sigmoid", description="DPO loss (trl's names)"
    )
    label_smoothing: float = Field(
        0.0, ge=0.0, lt=0.5, description="assumed share of flipped preference labels (--loss robust)"
    )
    eval_split: Literal["train", "val", "test"] | None = Field(
        None,
        description="the evaluation split, whose pairs are refused (default: the split that is neither "
        "--train-split nor --val-split)",
    )

    judge: str | None = Field(
        None,
        description="online DPO (no --preferences): each round samples answers from the current policy and "
        "this judge picks chosen and rejected: reference[:METRIC], llm:MODEL or reward:MODEL",
    )
    rounds: int = Field(
        2, ge=1, description="online: rounds of sample, judge, train (--max-steps shared out over them)"
    )
    candidates: int = Field(4, ge=2, le=64, description="online: answers sampled per question each round")
    conversations_per_round: int | None = Field(
        None, ge=1, description="online: conversations of the train split drawn each round (default: all)"
    )
    val_conversations: int | None = Field(
        None, ge=1, description="online: val-split conversations judged once, to validate (default: all)"
    )
    temperature: float = Field(1.0, gt=0.0, description="online: sampling temperature")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="online: nucleus sampling mass")
    max_new_tokens: int = Field(64, ge=1, le=4096, description="online: longest sampled answer, tokens")

    @field_validator("eval_split")
    @classmethod
    def _not_trained_on(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and value in (info.data.get("train_split"), info.data.get("val_split")):
            raise ValueError(
                "must differ from --train-split and --val-split: DPO never sees the evaluation split"
            )
        return value

    @property
    def evaluation_split(self) -> str:
        if self.eval_split is not None:
            return self.eval_split
        return next(s for s in ("test", "val", "train") if s not in (self.train_split, self.val_split))


class InferSettings(_Group):
    """Generation and evaluation (`infer generate | evaluate | compare | report`)."""

    split: Literal["train", "val", "test"] = Field("test", description="split whose questions are answered")
    ecg: list[str] = Field(
        ["real"],
        description="ECG given with each question: real, zeros, noise, shuffled (another record's) or none; "
        "repeat for several (one predictions file each)",
    )
    batch_size: int = Field(8, ge=1, description="prompts generated together (left-padded)")
    max_new_tokens: int = Field(128, ge=1, description="longest answer, in tokens")
    do_sample: bool = Field(False, description="sample instead of greedy decoding")
    temperature: float = Field(1.0, gt=0.0, description="sampling temperature (with --do-sample)")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="nucleus sampling mass (with --do-sample)")
    top_k: int = Field(0, ge=0, description="sample among the k likeliest tokens, 0 = all (with --do-sample)")
    max_length: int | None = Field(
        None, ge=16, description="longest prompt in tokens; ECG runs shrink first (default: no limit)"
    )
    system_prompt: str | None = Field(None, description="system prompt of every conversation (default: none)")
    rag: Path | None = Field(
        None, description="RAG index folder (default: the one the run was trained with, if any)"
    )
    rag_k: int | None = Field(None, ge=1, le=50, description="retrieved records per ECG (default: the run's)")
    rag_placement: Literal["system", "user"] | None = Field(
        None, description="where retrieved reports go: system or user (default: the run's)"
    )
    profile: Literal["ecgbench", "peer"] = Field(
        "ecgbench", description="metric settings: ecgbench, or the peer's published ones (comparable numbers)"
    )
    bertscore: Literal["auto", "bertscore", "minilm", "off"] = Field(
        "auto", description="auto: roberta-large BERTScore if present, else the MiniLM stand-in (own key)"
    )
    bootstrap_resamples: int = Field(1000, ge=10, description="bootstrap resamples of every interval")

    @field_validator("ecg")
    @classmethod
    def _ecg_modes(cls, value: list[str]) -> list[str]:
        allowed = ("real", "zeros", "noise", "shuffled", "none")
        wrong = [v for v in value if v not in allowed]
        if wrong or not value:
            raise ValueError(f"each value must be one of {', '.join(allowed)}")
        return value


class JudgeSettings(_Group):
    """Model judges of answer pairs (`judge compare | rank`)."""

    on_disagreement: Literal["tie", "drop"] = Field(
        "tie", description="when the two answer orders get different verdicts: count a tie, or drop the item"
    )
    batch_size: int = Field(8, ge=1, description="prompts the llm: and reward: judges read together")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="device of the llm: and reward: judges (auto: cuda when there is one)"
    )


class Settings(BaseModel):
    """Every setting: top-level fields and one group per command family (a ``[group]`` table in TOML)."""

    model_config = ConfigDict(extra="forbid", defer_build=True)

    seed: int = Field(0, description="random seed for everything that draws random numbers")
    tokenizer: TokenizerSettings = Field(default_factory=TokenizerSettings)
    data: DataSettings = Field(default_factory=DataSettings)
    sets: SetsSettings = Field(default_factory=SetsSettings)
    model: ModelSettings = Field(default_factory=ModelSettings)
    encoder: EncoderTrainSettings = Field(default_factory=EncoderTrainSettings)
    train: TrainSettings = Field(default_factory=TrainSettings)
    dpo: DPOSettings = Field(default_factory=DPOSettings)
    infer: InferSettings = Field(default_factory=InferSettings)
    judge: JudgeSettings = Field(default_factory=JudgeSettings)


@functools.cache
def _resolving_settings() -> type[Settings]:
    """:class:`Settings` that also reads ``ECGBENCH_*`` variables and the TOML values (pydantic-settings is
    imported only when a command resolves its settings: command-line help and completion do not need it)."""
    from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

    class _DictSource(PydanticBaseSettingsSource):
        """Values already read from the TOML file (read by us so a syntax error is one clear line)."""

        def __init__(self, settings_cls: type[BaseSettings], values: dict[str, Any]):
            super().__init__(settings_cls)
            self._values = values

        def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
            return self._values.get(field_name), field_name, False

        def __call__(self) -> dict[str, Any]:
            return dict(self._values)

    class ResolvedSettings(BaseSettings, Settings):
        model_config = SettingsConfigDict(
            env_prefix="ECGBENCH_",
            env_nested_delimiter="__",
            extra="forbid",
            nested_model_default_partial_update=True,
        )

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

    return ResolvedSettings


_toml_values: ContextVar[dict[str, Any] | None] = ContextVar("_toml_values", default=None)


def flag_name(loc: tuple[Any, ...]) -> str:
    """The command-line flag that sets a field, from a validation error location."""
    names = [str(part) for part in loc if isinstance(part, str)]
    return "--" + names[-1].replace("_", "-") if names else "--config"


ENV_PREFIX = "ECGBENCH_"
# ECGBENCH_* variables that are not settings fields (read elsewhere): the package's, and the `./dev`
# script's set-up knobs (set around `./dev test`, they reach every command a test runs).
OTHER_VARIABLES = frozenset(
    {
        "ECGBENCH_CONFIG",
        "ECGBENCH_ASSETS",
        "ECGBENCH_VENV",
        "ECGBENCH_TORCH_VERSION",
        "ECGBENCH_DEBIAN_CRATES",
        "ECGBENCH_TEST_WORKERS",
    }
)


def environment_names() -> dict[str, str]:
    """Every ``ECGBENCH_*`` name that sets something, upper case -> (group.)field."""
    names = dict.fromkeys(OTHER_VARIABLES, "")
    for field, info in Settings.model_fields.items():
        names[f"{ENV_PREFIX}{field}".upper()] = field
        group = info.annotation if isinstance(info.annotation, type) else None
        if group is not None and issubclass(group, BaseModel):
            for sub in group.model_fields:
                names[f"{ENV_PREFIX}{field}__{sub}".upper()] = f"{field}.{sub}"
    return names


def check_environment() -> None:
    """A misspelt ``ECGBENCH_*`` variable (``ECGBENCH_DATA_TARGET_FS``, one underscore) would be ignored
    without a word: name it, and the variable it probably means."""
    import difflib
    import os

    known = environment_names()
    for name in sorted(os.environ):
        if name.upper().startswith(ENV_PREFIX) and name.upper() not in known:
            close = difflib.get_close_matches(name.upper(), list(known), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise UserError(f"unknown environment variable {name}{hint}; settings are ECGBENCH_GROUP__FIELD")


def _setter_of(loc: tuple[Any, ...], flags: dict[str, Any], config: Path | None) -> str:
    """Where the value at ``loc`` came from, named the way the user set it: the flag, the ``ECGBENCH_*``
    variable, or the ``--config`` file (flags beat variables, which beat the file)."""
    import os

    names = [str(part) for part in loc if isinstance(part, str)]
    if not names:
        return flag_name(loc)
    given: Any = flags
    for part in names:
        given = given.get(part) if isinstance(given, dict) else None
    if given is not None:
        return flag_name(loc)
    environment = {k.upper(): k for k in os.environ}
    nested = f"{ENV_PREFIX}{'__'.join(names[:2])}".upper()
    if nested in environment:
        return environment[nested]
    if len(names) > 1 and f"{ENV_PREFIX}{names[0]}".upper() in environment:
        return environment[f"{ENV_PREFIX}{names[0]}".upper()]  # a whole group as JSON
    toml = _toml_values.get() or {}
    for part in names:
        toml = toml.get(part) if isinstance(toml, dict) else None
    if toml is not None and config is not None:
        return f"--config {config}"
    return flag_name(loc)


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
    from pydantic_settings import SettingsError

    from ecgbench.files import read_toml

    check_environment()
    token = _toml_values.set(read_toml(config, "config file") if config else None)
    try:
        return _resolving_settings()(**flags)
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
        setter = _setter_of(loc, flags, config)
        if err.get("type") == "extra_forbidden":
            where = "" if setter.startswith("--") and not setter.startswith("--config") else f" in {setter}"
            raise UserError(f"unknown setting {key!r}{where}{more}") from None
        raise UserError(f"invalid value for {setter} ({key}{shown}): {err['msg']}{more}") from None
    finally:
        _toml_values.reset(token)
