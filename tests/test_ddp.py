"""`qvit train` under torchrun: 2 CPU processes (gloo), DistributedDataParallel, a few QAT steps."""

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def test_two_process_ddp_qat_runs_and_keeps_replicas_in_sync(tmp_path):
    out = tmp_path / "ddp"
    args = [
        "--model",
        "deit_tiny_patch4_28",
        "--data",
        "digits",
        "--img-size",
        "8",
        "--bits",
        "2",
        "--epochs",
        "2",
        "--batch-size",
        "16",
        "--limit-train",
        "96",
        "--limit-val",
        "64",
        "--no-progress",
        "--drop-path",
        "0",
        "--out",
        str(out),
    ]
    for kv in ("patch_size=2", "depth=1", "embed_dim=16", "num_heads=2"):
        args += ["--model-arg", kv]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "qvit",
            "train",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    log = json.loads((out / "log.json").read_text())
    assert len(log) == 2
    # 96 images over 2 processes at 16 a process: 3 steps an epoch
    assert [row["step"] for row in log] == [3, 6]
    # quantizer params (broadcast after their data-dependent init) and weights agree on both ranks
    assert all(row["params_in_sync"] for row in log)
    assert (out / "last" / "model.safetensors").exists() and (out / "best" / "config.json").exists()
