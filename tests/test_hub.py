"""The worker's greenlet hub without sockets: task greenlets are reused between tasks, a task
that blocks keeps its own, and interrupts free it again."""
import greenlet
import pytest

from scoop._future import Future
from scoop._scheduler import IDLE_MAX, Hub, TaskGreenlet
from scoop.errors import TaskInterrupted


def run_ready(hub):
    while hub.ready:
        hub.resume(hub.ready.popleft())


def test_tasks_that_do_not_block_share_one_greenlet():
    hub = Hub()
    seen = []

    def task(item):
        g = greenlet.getcurrent()
        seen.append((id(g), g.group, item))

    for i in range(50):
        hub.start(task, i, group=7, task_id=i)
    assert len({gid for gid, _, _ in seen}) == 1
    assert [item for _, _, item in seen] == list(range(50))
    assert all(group == 7 for _, group, _ in seen)
    assert len(hub.free) == 1 and hub.free[0].group is None  # between tasks it belongs to no group


def test_a_blocked_task_keeps_its_greenlet_and_gives_it_back_when_done():
    hub = Hub()
    fut = Future(None, 1, "child")
    log = []

    def task(item):
        if item == "parent":
            hub.block([fut], None)
            log.append(("parent resumed", type(greenlet.getcurrent()) is TaskGreenlet))
        else:
            log.append(item)

    hub.start(task, "parent", group=1, task_id=1)
    assert hub.blocked == 1 and not hub.free
    for i in range(3):
        hub.start(task, f"other {i}", group=1, task_id=10 + i)  # a second greenlet, reused
    assert len(hub.free) == 1
    fut.set_result(42)
    run_ready(hub)
    assert log[-1] == ("parent resumed", True)
    assert hub.blocked == 0 and len(hub.free) == 2


def test_an_interrupted_blocked_task_frees_its_greenlet():
    hub = Hub()
    fut = Future(None, 1, "never")
    ended = []

    def task(item):
        try:
            hub.block([fut], None)
        except TaskInterrupted:
            ended.append(item)
            raise

    def run(item):
        try:
            task(item)
        except TaskInterrupted:
            pass

    hub.start(run, "a", group=3, task_id=1)
    (g,) = hub.blocked_by_group[3]
    hub.throw(g, TaskInterrupted("stop"))
    assert ended == ["a"] and hub.blocked == 0 and hub.free == [g]
    hub.start(run, "b", group=4, task_id=2)  # the freed greenlet runs the next task
    assert hub.blocked_by_group[4] == {g}


def test_the_free_list_is_bounded():
    hub = Hub()
    futs = [Future(None, i, "f") for i in range(IDLE_MAX + 5)]

    def task(i):
        hub.block([futs[i]], None)

    for i in range(len(futs)):
        hub.start(task, i, group=0, task_id=i)
    assert hub.blocked == len(futs)
    for f in futs:
        f.set_result(None)
    run_ready(hub)
    assert hub.blocked == 0 and len(hub.free) == IDLE_MAX


@pytest.mark.parametrize("exc", [ValueError, KeyError])
def test_an_exception_escaping_a_task_reaches_the_hub(exc):
    """The executor catches every task error itself; anything else is a bug to see, not hide."""
    hub = Hub()

    def task(item):
        raise exc(item)

    with pytest.raises(exc):
        hub.start(task, "boom", group=0, task_id=1)
