"""The training paradigms, as one table of data that the CLI, the tests and the benches share.

A paradigm only decides the ELM's architecture, which representations and encoders it accepts, and
whether the encoder trains; one training loop (``ecgbench.train.loop``) runs them all.
"""

from __future__ import annotations

from dataclasses import dataclass

from ecgbench.errors import UserError

ECG_ENCODERS = ("st-mem", "mlae", "mtae", "merl")
VISION_ENCODERS = ("clip", "siglip", "vit", "dinov2")


@dataclass(frozen=True)
class Paradigm:
    name: str
    architecture: str
    representations: tuple[str, ...]  # the first is the default
    encoders: tuple[str, ...] = ()  # the first is the default
    train_encoder: bool = False
    needs_encoder_checkpoint: bool = False
    summary: str = ""

    @property
    def default_encoder(self) -> str | None:
        return self.encoders[0] if self.encoders else None


PARADIGMS: dict[str, Paradigm] = {
    p.name: p
    for p in (
        Paradigm(
            "end2end",
            "token",
            ("tokens",),
            summary="ECG-Byte tokens as new LLM vocabulary, trained end to end",
        ),
        Paradigm(
            "llava",
            "encoder",
            ("image", "stacked"),
            VISION_ENCODERS,
            summary="frozen general vision encoder + projector (LLaVA)",
        ),
        Paradigm(
            "scratch",
            "encoder",
            ("signal",),
            ECG_ENCODERS,
            needs_encoder_checkpoint=True,
            summary="our stage-1 ECG encoder (encoder train), frozen, + projector",
        ),
        Paradigm(
            "finetune",
            "encoder",
            ("image", "stacked"),
            VISION_ENCODERS,
            needs_encoder_checkpoint=True,
            summary="a stage-1 fine-tuned vision encoder (encoder train), frozen, + projector",
        ),
        Paradigm(
            "encoder-e2e",
            "encoder",
            ("signal", "image", "stacked"),
            ECG_ENCODERS + VISION_ENCODERS,
            train_encoder=True,
            summary="encoder trained jointly with the projector by the language-modelling loss",
        ),
        Paradigm(
            "encoder-free",
            "encoder-free",
            ("signal", "stacked", "image"),
            summary="ECG patches projected straight to soft tokens, no encoder",
        ),
    )
}
#: ECG encoders read signals; vision towers read images or stacked signals
_ENCODER_INPUTS = {
    **{e: ("signal",) for e in ECG_ENCODERS},
    **{e: ("image", "stacked") for e in VISION_ENCODERS},
}


def paradigm(name: str) -> Paradigm:
    if name not in PARADIGMS:
        raise UserError(f"unknown paradigm {name!r} (known: {', '.join(PARADIGMS)})")
    return PARADIGMS[name]


def resolve_front_end(p: Paradigm, representation: str | None, encoder: str | None) -> tuple[str, str | None]:
    """The (representation, encoder) a run uses: the user's choice checked against the paradigm,
    else the paradigm's defaults (the encoder's natural input for encoder-e2e)."""
    if p.architecture != "encoder" and encoder:
        raise UserError(f"paradigm {p.name} has no encoder; drop --encoder")
    if p.architecture == "encoder":
        encoder = encoder or p.default_encoder
        if encoder not in p.encoders:
            raise UserError(
                f"invalid value for --encoder: {encoder!r} (paradigm {p.name} takes {', '.join(p.encoders)})"
            )
        allowed = tuple(r for r in p.representations if r in _ENCODER_INPUTS[encoder])
    else:
        allowed = p.representations
    representation = representation or allowed[0]
    if representation not in allowed:
        raise UserError(
            f"invalid value for --representation: {representation!r} "
            f"(paradigm {p.name}{f' with {encoder}' if encoder else ''} takes {', '.join(allowed)})"
        )
    return representation, encoder
