"""Stand-in task functions for the executor tests (imported by Ray workers and Slurm jobs through PYTHONPATH)."""
import json
import os
import time


def sleep_and_record(seconds: float, key: str, log: str, output: str = "") -> str:
    """Sleep, then append this task's start and end time to ``log`` (one JSON line) and touch ``output``."""
    start = time.time()
    time.sleep(seconds)
    with open(log, "a") as f:
        f.write(json.dumps({"key": key, "start": start, "end": time.time(), "pid": os.getpid()}) + "\n")
    if output:
        open(output, "w").close()
    return key


def fail(message: str) -> None:
    raise RuntimeError(message)


def read_log(log: str) -> dict:
    with open(log) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return {r["key"]: r for r in rows}


def die_once(marker: str, key: str, log: str) -> str:
    """The first call leaves ``marker`` and kills its own process (SIGKILL, as the OOM killer would); later calls
    record themselves and finish."""
    import signal
    if not os.path.exists(marker):
        open(marker, "w").close()
        os.kill(os.getpid(), signal.SIGKILL)
    return sleep_and_record(0.0, key, log, os.path.join(os.path.dirname(log), key + ".done"))
