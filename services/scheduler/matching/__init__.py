"""Probabilistic record linkage for the scheduler: Fellegi-Sunter match weights with reasons.

``profile`` folds what is known of a report or a person; ``comparisons`` puts a pair in one
level per comparison; ``weights`` holds each level's m and u probabilities; ``evidence`` adds
them up into an explained match weight and a verdict; ``blocking`` derives the extra blind keys
that find candidates. All of it is pure: no clock, database or bus. docs/linking.md explains
the method and ADR 0018 records it.
"""

from services.scheduler.matching.evidence import (
    Evidence,
    Explanation,
    Thresholds,
    Verdict,
    explain,
    verdict,
)
from services.scheduler.matching.profile import EVENT_KINDS, Event, Profile, profile
from services.scheduler.matching.weights import (
    DEFAULT_MODEL,
    LEVELS,
    MODEL_VERSION,
    Level,
    WeightModel,
)

__all__ = [
    "DEFAULT_MODEL",
    "EVENT_KINDS",
    "LEVELS",
    "MODEL_VERSION",
    "Event",
    "Evidence",
    "Explanation",
    "Level",
    "Profile",
    "Thresholds",
    "Verdict",
    "WeightModel",
    "explain",
    "profile",
    "verdict",
]
