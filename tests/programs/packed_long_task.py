"""Sub-brokers pack tiny tasks, several to a worker in one message.  A task of a tiny function
that turns out long must not keep the tasks packed behind it waiting while another worker is
idle: each short one ends long before the long one."""
import time

from scoop import futures


def work(t):
    if t:
        time.sleep(t)
    return time.monotonic()


def driver(i):
    # submitted from a worker, so results come back through the brokers, which time them
    for _ in range(3):
        futures.wait([futures.submit(work, 0) for _ in range(400)])  # tiny: timed, then packed
    t0 = time.monotonic()
    fs = [futures.submit(work, 1.5)] + [futures.submit(work, 0) for _ in range(15)]
    ends = [f.result() - t0 for f in fs]
    return max(ends[1:]) < 0.75, round(max(ends[1:]), 3), round(ends[0], 3)


if __name__ == "__main__":
    late = []
    for i in range(6):
        ok, short, long_ = futures.submit(driver, i).result()
        if not ok:
            late.append((i, short, long_))
    print("LATE", late)
