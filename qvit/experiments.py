"""`make experiments`: the Q-ViT ablation on Fashion-MNIST, resumable, then its tables and plots.

    python -m qvit.experiments run [--jobs 2] [--seeds 0,1] [--epochs 1]   # train what is missing
    python -m qvit.experiments report                                      # docs/results.md + plots

The grid (GRID below) is the paper's: a full-precision distilled DeiT teacher, then QAT from it
at W4A4 / W3A3 / W2A2 for the fully quantized LSQ baseline (logit distillation only) and Q-ViT
(IRM + DGD), and at W2A2 also +IRM only and +DGD only; plus Q-ViT with the size-independent DGD
reduction (`--dgd-reduce mean`). Every run is one `qvit train` command (printed, and logged under
runs/exp/); a run that is complete is skipped, an interrupted one resumes from its last checkpoint,
so the command can be stopped and started again across sessions. A finished run's record (log and
test result) is also written to docs/results/records/ (commit it): the report is rebuilt from the
records when runs/ is gone.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from qvit_edge.clikit import UserError

ROOT = Path(__file__).resolve().parent.parent
RUNS = Path("runs/exp")
# Every finished run's record (its log.json and test.json, a few KB) is kept in git: runs/ is not,
# and a machine does not outlive a session. The report falls back to the records where a run's
# folder is gone; the plots that need checkpoints use only runs whose checkpoints are here.
RECORDS = Path("docs/results/records")
RESULTS_MD = Path("docs/results.md")
IMG = Path("docs/img")
BEGIN, END = "<!-- experiments:begin -->", "<!-- experiments:end -->"

MODEL = ["--model", "deit_tiny_distilled_patch4_28", "--model-arg", "depth=4", "--model-arg", "embed_dim=96"]
DATA = ["--data", "fashion-mnist", "--batch-size", "128", "--no-progress"]
# Short CPU schedules are in the underfitting regime: no random erasing, no drop-path.
LIGHT_AUG = ["--re-prob", "0", "--drop-path", "0"]
# The teacher trains from scratch on the 55k training images and is selected on the 5k validation
# images carved from the training set: the shipped 4-epoch FP model (models/fmnist_deit_tiny_fp)
# saw all 60k, validation included, so continuing it would leak the validation split. 22 epochs =
# that model's 4 plus the 18 that took it to 89 % (docs/results.md).
TEACHER_ARGS = ["--lr", "1e-3", "--warmup-epochs", "1"]
TEACHER_EPOCHS = 22
# That teacher, trained once and kept in git (runs/ is not): its best/ checkpoint plus the run's
# log.json and test.json. `run` restores runs/exp/teacher from it instead of training the 22
# epochs again; --retrain-teacher trains anew, and `ship-teacher` replaces it with the run's.
SHIPPED_TEACHER = Path("models/fmnist_deit_tiny_teacher")
TEACHER_CHECKPOINT = ("config.json", "model.safetensors")
TEACHER_RECORD = ("log.json", "test.json")

# name: (label, extra flags); the student always distils the teacher's logits (hard, dist token).
VARIANTS = {
    "base": ("LSQ baseline (logit distillation)", ["--no-irm", "--dgd", "0"]),
    "irm": ("+ IRM", ["--dgd", "0"]),
    "qvit_token": ("Q-ViT with the official per-token IRM", ["--irm-stat", "token"]),
    "dgd": ("+ DGD", ["--no-irm", "--dgd-reduce", "sum"]),
    "qvit": ("Q-ViT (IRM + DGD)", ["--dgd-reduce", "sum"]),
    "qvit_mean": ("Q-ViT, DGD averaged (`--dgd-reduce mean`)", ["--dgd-reduce", "mean"]),
    "qvit_wd0": ("Q-ViT, DGD averaged, QAT weight decay 0", ["--dgd-reduce", "mean", "--weight-decay", "0"]),
    "qvit_paper": ("Q-ViT, DGD averaged, the paper's recipe (LAMB, lr 2e-4 per 512 samples, weight decay 0, "
                   "the official LSQ gradient scale)",
                   ["--dgd-reduce", "mean", "--opt", "lamb", "--lr-base-size", "512", "--weight-decay", "0",
                    "--lsq-grad-scale", "batch"]),
    "qvit_qpoint": ("Q-ViT, DGD averaged, on the quantized Q_a(q~), Q_a(k~) (`--dgd-point quantized`)",
                    ["--dgd-reduce", "mean", "--dgd-point", "quantized"]),
    "qvit_rtarget": ("Q-ViT, DGD averaged, against the teacher's q, k through the student's IRM, affine "
                     "included (`--dgd-target rectified`)",
                     ["--dgd-reduce", "mean", "--dgd-target", "rectified"]),
    "qvit_rtarget_sum": ("Q-ViT (IRM + DGD, paper sum), against the teacher's q, k through the student's "
                         "IRM, affine included (`--dgd-target rectified`)",
                         ["--dgd-reduce", "sum", "--dgd-target", "rectified"]),
}
# Order = priority: the first seed of every row before the second seed of any; the three main
# rows at each width before the one-at-a-time ablation.
GRID = [
    (2, "base"),
    (2, "qvit"),
    (2, "qvit_mean"),
    (4, "base"),
    (4, "qvit"),
    (4, "qvit_mean"),
    (3, "base"),
    (3, "qvit"),
    (3, "qvit_mean"),
    (2, "irm"),
    (2, "dgd"),
    (2, "qvit_token"),
]
# The training recipe against the paper's, run only when named in --only: our QAT recipe (AdamW,
# lr 2e-4 at batch 128, weight decay 0.05, per-sample LSQ gradient scale) differs on four counts.
RECIPE = [
    (2, "qvit_wd0"),
    (2, "qvit_paper"),
    (2, "qvit_qpoint"),  # where DGD reads the student's q, k: after IRM (default) or after Q_a
    (2, "qvit_rtarget"),  # the teacher's side of DGD: with the student's IRM affine or without it
    (2, "qvit_rtarget_sum"),
]


@dataclass
class Run:
    name: str
    args: list[str]
    epochs: int
    threads: int
    bits: int | None = None
    variant: str | None = None
    seed: int = 0
    after: list[str] = field(default_factory=list)

    @property
    def out(self) -> Path:
        return RUNS / self.name

    def command(self) -> list[str]:
        return [
            "qvit",
            "train",
            *self.args,
            "--epochs",
            str(self.epochs),
            "--threads",
            str(self.threads),
            "--seed",
            str(self.seed),
            "--out",
            str(self.out),
        ]

    def started(self) -> bool:
        from qvit.checkpoint import has_run

        return has_run(self.out)

    def record(self) -> dict | None:
        f = RECORDS / f"{self.name}.json"
        return json.loads(f.read_text()) if f.exists() else None

    def history(self) -> list[dict]:
        log = self.out / "log.json"
        if log.exists():
            return json.loads(log.read_text())
        rec = self.record()
        return rec["log"] if rec else []

    def has_checkpoint(self) -> bool:
        return (self.out / "best").is_dir()

    def done(self) -> bool:
        h = self.history()
        return bool(h) and h[-1]["epoch"] >= self.epochs

    def test_top1(self) -> float | None:
        """Top-1 of the run's best-validation checkpoint on the test split (test.json, written once
        when the run completes)."""
        f = self.out / "test.json"
        if not self.done():
            return None
        if f.exists():
            return json.loads(f.read_text())["test_top1"]
        rec = self.record()
        return rec["test"]["test_top1"] if rec else None


def save_record(run: Run) -> bool:
    """Copies a finished run's log and test result into RECORDS (for git). Returns whether it did."""
    log, test = run.out / "log.json", run.out / "test.json"
    if not (log.exists() and test.exists() and run.done()):
        return False
    RECORDS.mkdir(parents=True, exist_ok=True)
    rec = {"command": shlex.join(run.command()), "log": json.loads(log.read_text()),
           "test": json.loads(test.read_text())}
    old = run.record()
    if old and (old["log"], old["test"]) == (rec["log"], rec["test"]):
        return True  # the same run: keep the command it was recorded with (--jobs sets threads)
    (RECORDS / f"{run.name}.json").write_text(json.dumps(rec, indent=1) + "\n")
    return True


def plan(seeds: list[int], epochs: int, jobs: int, only: list[str] | None = None) -> list[Run]:
    """The teacher, then GRID per seed; `only` keeps the rows named like "w2a2_base"; runs of
    other than 1 epoch are named ..._e<epochs>_s<seed>."""
    teacher = Run("teacher", [*MODEL, *DATA, *LIGHT_AUG, *TEACHER_ARGS], TEACHER_EPOCHS, max(jobs, 1))
    ckpt = str(teacher.out / "best")
    runs = [teacher]
    for seed in seeds:
        for bits, variant in GRID + RECIPE:
            row = f"w{bits}a{bits}_{variant}"
            if (only and row not in only) or (not only and (bits, variant) in RECIPE):
                continue
            name = f"{row}_s{seed}" if epochs == 1 else f"{row}_e{epochs}_s{seed}"
            flags = ["--bits", str(bits), "--init-from", ckpt, "--teacher", ckpt, "--lr", "2e-4"]
            args = [*MODEL, *DATA, *LIGHT_AUG, *flags, *VARIANTS[variant][1]]
            runs.append(Run(name, args, epochs, 1, bits, variant, seed, ["teacher"]))
    return runs


# ----------------------------------------------------------------------------------------------
# run


def ship_teacher(teacher: Run, dest: Path = SHIPPED_TEACHER) -> None:
    """Copies the finished teacher run's best checkpoint and record into dest (for git)."""
    if not teacher.done() or teacher.test_top1() is None:
        raise SystemExit(f"ship-teacher: {teacher.out} is not a finished teacher run "
                         "(python -m qvit.experiments run --retrain-teacher trains it)")
    from qvit.checkpoint import checkpoint_dir

    best = checkpoint_dir(teacher.out / "best")
    dest.mkdir(parents=True, exist_ok=True)
    for name in TEACHER_CHECKPOINT:
        shutil.copy2(best / name, dest / name)
    for name in TEACHER_RECORD:
        shutil.copy2(teacher.out / name, dest / name)


def restore_teacher(teacher: Run, src: Path = SHIPPED_TEACHER) -> bool:
    """Makes runs/exp/teacher the shipped teacher (best/ + its record) when that run's checkpoint
    is not here (its record in git alone marks it done, but the students start from best/).
    Returns whether it did."""
    shipped = all((src / n).exists() for n in TEACHER_CHECKPOINT + TEACHER_RECORD)
    if (teacher.done() and teacher.has_checkpoint()) or not shipped:
        return False
    (teacher.out / "best").mkdir(parents=True, exist_ok=True)
    for name in TEACHER_CHECKPOINT:
        shutil.copy2(src / name, teacher.out / "best" / name)
    for name in TEACHER_RECORD:
        shutil.copy2(src / name, teacher.out / name)
    return True


def _launch(run: Run) -> subprocess.Popen:
    run.out.parent.mkdir(parents=True, exist_ok=True)
    cmd = run.command()
    if run.started():
        cmd.append("--resume")
    exe = [str(Path(sys.executable).parent / "qvit"), *cmd[1:]]
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS=str(run.threads))
    with open(RUNS / f"{run.name}.log", "a") as log:  # the child keeps its own copy of the descriptor
        log.write(f"$ {shlex.join(cmd)}\n")
        log.flush()
        return subprocess.Popen(exe, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def run_all(runs: list[Run], jobs: int, dry_run: bool) -> int:
    todo = [r for r in runs if not r.done()]
    for r in runs:
        state = "done" if r.done() else ("resume" if r.started() else "new")
        print(f"{state:6s} {r.name:22s} {shlex.join(r.command())}")
    if dry_run or not todo:
        return 0
    running: dict[str, subprocess.Popen] = {}
    failed: list[str] = []
    stop = False

    def interrupt(signum, frame):  # let every run save its checkpoint, then leave
        nonlocal stop
        stop = True
        for p in running.values():
            p.send_signal(signal.SIGINT)

    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)
    t0 = time.time()
    while (todo or running) and not (stop and not running):
        for name, p in list(running.items()):
            if p.poll() is not None:
                del running[name]
                run = next(r for r in runs if r.name == name)
                ok = p.returncode == 0 and run.done()
                if ok:
                    save_record(run)
                state = "finished" if ok else "stopped" if stop else "FAILED"
                print(f"[{(time.time() - t0) / 60:6.1f} min] {name}: {state}")
                if not ok and not stop:
                    failed.append(name)
        busy = sum(r.threads for r in runs if r.name in running)
        for r in list(todo):
            if stop or any(a in running or a in failed or a in [t.name for t in todo] for a in r.after):
                continue
            if busy and busy + r.threads > jobs:
                break
            todo.remove(r)
            running[r.name] = _launch(r)
            busy += r.threads
            print(f"[{(time.time() - t0) / 60:6.1f} min] {r.name}: started (log {RUNS / (r.name + '.log')})")
        if not running and todo and not stop:  # what is left waits on a failed run
            failed += [r.name for r in todo]
            break
        time.sleep(2)
    if failed:
        print(f"failed: {', '.join(failed)} (see their logs under {RUNS}/)")
        return 1
    return 130 if stop else 0


# ----------------------------------------------------------------------------------------------
# report


def _top1(run: Run) -> float | None:
    return run.test_top1()


def _fmt(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.2f} (1 seed)"
    return f"**{statistics.mean(values):.2f}** ({', '.join(f'{v:.2f}' for v in values)})"


def collect(runs: list[Run]) -> dict:
    table: dict[tuple[int, str], list[float]] = {}
    for r in runs:
        if r.bits is not None and (v := _top1(r)) is not None:
            table.setdefault((r.bits, r.variant), []).append(v)
    return table


# (bits, IRM form or None, IRM calibration images): no IRM, the official per-token LayerNorm with
# its identity affine, and the per-head statistics with the least-squares affine (the default)
INIT_POINTS = [(b, stat, calib) for b in (8, 4, 2)
               for stat, calib in ((None, 0), ("token", 0), ("head", 256))]


def init_accuracy(cache: Path | None = None) -> list[dict]:
    """Top-1 (validation images) of the W{b}A{b} students before QAT: the teacher's weights with
    the quantizers initialised from the first training batch, exactly as `qvit train` starts
    (seed 0), for each IRM form. It shows what an IRM costs at the start."""
    cache = cache or RECORDS / "init_accuracy.json"
    rows = json.loads(cache.read_text()) if cache.exists() else []
    if [(r["bits"], r["irm"], r["irm_calib"]) for r in rows] == INIT_POINTS:
        return rows
    rows = before_qat(str(RUNS / "teacher" / "best"), INIT_POINTS)
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(rows, indent=1))
    return rows


def before_qat(init_from: str, points: list, limit: int | None = None) -> list[dict]:
    """Validation top-1 of W{b}A{b} students made from `init_from` before any QAT step, started
    exactly as `qvit train` starts them (qvit.train.start_qat). points: (bits, irm_stat or None for
    no IRM, IRM calibration images)."""
    import torch

    from qvit.data import load_dataset
    from qvit.models import build
    from qvit.train import TrainConfig, evaluate, model_config, start_qat

    torch.set_num_threads(1)
    train, val = load_dataset("fashion-mnist", "train"), load_dataset("fashion-mnist", "val")
    rows = []
    for bits, stat, calib in points:
        cfg = TrainConfig(model=MODEL[1], bits=bits, irm=stat is not None, irm_stat=stat or "head",
                          irm_calib=calib, model_args={"depth": 4, "embed_dim": 96}, progress=False)
        mcfg = model_config(cfg, train)
        torch.manual_seed(cfg.seed)
        model = build(mcfg, init_from=init_from)
        start_qat(model, cfg, mcfg, train, 28, len(train))
        top1 = evaluate(model, val, 28, limit=limit)["top1"]
        rows.append({"bits": bits, "irm": stat, "irm_calib": calib, "top1": top1})
        print(f"before QAT: W{bits}A{bits} irm={stat} calibrated on {calib}: {top1:.2f} %", flush=True)
    return rows


# The IRM table of docs/training.md: every IRM form, from the shipped FP model.
IRM_POINTS = [(bits, stat, calib) for bits in (8, 4)
              for stat, calib in ((None, 0), ("token", 0), ("token", 256), ("head", 0), ("head", 256))]


def write_plots(runs: list[Run], table: dict,
                teacher_top1: float | None) -> tuple[list[str], list[dict], list[dict]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    IMG.mkdir(parents=True, exist_ok=True)
    made = []
    fig, ax = plt.subplots(figsize=(5, 3.6), dpi=120)
    for variant, style in (("base", "o--"), ("qvit", "s-"), ("qvit_mean", "^:")):
        pts = sorted((b, vals) for (b, v), vals in table.items() if v == variant)
        if not pts:
            continue
        xs = [b for b, _ in pts]
        mean = [statistics.mean(v) for _, v in pts]
        err = [[m - min(v) for m, (_, v) in zip(mean, pts)], [max(v) - m for m, (_, v) in zip(mean, pts)]]
        ax.errorbar(xs, mean, yerr=err, fmt=style, capsize=3, label=VARIANTS[variant][0].replace("`", ""))
    if teacher_top1 is not None:
        ax.axhline(teacher_top1, color="gray", lw=1, label=f"FP32 teacher ({teacher_top1:.2f} %)")
    ax.set_xticks([2, 3, 4], ["W2A2", "W3A3", "W4A4"])
    ax.set_ylabel("top-1 on 10k test images (%)")
    ax.set_title("Fashion-MNIST, DeiT-tiny/4 (4 blocks, dim 96)", fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(IMG / "accuracy_vs_bits.png")
    plt.close(fig)
    made.append("accuracy_vs_bits.png")
    pair = {
        VARIANTS[r.variant][0]: str(r.out / "best")
        for r in runs
        if r.bits == 2 and r.seed == runs[1].seed and r.variant in ("base", "irm") and r.has_checkpoint()
    }
    qk_rows: list[dict] = []
    if len(pair) == 2:
        from qvit.qk_stats import plot_qk_distributions

        qk_rows = plot_qk_distributions(pair, IMG / "qk_distributions.png")
        made.append("qk_distributions.png")
    forms = {
        IRM_FORMS[r.variant]: str(r.out / "best")
        for r in runs
        if r.bits == 2 and r.seed == runs[1].seed and r.variant in IRM_FORMS and r.has_checkpoint()
    }
    form_rows: list[dict] = []
    if len(forms) == len(IRM_FORMS):
        from qvit.qk_stats import plot_irm_forms

        teacher = str(runs[0].out / "best") if runs[0].has_checkpoint() else None
        form_rows = plot_irm_forms(forms, teacher, IMG / "irm_forms.png")
        made.append("irm_forms.png")
    return made, qk_rows, form_rows


# W2A2 rows that differ only in the IRM form (all with DGD averaged, except the baseline's none)
IRM_FORMS = {"base": "no IRM (LSQ baseline)", "qvit_token": "per-token IRM", "qvit_mean": "per-head IRM"}


LONGER = (3, 5)  # QAT schedules reported besides the 1-epoch grid when their runs exist


def report(runs: list[Run]) -> str:
    for r in runs:
        save_record(r)
    epochs = runs[1].epochs
    teacher = runs[0]
    t_hist = teacher.history()
    # the students start from best/, the epoch with the highest top-1
    t_best = max(t_hist, key=lambda h: h["val_top1"]) if teacher.done() else None
    t_top1 = teacher.test_top1() if t_best else None
    table = collect(runs)
    plots, qk_rows, form_rows = write_plots(runs, table, t_top1)
    seeds = sorted({r.seed for r in runs[1:]})
    seeds_done = sorted({r.seed for r in runs[1:] if r.done()})
    lines = [
        BEGIN,
        "<!-- written by `python -m qvit.experiments report`; edit qvit/experiments.py, not this block -->",
        "",
        f"Teacher (full precision, `runs/exp/teacher/best`): **{t_top1:.2f} %** top-1 on the test images, "
        f"epoch {t_best['epoch']} of {TEACHER_EPOCHS}, selected on validation "
        f"({t_best['val_top1']:.2f} %; the last epoch: {t_hist[-1]['val_top1']:.2f} %)"
        if t_best is not None and t_top1 is not None
        else "Teacher: not trained yet.",
        "",
        f"Every student: QAT for {epochs} epoch(s) from the teacher, hard distillation through the "
        f"dist token; seeds with results: {', '.join(map(str, seeds_done)) or 'none'}. Top-1 on the "
        "full 10k test set after the last epoch: **mean** (each seed).",
        "",
        "Q-ViT is the default recipe: per-head IRM and DGD averaged (`--dgd-reduce mean`); the "
        "paper's summed DGD is shown beside it.",
        "",
        "| bits (W/A) | "
        + " | ".join(VARIANTS[v][0] for v in ("base", "qvit_mean", "qvit"))
        + " | Q-ViT (averaged DGD) - baseline |",
        "|---|---|---|---|---|",
    ]
    for bits in (4, 3, 2):
        base, qm, qv = (table.get((bits, v), []) for v in ("base", "qvit_mean", "qvit"))
        gap = f"{statistics.mean(qm) - statistics.mean(base):+.2f}" if base and qm else "-"
        lines.append(f"| W{bits}A{bits} | {_fmt(base)} | {_fmt(qm)} | {_fmt(qv)} | {gap} |")
    lines += [
        "",
        "The ablation at W2A2 (the paper's Table: IRM and DGD one at a time):",
        "",
        "| W2A2 | IRM | DGD | top-1 |",
        "|---|---|---|---|",
    ]
    for v, irm, dgd in (
        ("base", "-", "-"),
        ("irm", "per head", "-"),
        ("dgd", "-", "sum"),
        ("qvit", "per head", "sum"),
        ("qvit_mean", "per head", "mean"),
        ("qvit_token", "per token", "mean"),
    ):
        lines.append(f"| {VARIANTS[v][0]} | {irm} | {dgd} | {_fmt(table.get((2, v), []))} |")
    recipe = collect([r for s in seeds for r in plan([s], epochs, 1, [f"w{b}a{b}_{v}" for b, v in RECIPE])])
    if recipe:
        lines += [
            "",
            "The training recipe at W2A2 (Q-ViT, DGD averaged; `--only "
            + ",".join(f"w{b}a{b}_{v}" for b, v in RECIPE) + "`):",
            "",
            "| recipe | top-1 |",
            "|---|---|",
            f"| ours: AdamW, lr 2e-4 at batch 128, weight decay 0.05, per-sample LSQ gradient scale | "
            f"{_fmt(table.get((2, 'qvit_mean'), []))} |",
        ]
        for b, v in RECIPE:
            lines.append(f"| {VARIANTS[v][0]} | {_fmt(recipe.get((b, v), []))} |")
    if plots:
        lines += [""] + [f"![{p}](img/{p})" for p in plots]
    if qk_rows:
        labels = list(dict.fromkeys(r["label"] for r in qk_rows))
        lines += [
            "",
            "Entropy of the 2-bit q / k codes per layer (bits, at most 2; 512 test images, seed "
            f"{runs[1].seed}; `qvit/qk_stats.py`):",
            "",
            "| layer | " + " | ".join(f"{lab}: q / k" for lab in labels) + " |",
            "|---|" + "---|" * len(labels),
        ]
        for layer in sorted({r["layer"] for r in qk_rows}):
            cells = [
                next(
                    f"{r['q']:.2f} / {r['k']:.2f}"
                    for r in qk_rows
                    if r["label"] == lab and r["layer"] == layer
                )
                for lab in labels
            ]
            lines.append(f"| {layer + 1} | " + " | ".join(cells) + " |")
    if form_rows:
        labels = list(dict.fromkeys(r["label"] for r in form_rows))
        lines += [
            "",
            "The three IRM forms at W2A2 (seed "
            f"{runs[1].seed}; 256 validation images; `qvit/qk_stats.py`): per layer, the attention-logit "
            "spread (std over the keys of q k^T / sqrt(d), q and k after Q_a) and the q / k code entropy:",
            "",
            "| layer | " + " | ".join(labels) + " |",
            "|---|" + "---|" * len(labels),
        ]
        for layer in sorted({r["layer"] for r in form_rows}):
            cells = []
            for lab in labels:
                r = next(r for r in form_rows if r["label"] == lab and r["layer"] == layer)
                ent = "" if r["q"] is None else f"; H {r['q']:.2f} / {r['k']:.2f}"
                cells.append(f"spread {r['spread']:.2f}{ent}")
            lines.append(f"| {layer + 1} | " + " | ".join(cells) + " |")
    for longer in LONGER:
        long_runs = plan(seeds, longer, 1)
        for r in long_runs:
            save_record(r)
        long_table = collect(long_runs)
        if not long_table:
            continue
        lines += [
            "",
            f"A longer QAT schedule, {longer} epochs (`python -m qvit.experiments run --epochs {longer} "
            "--only ROWS --seeds S`; the same flags otherwise):",
            "",
            f"| row | top-1 after {longer} epochs | after 1 epoch (same seeds) |",
            "|---|---|---|",
        ]
        for (bits, variant), vals in sorted(long_table.items(), key=lambda kv: (-kv[0][0], kv[0][1])):
            short = [
                v for r in runs if (r.bits, r.variant) == (bits, variant) and (v := _top1(r)) is not None
            ]
            lines.append(
                f"| W{bits}A{bits} {VARIANTS[variant][0]} | {_fmt(vals)} | {_fmt(short[: len(vals)])} |"
            )
    if teacher.done():
        init = {(r["bits"], r["irm"]): r["top1"] for r in init_accuracy()}
        lines += [
            "",
            "Before QAT (the teacher's weights, quantizers initialised from one batch, as `qvit train` "
            "starts; 5000 validation images; `init_accuracy` in `qvit/experiments.py`):",
            "",
            "| bits (W/A) | no IRM | per-token IRM (identity affine, the official code) "
            "| per-head IRM (least-squares affine, 256 images) |",
            "|---|---|---|---|",
        ]
        for bits in sorted({b for b, _ in init}, reverse=True):
            lines.append(f"| W{bits}A{bits} | {init[(bits, None)]:.2f} % | {init[(bits, 'token')]:.2f} % "
                         f"| {init[(bits, 'head')]:.2f} % |")
    lines += [
        "",
        "Commands (`python -m qvit.experiments run --dry-run` prints them with their state):",
        "",
        "```bash",
    ]
    lines += [shlex.join(r.command()) for r in runs if r.seed == seeds[0] or r is teacher]
    lines += ["```", "", END]
    return "\n".join(lines)


def runs_table(runs: list[Run]) -> str:
    """A markdown table of the finished student runs among `runs` (from their folders or records),
    one line per row: test top-1 of each seed (validation top-1 of the selected epoch), their mean
    and sample standard deviation (the seed-to-seed noise any difference between rows is read against).
    Saves their records first. For runs the generated block does not show (more seeds, other
    schedules) without rewriting docs/results.md."""
    rows: dict[tuple[int, str, int], list[Run]] = {}
    for r in runs:
        save_record(r)
        if r.bits is not None and r.test_top1() is not None:
            rows.setdefault((r.bits, r.variant, r.epochs), []).append(r)
    lines = ["| row | QAT epochs | seeds | test top-1 of each seed (validation) | mean | sd |",
             "|---|---|---|---|---|---|"]
    for (bits, variant, epochs), rs in sorted(rows.items(), key=lambda kv: (-kv[0][0], kv[0][2], kv[0][1])):
        cells = []
        for r in rs:
            val = max(h["val_top1"] for h in r.history())
            cells.append(f"{r.test_top1():.2f} ({val:.2f})")
        top1 = [r.test_top1() for r in rs]
        sd = f"{statistics.stdev(top1):.2f}" if len(top1) > 1 else "-"
        seeds = ", ".join(str(r.seed) for r in rs)
        lines.append(f"| W{bits}A{bits} {VARIANTS[variant][0]} | {epochs} | {seeds} "
                     f"| {'; '.join(cells)} | {statistics.mean(top1):.2f} | {sd} |")
    return "\n".join(lines)


def empty_cells(text: str) -> int:
    """Table cells without a result ("| - |"; neighbours share their pipes)."""
    return len(re.findall(r"\|\s*-\s*(?=\|)", text))


def write_report(block: str, force: bool = False) -> None:
    """Replaces the generated block of docs/results.md. Refuses (UserError) to replace results with
    empty cells: a machine without the runs' folders and records (docs/results/records/) would
    otherwise blank every row it cannot see."""
    text = RESULTS_MD.read_text()
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        old = rest.split(END, 1)[0]
        if not force and empty_cells(block) > empty_cells(old):
            raise UserError(f"report: it would leave {empty_cells(block)} table cells without a result "
                            f"where {RESULTS_MD} has {empty_cells(old)}: the runs behind them and their "
                            f"records ({RECORDS}/) are not here; rerun them, or pass --force")
        text = head + block + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n## The ablation (`make experiments`)\n\n" + block + "\n"
    RESULTS_MD.write_text(text)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m qvit.experiments", description=__doc__.splitlines()[0])
    p.add_argument("action", choices=["run", "report", "all", "table", "irm-table", "ship-teacher"],
                   help="table: print the finished runs of --only/--seeds/--epochs as a markdown table "
                        "(docs/results.md untouched); "
                        "irm-table: before-QAT accuracy of every IRM form from models/fmnist_deit_tiny_fp; "
                        f"ship-teacher: copy the finished teacher run into {SHIPPED_TEACHER} (for git)")
    p.add_argument("--jobs", type=int, default=2, help="runs (threads) at a time")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--epochs", type=int, default=1, help="QAT epochs per run")
    p.add_argument("--only", help="comma-separated rows to run, e.g. w2a2_base,w2a2_qvit")
    p.add_argument("--dry-run", action="store_true", help="print the commands and their state only")
    p.add_argument("--force", action="store_true",
                   help="report: write the tables even where they lose results (runs and records not here)")
    p.add_argument("--retrain-teacher", action="store_true",
                   help=f"train the teacher ({TEACHER_EPOCHS} epochs) instead of restoring {SHIPPED_TEACHER}")
    args = p.parse_args(argv)
    os.chdir(ROOT)
    if args.action == "irm-table":
        rows = before_qat("models/fmnist_deit_tiny_fp", IRM_POINTS, limit=2000)
        print("| IRM | calibration images | bits | top-1 (2000 validation images) |\n|---|---|---|---|")
        for r in rows:
            print(f"| {r['irm'] or 'none'} | {r['irm_calib']} | W{r['bits']}A{r['bits']} | {r['top1']:.2f} |")
        return 0
    only = args.only.split(",") if args.only else None
    if only and (unknown := set(only) - {f"w{b}a{b}_{v}" for b, v in GRID + RECIPE}):
        p.error(f"unknown rows {', '.join(sorted(unknown))}")
    runs = plan([int(s) for s in args.seeds.split(",")], args.epochs, args.jobs, only)
    if args.action == "table":
        print(runs_table(runs))
        return 0
    if args.action == "ship-teacher":
        ship_teacher(runs[0])
        print(f"wrote {SHIPPED_TEACHER}: commit it")
        return 0
    rc = 0
    if args.action in ("run", "all") and not args.retrain_teacher and not args.dry_run \
            and restore_teacher(runs[0]):
        print(f"teacher: restored {runs[0].out} from {SHIPPED_TEACHER} (--retrain-teacher trains it anew)")
    if args.action in ("run", "all"):
        rc = run_all(runs, args.jobs, args.dry_run)
    if args.action in ("report", "all") and rc == 0 and not args.dry_run:
        plots = {f: f.read_bytes() for f in IMG.glob("*.png")} if IMG.is_dir() else {}
        try:
            write_report(report(plan([int(s) for s in args.seeds.split(",")], 1, args.jobs)), args.force)
        except UserError as e:
            for f, data in plots.items():  # the plots go with the tables they belong to
                f.write_bytes(data)
            print(f"qvit.experiments: error: {e}", file=sys.stderr)
            return 2
        print(f"wrote {RESULTS_MD} and {IMG}/")
    return rc


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BrokenPipeError:  # `... --dry-run | head`
        sys.stderr.close()
        sys.exit(0)
