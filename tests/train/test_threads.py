"""mcm_fast.threads: torch's intra-op threads follow the cores other processes leave free, and the count never
changes a result."""
import itertools

import pytest
import torch

from mcm_fast import threads as threads_module
from mcm_fast.threads import Threads, free_threads, governed, machine_times, process_ticks
from mcm_fast.train.checkpoint import load_checkpoint
from mcm_fast.train.config import ConfigError
from mcm_fast.train.loop import train
from tests.train.test_train import assert_same_run, losses, tiny


@pytest.fixture(autouse=True)
def keep_torch_threads():
    count = torch.get_num_threads()
    yield
    torch.set_num_threads(count)


@pytest.mark.parametrize(("others", "cpus", "limit", "expected"), [
    (0.0, 2, 2, 2), (0.19, 2, 2, 2), (0.25, 2, 2, 1), (1.0, 2, 2, 1), (2.0, 2, 2, 1),  # never below 1
    (0.0, 16, 8, 8), (3.5, 16, 16, 12), (3.2, 16, 16, 13), (3.3, 16, 16, 12), (0.0, 1, 1, 1)])
def test_free_threads_are_the_cores_the_others_leave(others, cpus, limit, expected):
    assert free_threads(others, cpus, limit) == expected


class FakeProc:
    """/proc/stat and /proc/self/stat of a machine whose other processes keep `others` of `cpus` cores busy while
    this one uses `own` cores, advanced by one second a read."""

    def __init__(self, tmp_path, monkeypatch, cpus=2):
        self.stat, self.self_stat = tmp_path / "stat", tmp_path / "self_stat"
        monkeypatch.setattr(threads_module, "STAT", str(self.stat))
        monkeypatch.setattr(threads_module, "SELF_STAT", str(self.self_stat))
        monkeypatch.setattr(threads_module, "LIMIT", cpus)
        monkeypatch.setattr(threads_module, "machine_times", machine_times)  # conftest hides /proc from other tests
        self.cpus, self.busy, self.idle, self.own = cpus, 0, 0, 0
        self.write()

    def advance(self, others: float, own: float, ticks: int = 100):
        self.own += round(own * ticks)
        self.busy += round((others + own) * ticks)
        self.idle += round((self.cpus - others - own) * ticks)
        self.write()

    def write(self):
        cpu = f"cpu  {self.busy} 0 0 {self.idle} 0 0 0 0 0 0\n"
        self.stat.write_text(cpu + "".join(f"cpu{i} 0 0 0 0 0 0 0 0 0 0\n" for i in range(self.cpus)) + "intr 1\n")
        self.self_stat.write_text(f"7 (a (name) with spaces) R 1 1 1 0 -1 0 0 0 0 0 {self.own - 5} 5 0 0 20 0 3 0\n")


def test_threads_drop_to_the_free_cores_and_come_back(tmp_path, monkeypatch):
    proc = FakeProc(tmp_path, monkeypatch)
    assert machine_times() == (0, 0, 2) and process_ticks() == 0
    governor = Threads(interval=0.0)
    for others, own, expected in [(0.0, 2.0, 2), (1.0, 1.0, 1), (0.9, 1.0, 1), (0.1, 1.0, 2), (0.0, 2.0, 2)]:
        proc.advance(others, own)
        governor()
        assert torch.get_num_threads() == expected, (others, own)


def test_threads_read_proc_at_most_once_an_interval(tmp_path, monkeypatch):
    proc = FakeProc(tmp_path, monkeypatch)
    torch.set_num_threads(2)
    governor = Threads(interval=3600.0)
    proc.advance(others=1.0, own=1.0)
    governor()
    assert torch.get_num_threads() == 2


def test_a_fixed_count_is_set_once_and_kept(tmp_path, monkeypatch):
    proc = FakeProc(tmp_path, monkeypatch)
    governor = Threads(1, interval=0.0)
    assert torch.get_num_threads() == 1
    proc.advance(others=0.0, own=1.0)
    governor()
    assert torch.get_num_threads() == 1


def test_without_proc_the_count_stays_torchs(tmp_path, monkeypatch):
    monkeypatch.setattr(threads_module, "STAT", str(tmp_path / "missing"))
    torch.set_num_threads(2)
    governor = Threads(interval=0.0)
    governor()
    assert governor.last is None and torch.get_num_threads() == 2


@pytest.mark.parametrize(("value", "error"), [(0, ValueError), (-1, ValueError), (1.5, TypeError), (True, TypeError)])
def test_a_bad_count_is_refused_by_name(value, error):
    with pytest.raises(error, match="threads"):
        Threads(value)


def test_a_governed_module_sets_threads_before_every_call(tmp_path, monkeypatch):
    proc = FakeProc(tmp_path, monkeypatch)
    net = governed(torch.nn.Linear(3, 3), None, interval=0.0)
    proc.advance(others=1.0, own=1.0)
    net(torch.zeros(1, 3))
    assert torch.get_num_threads() == 1


def test_a_count_that_changes_while_training_changes_the_run_by_rounding_only(tmp_path, monkeypatch):
    """1 and 2 threads in turn at every step: the losses agree with a one-thread run to float rounding (oneDNN
    splits reductions by thread), the weights to less than 2 Adam steps (Adam's update is lr x the sign of a
    rounded near-zero gradient); a fixed count resumes bit for bit."""
    changes = {"data": {"resolution": 16}, "optim": {"batch_size": 32, "warmup": 2}, "steps": 6, "save_every": 3}
    train(tiny(threads=1, **changes), tmp_path / "one", progress=False)
    train(tiny(threads=1, **{**changes, "steps": 3}), tmp_path / "resumed", progress=False)
    train(tiny(threads=1, **changes), tmp_path / "resumed", progress=False)
    assert_same_run(tmp_path / "one", tmp_path / "resumed")
    counts = itertools.cycle([2, 1])
    monkeypatch.setattr(Threads, "__call__", lambda self, *_: torch.set_num_threads(next(counts)))
    train(tiny(**changes), tmp_path / "switching", progress=False)
    assert losses(tmp_path / "switching") == pytest.approx(losses(tmp_path / "one"), rel=1e-4)
    a, b = load_checkpoint(tmp_path / "one")["ema"], load_checkpoint(tmp_path / "switching")["ema"]
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=2 * tiny().optim.lr, msg=key)


@pytest.mark.parametrize("value", [0, -2, "two"])
def test_the_config_key_is_checked_by_name(value):
    with pytest.raises(ConfigError, match="^threads: "):
        tiny(threads=value)
