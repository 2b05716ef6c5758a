"""Locks shared by workers: exclusive between processes, a dead owner's lock taken over, a lock without heartbeat
(an owner on another machine that died) taken over, a live one respected; two workers on one fold."""
import json
import multiprocessing as mp
import os
import socket
import threading
import time

import pytest

from semi_nnunet.tasks.locks import claim, is_stale, read_owner


def _hold(lock, started, release):
    with claim(lock) as mine:
        assert mine
        started.set()
        release.wait(30)


def test_claim_is_exclusive_between_processes_and_a_dead_holder_is_taken_over(tmp_path):
    lock = str(tmp_path / "jobs" / "a.lock")
    ctx = mp.get_context("spawn")
    started, release = ctx.Event(), ctx.Event()
    other = ctx.Process(target=_hold, args=(lock, started, release))
    other.start()
    try:
        assert started.wait(60)
        owner = read_owner(lock)
        assert owner["host"] == socket.gethostname() and owner["pid"] == other.pid
        with claim(lock) as mine:
            assert mine is False  # a live worker holds it
        assert os.path.isfile(lock)  # and a refused claim does not remove its lock
    finally:
        release.set()
        other.join(30)
    assert not os.path.exists(lock)  # released at the end of the holder's block
    dead = ctx.Process(target=os.getpid)  # a killed run's lock names a process that no longer exists
    dead.start()
    dead.join()
    for text in (json.dumps({"host": socket.gethostname(), "pid": dead.pid}), f"{socket.gethostname()}:{dead.pid}"):
        with open(lock, "w") as f:  # this format and the host:pid one of earlier versions
            f.write(text)
        assert is_stale(lock)
        with claim(lock) as mine:
            assert mine is True and read_owner(lock)["pid"] == os.getpid()
        assert not os.path.exists(lock)


def test_another_machines_lock_is_respected_while_it_beats_and_taken_over_when_it_stops(tmp_path):
    lock = str(tmp_path / "fold_0" / "training.lock")
    os.makedirs(os.path.dirname(lock))
    with open(lock, "w") as f:
        json.dump({"host": "node-17", "pid": 4242, "slurm_job_id": "981"}, f)
    with claim(lock, stale_s=60) as mine:
        assert mine is False  # fresh heartbeat (just written)
    old = time.time() - 120
    os.utime(lock, (old, old))  # no heartbeat for two minutes
    with claim(lock, stale_s=60) as mine:
        assert mine is True and read_owner(lock)["host"] == socket.gethostname()


def test_the_holder_keeps_its_lock_alive_with_a_heartbeat(tmp_path):
    lock = str(tmp_path / "a.lock")
    with claim(lock, heartbeat_s=0.1) as mine:
        assert mine
        old = time.time() - 1000
        os.utime(lock, (old, old))
        time.sleep(0.5)
        assert time.time() - os.stat(lock).st_mtime < 1  # touched again by the heartbeat
        assert not is_stale(lock, stale_s=5)


def test_a_second_worker_on_a_fold_waits_until_the_first_is_done(tmp_path):
    """What train_fold does: wait on the fold's lock, then find the fold trained."""
    lock, final = str(tmp_path / "training.lock"), tmp_path / "checkpoint_final.pth"
    events, told = [], []

    def first():
        with claim(lock) as mine:
            assert mine
            events.append("first starts")
            time.sleep(1.0)
            final.write_text("weights")
            events.append("first done")

    def second():
        time.sleep(0.2)
        with claim(lock, wait=0.05, on_wait=told.append) as mine:
            assert mine
            events.append("second finds the fold trained" if final.exists() else "second trains it again")
    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert events == ["first starts", "first done", "second finds the fold trained"]
    assert told and f"pid {os.getpid()}" in told[0]


@pytest.mark.parametrize("content", ["", "{not json", "[1, 2]"])
def test_an_unreadable_lock_is_stale_once_its_heartbeat_is_old(tmp_path, content):
    lock = tmp_path / "x.lock"
    lock.write_text(content)
    assert not is_stale(str(lock), stale_s=60)  # it may be being written right now
    old = time.time() - 120
    os.utime(lock, (old, old))
    assert is_stale(str(lock), stale_s=60)


def test_a_lock_naming_this_process_is_held_only_while_this_process_holds_it(tmp_path):
    """pid reuse (a container restarted with the same host name): a leftover lock that names our own pid, which we do
    not hold, is stale; one we hold is not, even to ourselves from another thread."""
    lock = str(tmp_path / "a.lock")
    with open(lock, "w") as f:
        json.dump({"host": socket.gethostname(), "pid": os.getpid()}, f)
    assert is_stale(lock)
    with claim(lock, wait=0.1) as mine:  # taken over at once instead of waiting on itself forever
        assert mine is True
        assert not is_stale(lock)
        seen = []
        t = threading.Thread(target=lambda: seen.append(is_stale(lock)))
        t.start()
        t.join()
        assert seen == [False]


def _take_stale(lock, barrier, out):
    barrier.wait()
    with claim(lock, stale_s=60) as mine:
        if mine:
            out.put(os.getpid())
            time.sleep(1.0)  # hold it while the other worker tries


def test_two_workers_taking_over_one_stale_lock_end_with_one_holder(tmp_path):
    """Both find the lock stale at the same moment; exactly one may hold it (the second must not remove the first's
    new lock and create its own)."""
    lock = str(tmp_path / "a.lock")
    ctx = mp.get_context("spawn")
    for _ in range(3):
        with open(lock, "w") as f:
            json.dump({"host": "node-9", "pid": 1}, f)
        old = time.time() - 600
        os.utime(lock, (old, old))
        barrier, out = ctx.Barrier(2), ctx.Queue()
        workers = [ctx.Process(target=_take_stale, args=(lock, barrier, out)) for _ in range(2)]
        for w in workers:
            w.start()
        for w in workers:
            w.join(60)
        holders = []
        while not out.empty():
            holders.append(out.get())
        assert len(holders) == 1
        assert not os.path.exists(lock) and not os.path.exists(lock + ".takeover")
