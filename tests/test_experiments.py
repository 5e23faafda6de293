"""The ablation driver (qvit/experiments.py) and the q/k code statistics (qvit/qk_stats.py)."""

import argparse
import json
import math
import shutil

import pytest
import torch

from qvit import cmd_train, experiments
from qvit.qk_stats import (
    code_entropy,
    entropy_table,
    head_spread_variation,
    logit_spread,
    plot_irm_forms,
    qk_code_units,
)
from qvit.quantizers import ActQuant


@pytest.fixture(autouse=True)
def records(tmp_path, monkeypatch):
    """The run records (kept in git beside docs/results.md) go to a temporary folder here."""
    d = tmp_path / "records"
    monkeypatch.setattr(experiments, "RECORDS", d)
    return d


def test_a_finished_run_is_reported_from_its_record_once_its_folder_is_gone(tmp_path, monkeypatch, records):
    monkeypatch.setattr(experiments, "RUNS", tmp_path / "runs")
    run = experiments.plan([0], epochs=1, jobs=1)[1]
    assert not experiments.save_record(run)  # nothing to record yet
    run.out.mkdir(parents=True)
    (run.out / "log.json").write_text(json.dumps([{"epoch": 1, "val_top1": 61.0}]))
    assert not experiments.save_record(run)  # no test result: not finished
    (run.out / "test.json").write_text(json.dumps({"test_top1": 60.25}))
    assert experiments.save_record(run)
    rec = json.loads((records / f"{run.name}.json").read_text())
    assert rec["test"]["test_top1"] == 60.25 and rec["command"].startswith("qvit train")
    # saved again by a caller whose --jobs differs: the record keeps the command it was made with
    (records / f"{run.name}.json").write_text(json.dumps({**rec, "command": "as it ran"}))
    assert experiments.save_record(run)
    assert json.loads((records / f"{run.name}.json").read_text())["command"] == "as it ran"
    shutil.rmtree(run.out)
    assert run.done() and run.test_top1() == 60.25 and not run.has_checkpoint()
    assert experiments.collect([run]) == {(run.bits, run.variant): [60.25]}


def test_every_planned_run_is_a_valid_qvit_train_command():
    runs = experiments.plan([0, 1], epochs=1, jobs=2)
    parser = argparse.ArgumentParser()
    cmd_train.add_arguments(parser)
    names = {r.name for r in runs}
    assert len(names) == len(runs) == 1 + 2 * len(experiments.GRID)
    for r in runs:
        cmd = r.command()
        assert cmd[:2] == ["qvit", "train"]
        a = parser.parse_args(cmd[2:])
        assert a.out == str(r.out) and a.seed == r.seed
        if r.bits is None:  # the teacher: full precision, from scratch (no leak of the validation split)
            assert a.bits is None and a.teacher is None and a.init_from is None
            assert a.epochs == experiments.TEACHER_EPOCHS
            continue
        assert a.bits == r.bits and a.epochs == 1 and a.threads == 1
        assert a.teacher == a.init_from == "runs/exp/teacher/best"
        assert a.no_irm == (r.variant in ("base", "dgd"))
        assert (a.dgd > 0) == (r.variant in ("dgd", "qvit", "qvit_mean", "qvit_token"))
        assert a.irm_stat == ("token" if r.variant == "qvit_token" else "head")
        if a.dgd > 0:  # the paper's sum in the rows that reproduce it, else the default mean
            assert a.dgd_reduce == ("sum" if r.variant in ("qvit", "dgd") else "mean")


def test_recipe_rows_run_only_when_named_and_set_the_paper_recipe():
    recipe = ["w2a2_qvit_wd0", "w2a2_qvit_paper", "w2a2_qvit_qpoint"]
    runs = experiments.plan([0], epochs=1, jobs=2, only=recipe)
    parser = argparse.ArgumentParser()
    cmd_train.add_arguments(parser)
    args = {r.variant: parser.parse_args(r.command()[2:]) for r in runs if r.bits}
    assert set(args) == {"qvit_wd0", "qvit_paper", "qvit_qpoint"}
    assert (args["qvit_qpoint"].dgd_point, args["qvit_qpoint"].dgd_reduce) == ("quantized", "mean")
    assert args["qvit_wd0"].dgd_point == "rectified"
    assert args["qvit_wd0"].weight_decay == 0 and args["qvit_wd0"].opt == "adamw"
    paper = args["qvit_paper"]
    assert (paper.opt, paper.lr, paper.lr_base_size, paper.weight_decay, paper.lsq_grad_scale) == (
        "lamb", 2e-4, 512, 0, "batch")
    assert not any(f"w2a2_{r.variant}" in recipe for r in experiments.plan([0], 1, 2))


def test_longer_schedules_get_their_own_run_names_and_only_selects_rows():
    runs = experiments.plan([0], epochs=3, jobs=2, only=["w2a2_base", "w2a2_qvit"])
    assert [r.name for r in runs] == ["teacher", "w2a2_base_e3_s0", "w2a2_qvit_e3_s0"]
    assert all(r.epochs == 3 for r in runs[1:]) and runs[0].epochs == experiments.TEACHER_EPOCHS
    with pytest.raises(SystemExit):
        experiments.main(["run", "--dry-run", "--only", "w2a2_nope"])


def test_a_run_is_done_only_when_its_log_reaches_the_last_epoch(tmp_path, monkeypatch):
    monkeypatch.setattr(experiments, "RUNS", tmp_path)
    run = experiments.plan([0], epochs=2, jobs=1)[1]
    assert not run.done()
    run.out.mkdir(parents=True)
    (run.out / "log.json").write_text(json.dumps([{"epoch": 1, "val_top1": 50.0}]))
    assert not run.done()
    (run.out / "log.json").write_text(
        json.dumps([{"epoch": 1, "val_top1": 50.0}, {"epoch": 2, "val_top1": 60.0}])
    )
    assert run.done() and experiments._top1(run) is None  # no test.json: not reported
    (run.out / "test.json").write_text(json.dumps({"test_top1": 58.5}))
    assert experiments._top1(run) == 58.5


def test_the_shipped_teacher_round_trips_and_is_restored_only_when_the_run_is_missing(tmp_path, monkeypatch):
    monkeypatch.setattr(experiments, "RUNS", tmp_path / "runs")
    teacher = experiments.plan([0], epochs=1, jobs=1)[0]
    shipped = tmp_path / "models" / "teacher"
    with pytest.raises(SystemExit, match="not a finished teacher run"):
        experiments.ship_teacher(teacher, shipped)
    assert not experiments.restore_teacher(teacher, shipped)  # nothing shipped yet
    log = [{"epoch": e, "val_top1": 80.0 + e / 10} for e in range(1, experiments.TEACHER_EPOCHS + 1)]
    (teacher.out / "best").mkdir(parents=True)
    (teacher.out / "best" / "config.json").write_text("{}")
    (teacher.out / "best" / "model.safetensors").write_bytes(b"weights")
    (teacher.out / "log.json").write_text(json.dumps(log))
    (teacher.out / "test.json").write_text(json.dumps({"test_top1": 89.5}))
    experiments.ship_teacher(teacher, shipped)
    want = ["config.json", "log.json", "model.safetensors", "test.json"]
    assert sorted(p.name for p in shipped.iterdir()) == want
    assert not experiments.restore_teacher(teacher, shipped)  # the run is there: left alone
    assert experiments.save_record(teacher)
    shutil.rmtree(teacher.out)
    assert teacher.done()  # by its record: the students still need the checkpoint
    assert experiments.restore_teacher(teacher, shipped)
    assert teacher.done() and teacher.test_top1() == 89.5
    assert (teacher.out / "best" / "model.safetensors").read_bytes() == b"weights"


def test_report_block_replaces_only_its_own_section(tmp_path, monkeypatch):
    md = tmp_path / "results.md"
    md.write_text(f"# Results\n\nbefore\n\n{experiments.BEGIN}\nold\n{experiments.END}\n\nafter\n")
    monkeypatch.setattr(experiments, "RESULTS_MD", md)
    experiments.write_report(f"{experiments.BEGIN}\nnew\n{experiments.END}")
    assert md.read_text() == f"# Results\n\nbefore\n\n{experiments.BEGIN}\nnew\n{experiments.END}\n\nafter\n"


def test_report_refuses_to_blank_results_it_cannot_see(tmp_path, monkeypatch):
    """A machine without the runs and their records must not replace results with empty cells."""
    md = tmp_path / "results.md"
    old = f"{experiments.BEGIN}\n| W2A2 | **82.06** (82.05, 82.06) | - |\n{experiments.END}"
    md.write_text(f"# Results\n\n{old}\n")
    monkeypatch.setattr(experiments, "RESULTS_MD", md)
    poorer = f"{experiments.BEGIN}\n| W2A2 | - | - |\n{experiments.END}"
    with pytest.raises(experiments.UserError, match="2 table cells without a result where .* has 1"):
        experiments.write_report(poorer)
    assert md.read_text() == f"# Results\n\n{old}\n"
    richer = f"{experiments.BEGIN}\n| W2A2 | **82.06** (82.05, 82.06) | 82.1 |\n{experiments.END}"
    experiments.write_report(richer)
    assert md.read_text() == f"# Results\n\n{richer}\n"
    experiments.write_report(poorer, force=True)
    assert md.read_text() == f"# Results\n\n{poorer}\n"


def test_report_tables_runs_and_names_the_teacher_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setattr(experiments, "RUNS", tmp_path)
    monkeypatch.setattr(experiments, "write_plots", lambda runs, table, t: ([], [], []))
    init = [{"bits": b, "irm": i, "irm_calib": c, "top1": 50.0} for b, i, c in experiments.INIT_POINTS]
    monkeypatch.setattr(experiments, "init_accuracy", lambda: init)

    def log(name, tops, test):
        (tmp_path / name).mkdir()
        rows = [{"epoch": e + 1, "val_top1": t} for e, t in enumerate(tops)]
        (tmp_path / name / "log.json").write_text(json.dumps(rows))
        if test is not None:  # written once by a completed run: its best checkpoint on the test split
            (tmp_path / name / "test.json").write_text(json.dumps({"test_top1": test}))

    n = experiments.TEACHER_EPOCHS
    log("teacher", [80.0] * (n - 2) + [89.5, 89.1], 88.75)  # best/ is the next-to-last epoch
    log("w2a2_base_s0", [70.0], 81.0)  # the tables report test, never the validation numbers
    log("w2a2_base_s1", [70.0], 82.0)
    log("w2a2_qvit_s0", [70.0], 79.5)
    log("w2a2_qvit_s1", [70.0], None)  # no test.json: not reported
    log("w2a2_qvit_mean_s0", [70.0], 82.5)
    log("w2a2_qvit_paper_s0", [70.0], 80.0)  # a recipe row: its own table
    block = experiments.report(experiments.plan([0, 1], 1, 2))
    assert (f"**88.75 %** top-1 on the test images, epoch {n - 1} of {n}, selected on validation "
            "(89.50 %; the last epoch: 89.10 %)") in block
    # baseline | Q-ViT (averaged DGD, the default) | Q-ViT (sum) | default - baseline
    assert "| W2A2 | **81.50** (81.00, 82.00) | 82.50 (1 seed) | 79.50 (1 seed) | +1.00 |" in block
    assert "| W4A4 | - | - | - | - |" in block
    assert "| + IRM | per head | - | - |" in block
    assert "the paper's recipe (LAMB" in block and "| 80.00 (1 seed) |" in block
    assert "| W8A8 | 50.00 % | 50.00 % | 50.00 % |" in block


def test_code_entropy():
    assert code_entropy(torch.tensor([0.0, 1.0, 2.0, 3.0] * 10), 2) == pytest.approx(2.0)
    assert code_entropy(torch.full((50,), 7.3), 2) == pytest.approx(0.0)  # all clamp to code 3
    assert code_entropy(torch.tensor([0.2, -0.4, 0.9, 1.2]), 2) == pytest.approx(1.0)  # codes 0, 0, 1, 1


def test_code_units_round_to_the_codes_the_attention_quantizers_produce(monkeypatch):
    seen = []  # the codes Q_a of every attention layer puts out, from its dequantized output
    real_forward = ActQuant.forward

    def forward(self, x):
        y = real_forward(self, x)
        if self.channels is not None:
            p = self.int_params()
            step = torch.from_numpy(p["step"]).view(1, -1, 1, 1)
            seen.append(torch.round(y / step + torch.from_numpy(p["zp"]).view(1, -1, 1, 1)).flatten())
        return y

    monkeypatch.setattr(ActQuant, "forward", forward)
    layers, config = qk_code_units("models/fmnist_deit_tiny_w2a2", images=32)
    assert len(layers) == config["model"]["timm_kwargs"]["depth"]
    for i, layer in enumerate(layers):
        assert layer["bits"] == 2
        for j, name in enumerate(("q", "k")):
            u = layer[name]
            assert u.numel() == 32 * 51 * 96  # images x tokens x (heads x head_dim)
            codes = layer[name + "_codes"]
            assert torch.allclose(codes, torch.clamp(torch.round(u), 0, 3))  # up to odd-zp ties
            assert len(torch.unique(codes)) > 1
            # q_act, k_act, v_act, p_act run in this order in each layer
            assert torch.equal(codes, seen[4 * i + j])
    table = entropy_table(layers)
    assert all(0 < r["q"] <= 2 + 1e-9 and 0 < r["k"] <= 2 + 1e-9 for r in table)
    assert math.isfinite(sum(r["q"] for r in table))


def test_an_interrupted_run_is_relaunched_with_resume(tmp_path, monkeypatch):
    launched = []

    class FakePopen:  # records the command line instead of training
        def __init__(self, args, **kw):
            launched.append(args)

    monkeypatch.setattr(experiments, "RUNS", tmp_path)
    monkeypatch.setattr(experiments.subprocess, "Popen", FakePopen)
    run = experiments.plan([0], epochs=1, jobs=1)[1]
    experiments._launch(run)
    (run.out / "last").mkdir(parents=True)
    experiments._launch(run)
    assert "--resume" not in launched[0] and launched[1][-1] == "--resume"
    assert launched[0][1:] == run.command()[1:]


def test_logit_spread_uses_the_quantized_q_k_and_the_irm_plot_has_every_layer(tmp_path):
    fp = logit_spread("models/fmnist_deit_tiny_teacher", images=16)
    q = logit_spread("models/fmnist_deit_tiny_w2a2", images=16)
    assert len(fp) == len(q) == 4 and all(0 < v < 10 for v in fp + q)
    assert fp != q  # 2-bit q, k after Q_a, not the teacher's
    rows = plot_irm_forms({"a": "models/fmnist_deit_tiny_w2a2"}, "models/fmnist_deit_tiny_teacher",
                          tmp_path / "forms.png", images=16)
    assert (tmp_path / "forms.png").stat().st_size > 1000
    assert [r["layer"] for r in rows if r["label"] == "a"] == [0, 1, 2, 3]
    assert all(r["q"] is None for r in rows if r["label"] == "FP32 teacher")


def test_table_lists_each_seed_the_mean_and_sd_of_finished_runs_only(tmp_path, monkeypatch, records, capsys):
    monkeypatch.setattr(experiments, "RUNS", tmp_path / "runs")
    runs = experiments.plan([0, 1, 2], epochs=5, jobs=1, only=["w2a2_base", "w2a2_irm"])
    done = {("w2a2_base", 0): 80.5, ("w2a2_base", 1): 81.5, ("w2a2_irm", 2): 79.0}
    for r in runs[1:]:
        top1 = done.get((f"w{r.bits}a{r.bits}_{r.variant}", r.seed))
        r.out.mkdir(parents=True)
        log = [{"epoch": e, "val_top1": 70.0 + e + r.seed} for e in range(1, 6 if top1 else 3)]
        (r.out / "log.json").write_text(json.dumps(log))
        if top1:
            (r.out / "test.json").write_text(json.dumps({"test_top1": top1}))
    lines = experiments.runs_table(runs).splitlines()
    assert len(lines) == 4, lines  # header, rule, two rows: the unfinished runs are left out
    assert lines[2] == ("| W2A2 LSQ baseline (logit distillation) | 5 | 0, 1 "
                        "| 80.50 (75.00); 81.50 (76.00) | 81.00 | 0.71 |")
    assert lines[3] == "| W2A2 + IRM | 5 | 2 | 79.00 (77.00) | 79.00 | - |"
    assert sorted(p.name for p in records.iterdir()) == [
        "w2a2_base_e5_s0.json", "w2a2_base_e5_s1.json", "w2a2_irm_e5_s2.json"]


def test_head_spread_variation_measures_the_raw_q_k_before_the_irm():
    """On the shipped per-head-IRM model it must see q, k as qkv computes them (the IRM divides
    exactly this spread out, so after it every image's would be nearly the same)."""
    from qvit.checkpoint import load_model
    from qvit.data import load_dataset
    from qvit.train import iterate

    rows = head_spread_variation("models/fmnist_deit_tiny_w2a2", images=32)
    model, config = load_model("models/fmnist_deit_tiny_w2a2")
    model.eval()
    x, _ = next(iterate(load_dataset("fashion-mnist", "val"), 28, 32, train=False, limit=32))
    seen = []
    for blk in model.blocks:
        blk.attn.qkv.register_forward_hook(lambda m, i, o, h=blk.attn.num_heads: seen.append(
            o.reshape(o.shape[0], o.shape[1], 3, h, -1).permute(2, 0, 3, 1, 4)[:2]))
    with torch.no_grad():
        model(x)
    assert [r["layer"] for r in rows] == [0, 1, 2, 3]
    for r, qk in zip(rows, seen):
        sd = qk[0].double().std(dim=(-2, -1), unbiased=False)
        assert math.isclose(r["q_cv"], float((sd.std(0) / sd.mean(0)).mean()), rel_tol=1e-6)
        assert 0.01 < r["q_cv"] < 0.5 and 0.01 < r["k_cv"] < 0.5 and r["q_ratio"] > 1.0
