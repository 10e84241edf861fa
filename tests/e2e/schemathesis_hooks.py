"""Schemathesis hooks for PORTline (loaded by the CLI through SCHEMATHESIS_HOOKS).

Intake's HL7 route takes HL7 v2 ER7 text under its own media types; schemathesis sends the
generated text as it sends `text/plain`."""

from __future__ import annotations

import schemathesis

schemathesis.serializer.alias(["application/hl7-v2", "x-application/hl7-v2+er7"], "text/plain")
