"""The CPU thread choice: as many threads as other processes leave cores free, measured now."""

from __future__ import annotations

import os

import pytest
import torch

from eeg2music import utils


@pytest.mark.parametrize(("others", "cores", "default", "expected"), [
    (0.0, 2, 2, 2),     # an idle machine: torch's default
    (0.3, 2, 2, 2),
    (1.0, 2, 2, 1),     # one core taken: one thread, no OpenMP thread waiting on a shared core
    (7.8, 2, 2, 1),     # overloaded: still one
    (1.2, 8, 4, 4),     # never more than torch's default
    (5.0, 8, 8, 3),
])
def test_automatic_threads_follow_the_free_cores(monkeypatch, others, cores, default, expected):
    monkeypatch.setattr(utils, "busy_cores", lambda interval=0.2: others)
    monkeypatch.setattr(os, "cpu_count", lambda: cores)
    monkeypatch.setattr(torch, "get_num_threads", lambda: default)
    assert utils.cpu_thread_count(-1, "cpu") == expected
    assert utils.cpu_thread_count(3, "cpu") == 3 and utils.cpu_thread_count(0, "cpu") == default


def test_without_proc_stat_the_load_average_decides(monkeypatch):
    monkeypatch.setattr(utils, "busy_cores", lambda interval=0.2: None)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    monkeypatch.setattr(os, "getloadavg", lambda: (2.4, 1.0, 1.0))
    assert utils.cpu_thread_count(-1, "cpu") == 1


def test_busy_cores_reads_the_machine():
    busy = utils.busy_cores(0.05)
    assert busy is None or 0.0 <= busy <= (os.cpu_count() or 1) + 1e-6
