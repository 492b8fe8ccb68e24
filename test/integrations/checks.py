"""TAP-style checks shared by the integration test drivers (exporter_test.py,
pgbouncer_test.py): "ok N - ..." / "not ok N - ...  # detail" lines, and
polling helpers. Standard library only."""
import socket
import time

results = []  # one boolean per check, in order


def check(ok, description, detail=""):
    """Records and prints one check; returns whether it passed."""
    ok = bool(ok)
    results.append(ok)
    line = "%s %d - %s" % ("ok" if ok else "not ok", len(results), description)
    if not ok and detail:
        line += "  # " + str(detail)
    print(line, flush=True)
    return ok


def summary(suite):
    """Prints the closing line test/run_all.sh's record_summary reads,
    "SUITE: N passed, M failed"; returns the exit status (1 when a check
    failed or none ran)."""
    passed = sum(results)
    print("%s: %d passed, %d failed" % (suite, passed, len(results) - passed), flush=True)
    return 0 if all(results) and results else 1


def wait_for(predicate, timeout, interval=0.1):
    """Polls predicate() until it is true or timeout seconds have passed."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
