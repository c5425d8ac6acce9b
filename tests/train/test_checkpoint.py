"""Checkpoints: exact round trips (modules, optimizer, RNG, JSON), atomic saves, pruning, and refusals of
anything that is not a complete mcm_fast checkpoint (never unpickled)."""
import copy
import json
import os
import pickle
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
from torch import nn

from mcm_fast.train import checkpoint as ckpt
from mcm_fast.train.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)


class Tied(nn.Module):
    """A tiny network with a buffer and an output layer tied to its embedding."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(5, 4)
        self.body = nn.Linear(4, 4)
        self.head = nn.Linear(4, 5, bias=False)
        self.head.weight = self.embed.weight
        self.register_buffer("count", torch.tensor([3, 1], dtype=torch.int64))

    def forward(self, i):
        return self.head(torch.tanh(self.body(self.embed(i))))


def trained(steps: int = 3):
    """(model, optimizer, loss function) after a few AdamW steps on fixed data."""
    torch.manual_seed(0)
    model = Tied()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.9, 0.99), weight_decay=0.1)
    labels = torch.tensor([0, 1, 2, 3, 4, 1])

    def step():
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(labels), labels.roll(1)).backward()
        optimizer.step()

    for _ in range(steps):
        step()
    return model, optimizer, step


def assert_same_tensors(a: dict, b: dict):
    assert a.keys() == b.keys()
    for key, value in a.items():
        assert value.dtype == b[key].dtype and torch.equal(value, b[key]), key


def test_round_trip_of_model_ema_optimizer_rng_config_and_scalars(tmp_path):
    model, optimizer, _ = trained()
    ema = copy.deepcopy(model).requires_grad_(False)
    config = {"lr": 1e-2, "betas": [0.9, 0.99], "name": "tiny", "nested": {"steps": 3, "none": None}}
    path = save_checkpoint(tmp_path, model, step=3, ema=ema, optimizer=optimizer, rng={"cpu": torch.get_rng_state()},
                           noise=torch.randn(2, 3), config=config, loss=0.25, tags=["a", "b"])
    assert path == tmp_path / "step-000000003"
    assert sorted(os.listdir(path)) == ["checkpoint.json", "ema.safetensors", "model.safetensors", "noise.safetensors",
                                        "optimizer.safetensors", "rng.safetensors"]
    assert len({(path / name).stat().st_mode for name in os.listdir(path)}) == 1  # all as readable as the JSON
    manifest = json.loads((path / "checkpoint.json").read_text())
    assert manifest["format"] == "mcm_fast.checkpoint" and manifest["version"] == 2 and manifest["step"] == 3
    assert manifest["entries"] == {"model": "module", "ema": "module", "optimizer": "optimizer", "rng": "tensors",
                                   "noise": "tensor", "config": "json", "loss": "json", "tags": "json"}

    state = load_checkpoint(tmp_path)
    assert state["step"] == 3 and state["config"] == config and state["loss"] == 0.25 and state["tags"] == ["a", "b"]
    assert_same_tensors(state["model"], model.state_dict())
    assert_same_tensors(state["ema"], ema.state_dict())
    assert state["model"]["count"].dtype == torch.int64
    assert torch.equal(state["noise"], load_checkpoint(path)["noise"])
    expected = optimizer.state_dict()
    assert state["optimizer"]["param_groups"] == expected["param_groups"]  # betas stay a tuple, params ints
    assert state["optimizer"]["state"].keys() == expected["state"].keys()
    for pid, values in expected["state"].items():
        assert_same_tensors(state["optimizer"]["state"][pid], values)
    torch.set_rng_state(state["rng"]["cpu"])
    a = torch.rand(4)
    torch.set_rng_state(state["rng"]["cpu"])
    assert torch.equal(a, torch.rand(4))


def test_a_resumed_optimizer_steps_exactly_like_the_uninterrupted_one(tmp_path):
    model, optimizer, step = trained()
    save_checkpoint(tmp_path, model, step=3, optimizer=optimizer)
    step()

    state = load_checkpoint(tmp_path)
    resumed, resumed_optimizer, resumed_step = trained(steps=0)
    resumed.load_state_dict(state["model"])
    resumed_optimizer.load_state_dict(state["optimizer"])
    resumed_step()
    assert_same_tensors(resumed.state_dict(), model.state_dict())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.int64, torch.uint8, torch.bool],
                         ids=str)
def test_dtypes_views_and_shared_storage_round_trip_exactly(tmp_path, dtype):
    base = (torch.randn(6, 8) * 100).to(dtype)
    tensors = {"base": base, "transposed": base.t(), "strided": base[:, ::3], "row": base[2], "empty": base[:0],
               "scalar": base[0, 0]}
    save_checkpoint(tmp_path, nn.Identity(), step=0, tensors=tensors, one=base.t())
    state = load_checkpoint(tmp_path)
    assert_same_tensors(state["tensors"], tensors)
    assert state["one"].dtype == dtype and torch.equal(state["one"], base.t())


def test_saved_keys_carry_no_wrapper_prefix(tmp_path):
    model = Tied()
    save_checkpoint(tmp_path, torch.compile(model), step=1, ema=torch.compile(model))
    state = load_checkpoint(tmp_path)
    assert_same_tensors(state["model"], model.state_dict())
    assert state["ema"].keys() == model.state_dict().keys()


@pytest.mark.skipif(not dist.is_available() or dist.is_initialized(), reason="needs a free torch.distributed")
def test_a_ddp_model_saves_without_the_module_prefix(tmp_path):
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        model = Tied()
        save_checkpoint(tmp_path / "run", nn.parallel.DistributedDataParallel(model), step=1)
    finally:
        dist.destroy_process_group()
    assert_same_tensors(load_checkpoint(tmp_path / "run")["model"], model.state_dict())


def test_keep_replace_and_what_latest_ignores(tmp_path):
    model = nn.Linear(2, 2)
    for step in (1, 2, 3, 4):
        save_checkpoint(tmp_path, model, step=step, keep=2, loss=float(step))
    assert sorted(os.listdir(tmp_path)) == ["step-000000003", "step-000000004"]

    save_checkpoint(tmp_path, model, step=4, keep=2, loss=40.0)  # a rerun of step 4 replaces it
    assert sorted(os.listdir(tmp_path)) == ["step-000000003", "step-000000004"]
    assert load_checkpoint(tmp_path)["loss"] == 40.0

    (tmp_path / ".tmp-crashed").mkdir()
    (tmp_path / "step-000000009").mkdir()  # no checkpoint.json
    (tmp_path / "step-000000008").mkdir()
    (tmp_path / "step-000000008" / "checkpoint.json").write_text('{"format": "something else"}')
    assert latest_checkpoint(tmp_path) == tmp_path / "step-000000004"
    assert latest_checkpoint(tmp_path / "absent") is None

    for step in (5, 6):
        save_checkpoint(tmp_path, model, step=step, keep=None)
    assert sorted(os.listdir(tmp_path)) == ["step-000000003", "step-000000004", "step-000000005", "step-000000006",
                                            "step-000000008", "step-000000009"]
    save_checkpoint(tmp_path, model, step=2, keep=1)  # the newest is step 6, but the one just written stays too
    assert sorted(os.listdir(tmp_path)) == ["step-000000002", "step-000000006", "step-000000008", "step-000000009"]


@pytest.mark.parametrize("crash_in", ["write", "rename"])
def test_a_crash_mid_save_leaves_the_previous_checkpoint(tmp_path, monkeypatch, crash_in):
    model = nn.Linear(3, 3)
    save_checkpoint(tmp_path, model, step=1)
    written = []

    def write_then_crash(file, tensors):  # the second tensor file of the save is never written
        if written:
            raise KeyboardInterrupt("killed")
        written.append(file)
        return real_write(file, tensors)

    def crash(*args):
        raise KeyboardInterrupt("killed")

    real_write = ckpt.write_tensors
    if crash_in == "write":
        monkeypatch.setattr(ckpt, "write_tensors", write_then_crash)
    else:
        monkeypatch.setattr(ckpt.os, "rename", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path, nn.Linear(3, 3), step=2, ema=nn.Linear(3, 3))
    monkeypatch.undo()
    strays = [n for n in os.listdir(tmp_path) if n.startswith(".tmp-")]
    assert len(strays) == 1 and "step-000000002" not in os.listdir(tmp_path)
    assert latest_checkpoint(tmp_path) == tmp_path / "step-000000001"
    assert_same_tensors(load_checkpoint(tmp_path)["model"], model.state_dict())

    save_checkpoint(tmp_path, model, step=2)
    assert sorted(os.listdir(tmp_path)) == ["step-000000001", "step-000000002"]


def test_loading_never_unpickles(tmp_path, monkeypatch):
    model, optimizer, _ = trained()
    save_checkpoint(tmp_path, model, step=3, optimizer=optimizer, config={"a": 1})

    def refuse(*args, **kwargs):
        raise AssertionError("something was unpickled")

    for module, name in ((pickle, "load"), (pickle, "loads"), (pickle, "Unpickler"), (torch, "load")):
        monkeypatch.setattr(module, name, refuse)
    state = load_checkpoint(tmp_path)
    assert_same_tensors(state["model"], model.state_dict())


def test_a_run_directory_of_pickles_is_refused_naming_them(tmp_path):
    torch.save({"weight": torch.ones(2)}, tmp_path / "model.pt")
    with pytest.raises(FileNotFoundError, match=r"no checkpoint; expected step-\*/checkpoint.json .*found model.pt, "
                                                "which is never unpickled"):
        load_checkpoint(tmp_path)


@pytest.mark.parametrize("call, message", [
    (lambda d: save_checkpoint(d, {"w": 1}, step=0), r"model\['w'\]: expected a torch.Tensor, got int"),
    (lambda d: save_checkpoint(d, "net", step=0), "model: expected an nn.Module or its state dict, got str"),
    (lambda d: save_checkpoint(d, nn.Linear(1, 1), step=-1), "step: expected an integer >= 0, got -1"),
    (lambda d: save_checkpoint(d, nn.Linear(1, 1), step=1.5), "step: expected an integer, got float 1.5"),
    (lambda d: save_checkpoint(d, nn.Linear(1, 1), step=1, keep=0), "keep: expected an integer >= 1, got 0"),
    (lambda d: save_checkpoint(d, nn.Linear(1, 1), step=1, **{"bad-name": 1}), "bad-name: expected an identifier"),
    (lambda d: save_checkpoint(d, nn.Linear(1, 1), step=1, entries=1), "entries: expected an identifier other than"),
    (lambda d: save_checkpoint(d, nn.Linear(1, 1), step=1, data=object()),
     "data: expected an nn.Module, .* got object"),
    (lambda d: save_checkpoint(d, nn.Linear(1, 1), step=1, cfg={"a": {1: 2}}),
     r"cfg: expected str keys in a JSON value, got 1 in cfg\['a'\]"),
    (lambda d: save_checkpoint(d, nn.Linear(1, 1), step=1, rng={"a": torch.ones(1), "seed": 1}),
     r"rng: expected an nn.Module, .* got Tensor at rng\['a'\]"),
])
def test_bad_arguments_are_named(tmp_path, call, message):
    with pytest.raises((TypeError, ValueError), match=message):
        call(tmp_path)
    assert not tmp_path.exists() or not os.listdir(tmp_path)  # refused before anything is written


def test_tensors_load_in_sorted_order_in_every_process(tmp_path):
    """safetensors' own order from bytes varies between processes; the collectives of FSDP's load need one."""
    save_checkpoint(tmp_path, Tied(), step=1)
    script = ("import sys; from mcm_fast.train.checkpoint import load_checkpoint; "
              "print(list(load_checkpoint(sys.argv[1])['model']))")
    orders = {subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True,
                             check=True).stdout for _ in range(3)}
    assert orders == {str(sorted(Tied().state_dict())) + "\n"}


def test_a_version_1_checkpoint_without_checksums_still_loads(tmp_path):
    model = Tied()
    path = save_checkpoint(tmp_path, model, step=1)
    manifest = json.loads((path / "checkpoint.json").read_text())
    del manifest["sha256"], manifest["checksum"]
    (path / "checkpoint.json").write_text(json.dumps({**manifest, "version": 1}))
    assert_same_tensors(load_checkpoint(tmp_path)["model"], model.state_dict())
