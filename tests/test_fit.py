import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from realfake import training as run
from realfake.config import RunConfig
from realfake.data.batches import random_flips, train_batches
from realfake.data.tensors import to_device_uint8
from realfake.device import seeded
from realfake.errors import RealfakeError
from realfake.fit import EarlyStopping


def small_cfg(mini_zip, out, **kw):
    base = dict(data=str(mini_zip), limit=120, epochs=3, batch_size=32, weights="none", device="cpu", seed=7,
                out=str(out))
    return RunConfig(**{**base, **kw})


def test_early_stopping_counts_epochs_without_progress():
    es = EarlyStopping(patience=2)
    assert es.step(1.0, 1) and not es.should_stop
    assert es.step(0.8, 2)
    assert not es.step(0.8, 3)  # equal is not better
    assert not es.should_stop
    assert not es.step(0.9, 4)
    assert es.should_stop and es.best_epoch == 2 and es.best_loss == 0.8


def test_flips_are_per_image_and_batch_level():
    x = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).view(2, 3, 2, 2).repeat(50, 1, 1, 1)
    out = random_flips(x, torch.Generator().manual_seed(0))
    kinds = set()
    for a, b in zip(x, out, strict=True):
        for name, f in {"none": b, "h": b.flip(2), "v": b.flip(1), "hv": b.flip(1).flip(2)}.items():
            if torch.equal(a, f):
                kinds.add(name)
                break
        else:
            pytest.fail("an output image is not a flip of its input")
    assert kinds == {"none", "h", "v", "hv"}


def test_train_batches_cover_the_epoch_once_and_drop_a_lone_last_image():
    imgs = to_device_uint8(np.zeros((65, 32, 32, 3), np.uint8), torch.device("cpu"))
    labels = torch.arange(65)
    seen = [y for _, y in train_batches(imgs, labels, 32, torch.Generator().manual_seed(1), augment=False)]
    assert [len(y) for y in seen] == [32, 32]  # a batch of 1 would break BatchNorm in training
    got = torch.cat(seen).long()
    assert len(set(got.tolist())) == 64
    first = next(iter(train_batches(imgs, labels, 64, torch.Generator().manual_seed(1))))[0]
    assert first.dtype == torch.float32 and first.shape == (64, 3, 32, 32) and float(first.max()) <= 1.0


def test_early_stop_restores_the_best_weights(mini_zip, tmp_path, monkeypatch):
    scripted = iter([0.50, 0.40, 0.45, 0.46, 0.47, 0.10])  # best at epoch 2, patience 3 stops after epoch 5
    monkeypatch.setattr("realfake.fit._bce_and_accuracy", lambda logits, labels: (next(scripted), 0.5))
    weights_after = {}

    def snapshot(epoch):
        ck = load_file(str(tmp_path / "r" / "checkpoint" / "model.safetensors"))
        weights_after[epoch] = ck

    out = run.train(small_cfg(mini_zip, tmp_path / "r", epochs=10, patience=3), on_epoch_end=snapshot,
                    progress=False, log=lambda m: None)
    info = (out / "run.json").read_text()
    assert '"best_epoch": 2' in info and '"stopped_early": true' in info and '"epochs_run": 5' in info
    final = load_file(str(out / "model.safetensors"))
    assert sorted(weights_after) == [1, 2, 3, 4, 5]
    for k in final:
        assert torch.equal(final[k], weights_after[2][k]), k
    assert not all(torch.equal(final[k], weights_after[5][k]) for k in final)


def test_resume_after_interrupt_matches_an_uninterrupted_run(mini_zip, tmp_path):
    quiet = dict(progress=False, log=lambda m: None)
    straight = run.train(small_cfg(mini_zip, tmp_path / "straight"), **quiet)

    def interrupt(epoch):
        if epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run.train(small_cfg(mini_zip, tmp_path / "resumed"), on_epoch_end=interrupt, **quiet)
    assert not (tmp_path / "resumed" / "model.safetensors").exists()
    resumed = run.resume(tmp_path / "resumed", **quiet)

    a, b = load_file(str(straight / "model.safetensors")), load_file(str(resumed / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert (straight / "history.csv").read_text() .count("\n") == (resumed / "history.csv").read_text().count("\n")
    # seconds differ; every other column of the history must be identical
    strip = lambda p: [line.rsplit(",", 1)[0] for line in (p / "history.csv").read_text().splitlines()]  # noqa: E731
    assert strip(straight) == strip(resumed)


def test_same_seed_same_cpu_run(mini_zip, tmp_path):
    """Two trainings with one seed give the same weights, and neither touches the caller's random numbers: a draw
    after a training is the draw the caller would have had without it (the seed is the run's alone)."""
    quiet = dict(progress=False, log=lambda m: None)
    torch.manual_seed(11)
    want = torch.rand(3)
    torch.manual_seed(11)
    a = run.train(small_cfg(mini_zip, tmp_path / "a", epochs=1), **quiet)
    assert torch.equal(torch.rand(3), want)
    b = run.train(small_cfg(mini_zip, tmp_path / "b", epochs=1), **quiet)
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert (a / "split.json").read_text().replace("/a", "") == (b / "split.json").read_text().replace("/b", "")


def test_seeded_draws_what_manual_seed_draws_and_puts_the_callers_state_back():
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    for device in devices:
        torch.manual_seed(5)
        want = [torch.rand(4, device=d) for d in {torch.device("cpu"), device}]
        torch.manual_seed(123)
        before = torch.get_rng_state(), torch.cuda.get_rng_state() if device.type == "cuda" else None
        with seeded(5, device):
            got = [torch.rand(4, device=d) for d in {torch.device("cpu"), device}]
        assert all(torch.equal(g, w) for g, w in zip(got, want, strict=True)), device
        assert torch.equal(torch.get_rng_state(), before[0])
        if device.type == "cuda":
            assert torch.equal(torch.cuda.get_rng_state(), before[1])


def test_existing_run_dir_is_refused(mini_zip, tmp_path):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "x").write_text("")
    with pytest.raises(RealfakeError, match="--resume"):
        run.train(small_cfg(mini_zip, tmp_path / "r"), progress=False, log=lambda m: None)


def test_training_runs_the_small_map_kernels_and_hands_back_plain_layers(mini_zip, tmp_path, monkeypatch):
    """fit trains with realfake._kernels.small_maps' products in place of the Conv2d forwards, and the model it returns
    (checkpointed, exported, explained) has plain nn.Conv2d layers again."""
    from torch import nn

    import realfake.fit as fit_module
    from realfake._kernels.small_maps import SmallMapConv2d, small_maps_work

    seen: list[set[type]] = []
    built: list[nn.Module] = []

    def on_epoch_end(epoch):
        seen.append({type(m) for m in built[0].modules() if isinstance(m, nn.Conv2d)})

    original = fit_module.small_map_kernels

    def spy(model):
        built.append(model)
        return original(model)

    monkeypatch.setattr(fit_module, "small_map_kernels", spy)
    run.train(small_cfg(mini_zip, tmp_path / "r", epochs=1), on_epoch_end=on_epoch_end, progress=False,
              log=lambda m: None)
    assert seen == [{SmallMapConv2d if small_maps_work() else nn.Conv2d}]  # plain with REALFAKE_KERNELS=0
    assert {type(m) for m in built[0].modules() if isinstance(m, nn.Conv2d)} == {nn.Conv2d}


@pytest.mark.slow  # trains beside busy child processes until the governor has switched threads
def test_training_beside_busy_processes_records_its_thread_switches_and_hands_back_every_thread(
        mini_zip, tmp_path, monkeypatch):
    """fit drives device.ThreadGovernor where the call opts in (realfake.tuning): a window per step here, and
    /proc/stat saying other processes are busy."""
    import json

    from realfake import device as dev

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(dev.ThreadGovernor, "WINDOW_S", 0.0)
    clock = iter(range(1_000_000))
    monkeypatch.setattr(dev, "_cpu_seconds", lambda: (3.5 * (t := next(clock)), 2.0 * t))
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # the count the governor starts from below
    seen: list[int] = []

    def set_threads(n: int) -> None:
        seen.append(n)
        torch.set_num_threads(n)

    defaults = dev.ThreadGovernor.__init__.__defaults__  # (threads, cpu_seconds, clock, set_threads, log)
    monkeypatch.setattr(dev.ThreadGovernor.__init__, "__defaults__", (2, dev._cpu_seconds, defaults[2], set_threads,
                                                                      None))

    at_interrupt: list[int] = []

    def interrupt(epoch):
        at_interrupt.append(torch.get_num_threads())
        raise KeyboardInterrupt

    def to_one_thread(self, rate, others):  # the second run: one thread from the first window on, kept
        if self.current != 1:
            self._switch(1, others, "test")

    try:
        out = run.train(small_cfg(mini_zip, tmp_path / "l", epochs=1), progress=False, log=lambda m: None)
        assert seen == [] and "training_threads" not in json.loads((out / "run.json").read_text())  # a library call
        out = run.train(small_cfg(mini_zip, tmp_path / "r", epochs=1), progress=False, log=lambda m: None,
                        tuning=True)  # the governor is a process-wide trick: library calls opt in (realfake.tuning)
        switches = json.loads((out / "run.json").read_text())["training_threads"]
        assert switches and switches[0]["threads"] == 1 and switches[0]["others_cores"] >= dev.ThreadGovernor.BUSY
        assert seen[0] == 1 and seen[-1] == 2  # the last: all threads again when training ends
        assert torch.get_num_threads() == 2
        monkeypatch.setattr(dev.ThreadGovernor, "_decide", to_one_thread)
        with pytest.raises(KeyboardInterrupt):  # stopped on one thread: every thread comes back all the same
            run.train(small_cfg(mini_zip, tmp_path / "i", epochs=2), on_epoch_end=interrupt, progress=False,
                      log=lambda m: None, tuning=True)
        assert at_interrupt == [1] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)


def test_a_step_observer_is_told_of_every_training_step(mini_zip, tmp_path):
    """train's step_observer: one restart per epoch, then each step's images, adding up to the training split."""
    import json

    from realfake.rundir import RunDir

    class Recorder:
        def __init__(self) -> None:
            self.epochs: list[list[int]] = []

        def restart(self) -> None:
            self.epochs.append([])

        def observe(self, images: int) -> None:
            self.epochs[-1].append(images)

    seen = Recorder()
    out = run.train(small_cfg(mini_zip, tmp_path / "r", epochs=2, patience=5), progress=False, log=lambda m: None,
                    step_observer=seen)
    n_train = json.loads((out / RunDir.DATA_REPORT).read_text())["split"]["train"]["n"]
    assert len(seen.epochs) == 2
    for steps in seen.epochs:
        assert sum(steps) == n_train and max(steps) <= 32 and len(steps) == -(-n_train // 32)


def test_train_epoch_is_the_one_loop_fit_and_adapt_share(monkeypatch):
    """`train_epoch` steps once per batch and sums each batch's loss, hits and images; adapt's head fine-tuning
    runs through it (one training loop, not two)."""
    import realfake.adapt as adapt_module
    from realfake.fit import train_epoch

    torch.manual_seed(0)
    net = torch.nn.Linear(4, 1)
    x = torch.randn(10, 4)
    y = (torch.arange(10) % 2).float()
    batches = [(x[:6], y[:6]), (x[6:], y[6:])]
    before = net.weight.detach().clone()
    seen_steps, losses = [], []

    def loss_of(logits, yb, step):
        loss_sum = torch.nn.functional.binary_cross_entropy_with_logits(logits.squeeze(1), yb, reduction="sum")
        losses.append(float(loss_sum.detach()))
        return loss_sum / len(yb), loss_sum

    sums = train_epoch(net, ((a, b.unsqueeze(1)) for a, b in batches), torch.optim.SGD(net.parameters(), lr=0.1),
                       lambda lg, yb, s: loss_of(lg, yb.squeeze(1), s), device=torch.device("cpu"),
                       after_step=lambda step, n, s: seen_steps.append((step, n)))
    assert seen_steps == [(0, 6), (1, 4)]
    assert sums[2].item() == 10 and sums[0].item() == pytest.approx(sum(losses), rel=1e-6)
    assert not torch.equal(net.weight, before)

    calls = []
    real = adapt_module.train_epoch
    monkeypatch.setattr(adapt_module, "train_epoch", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    model = torch.nn.Sequential()
    model.add_module("body", torch.nn.Flatten())
    model.add_module("head", torch.nn.Linear(3 * 8 * 8, 1))
    images = np.random.default_rng(0).integers(0, 256, (12, 8, 8, 3), dtype=np.uint8)
    model.forward = lambda t: model.head(model.body(t)).squeeze(1)  # type: ignore[method-assign]
    out = adapt_module.finetune(model, images, np.arange(12) % 2, torch.device("cpu"), epochs=2, batch_size=4)
    assert len(calls) == 2 and len(out) == 2 and all(np.isfinite(out))
