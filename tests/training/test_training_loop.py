"""The shared training pieces (bcfeat.training): optimiser step, NaN policy, resume state, file convention."""

from __future__ import annotations

import doctest
from contextlib import nullcontext
from dataclasses import asdict, dataclass, replace
from typing import ClassVar

import pytest
import torch
from torch import nn

import bcfeat.training.checkpoint as checkpoint_mod
import bcfeat.training.device as device_mod
from bcfeat.autoencoder.model import AEConfig
from bcfeat.autoencoder.training import AutoencoderTrainingConfig
from bcfeat.detection.config import DetectorConfig, DetectorTrainingConfig
from bcfeat.evaluation.oracle_model import OracleConfig
from bcfeat.model_files import ModelFileError
from bcfeat.training.checkpoint import check_resumable, config_from_dict, read_model_file, save_model_file
from bcfeat.training.device import resolve_device, training_threads
from bcfeat.training.loop import NonFiniteLossError, OptimizerStep, restore_resume_state, resume_state, run_units

CPU = torch.device("cpu")


@dataclass
class ToyConfig:
    width: int = 4
    lr: float = 0.05
    device: str = "cpu"

    RESUMABLE_CHANGES: ClassVar[tuple[str, ...]] = ("device",)


def _toy_run(path, steps: int, stop_after: int | None = None, cfg: ToyConfig = ToyConfig()) -> nn.Module:
    """A small seeded loop built only from the shared pieces: dropout (global RNG), batches from
    the run's own generator, a schedule, clipping; resumes from ``path`` when it exists."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, cfg.width), nn.Dropout(0.3), nn.Linear(cfg.width, 1))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    step = OptimizerStep(opt, CPU, amp=True, grad_clip=1.0, max_bad_steps=2)  # amp is CUDA only: off here
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))
    gen = torch.Generator().manual_seed(1)
    start = 0
    if path.exists():
        payload = read_model_file(path, "toy")
        check_resumable(path, payload, {"config": cfg})
        model.load_state_dict(payload["state_dict"])
        restore_resume_state(payload, step, sched, gen)
        start = payload["step"]
    model.train()
    for i in range(start, steps if stop_after is None else stop_after):
        x = torch.randn(8, 3, generator=gen)
        loss = ((model(x) - x.sum(1, keepdim=True)) ** 2).mean()
        step(loss, {"mse": loss}, where=f"step {i + 1}/{steps}")
        sched.step()
        save_model_file(path, "toy", cfg, model.state_dict(), {"step": i + 1, **resume_state(step, sched, gen, CPU)})
    return model


# ------------------------------------------------------------------ resume
def test_resume_after_an_interruption_equals_an_uninterrupted_run(tmp_path):
    straight = _toy_run(tmp_path / "a.pt", 8)
    _toy_run(tmp_path / "b.pt", 8, stop_after=3)
    torch.manual_seed(123)  # another process, another global RNG state: restored from the file
    torch.randn(5)
    resumed = _toy_run(tmp_path / "b.pt", 8)
    for (k, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k
    after_resumed = torch.rand(3)  # the global RNG (dropout) ends where the straight run's does
    _toy_run(tmp_path / "c.pt", 8)
    assert torch.equal(after_resumed, torch.rand(3))
    # Another setting that changes what is trained is refused, naming the file and the change.
    with pytest.raises(ValueError, match=r"cannot resume .*b.pt: its ToyConfig differs \(lr: 0.05 -> 0.1\)"):
        _toy_run(tmp_path / "b.pt", 8, cfg=ToyConfig(lr=0.1))
    _toy_run(tmp_path / "b.pt", 8, cfg=ToyConfig(device="auto"))  # where it runs: not what it trains


def test_detector_files_from_before_the_shared_resume_state_restore_their_generators():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(2))], lr=0.1)
    step = OptimizerStep(opt, CPU)
    g_old = torch.Generator().manual_seed(7)
    torch.rand(4, generator=g_old)
    torch.manual_seed(11)
    payload = {"optimizer": opt.state_dict(), "rng": g_old.get_state(), "torch_rng": torch.get_rng_state(),
               "scaler": {}, "skipped": 2}
    expected_g, expected_global = torch.rand(3, generator=g_old), torch.rand(3)
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    restore_resume_state(payload, step, generator=g)
    assert torch.equal(torch.rand(3, generator=g), expected_g) and torch.equal(torch.rand(3), expected_global)
    assert step.skipped == 2


# --------------------------------------------------------------- the step
def test_without_mixed_precision_the_step_is_backward_then_optimizer_step():
    torch.manual_seed(0)
    a = nn.Linear(4, 2)
    b = nn.Linear(4, 2)
    b.load_state_dict(a.state_dict())
    opt_a, opt_b = torch.optim.Adam(a.parameters(), lr=0.1), torch.optim.Adam(b.parameters(), lr=0.1)
    step = OptimizerStep(opt_a, CPU, amp=True)
    assert not step.use_amp and isinstance(step.autocast(), nullcontext)  # amp is CUDA only
    x = torch.randn(5, 4)
    for _ in range(3):
        assert step(a(x).pow(2).mean()) is True
        opt_b.zero_grad(set_to_none=True)
        b(x).pow(2).mean().backward()
        opt_b.step()
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)


def test_non_finite_steps_are_skipped_then_stop_naming_the_batch_and_the_term():
    w = nn.Parameter(torch.ones(3))
    step = OptimizerStep(torch.optim.SGD([w], lr=0.1), CPU, max_bad_steps=2)
    nan = torch.tensor(float("nan"), requires_grad=True)
    assert step(nan, {"mask": nan, "box": torch.tensor(1.0)}, where="step 1/9") is False
    assert step(nan, {"mask": nan}, where="step 2/9") is False
    assert torch.equal(w.detach(), torch.ones(3))  # skipped: the weights are unchanged
    assert step((w ** 2).sum(), {"mask": 0.5}, where="step 3/9") is True  # a good step resets the count
    assert step.bad == 0 and step.skipped == 2
    for i in (4, 5):
        assert step(nan, {"mask": nan}, where=f"step {i}/9") is False
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss in step 6/9: total=nan, mask=nan; 3 non-finite "
                                                 r"step\(s\) in a row \(at most 2 are skipped\), stopping; kept a.pt"):
        step(nan, {"mask": nan, "box": 1.0}, where="step 6/9", on_give_up=lambda: "kept a.pt")
    assert step.skipped == 5
    assert issubclass(NonFiniteLossError, FloatingPointError)


def test_max_bad_steps_zero_stops_at_the_first_non_finite_loss():
    w = nn.Parameter(torch.ones(2))
    step = OptimizerStep(torch.optim.SGD([w], lr=0.1), CPU, max_bad_steps=0)
    with pytest.raises(NonFiniteLossError, match=r"epoch 1/2, batch 3/4: total=inf, image=inf"):
        step(torch.tensor(float("inf")), {"image": float("inf"), "features": 0.1}, where="epoch 1/2, batch 3/4")


def test_the_resume_state_is_on_the_cpu_and_names_its_parts():
    w = nn.Parameter(torch.ones(2))
    opt = torch.optim.Adam([w], lr=0.1)
    step = OptimizerStep(opt, CPU)
    step((w ** 2).sum())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    state = resume_state(step, sched, torch.Generator().manual_seed(0), CPU)
    assert set(state) == {"optimizer", "scaler", "skipped", "rng", "scheduler"}
    assert state["scaler"] is None and set(state["rng"]) == {"torch", "generator"}
    assert all(v.device.type == "cpu" for s in state["optimizer"]["state"].values() for v in s.values())


# ------------------------------------------------------- file convention
def test_a_model_file_has_format_config_and_cpu_weights_and_refuses_another_kind(tmp_path):
    cfg = ToyConfig()
    path = save_model_file(tmp_path / "m.pt", "oracle", cfg, nn.Linear(2, 1).state_dict(), {"epoch": 3})
    payload = torch.load(path, weights_only=True)
    assert payload["format"] == "bcfeat.oracle/1" and payload["config"] == asdict(cfg) and payload["epoch"] == 3
    assert read_model_file(path, "oracle")["epoch"] == 3
    with pytest.raises(ModelFileError, match=r"m\.pt: is a bcfeat oracle file, not a bcfeat detector file"):
        read_model_file(path, "detector")
    with pytest.raises(FileNotFoundError, match=r"no detector checkpoint at .*missing\.pt"):
        read_model_file(tmp_path / "missing.pt", "detector")
    with pytest.raises(ValueError, match=r"extra keys \['config'\] of a oracle file are reserved"):
        save_model_file(tmp_path / "x.pt", "oracle", cfg, {}, {"config": {}})


@pytest.mark.parametrize("cfg", [AEConfig.tiny(), AutoencoderTrainingConfig(epochs=3), DetectorConfig.tiny(),
                                 DetectorTrainingConfig(steps=7), OracleConfig(arch="narrow_resnet")],
                         ids=lambda c: type(c).__name__)
def test_every_config_round_trips_through_config_from_dict(cfg, tmp_path):
    cls = type(cfg)
    assert config_from_dict(cls, asdict(cfg)) == cfg
    assert cls.from_dict(asdict(cfg)) == cfg
    # ... also after a trip through a model file (tuples may come back as lists)
    path = save_model_file(tmp_path / "c.pt", "oracle", cfg, {})
    assert cls.from_dict(read_model_file(path, "oracle")["config"]) == cfg
    with pytest.raises(ValueError, match=rf"unknown {cls.__name__} keys \['colour'\]; known keys are \["):
        cls.from_dict({**asdict(cfg), "colour": "red"})


def test_a_stored_config_with_an_unknown_key_cannot_resume(tmp_path):
    payload = {"config": {**asdict(ToyConfig()), "colour": "red"}}
    with pytest.raises(ValueError, match=r"cannot resume .*f.pt: its stored ToyConfig does not fit this bcfeat "
                                         r"\(unknown ToyConfig keys \['colour'\]"):
        check_resumable(tmp_path / "f.pt", payload, {"config": ToyConfig()})


def test_the_resume_check_ignores_only_the_settings_that_do_not_change_the_result(tmp_path):
    path = tmp_path / "r.pt"
    stored = {"config": asdict(AEConfig.tiny()),
              "train_config": asdict(AutoencoderTrainingConfig(epochs=2, device="cpu", num_threads=1)),
              "data": {"n": 4}}
    now = {"config": AEConfig.tiny(), "train_config": AutoencoderTrainingConfig(epochs=9, device="cuda", amp=False)}
    check_resumable(path, stored, now, {"data": {"n": 4}})
    with pytest.raises(ValueError, match=r"r.pt: its AutoencoderTrainingConfig differs \(batch_size: 500 -> 8, "
                                         r"seed: 0 -> 1\); pass resume=False"):
        check_resumable(path, stored, {**now, "train_config": AutoencoderTrainingConfig(batch_size=8, seed=1)})
    with pytest.raises(ValueError, match=r"r.pt: it was trained on other data \(data: \{'n': 4\} -> \{'n': 5\}\)"):
        check_resumable(path, stored, now, {"data": {"n": 5}})
    # A training config missing from an older file is not checked; a missing model config is.
    check_resumable(path, {"config": stored["config"]}, now)
    assert OracleConfig.RESUMABLE_CHANGES == ("device", "num_threads")  # epochs set the oracle's schedule


# ---------------------------------------------------------------- device
def test_threads_are_restored_even_after_an_error():
    before = torch.get_num_threads()
    det = torch.are_deterministic_algorithms_enabled()
    with pytest.raises(RuntimeError):
        with training_threads(1, deterministic=True):
            assert torch.get_num_threads() == 1 and torch.are_deterministic_algorithms_enabled()
            raise RuntimeError("stop")
    assert torch.get_num_threads() == before and torch.are_deterministic_algorithms_enabled() == det
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_docstring_examples():
    for module in (checkpoint_mod, device_mod):
        assert doctest.testmod(module, optionflags=doctest.ELLIPSIS).failed == 0


def test_an_epoch_in_which_every_update_was_skipped_stops_the_training(tmp_path, monkeypatch):
    """As a GradScaler does when every gradient is non-finite: the first epoch may skip all its
    steps (the scaler is still lowering its scale), the second may not."""
    from bcfeat.autoencoder.training import fit_autoencoder

    def skip(self, loss, terms=None, *, where="", on_give_up=None):
        self.optimizer.zero_grad(set_to_none=True)
        return False

    monkeypatch.setattr(OptimizerStep, "__call__", skip)
    g = torch.Generator().manual_seed(0)
    data = (torch.rand(8, 16, 14, 14, generator=g), torch.rand(8, 3, 32, 32, generator=g), torch.arange(8) % 2)
    cfg = AutoencoderTrainingConfig(epochs=3, batch_size=4, progress=False, num_threads=1)
    with pytest.raises(NonFiniteLossError, match=r"epoch 2/3: none of its 2 updates was applied"):
        fit_autoencoder(data, AEConfig.tiny(), cfg, tmp_path / "ae.pt", resume=False)
    _, history = fit_autoencoder(data, AEConfig.tiny(), replace(cfg, epochs=1), tmp_path / "one.pt", resume=False)
    assert len(history) == 1  # one epoch of skipped steps alone is not an error


def test_the_loop_checkpoints_every_k_units_and_after_the_last_then_stops_when_told():
    saved, seen = [], []

    def checkpoint(n):
        saved.append((n, [r["unit"] for r in history]))  # the file holds every record up to unit n

    history = [{"unit": -1}]  # a resumed run's records
    out = run_units(2, 9, lambda u: {"unit": u} if u != 4 else None, checkpoint=checkpoint, checkpoint_every=3,
                    history=history)
    assert out is history and [r["unit"] for r in history] == [-1, 2, 3, 5, 6, 7, 8]
    assert saved == [(3, [-1, 2]), (6, [-1, 2, 3, 5]), (9, [-1, 2, 3, 5, 6, 7, 8])]
    # the callback sees each record after its checkpoint; True stops there, nothing more runs
    saved.clear()
    history = []
    run_units(0, 9, lambda u: seen.append(u) or {"unit": u}, checkpoint=checkpoint,
              history=history, callback=lambda r: r["unit"] == 2)
    assert seen == [0, 1, 2] and saved[-1] == (3, [0, 1, 2])
    assert run_units(5, 5, lambda u: pytest.fail("no unit to run")) == []
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match="checkpoint_every must be an int >= 1"):
            run_units(0, 1, lambda u: None, checkpoint_every=bad)

