"""After futures.shutdown(), every way of submitting raises."""
from scoop import futures, shared

import tasklib as T

if __name__ == "__main__":
    assert list(futures.map(T.square, range(3))) == [0, 1, 4]
    futures.shutdown()
    calls = {"map": lambda: list(futures.map(T.square, range(3))),
             "mapReduce": lambda: futures.mapReduce(T.square, T.add, range(3)),
             "setConst": lambda: shared.setConst(after_shutdown=1),
             "submit": lambda: futures.submit(T.square, 2)}
    for name, call in calls.items():
        try:
            call()
        except RuntimeError as exc:
            assert "shutdown" in str(exc), exc
            print(name, "raises")
        else:
            print(name, "ran")
