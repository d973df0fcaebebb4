"""The one lease (core/lease): one holder at a time for a folder, refreshed while held, waited for when asked."""

from __future__ import annotations

import json
import threading
import time

import pytest

from cdkd_ray.core.lease import LeaseHeld, acquire_lease, kept, read_lease
from cdkd_ray.core.storage import resolve


def test_a_held_lease_is_refreshed_while_held_and_not_taken_back_once_broken(tmp_path):
    """The holder's thread refreshes the lease (a long run is not taken for dead); if another broke it meanwhile
    (the holder looked gone), the thread leaves the new holder's lease alone, and releasing does not remove it."""
    location = resolve(str(tmp_path)).join(".writer-lease.json")
    with kept(acquire_lease(location, seconds=0.3)) as lease:
        first = read_lease(location)["expires"]
        time.sleep(0.45)
        assert read_lease(location)["expires"] > first and lease.is_mine()
        location.write_bytes(json.dumps({"holder": "other:1", "token": "theirs", "since": 0,
                                         "expires": time.time() + 60}).encode())
        time.sleep(0.25)
        assert read_lease(location)["token"] == "theirs"
    assert read_lease(location)["token"] == "theirs"


def test_a_waiting_taker_gets_the_lease_once_its_holder_lets_go_and_is_refused_after_its_wait(tmp_path):
    """A resumed Tune trial waits for the lease of its old driver; anyone else is refused once the wait is over."""
    location = resolve(str(tmp_path)).join(".writer-lease.json")
    holder = acquire_lease(location, seconds=60)
    started = time.time()
    with pytest.raises(LeaseHeld, match="held by .* since"):
        acquire_lease(location, seconds=60, wait_s=0.5)
    assert 0.5 <= time.time() - started < 5
    threading.Timer(0.5, holder.release).start()
    taken = acquire_lease(location, seconds=60, wait_s=10)
    assert taken.is_mine() and not holder.is_mine()
