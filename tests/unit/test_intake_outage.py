"""When storage fails, partners are told to resend, and nothing half-done is kept."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.unit.test_intake_api import overdose_example, running_intake


async def test_ems_reports_that_cannot_be_stored_get_503_with_retry_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running_intake(tmp_path) as intake:
        batcher = intake.app.state.intake.ems

        async def down(_item: object) -> object:
            raise sa.exc.OperationalError("COMMIT", {}, ConnectionRefusedError("db down"))

        monkeypatch.setattr(batcher, "submit", down)
        plain = await intake.post_ems(overdose_example())
        keyed = await intake.post_ems(overdose_example(), headers={"Idempotency-Key": "k-1"})
        monkeypatch.undo()
        retried = await intake.post_ems(overdose_example(), headers={"Idempotency-Key": "k-1"})

    for response in (plain, keyed):
        assert response.status_code == 503
        assert response.headers["retry-after"] == "5"
        assert response.json()["error"]["code"] == "storage_unavailable"
    # the failed attempt did not use up its Idempotency-Key: the retry is processed
    assert retried.status_code == 200
    assert retried.json()["results"][0]["status"] == "accepted"
    assert "idempotent-replayed" not in retried.headers
