"""Team tokens: only the program's provider's, for this service, in time, with a role.

The provider's keys are fetched through an httpx transport (tests/oidc_provider.py); the same
provider is served over real HTTP in tests/integration/test_team_identity.py."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from shared.auth import AuthError, Principal, ProviderUnavailable
from shared.devtokens import DEV_ISSUER, DevelopmentKey
from shared.oidc import ClaimNames, ProviderKeys, StaticKeys, TokenVerifier
from tests.oidc_provider import ALGORITHMS, Provider

AUDIENCE = "portline-scheduler"


class Clock:
    """A monotonic clock the tests move (for the key cache's TTL and rate limit)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def provider() -> Provider:
    return Provider()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def client(provider: Provider) -> Any:
    async with httpx.AsyncClient(transport=provider.transport()) as client:
        yield client


def verifier(
    provider: Provider, client: httpx.AsyncClient, clock: Clock, **kwargs: Any
) -> TokenVerifier:
    keys = ProviderKeys(provider.issuer, client=client, ttl=3600, min_interval=30, monotonic=clock)
    return TokenVerifier(
        issuers={provider.issuer: keys},
        audience=AUDIENCE,
        algorithms=kwargs.pop("algorithms", ALGORITHMS),
        leeway=kwargs.pop("leeway", 30),
        **kwargs,
    )


@pytest.mark.parametrize("alg", ALGORITHMS)
async def test_a_providers_token_names_who_calls(
    provider: Provider, client: httpx.AsyncClient, clock: Clock, alg: str
) -> None:
    kid = provider.add_key(alg)
    principal = await verifier(provider, client, clock).verify(
        provider.token(kid, sub="lead-ana", role="team_lead", program="guilford")
    )
    assert principal == Principal(subject="lead-ana", role="team_lead", program="guilford")
    assert provider.discovery_fetches == 1  # the keys were found through discovery


async def test_keys_are_cached_and_a_rotation_is_fetched_on_first_sight(
    provider: Provider, client: httpx.AsyncClient, clock: Clock
) -> None:
    old = provider.add_key("RS256")
    tokens = verifier(provider, client, clock)
    for _ in range(3):
        await tokens.verify(provider.token(old))
    assert provider.jwks_fetches == 1

    # The provider publishes its next key, then signs with it: the first token with it
    # refetches the key set; the old key keeps working while it is published.
    new = provider.add_key("ES256")
    clock.now += 31
    assert (await tokens.verify(provider.token(new, sub="peer-sam"))).subject == "peer-sam"
    assert provider.jwks_fetches == 2
    await tokens.verify(provider.token(old))
    assert provider.jwks_fetches == 2

    # The old key is withdrawn: once the cache expires, tokens signed with it are refused.
    provider.published.remove(old)
    clock.now += 3600
    with pytest.raises(AuthError, match="key id"):
        await tokens.verify(provider.token(old))
    assert provider.jwks_fetches == 3
    await tokens.verify(provider.token(new))


async def test_unknown_key_ids_refetch_at_most_once_per_interval(
    provider: Provider, client: httpx.AsyncClient, clock: Clock
) -> None:
    kid = provider.add_key("RS256")
    unpublished = provider.add_key("RS256", publish=False)
    tokens = verifier(provider, client, clock)
    await tokens.verify(provider.token(kid))
    clock.now += 31
    results = await asyncio.gather(
        *(tokens.verify(provider.token(unpublished)) for _ in range(20)), return_exceptions=True
    )
    assert all(isinstance(r, AuthError) for r in results)
    assert provider.jwks_fetches == 2  # one refetch for twenty unknown-kid tokens
    clock.now += 10
    with pytest.raises(AuthError, match="key id"):
        await tokens.verify(provider.token(unpublished))
    assert provider.jwks_fetches == 2  # still within the interval: no fetch at all
    clock.now += 30
    provider.published.append(unpublished)  # published after all: found on the next refetch
    assert (await tokens.verify(provider.token(unpublished))).subject == "peer-ana"
    assert provider.jwks_fetches == 3


async def test_a_provider_outage_is_a_refusal_of_its_own_never_an_accept(
    provider: Provider, client: httpx.AsyncClient, clock: Clock
) -> None:
    kid = provider.add_key("EdDSA")
    provider.down = True
    tokens = verifier(provider, client, clock)
    with pytest.raises(ProviderUnavailable):
        await tokens.verify(provider.token(kid))
    # Keys already fetched keep working through an outage, past their TTL.
    provider.down = False
    clock.now += 5
    await tokens.verify(provider.token(kid))
    provider.down = True
    clock.now += 7200
    await tokens.verify(provider.token(kid))


async def test_a_discovery_document_for_another_issuer_is_not_believed(
    provider: Provider, client: httpx.AsyncClient, clock: Clock
) -> None:
    kid = provider.add_key("RS256")
    provider.discovery_issuer = "https://evil.test"
    with pytest.raises(ProviderUnavailable):
        await verifier(provider, client, clock).verify(provider.token(kid))
    assert provider.jwks_fetches == 0


@pytest.fixture
def signed(provider: Provider) -> str:
    return provider.add_key("RS256")


REFUSED: dict[str, tuple[dict[str, Any], str]] = {
    "wrong audience": ({"aud": "portline-outreach"}, "audience"),
    "wrong issuer": ({"iss": "https://evil.test"}, "issuer"),
    "expired": ({"exp": -120}, "expired"),
    "not yet valid (nbf)": ({"nbf": 600}, "not valid yet"),
    "issued in the future (iat)": ({"iat": 600}, "not valid yet"),
    "no subject": ({"sub": None}, "claim"),
    "no expiry": ({"exp": None}, "claim"),
    "no audience": ({"aud": None}, "claim"),
    "no role": ({"role": None}, "role"),
    "unknown role": ({"role": "sheriff"}, "role"),
    "several roles": ({"role": ["peer", "admin"]}, "several"),
    "no program": ({"program": None}, "program"),
    "program not a string": ({"program": ["demo"]}, "program"),
    "subject too long": ({"sub": "x" * 129}, "subject"),
}


@pytest.mark.parametrize("case", list(REFUSED))
async def test_tokens_that_are_refused(
    provider: Provider, client: httpx.AsyncClient, clock: Clock, signed: str, case: str
) -> None:
    overrides, reason = REFUSED[case]
    now = int(datetime.now(UTC).timestamp())
    claims = {
        k: now + v if k in ("exp", "nbf", "iat") and isinstance(v, int) else v
        for k, v in overrides.items()
    }
    with pytest.raises(AuthError, match=reason):
        await verifier(provider, client, clock).verify(provider.token(signed, **claims))


async def test_clock_skew_within_the_leeway_is_forgiven(
    provider: Provider, client: httpx.AsyncClient, clock: Clock, signed: str
) -> None:
    now = int(datetime.now(UTC).timestamp())
    tokens = verifier(provider, client, clock, leeway=30)
    await tokens.verify(provider.token(signed, exp=now - 20, iat=now - 600))
    await tokens.verify(provider.token(signed, nbf=now + 20, iat=now + 20))
    with pytest.raises(AuthError, match="expired"):
        await tokens.verify(provider.token(signed, exp=now - 40, iat=now - 600))


async def test_alg_none_is_refused(
    provider: Provider, client: httpx.AsyncClient, clock: Clock, signed: str
) -> None:
    with pytest.raises(AuthError, match="algorithm"):
        await verifier(provider, client, clock).verify(provider.unsigned(signed))


async def test_hs256_signed_with_the_public_key_is_refused(
    provider: Provider, client: httpx.AsyncClient, clock: Clock, signed: str
) -> None:
    token = provider.hs256_with_public_key(signed)
    with pytest.raises(AuthError, match="algorithm"):
        await verifier(provider, client, clock).verify(token)
    # Even a verifier told to accept HS256 never uses a provider's public key as a secret.
    lenient = verifier(provider, client, clock, algorithms=(*ALGORITHMS, "HS256"))
    with pytest.raises(AuthError, match="does not match its key"):
        await lenient.verify(token)


async def test_a_token_must_name_its_key_and_match_its_algorithm(
    provider: Provider, client: httpx.AsyncClient, clock: Clock, signed: str
) -> None:
    import jwt

    tokens = verifier(provider, client, clock)
    _alg, key = provider.keys[signed]
    no_kid = jwt.encode(provider.claims(), key, algorithm="RS256")
    with pytest.raises(AuthError, match="kid"):
        await tokens.verify(no_kid)
    ec_kid = provider.add_key("ES256")
    # An ES256 token that claims the RSA key: refused before any signature check.
    _ec_alg, ec_key = provider.keys[ec_kid]
    mismatched = jwt.encode(provider.claims(), ec_key, algorithm="ES256", headers={"kid": signed})
    with pytest.raises(AuthError, match="does not match its key"):
        await tokens.verify(mismatched)
    # Signed by a key the provider never published under that kid.
    forged = provider.add_key("RS256", publish=False)
    _f, forged_key = provider.keys[forged]
    stolen_kid = jwt.encode(
        provider.claims(), forged_key, algorithm="RS256", headers={"kid": signed}
    )
    with pytest.raises(AuthError, match="signature"):
        await tokens.verify(stolen_kid)
    for garbage in ("", "not-a-token", "a.b.c", "x" * 20_000):
        with pytest.raises(AuthError):
            await tokens.verify(garbage)


async def test_algorithms_can_be_narrowed(
    provider: Provider, client: httpx.AsyncClient, clock: Clock
) -> None:
    es = provider.add_key("ES256")
    tokens = verifier(provider, client, clock, algorithms=("RS256",))
    with pytest.raises(AuthError, match="only RS256"):
        await tokens.verify(provider.token(es))


async def test_roles_from_a_list_or_a_nested_claim(
    provider: Provider, client: httpx.AsyncClient, clock: Clock, signed: str
) -> None:
    tokens = verifier(
        provider,
        client,
        clock,
        claims=ClaimNames(role="realm_access.roles", program="portline_program"),
    )
    token = provider.token(
        signed,
        role=None,
        program=None,
        realm_access={"roles": ["offline_access", "team_lead", "uma_authorization"]},
        portline_program="guilford",
    )
    assert await tokens.verify(token) == Principal("peer-ana", "team_lead", "guilford")
    none_of_ours = provider.token(
        signed, role=None, realm_access={"roles": ["offline_access"]}, portline_program="g"
    )
    with pytest.raises(AuthError, match="no PORTline role"):
        await tokens.verify(none_of_ours)


async def test_the_development_key_is_trusted_only_where_it_is_configured(
    provider: Provider, client: httpx.AsyncClient, clock: Clock, tmp_path: Path
) -> None:
    key = DevelopmentKey.load(tmp_path)
    assert DevelopmentKey.load(tmp_path).public_jwk == key.public_jwk  # one key per var dir
    assert (tmp_path / "dev-token-key.pem").stat().st_mode & 0o077 == 0
    token = key.mint(
        role="peer", program="demo", subject="dev", audience=[AUDIENCE], now=datetime.now(UTC)
    )
    development = TokenVerifier(
        issuers={DEV_ISSUER: StaticKeys(key.jwks)}, audience=AUDIENCE, algorithms=ALGORITHMS
    )
    assert (await development.verify(token)).subject == "dev"
    # A production service knows only the provider: the development issuer is unknown there.
    with pytest.raises(AuthError, match="issuer"):
        await verifier(provider, client, clock).verify(token)
    # Another machine's development key is not this one's.
    other = DevelopmentKey.load(tmp_path / "elsewhere")
    forged = other.mint(
        role="admin", program="demo", subject="x", audience=[AUDIENCE], now=datetime.now(UTC)
    )
    with pytest.raises(AuthError, match="key id"):
        await development.verify(forged)
    with pytest.raises(ValueError, match="unknown role"):
        key.mint(
            role="sheriff",  # type: ignore[arg-type]
            program="demo",
            subject="x",
            audience=[AUDIENCE],
            now=datetime.now(UTC) - timedelta(hours=1),
        )
