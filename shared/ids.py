"""Identifiers: random version-4 UUIDs without a system call each.

`uuid.uuid4()` reads the OS's random source on every call, which shows up in intake's
per-message profile. These ids only need to be unique, not unpredictable (nothing is
authorised by knowing one), so a PRNG seeded from the OS once per process is enough.
"""

from __future__ import annotations

import random
import uuid

__all__ = ["new_uuid"]

_random = random.Random()  # noqa: S311 - uniqueness, not secrecy; seeded from os.urandom


def new_uuid() -> uuid.UUID:
    return uuid.UUID(int=_random.getrandbits(128), version=4)
