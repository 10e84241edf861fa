"""What counts as the infrastructure's failure (retried for ever) and not the message's."""

from __future__ import annotations

import sqlalchemy as sa

from shared.inbox import is_transient


class _PgError(Exception):
    def __init__(self, sqlstate: str) -> None:
        super().__init__("server error")
        self.sqlstate = sqlstate


def _wrapped(sqlstate: str) -> sa.exc.DBAPIError:
    return sa.exc.DBAPIError("SELECT 1", {}, _PgError(sqlstate))


def test_a_database_restart_is_transient_whatever_sqlalchemy_calls_it() -> None:
    assert is_transient(_wrapped("57P01"))  # admin shutdown: "terminating connection"
    assert is_transient(_wrapped("57P03"))  # "the database system is starting up"
    assert is_transient(_wrapped("08006"))  # connection failure
    assert is_transient(_wrapped("53300"))  # too many connections


def test_what_a_message_causes_is_not_transient() -> None:
    assert not is_transient(_wrapped("23505"))  # unique violation
    assert not is_transient(_wrapped("22001"))  # value too long
    assert not is_transient(ValueError("bad data"))
