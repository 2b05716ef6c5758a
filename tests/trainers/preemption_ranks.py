"""The parent of two DDP-like ranks under ``preemption_forwarded_to_ranks`` (tests/trainers/test_preemption.py).

    python preemption_ranks.py OUT [submitit]

Each rank (a spawned process, as in nnU-Net's DDP start with ``torch.multiprocessing.spawn``, which raises when a
rank exits non-zero; plain ``multiprocessing`` here, so that the ranks do not import torch) installs a SIGUSR1
handler, writes ``OUT/ready<rank>`` and waits; on the signal it writes ``OUT/got<rank>`` and exits 75 as a rank's
``TrainingInterrupted`` does. Only the parent is signalled (by the test). With ``submitit`` the parent has a Python
SIGUSR1 handler beforehand (submitit's requeue): it writes ``OUT/requeued`` with the files it saw, then exits 3.
"""
import os
import signal
import sys
import time


def rank(i: int, out: str) -> None:
    got = []
    signal.signal(signal.SIGUSR1, lambda signum, frame: got.append(signum))
    open(os.path.join(out, f"ready{i}"), "w").close()
    deadline = time.time() + 60
    while not got and time.time() < deadline:
        time.sleep(0.05)
    open(os.path.join(out, f"got{i}"), "w").write(str(got))
    sys.exit(75 if got else 1)


if __name__ == "__main__":
    from semi_nnunet.trainers.schedule import preemption_forwarded_to_ranks
    out = sys.argv[1]
    if sys.argv[2:] == ["submitit"]:
        def requeue(signum, frame):
            open(os.path.join(out, "requeued"), "w").write(" ".join(sorted(os.listdir(out))))
            sys.exit(3)
        signal.signal(signal.SIGUSR1, requeue)
    import multiprocessing
    with preemption_forwarded_to_ranks(out):
        ranks = [multiprocessing.get_context("spawn").Process(target=rank, args=(i, out)) for i in (0, 1)]
        for p in ranks:
            p.start()
        for p in ranks:
            p.join()
        if any(p.exitcode for p in ranks):
            raise RuntimeError(f"ranks exited with {[p.exitcode for p in ranks]}")  # as mp.spawn raises
    print("finished without a signal")
