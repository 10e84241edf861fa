"""Bearer tokens: who may call, with which role, for which program."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from shared.auth import AuthError, TokenService, jwt_secret
from shared.settings import Settings

NOW = datetime.now(UTC)  # tokens are checked against the real clock


def test_a_minted_token_verifies_with_its_role_and_program() -> None:
    tokens = TokenService("s" * 40, issuer="portline")
    token = tokens.mint(role="team_lead", program="guilford", subject="u1", now=datetime.now(UTC))
    principal = tokens.verify(token)
    assert (principal.role, principal.program, principal.subject) == ("team_lead", "guilford", "u1")


@pytest.mark.parametrize(
    ("verifier", "token_kwargs"),
    [
        (TokenService("other-secret" * 4, issuer="portline"), {}),
        (TokenService("s" * 40, issuer="someone-else"), {}),
        (TokenService("s" * 40, issuer="portline"), {"now": NOW - timedelta(days=2)}),
    ],
    ids=["wrong secret", "wrong issuer", "expired"],
)
def test_tokens_from_elsewhere_or_expired_are_refused(
    verifier: TokenService, token_kwargs: dict[str, datetime]
) -> None:
    issuer = TokenService("s" * 40, issuer="portline")
    token = issuer.mint(
        role="peer", program="demo", subject="u", **({"now": datetime.now(UTC)} | token_kwargs)
    )
    with pytest.raises(AuthError):
        verifier.verify(token)


def test_garbage_is_refused_and_unknown_roles_cannot_be_minted() -> None:
    tokens = TokenService("s" * 40, issuer="portline")
    with pytest.raises(AuthError):
        tokens.verify("not.a.token")
    with pytest.raises(ValueError, match="role"):
        tokens.mint(role="sheriff", program="demo", subject="u", now=NOW)  # type: ignore[arg-type]


def test_development_generates_one_secret_and_production_requires_it(tmp_path: Path) -> None:
    dev = Settings(env="development", var_dir=tmp_path)
    assert jwt_secret(dev) == jwt_secret(dev)
    assert (tmp_path / "jwt.secret").stat().st_mode & 0o077 == 0
    test_env = Settings(env="test", var_dir=tmp_path, seal_keys=None)
    with pytest.raises(AuthError, match="PORTLINE_JWT_SECRET"):
        jwt_secret(test_env)
