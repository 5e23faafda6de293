"""The training loop, checkpoints, resume, eval and the `qvit train / eval / ops` command lines."""

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
import torch
from safetensors.torch import load_file

from qvit import checkpoint as ckpt
from qvit import cli as qvit_cli
from qvit import train
from qvit.data import load_dataset, read_idx
from qvit.models import create_model
from qvit_edge.clikit import UserError

TINY = {"patch_size": 2, "depth": 2, "embed_dim": 32, "num_heads": 2}


def tiny_cfg(out, **kw):
    base = dict(
        model="deit_tiny_patch4_28",
        data="digits",
        img_size=8,
        model_args=dict(TINY),
        out=str(out),
        epochs=2,
        batch_size=32,
        lr=3e-3,
        drop_path=0.0,
        limit_train=128,
        progress=False,
        workers=0,
        save_every=3,
    )
    base.update(kw)
    return train.TrainConfig(**base)


def test_fashion_mnist_idx_reader_and_splits():
    test = load_dataset("fashion-mnist", "test")
    assert len(test) == 10000 and test.images.shape == (10000, 1, 28, 28) and test.images.dtype == torch.uint8
    assert set(test.labels.unique().tolist()) == set(range(10)) and test.classes[9] == "Ankle boot"
    assert read_idx("/usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz").shape == (10000,)
    # validation is carved from the training images (the last 5000), never the test images
    train, val = load_dataset("fashion-mnist", "train"), load_dataset("fashion-mnist", "val")
    assert (len(train), len(val)) == (55000, 5000)
    full = read_idx("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")
    assert torch.equal(val.images[:, 0], torch.from_numpy(full[55000:].copy()))
    assert torch.equal(train.images[-1, 0], torch.from_numpy(full[54999].copy()))


def test_a_few_qat_steps_lower_the_loss_on_digits(tmp_path):
    torch.manual_seed(0)
    ds = load_dataset("digits", "train")
    x, y = ds.batch(torch.arange(64), 8, train=False)  # the images QAT trains on
    fp = tiny_cfg(tmp_path / "fp", epochs=1, limit_train=64)
    train.run(fp)  # a full-precision checkpoint to start QAT from (and to teach)
    init = str(tmp_path / "fp" / "last")
    model = create_model(
        "qvit_deit_tiny_patch4_28", bits=2, img_size=8, in_chans=1, num_classes=10, init_from=init,
        irm_stat="token", **TINY
    )
    with torch.no_grad():
        model.train()
        model(ds.batch(torch.arange(32), 8, train=False)[0])  # quantizer init as the run does
        model.eval()
        before = float(torch.nn.functional.cross_entropy(model(x), y))
    # the ablation baseline (labels only) lowers the cross-entropy
    train.run(
        tiny_cfg(
            tmp_path / "q",
            bits=2,
            init_from=init,
            epochs=20,
            limit_train=64,
            aug_pad=0,
            re_prob=0.0,
            flip=False,
            weight_decay=0.0,
            eval_every=100,
            # the loop, not IRM, is under test: the start `before` measures (identity per-token IRM)
            irm_stat="token",
            irm_calib=0,
        )
    )
    q, config = ckpt.load_model(tmp_path / "q" / "last")
    assert config["model"]["quant"]["w_bits"] == 2
    assert config["distill"]["kind"] == "none" and config["distill"]["dgd"] == 0.0  # what the run did
    q.eval()
    with torch.no_grad():
        after = float(torch.nn.functional.cross_entropy(q(x), y))
    # from chance (ln 10); how far 20 epochs on 64 images get depends on the CPU's float paths
    # (0.16 on an AMD Zen 5), while a loop that does not learn stays within 0.01 of the start
    assert after < before - 0.1, (before, after)
    # full Q-ViT objective (hard distillation + DGD) goes down epoch over epoch
    train.run(
        tiny_cfg(
            tmp_path / "qd",
            bits=2,
            init_from=init,
            teacher=init,
            epochs=3,
            limit_train=128,
            aug_pad=0,
            re_prob=0.0,
            flip=False,
        )
    )
    log = json.loads((tmp_path / "qd" / "log.json").read_text())
    assert len(log) == 3 and all("dgd" in row and "kd" in row and "val_top1" in row for row in log)
    assert log[-1]["train_loss"] < log[0]["train_loss"]
    assert (tmp_path / "qd" / "log.csv").read_text().count("\n") == 4
    assert ckpt.read_config(tmp_path / "qd" / "last")["distill"]["dgd"] == 1.0


@pytest.mark.parametrize("opt", ["adamw", "lamb"])  # timm's LAMB keeps a tensor in its param groups
def test_resume_after_interruption_gives_the_same_state(tmp_path, opt):
    torch.manual_seed(0)
    train.run(tiny_cfg(tmp_path / "a", bits=3, opt=opt))
    r = train.run(tiny_cfg(tmp_path / "b", bits=3, max_steps=6, opt=opt))  # killed in epoch 2 (4 steps each)
    assert r["stopped"] and r["step"] == 6
    assert json.loads((tmp_path / "b" / "last" / "train_state.json").read_text())["in_epoch"]
    torch.manual_seed(123)  # a fresh process: other global RNG state, restored from the checkpoint
    train.run(tiny_cfg(tmp_path / "b", bits=3, opt=opt))
    for f in ("model.safetensors", "train_state.safetensors"):
        a, b = load_file(str(tmp_path / "a" / "last" / f)), load_file(str(tmp_path / "b" / "last" / f))
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), (f, k)
    la = json.loads((tmp_path / "a" / "log.json").read_text())
    lb = json.loads((tmp_path / "b" / "log.json").read_text())
    assert [r["train_loss"] for r in la] == [r["train_loss"] for r in lb]


def test_checkpoint_is_safetensors_and_json_and_loads_back(tmp_path):
    m = create_model("qvit_deit_tiny_patch4_28", bits=2, **TINY)
    m(torch.randn(2, 1, 28, 28))
    ckpt.save_checkpoint(tmp_path / "c", m, {"model": m.qvit_config.to_json()})
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["config.json", "model.safetensors"]
    m2, _ = ckpt.load_model(tmp_path / "c")
    x = torch.randn(3, 1, 28, 28)
    m.eval(), m2.eval()
    torch.testing.assert_close(m(x), m2(x), rtol=0, atol=0)


def _cli(*args, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "qvit", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def _main(monkeypatch, capsys, *args):
    """`qvit ARGS` in this process (the verb registry peeks at sys.argv); (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["qvit", *args])
    rc = qvit_cli.main(list(args))
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_train_and_eval_command_lines(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    args = [
        "train",
        "--model",
        "deit_tiny_patch4_28",
        "--data",
        "digits",
        "--img-size",
        "8",
        "--epochs",
        "1",
        "--batch-size",
        "64",
        "--limit-train",
        "64",
        "--bits",
        "2",
        "--no-progress",
        "--lr-base-size",
        "512",
        "--lsq-grad-scale",
        "batch",
        "--out",
        str(out),
    ]
    for k, v in TINY.items():
        args += ["--model-arg", f"{k}={v}"]
    rc, _, err = _main(monkeypatch, capsys, *args)
    assert rc == 0, err
    saved = json.loads((out / "best" / "config.json").read_text())["train"]
    assert saved["lr_base_size"] == 512 and saved["lsq_grad_scale"] == "batch"
    r = _cli("eval", str(out / "best"), "--json", "--limit", "100")  # a fresh process reads it back
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["images"] == 100 and 0 <= res["top1"] <= res["top5"] <= 100 and res["w_bits"] == 2
    rc, _, err = _main(monkeypatch, capsys, *args)  # the run exists: refuse without --resume
    assert rc == 2 and "--resume" in err


def test_lr_base_size_scales_the_peak_by_the_global_batch():
    cfg = train.TrainConfig(lr=2e-4, lr_base_size=512, batch_size=128, epochs=1, min_lr=0.0)
    assert train.peak_lr(cfg) == pytest.approx(5e-5)  # the paper's 2e-4 at 512, per sample
    assert train.peak_lr(cfg, world=4) == pytest.approx(2e-4)
    assert train.lr_at(cfg, 0, 100) == pytest.approx(5e-5)  # cosine starts at the scaled peak
    assert train.peak_lr(train.TrainConfig(lr=2e-4, batch_size=128)) == 2e-4  # unset: --lr as given


@pytest.mark.parametrize(
    "argv",
    [
        ["eval", "/nonexistent/ckpt"],
        ["train", "--model", "nope_model", "--out", "/tmp/qvit-never"],
        ["train", "--bits", "9", "--out", "/tmp/qvit-never"],
        ["train", "--data", "/nonexistent/folder", "--out", "/tmp/qvit-never"],
        ["ops", "--model", "deit_tiny_patch16_224", "--bits", "0"],
    ],
)
def test_user_errors_are_one_line(argv, monkeypatch, capsys):
    rc, _, err = _main(monkeypatch, capsys, *argv)  # a traceback would raise here
    assert rc == 2
    assert len(err.strip().splitlines()) == 1, err


def test_ops_of_deit_small_follows_the_bops_convention(monkeypatch, capsys):
    rc, out, err = _main(
        monkeypatch, capsys, "ops", "--model", "deit_small_distilled_patch16_224", "--bits", "4", "--json"
    )
    assert rc == 0, err
    d = json.loads(out)
    # DeiT-S distilled, 198 tokens: blocks 12 x (qkv + proj + fc1 + fc2 + 2 attention matmuls)
    n, c = 198, 384
    block = n * c * 3 * c + n * c * c + 2 * n * c * 4 * c + 2 * n * n * c
    embed, heads = 196 * 768 * c, 2 * c * 1000
    assert d["macs_fp"] == 12 * block + embed + heads
    assert d["bops"] == 16 * 12 * block and d["flops"] == embed + heads
    assert d["speedup"] == pytest.approx(d["macs_fp"] / (d["bops"] / 64 + d["flops"]))
    assert 3.8 < d["speedup"] < 3.9


def test_imagenet_style_folder_trains_and_evaluates(tmp_path):
    from PIL import Image

    rng = torch.Generator().manual_seed(0)
    for split, n in (("train", 6), ("val", 2)):
        for c in ("cat", "dog"):
            (tmp_path / "data" / split / c).mkdir(parents=True)
            for i in range(n):
                px = (torch.rand(40, 36, 3, generator=rng) * 255).to(torch.uint8).numpy()
                Image.fromarray(px).save(tmp_path / "data" / split / c / f"{i}.png")
    cfg = train.TrainConfig(
        model="deit_tiny_patch4_32",
        data=str(tmp_path / "data"),
        out=str(tmp_path / "run"),
        model_args={"depth": 1, "embed_dim": 16, "num_heads": 2},
        bits=3,
        epochs=1,
        batch_size=4,
        workers=0,
        progress=False,
        drop_path=0.0,
    )
    r = train.run(cfg)
    assert r["step"] == 3 and r["history"][0]["val_top1"] is not None
    config = ckpt.read_config(tmp_path / "run" / "best")
    assert config["classes"] == ["cat", "dog"] and config["data"]["mean"] == [0.485, 0.456, 0.406]
    assert config["model"]["timm_kwargs"]["num_classes"] == 2


def test_sigterm_saves_the_current_step_and_stops(tmp_path, monkeypatch):
    import signal

    from qvit.distill import DistillationLoss

    calls = {"n": 0}
    forward = DistillationLoss.forward

    def forward_then_term(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 3:  # a kill arriving during step 3
            os.kill(os.getpid(), signal.SIGTERM)
        return forward(self, *a, **k)

    monkeypatch.setattr(DistillationLoss, "forward", forward_then_term)
    before = signal.getsignal(signal.SIGTERM)
    r = train.run(tiny_cfg(tmp_path / "t", bits=2))
    assert r["stopped"] and r["signal"] and r["step"] == 3
    state = json.loads((tmp_path / "t" / "last" / "train_state.json").read_text())
    assert state["step"] == 3 and state["in_epoch"]
    assert signal.getsignal(signal.SIGTERM) == before  # the previous handler is back


def test_a_run_interrupted_while_swapping_its_checkpoint_can_still_be_resumed(tmp_path):
    from qvit.checkpoint import has_run

    assert not has_run(tmp_path)
    (tmp_path / "last.old").mkdir()  # save_checkpoint moved last/ aside and was killed
    assert has_run(tmp_path)


# ----------------------------------------------------------------------------------------------
# checkpoints survive kills: a kill at every rename / delete of save_checkpoint, twice in a row


class _Killed(BaseException):
    """A simulated kill -9: BaseException, so no `except Exception` in the code under test stops it."""


@contextlib.contextmanager
def _kill_at(n, partial=False):
    """Raise _Killed at the n-th os.replace / shutil.rmtree call, before it runs (partial: an
    rmtree first deletes one file, as a kill in the middle of it would). Yields the call count."""
    calls = {"n": 0}
    real_replace, real_rmtree = os.replace, shutil.rmtree

    def hit():
        calls["n"] += 1
        return calls["n"] == n

    def replace(src, dst, *a, **k):
        if hit():
            raise _Killed
        return real_replace(src, dst, *a, **k)

    def rmtree(path, *a, **k):
        if hit():
            if partial:
                files = sorted(p for p in Path(path).rglob("*") if p.is_file())
                if files:
                    files[0].unlink()
            raise _Killed
        return real_rmtree(path, *a, **k)

    with mock.patch.object(os, "replace", replace), mock.patch.object(shutil, "rmtree", rmtree):
        yield calls


@pytest.fixture(scope="module")
def small_model():
    m = create_model("qvit_deit_tiny_patch4_28", bits=2, depth=1, embed_dim=16, num_heads=2)
    m(torch.randn(2, 1, 28, 28))
    return m


def _save_step(d, model, step):
    config = {"model": model.qvit_config.to_json(), "progress": {"step": step}}
    ckpt.save_checkpoint(d / "last", model, config, {"t": torch.full((3,), float(step))}, {"step": step})


def _resume_step(d, model):
    """What `qvit train --resume` would find in d: the step of a complete checkpoint (or None)."""
    if not ckpt.has_run(d):
        return None
    c = ckpt.checkpoint_dir(d / "last")
    step = ckpt.read_config(c)["progress"]["step"]
    assert json.loads((c / ckpt.STATE_JSON).read_text())["step"] == step
    assert float(load_file(str(c / ckpt.STATE_FILE))["t"][0]) == step
    loaded = load_file(str(c / ckpt.MODEL_FILE))
    assert loaded.keys() == model.state_dict().keys()
    return step


def _killed_save(d, model, step, n, partial):
    """save step with a kill at call n; -> whether the kill happened (n within the calls made)."""
    try:
        with _kill_at(n, partial):
            _save_step(d, model, step)
    except _Killed:
        return True
    return False


@pytest.mark.parametrize("partial", [False, True], ids=["before", "mid-rmtree"])
def test_checkpoint_survives_two_kills_at_every_rename_and_delete(tmp_path, small_model, partial):
    base = tmp_path / "base"
    for step in (1, 2):
        _save_step(base, small_model, step)
    firsts = 0
    for n1 in range(1, 100):
        one = tmp_path / f"k{n1}"
        shutil.copytree(base, one)
        if not _killed_save(one, small_model, 3, n1, partial):
            assert _resume_step(one, small_model) == 3
            break
        firsts += 1
        resumed = _resume_step(one, small_model)
        assert resumed in (3, 2), (n1, sorted(p.name for p in one.iterdir()))
        for n2 in range(1, 100):
            two = tmp_path / f"k{n1}_{n2}"
            shutil.copytree(one, two)
            killed = _killed_save(two, small_model, resumed + 10, n2, partial)
            found = _resume_step(two, small_model)
            where = (n1, n2, sorted(p.name for p in two.iterdir()))
            if not killed:
                assert found == resumed + 10, where
                assert sorted(p.name for p in two.iterdir()) == ["last"], where  # nothing left over
                break
            assert found in (resumed + 10, resumed), where
            shutil.rmtree(two)
        shutil.rmtree(one)
    assert firsts >= 5  # the kills did land inside save_checkpoint


@pytest.mark.parametrize("src", ["last.writing", "last.new"])
def test_training_killed_twice_at_the_same_rename_resumes_where_it_was(tmp_path, monkeypatch, capsys, src):
    """kill `qvit train` at the rename of `src` (the brief moment two names hold the checkpoint),
    resume, kill again at the same rename, resume: each resume continues from a saved step, never
    from step 0 and never with 'no run to continue', and the run ends at its last step."""
    real_replace = os.replace
    state = {}

    def killing_replace(a, b, *rest, **k):
        if str(a).endswith(os.sep + src) and not str(b).endswith(".trash"):  # not a stale one dropped
            state["renames"] += 1
            if state["renames"] == state["kill_at"]:
                raise _Killed
        return real_replace(a, b, *rest, **k)

    monkeypatch.setattr(os, "replace", killing_replace)
    starts = []
    # the first process dies at its second save (so a previous checkpoint exists), the resumed
    # one at its first (the moment the old code had already deleted `last.old`), the third ends
    for kill_at in (2, 1, None):
        state.update(renames=0, kill_at=kill_at)
        try:
            r = train.run(tiny_cfg(tmp_path / "r", bits=2))
            killed = False
        except _Killed:
            killed = True
        out = capsys.readouterr().out
        m = re.search(r"resuming .* at epoch \d+, step (\d+)", out)
        starts.append(int(m.group(1)) if m else 0)
        if killed:
            assert ckpt.has_run(tmp_path / "r")
    # saves at steps 3, 4 (epoch end), 6, 8 (save_every 3, 4 steps an epoch)
    assert starts == ([0, 3, 3] if src == "last.writing" else [0, 4, 4]), starts
    assert not killed and r["step"] == 8 and not r["stopped"]
    assert ckpt.read_config(tmp_path / "r" / "last")["progress"]["step"] == 8
    assert sorted(p.name for p in (tmp_path / "r").iterdir() if p.name.startswith("last")) == ["last"]


def test_init_from_a_checkpoint_directory_inherits_its_model_arguments(tmp_path):
    """QAT from a `qvit train` directory needs no repeated --model-arg (depth, embed_dim, heads)."""
    train.run(tiny_cfg(tmp_path / "fp", epochs=1, limit_train=32))
    q = tiny_cfg(tmp_path / "q", bits=2, init_from=str(tmp_path / "fp" / "last"), epochs=1, limit_train=32)
    q.model_args = {}
    train.run(q)
    _, config = ckpt.load_model(tmp_path / "q" / "last")
    kw = config["model"]["timm_kwargs"]
    assert {k: kw[k] for k in TINY} == TINY
    # an explicit --model-arg still wins (and then the weights do not fit: one line)
    bad = tiny_cfg(tmp_path / "q2", bits=2, init_from=str(tmp_path / "fp" / "last"), epochs=1, limit_train=32)
    bad.model_args = {"embed_dim": 48}
    with pytest.raises(UserError, match="does not fit this model"):
        train.run(bad)
