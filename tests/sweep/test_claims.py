"""claim_cells: a store error mid-way releases every claim taken so far (no claim is left beating)."""

from __future__ import annotations

import errno
from types import SimpleNamespace

import pytest

from quantsweep.sweep.claims import claim_cells
from quantsweep.sweep.store import CellStore


def test_an_unreadable_store_mid_way_releases_the_claims_taken(tmp_path, monkeypatch):
    store = CellStore(tmp_path / "store")
    run = SimpleNamespace(started_at=0.0, force=False, retry_failed=False)
    cells = [SimpleNamespace(key=key) for key in ("a", "b", "c")]
    real = CellStore.is_settled
    looks = {"c": 0}

    def is_settled(self, key, run):
        if key == "c":
            looks["c"] += 1
            if looks["c"] == 2:  # after c is claimed: the re-check hits an I/O error
                raise OSError(errno.EIO, "Input/output error", key)
        return real(self, key, run)

    monkeypatch.setattr(CellStore, "is_settled", is_settled)
    with pytest.raises(OSError, match="Input/output error"):
        claim_cells(store, cells, run, batch_size=8, ran_on={})
    assert [store.claim_owner(key) for key in ("a", "b", "c")] == [None, None, None]
    monkeypatch.setattr(CellStore, "is_settled", real)
    claimed = claim_cells(store, cells, run, batch_size=8, ran_on={})  # a later run claims them all
    assert sorted(claimed) == ["a", "b", "c"]
    for claim in claimed.values():
        claim.release()


def test_a_failure_that_cannot_be_stored_releases_the_claim(tmp_path, monkeypatch):
    """A cell whose owners died too often is stored as failed; when that write fails (a full disk), its claim goes too."""
    from quantsweep.sweep import claims

    store = CellStore(tmp_path / "store")
    run = SimpleNamespace(started_at=0.0, force=False, retry_failed=False)
    cells = [SimpleNamespace(key=key, model=None, recipe=None, task="t") for key in ("a", "b")]
    monkeypatch.setattr(claims, "MAX_DEATHS", 0)  # every claim counts as one death too many

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(claims, "store_failure", full_disk)
    with pytest.raises(OSError, match="No space left"):
        claim_cells(store, cells, run, batch_size=8, ran_on={})
    assert [store.claim_owner(key) for key in ("a", "b")] == [None, None]
