"""device.ThreadGovernor: all threads alone; beside other work, the thread count that trained faster, measured."""

from __future__ import annotations

import pytest

from realfake.device import ThreadGovernor


class Machine:
    """A fake clock and /proc/stat: each window, this process uses its threads' worth and others `others` cores."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, threads: int = 2) -> None:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        self.t, self.every, self.mine = 0.0, 0.0, 0.0
        self.set_to: list[int] = []
        self.gov = ThreadGovernor(threads, cpu_seconds=lambda: (self.every, self.mine), clock=lambda: self.t,
                                  set_threads=self.set_to.append)

    def window(self, img_s: float, others: float) -> int:
        """One window of training at `img_s` beside `others` cores of other work; the thread count after it."""
        w = ThreadGovernor.WINDOW_S
        self.t += w
        self.mine += self.gov.current * w
        self.every += (self.gov.current + others) * w
        self.gov.observe(int(img_s * w))
        return self.gov.current


def test_alone_it_never_touches_the_threads(monkeypatch):
    m = Machine(monkeypatch)
    assert [m.window(2000, 0.1) for _ in range(40)] == [2] * 40
    assert m.set_to == [] and m.gov.switches == []


def test_beside_other_work_it_keeps_fewer_threads_where_they_train_faster_and_returns_when_alone(monkeypatch):
    m = Machine(monkeypatch)
    rate = {2: 107, 1: 408}  # the AMD EPYC VM of 2026-11-28: spinning threads beside a 2-thread job
    assert m.window(rate[2], 1.0) == 1  # others busy: one window on 1 thread
    assert m.window(rate[1], 1.0) == 1  # faster: kept
    seen = [m.window(rate[m.gov.current], 1.0) for _ in range(ThreadGovernor.REPROBE + 1)]
    assert 2 in seen and seen[-1] == 1  # it tried 2 again, found it slower, and went back to 1
    assert m.window(rate[1], 0.0) == 2  # the other job ended
    assert m.set_to == [1, 2, 1, 2]
    assert m.gov.switches[0] == {"threads": 1, "others_cores": 1.0, "img_s_before": 107.0}


def test_beside_other_work_it_keeps_all_threads_where_they_train_faster(monkeypatch):
    m = Machine(monkeypatch)
    rate = {2: 1250, 1: 600}  # a 2-core Xeon VM, where spinning threads held their share
    assert m.window(rate[2], 1.0) == 1  # tried
    assert m.window(rate[1], 1.0) == 2  # slower: back
    # and it does not try again at every window: only after REPROBE of them
    counts = [m.window(rate[m.gov.current], 1.0) for _ in range(ThreadGovernor.REPROBE)]
    assert counts.count(1) == 1 and counts[:-1] == [2] * (ThreadGovernor.REPROBE - 1)


def test_it_stays_out_of_the_way_where_it_cannot_or_should_not_act(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert not ThreadGovernor(2, cpu_seconds=lambda: (0.0, 0.0)).enabled  # the user fixed the count
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert not ThreadGovernor(1, cpu_seconds=lambda: (0.0, 0.0)).enabled  # one thread: nothing to share out
    assert not ThreadGovernor(2, cpu_seconds=lambda: None).enabled  # no /proc/stat
    gov = ThreadGovernor(2, cpu_seconds=lambda: (0.0, 0.0), set_threads=lambda n: None)
    gov.current = 1
    gov.close()
    assert gov.current == 2


def test_a_window_counts_training_steps_only(monkeypatch):
    m = Machine(monkeypatch)
    m.t += 60.0  # the validation between two epochs, while other processes were busy
    m.every += 2 * 60.0
    m.gov.restart()  # the next epoch's first step
    assert m.window(2000, 0.0) == 2 and m.gov.rates == {}  # one window of steps, alone: nothing to do
