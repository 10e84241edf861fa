"""Team tokens for tests of services running in development: signed with the var dir's
development key, as `portline dev-token` signs them, for every team service's audience."""

from __future__ import annotations

from datetime import UTC, datetime

from shared.auth import Role
from shared.devtokens import DevelopmentKey
from shared.settings import TEAM_TOKEN_SERVICES, Settings


class DevTokens:
    def __init__(self, settings: Settings) -> None:
        self._key = DevelopmentKey.load(settings.var_dir)
        self._audience = [settings.token_audience(s) for s in TEAM_TOKEN_SERVICES]

    def mint(self, *, role: str, program: str = "demo", subject: str = "u") -> str:
        return self._key.mint(
            role=role,  # type: ignore[arg-type]
            program=program,
            subject=subject,
            audience=self._audience,
            now=datetime.now(UTC),
        )

    def headers(
        self, role: Role | str, program: str = "demo", subject: str = "u"
    ) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.mint(role=role, program=program, subject=subject)}"}
