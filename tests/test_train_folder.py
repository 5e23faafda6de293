"""`qvit train` on an image folder with --input-size / --in-chans / --mean / --std / --num-classes:
the values build the model, read the images, land in the checkpoint and from there in the
integer model's input spec (what the runtime preprocesses with); conflicts are one line. And
--teacher builds the teacher from the model arguments stored in its checkpoint."""

import sys

import numpy as np
import pytest
from PIL import Image

from qvit import checkpoint as ckpt
from qvit import cli as qvit_cli
from qvit import train
from qvit_edge.clikit import UserError
from qvit_edge.preprocess import InputSpec, load_image

TINY = ["--model-arg", "depth=1", "--model-arg", "embed_dim=16", "--model-arg", "num_heads=2"]
FAST = ["--epochs", "1", "--batch-size", "6", "--workers", "0", "--no-progress", "--drop-path", "0"]
COLOURS = {"red": (200, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 200)}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """3 classes x (6 train + 2 val) RGB 40x32 PNGs, one colour per class."""
    root = tmp_path_factory.mktemp("folder") / "data"
    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("val", 2)):
        for name, rgb in COLOURS.items():
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                px = np.clip(np.array(rgb)[None, None] + rng.normal(0, 20, (40, 32, 3)), 0, 255)
                Image.fromarray(px.astype(np.uint8)).save(root / split / name / f"{i}.png")
    return root


def _main(monkeypatch, capsys, *args):
    """`qvit ARGS` in this process; (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["qvit", *args])
    rc = qvit_cli.main(list(args))
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_input_flags_reach_the_checkpoint_and_the_exported_input_spec(folder, tmp_path, monkeypatch, capsys):
    from qvit_compile.intmodel import IntModel

    run = tmp_path / "run"
    # deit_tiny_patch4_28 is 1 channel, 28 px by default: the flags must win
    rc, _, err = _main(monkeypatch, capsys, "train", "--model", "deit_tiny_patch4_28", "--data", str(folder),
                       "--input-size", "3", "32", "32", "--mean", ".5", ".5", ".5",
                       "--std", ".25", ".25", ".25", "--num-classes", "3", "--bits", "2",
                       *TINY, *FAST, "--out", str(run))
    assert rc == 0, err
    config = ckpt.read_config(run / "best")
    data, kw = config["data"], config["model"]["timm_kwargs"]
    assert data["channels"] == 3 and data["img_size"] == 32
    assert data["mean"] == [0.5] * 3 and data["std"] == [0.25] * 3
    assert data["classes"] == ["blue", "green", "red"]
    assert (kw["in_chans"], kw["img_size"], kw["num_classes"]) == (3, 32, 3)
    assert config["train"]["mean"] == [0.5] * 3 and config["train"]["num_classes"] == 3

    import timm.data

    model, _ = ckpt.load_model(run / "best")  # timm's view of the input is the trained one
    t = timm.data.resolve_data_config(model=model)
    assert t["input_size"] == (3, 32, 32) and t["mean"] == (0.5,) * 3 and t["std"] == (0.25,) * 3

    out = tmp_path / "m.qvit.safetensors"
    rc, _, err = _main(monkeypatch, capsys, "export", str(run / "best"), "--out", str(out), "--check", "6")
    assert rc == 0, err
    im = IntModel.load(str(out))
    spec = InputSpec.from_meta(im.config)  # what qvit-edge run / qvit_edge.load().predict use
    assert (spec.channels, spec.size) == (3, (32, 32)) and im.input_shape == (3, 32, 32)
    assert spec.mean == (0.5,) * 3 and spec.std == (0.25,) * 3
    assert im.config["classes"] == ["blue", "green", "red"] and im.config["num_classes"] == 3
    # the device's preprocessing of a file is the training side's evaluation transform
    from qvit.data import input_of, load_dataset

    ds = load_dataset(str(folder), "val", **input_of(config))
    tds = ds.torch_dataset(32, train=False, crop_pct=data["crop_pct"], interpolation=data["interpolation"])
    x, _ = tds[0]
    np.testing.assert_allclose(load_image(ds.samples[0][0], spec), x.numpy(), atol=0.1)


def test_grayscale_folder_trains_evaluates_and_resumes_with_its_input(folder, tmp_path, monkeypatch, capsys):
    run = tmp_path / "gray"
    rc, _, err = _main(monkeypatch, capsys, "train", "--model", "deit_tiny_patch4_32", "--data", str(folder),
                       "--in-chans", "1", "--img-size", "16", "--mean", "0.4", "--std", "0.3",
                       *TINY, *FAST, "--max-steps", "2", "--out", str(run))
    assert rc == 0, err
    config = ckpt.read_config(run / "last")
    data = config["data"]
    assert data["channels"] == 1 and data["mean"] == [0.4] and data["std"] == [0.3]
    assert config["model"]["timm_kwargs"]["in_chans"] == 1
    # --resume without the flags takes the run's input; other values are refused
    rc, _, err = _main(monkeypatch, capsys, "train", "--model", "deit_tiny_patch4_32", "--data", str(folder),
                       *TINY, *FAST, "--resume", "--std", "0.5", "--out", str(run))
    assert rc == 2 and "--std [0.5]" in err and len(err.strip().splitlines()) == 1, err
    rc, _, err = _main(monkeypatch, capsys, "train", "--model", "deit_tiny_patch4_32", "--data", str(folder),
                       *TINY, *FAST, "--resume", "--out", str(run))
    assert rc == 0, err
    assert ckpt.read_config(run / "best")["data"]["mean"] == [0.4]
    rc, out, err = _main(monkeypatch, capsys, "eval", str(run / "best"), "--json", "--workers", "0")
    assert rc == 0 and '"images": 6' in out, err


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--data", "fashion-mnist", "--num-classes", "5"], "--num-classes 5: fashion-mnist has 10 classes"),
        (["--data", "digits", "--in-chans", "3"], "digits has 1 channel"),
        (["--data", "digits", "--mean", ".1", ".2"], "2 mean values for 1 input channel"),
        (["--data", "FOLDER", "--num-classes", "5"], "has 3 classes (blue, green, red)"),
        (["--data", "FOLDER", "--std", ".2", ".2"], "2 std values for 3 input channel"),
        (["--input-size", "3", "32", "32", "--in-chans", "1"], "3 32 32 and --in-chans 1 disagree"),
        (["--input-size", "3", "32", "32", "--img-size", "28"], "and --img-size 28 disagree"),
        (["--input-size", "3", "32", "40"], "only square inputs"),
        (["--input-size", "2", "32", "32"], "C must be 1 (grayscale) or 3 (RGB)"),
        (["--input-size", "3", "32"], "--input-size: expected 3 arguments"),
        (["--in-chans", "3", "--mean", ".5", ".5"], "--mean: 2 values for 3 input channels"),
        (["--in-chans", "2"], "--in-chans: invalid choice: 2"),
        (["--std", "0"], "--std: must be > 0"),
        (["--mean", "nan"], "--mean: must be a finite number"),
        (["--num-classes", "3", "--model-arg", "num_classes=4"], "num_classes=4 disagrees with 3"),
    ],
)
def test_input_flag_errors_are_one_line(folder, tmp_path, monkeypatch, capsys, flags, message):
    flags = [str(folder) if f == "FOLDER" else f for f in flags]
    rc, _, err = _main(monkeypatch, capsys, "train", *flags, *TINY, *FAST, "--out", str(tmp_path / "never"))
    assert rc == 2, err
    assert len(err.strip().splitlines()) == 1 and message in err, err
    assert not (tmp_path / "never" / "last").exists()


def _cfg(out, **kw):
    base = dict(model="deit_tiny_patch4_28", data="digits", img_size=8, out=str(out), epochs=1, batch_size=32,
                drop_path=0.0, limit_train=32, limit_val=32, progress=False, workers=0, irm_calib=0)
    base.update(kw)
    return train.TrainConfig(**base)


def test_teacher_is_built_from_the_model_arguments_in_its_checkpoint(tmp_path):
    """A teacher of another depth and width than the student loads (its own stored arguments),
    and teaches with logit distillation; DGD, which pairs layers, and a teacher of another input
    size are one line each."""
    teacher = tmp_path / "teacher"
    train.run(_cfg(teacher, model_args={"patch_size": 2, "depth": 1, "embed_dim": 16, "num_heads": 2}))
    student = {"patch_size": 2, "depth": 2, "embed_dim": 32, "num_heads": 2}
    r = train.run(_cfg(tmp_path / "s", bits=2, model_args=student, teacher=str(teacher / "last"), dgd=0.0))
    assert r["step"] == 1 and "kd" in r["history"][0]
    config = ckpt.read_config(tmp_path / "s" / "last")
    assert config["model"]["timm_kwargs"]["depth"] == 2 and config["distill"]["kind"] == "hard"
    with pytest.raises(ValueError, match="DGD needs the same attention layers"):
        train.run(_cfg(tmp_path / "dgd", bits=2, model_args=student, teacher=str(teacher / "last")))
    with pytest.raises(UserError, match="has img_size=8, the student 16"):
        train.run(_cfg(tmp_path / "big", img_size=16, model_args=student, teacher=str(teacher / "last")))


def test_init_from_passes_its_input_on(folder, tmp_path):
    """QAT from a folder run's checkpoint reads the images as that run did (channels, mean, std)
    without repeating the flags."""
    fp = tmp_path / "fp"
    base = dict(model="deit_tiny_patch4_32", data=str(folder), batch_size=6, limit_val=6,
                model_args={"depth": 1, "embed_dim": 16, "num_heads": 2}, irm_calib=6)
    train.run(_cfg(fp, in_chans=1, img_size=16, mean=[0.4], std=[0.3], **base))
    train.run(_cfg(tmp_path / "q", bits=2, init_from=str(fp / "last"), img_size=16, **base))
    data = ckpt.read_config(tmp_path / "q" / "last")["data"]
    assert (data["channels"], data["mean"], data["std"]) == (1, [0.4], [0.3])
