"""Published results with speakers held out, for context beside TIM-Net's own speaker-independent numbers.

TIM-Net's published numbers (`core.published`, per corpus in configs/<corpus>.toml) come from random folds in which
every test speaker is also heard in training. The only speaker-held-out references for these corpora are of another
model class: EmoBox (Ma et al., Interspeech 2024; the intra-corpus table of its README), large self-supervised
encoders, frozen, with a small trained head. They say what is reachable without shared speakers, not how TIM-Net
compares: a report shows them beside TIM-Net's rows, marked as another model class, and never subtracts them.
"""

from __future__ import annotations

from dataclasses import dataclass

EMOBOX = "EmoBox (Ma et al., Interspeech 2024), intra-corpus table of its README"
FROZEN = "frozen self-supervised encoder + small trained head"
ANOTHER_CLASS = "ANOTHER MODEL CLASS (context, not a difference to TIM-Net)"
UNNAMED = "one of EmoBox's frozen encoders (see its table for which)"


@dataclass(frozen=True)
class SpeakerHeldOut:
    """One published result with speakers held out: unweighted accuracy (%), its protocol, model and source."""

    dataset: str
    uar: float
    protocol: str
    model: str
    source: str = EMOBOX
    model_class: str = FROZEN


SPEAKER_HELD_OUT = (
    SpeakerHeldOut("CASIA", 59.58, "leave one speaker out (4 folds)", "Whisper-large-v3"),
    SpeakerHeldOut("EMOVO", 57.82, "leave one speaker out (6 folds)", "Whisper-large-v3"),
    SpeakerHeldOut("IEMOCAP", 73.54, "leave one session out (5 folds)", UNNAMED),
    SpeakerHeldOut("RAVDESS", 75.32, "6 folds of 4 consecutive actors", UNNAMED),
    SpeakerHeldOut("SAVEE", 75.75, "leave one speaker out (4 folds)", "data2vec 2.0"),
)


def speaker_held_out(dataset: str) -> list[SpeakerHeldOut]:
    """The references recorded for one corpus (none for EMO-DB)."""
    return [r for r in SPEAKER_HELD_OUT if r.dataset == dataset]
