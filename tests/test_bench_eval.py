"""`qvit-edge bench`'s benchmark_model-style flags (time-based runs, first inference, p95/p999/std,
--input, --cpus, --cooldown, --batch, --csv, --trace, --plot) and `qvit-edge eval` on an ImageFolder
tree, on one tiny random-weight DeiT compiled for this machine with Fashion-MNIST's class names."""
import csv
import io
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import one_line_error
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples", "images")
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
           "Ankle boot"]


def _edge(*args, cwd=ROOT, timeout=300):
    return subprocess.run([sys.executable, "-m", "qvit_edge", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd)


def _json(r) -> dict:
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def _random_deit(seed):
    from qvit_compile.intmodel import random_deit

    return random_deit(seed=seed)


@pytest.fixture(scope="module")
def model_so(tmp_path_factory):
    pytest.importorskip("tvm", reason="the compile stage (apache-tvm) is not installed")
    from qvit_compile.compiler import compile_model

    m = _random_deit(5)
    m.config["classes"] = CLASSES
    path = str(tmp_path_factory.mktemp("bench_eval") / "deit.so")
    compile_model(m, os.uname().machine, path, progress=lambda *a: None)
    return path


@pytest.fixture(scope="module")
def plan_steps(model_so):
    import qvit_edge

    with qvit_edge.load(model_so) as m:
        return m._model.steps


# ------------------------------------------------------------------------------------------ bench


def test_bench_json_has_the_benchmark_model_fields(model_so, plan_steps):
    d = _json(_edge("bench", model_so, "--runs", "7", "--warmup", "2", "--json"))
    assert d["schema"] == "qvit-edge.bench/2"
    assert d["runs"] == 7 and d["runs_requested"] == 7 and d["stopped_by"] == "runs" and d["warmup"] == 2
    assert d["batch"] == 1 and d["input"] == "random" and d["cooldown_s"] == 0
    assert d["init_ms"] == d["load_ms"] > 0 and d["first_inference_ms"] > 0 and d["warmup_mean_ms"] > 0
    lat = d["latency_ms"]
    assert set(lat) == {"min", "p50", "p90", "p95", "p99", "p999", "mean", "std", "max"}
    assert 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p95"] <= lat["p99"] <= lat["p999"] <= lat["max"]
    assert lat["min"] <= lat["mean"] <= lat["max"] and lat["std"] >= 0
    assert d["latency_per_image_ms"] == lat
    assert d["timed_s"] <= d["wall_s"] and d["images_per_s"] == pytest.approx(7 / d["timed_s"])
    assert d["cpus"] == sorted(os.sched_getaffinity(0))
    steps = d["profile_steps"]
    assert [s["index"] for s in steps] == list(range(len(plan_steps)))
    assert [s["kind"] for s in steps] == [s["kind"] for s in plan_steps]
    assert all(s["ms"] >= 0 and s["kernel"].startswith("qvit_k") for s in steps)
    assert sum(s["share"] for s in steps) == pytest.approx(1.0)
    # the per-step numbers add up to the per-kind ones
    for kind, ms in d["profile_ms"].items():
        assert sum(s["ms"] for s in steps if s["kind"] == kind) == pytest.approx(ms)


def test_text_report_shows_first_inference_and_the_tail(model_so):
    r = _edge("bench", model_so, "--runs", "3", "--warmup", "0")
    assert r.returncode == 0, r.stderr
    for word in ("first inference", "p95", "p999", "std", "warm-up mean -", "3 timed (3 asked)"):
        assert word in r.stdout, r.stdout


def test_min_secs_keeps_running_until_that_long(model_so):
    d = _json(_edge("bench", model_so, "--runs", "1", "--warmup", "0", "--min-secs", "0.3", "--json",
                    "--no-profile"))
    assert d["runs"] > 1 and d["wall_s"] >= 0.3 and d["stopped_by"] == "min_secs" and d["min_secs"] == 0.3


def test_max_secs_stops_before_runs_and_cooldown_is_not_timed(model_so):
    d = _json(_edge("bench", model_so, "--runs", "100000", "--warmup", "0", "--max-secs", "0.3",
                    "--cooldown", "0.05", "--json"))
    assert d["stopped_by"] == "max_secs" and d["max_secs"] == 0.3 and d["cooldown_s"] == 0.05
    assert 2 <= d["runs"] <= 8, d["runs"]  # about 0.3 / 0.05 runs
    assert d["wall_s"] >= 0.3 and d["wall_s"] >= 0.05 * (d["runs"] - 1)
    assert d["timed_s"] < 0.05 * (d["runs"] - 1), "the cool-down sleeps were timed"
    assert d["latency_ms"]["max"] < 50


def test_max_secs_still_does_one_run(model_so):
    d = _json(_edge("bench", model_so, "--runs", "5", "--warmup", "0", "--max-secs", "1e-9", "--json"))
    assert d["runs"] == 1 and d["stopped_by"] == "max_secs"


def test_input_image_is_prepared_as_run_prepares_it(model_so):
    img = os.path.join(EXAMPLES, "0000_ankle-boot.png")
    d = _json(_edge("bench", model_so, "--runs", "2", "--warmup", "0", "--input", img, "--batch", "2",
                    "--json"))
    assert d["input"] == img and d["batch"] == 2
    import qvit_edge
    from qvit_edge.cmd_bench import _input

    with qvit_edge.load(model_so) as m:
        x = _input(m._model, img, 3)
        assert x.shape == (3, *m._model.input_shape) and x.dtype == np.float32
        for row in x:
            np.testing.assert_array_equal(row, m.prepare(img))


def test_input_that_is_not_an_image_is_one_line(model_so, tmp_path):
    bad = tmp_path / "notes.png"
    bad.write_text("not a picture")
    one_line_error(_edge("bench", model_so, "--runs", "1", "--input", str(bad)), "notes.png")
    one_line_error(_edge("bench", model_so, "--runs", "1", "--input", str(tmp_path / "gone.png")), "gone.png")


def test_batch_reports_per_call_and_per_image(model_so):
    d = _json(_edge("bench", model_so, "--runs", "5", "--warmup", "1", "--batch", "4", "--json"))
    assert d["batch"] == 4 and d["runs"] == 5
    for k, v in d["latency_ms"].items():
        assert d["latency_per_image_ms"][k] == pytest.approx(v / 4)
    assert d["images_per_s"] == pytest.approx(20 / d["timed_s"])
    assert sum(d["profile_ms"].values()) < d["latency_per_image_ms"]["max"] + 1e-6  # per image, not per call


def test_cpus_pins_the_process(model_so):
    d = _json(_edge("bench", model_so, "--runs", "2", "--warmup", "0", "--cpus", "0", "--json"))
    assert d["cpus"] == [0] and d["threads"] == 1
    r = _edge("bench", model_so, "--runs", "2", "--warmup", "0", "--cpus", "0")
    assert "on CPUs 0," in r.stdout, r.stdout


def test_bad_cpus_are_one_line(model_so):
    have = sorted(os.sched_getaffinity(0))
    from qvit_edge.cmd_bench import format_cpus

    line = one_line_error(_edge("bench", model_so, "--cpus", "4096-4097"), "--cpus 4096-4097",
                          "not available")
    assert f"available: {format_cpus(have)}" in line
    one_line_error(_edge("bench", model_so, "--cpus", "x"), "--cpus", "not a CPU list")
    one_line_error(_edge("bench", model_so, "--cpus", "3-1"), "--cpus", "not a CPU range")
    one_line_error(_edge("bench", model_so, "--cpus", str(have[0]), "--threads", "2"),
                   "--threads 2", "more than the 1 CPU(s) of --cpus")


def test_cpu_list_syntax():
    from qvit_edge.cmd_bench import cpu_list, format_cpus

    assert cpu_list("0-3") == [0, 1, 2, 3] and cpu_list("4,5") == [4, 5] and cpu_list("0-1,3") == [0, 1, 3]
    assert cpu_list(" 3 , 0-1,1") == [0, 1, 3]
    assert format_cpus([0, 1, 2, 3, 6, 8, 9]) == "0-3,6,8-9" and format_cpus([5]) == "5"


def test_csv_file_has_one_row_per_step(model_so, plan_steps, tmp_path):
    out = tmp_path / "prof.csv"
    r = _edge("bench", model_so, "--runs", "5", "--warmup", "1", "--csv", str(out))
    assert r.returncode == 0, r.stderr
    assert "p50" in r.stdout and f"csv        {out}" in r.stdout  # the report still prints
    rows = list(csv.DictReader(out.open()))
    assert list(rows[0]) == ["index", "kind", "op", "kernel", "ms_per_image", "share_pct"]
    assert [int(x["index"]) for x in rows] == list(range(len(plan_steps)))
    assert [x["kind"] for x in rows] == [s["kind"] for s in plan_steps]
    assert [x["op"] for x in rows] == [s.get("op", "") for s in plan_steps]
    assert all(float(x["ms_per_image"]) >= 0 for x in rows)
    assert sum(float(x["share_pct"]) for x in rows) == pytest.approx(100, abs=0.05)


def test_csv_alone_goes_to_stdout_instead_of_the_report(model_so, plan_steps):
    r = _edge("bench", model_so, "--runs", "3", "--warmup", "0", "--csv")
    assert r.returncode == 0, r.stderr
    rows = list(csv.reader(io.StringIO(r.stdout)))
    assert rows[0][0] == "index" and len(rows) == 1 + len(plan_steps)


def test_csv_trace_plot_conflicts_are_one_line(model_so, tmp_path):
    one_line_error(_edge("bench", model_so, "--json", "--csv"), "--csv", "give --csv FILE")
    one_line_error(_edge("bench", model_so, "--no-profile", "--csv", str(tmp_path / "a.csv")),
                   "--csv needs the per-op timers")
    one_line_error(_edge("bench", model_so, "--no-profile", "--trace", str(tmp_path / "t.json")),
                   "--trace needs the per-op timers")
    one_line_error(_edge("bench", model_so, "--trace", str(tmp_path)), "--trace", "is a directory")


def test_trace_is_a_valid_chrome_trace_of_the_last_runs(model_so, plan_steps, tmp_path):
    out = tmp_path / "trace.json"
    r = _edge("bench", model_so, "--runs", "12", "--warmup", "1", "--trace", str(out), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["runs"] == 12 and "trace" in r.stderr
    doc = json.load(out.open())
    ev = doc["traceEvents"]
    assert all(e["ph"] in ("X", "M") for e in ev)
    runs = [e for e in ev if e["ph"] == "X" and e["cat"] == "run"]
    steps = [e for e in ev if e["ph"] == "X" and e["cat"] == "step"]
    assert len(runs) == 10 and len(steps) == 10 * len(plan_steps)  # TRACE_RUNS
    assert min(e["ts"] for e in steps) == 0
    prev_end = -1.0
    for j, run in enumerate(runs):
        mine = [e for e in steps if e["args"]["run"] == j]
        assert [e["args"]["step"] for e in mine] == list(range(len(plan_steps)))
        assert [e["name"] for e in mine] == [s["kind"] for s in plan_steps]
        assert mine[0]["ts"] >= prev_end  # runs in order, apart
        for a, b in zip(mine, mine[1:]):
            assert a["dur"] >= 0 and a["ts"] + a["dur"] <= b["ts"] + 1e-3  # in order, not overlapping (us)
        assert run["ts"] == mine[0]["ts"]
        assert run["ts"] + run["dur"] == pytest.approx(mine[-1]["ts"] + mine[-1]["dur"])
        prev_end = run["ts"] + run["dur"]


def test_model_records_the_last_runs_stamps(model_so):
    from qvit_edge.model import load

    with load(model_so, profile=True) as m:
        x = np.zeros((1, *m.input_shape), np.float32)
        assert m.trace() == []
        m.record_trace(3)
        t0 = m.trace_clock()
        m.run(np.repeat(x, 5, axis=0))  # 5 image runs: the ring keeps the last 3
        t1 = m.trace_clock()
        tr = m.trace()
        assert len(tr) == 3 and all(a.shape == (len(m.steps), 2) for a in tr)
        flat = np.concatenate([a.reshape(-1) for a in tr])
        assert np.all(np.diff(flat) >= 0) and t0 <= flat[0] and flat[-1] <= t1
        secs = m.step_profile()
        assert len(secs) == len(m.steps) and all(s > 0 for s in secs)
        m.record_trace(0)
        m.run(x)
        assert m.trace() == []


def test_plot_writes_a_png(model_so, tmp_path):
    out = tmp_path / "p.png"
    r = _edge("bench", model_so, "--runs", "3", "--warmup", "0", "--plot", str(out))
    assert r.returncode == 0, r.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert Image.open(out).size[0] > 100
    # alone: the default name, in the current folder; together with --csv FILE and --min-secs
    r = _edge("bench", model_so, "--runs", "1", "--min-secs", "0.2", "--csv", "c.csv", "--plot", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "bench-profile.png").read_bytes()[:4] == b"\x89PNG" and (tmp_path / "c.csv").exists()


def test_plot_without_matplotlib_is_one_line(model_so, tmp_path):
    code = ("import sys\n"
            "class Block:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name == 'matplotlib' or name.startswith('matplotlib.'):\n"
            "            raise ImportError('No module named ' + name)\n"
            "sys.meta_path.insert(0, Block())\n"
            "from qvit_edge.cli import main\n"
            "sys.exit(main(sys.argv[1:]))\n")
    out = tmp_path / "p.png"
    r = subprocess.run([sys.executable, "-c", code, "bench", model_so, "--plot", str(out)],
                       capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert one_line_error(r) == "qvit-edge bench: error: --plot needs matplotlib (pip install matplotlib)"
    assert not out.exists() and r.stdout == ""  # refused before the benchmark ran


# ------------------------------------------------------------------------------------------ eval


def _tree(root, names: dict) -> list:
    """An ImageFolder tree from examples/images ("0019_t-shirt-top.png"): each image under the folder
    names[slug] as PNG and again as JPEG (one in a sub-folder). Returns the image paths."""
    paths = []
    for f in sorted(os.listdir(EXAMPLES)):
        slug = os.path.splitext(f)[0].split("_", 1)[1]
        d = os.path.join(root, names.get(slug, slug))
        os.makedirs(os.path.join(d, "more"), exist_ok=True)
        shutil.copy(os.path.join(EXAMPLES, f), d)
        jpg = os.path.join(d, "more", f.replace(".png", ".jpg"))
        Image.open(os.path.join(EXAMPLES, f)).convert("RGB").save(jpg, quality=90)
        paths += [os.path.join(d, f), jpg]
    (root / "README.txt").write_text("not a class")  # files beside the class folders are ignored
    (root / names.get("bag", "bag") / "notes.txt").write_text("not an image")  # nor non-images in them
    return paths


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("imagefolder")
    # names by slug, by a case variant and by class number
    return root, _tree(root, {"trouser": "TROUSER", "ankle-boot": "9", "bag": "Bag"})


def _expected(model_so, paths):
    """Top-1 / top-5 hits per image from the Python API's predict, image by image."""
    import qvit_edge

    want = {}
    with qvit_edge.load(model_so) as m:
        for p in paths:
            label = os.path.basename(p).split("_", 1)[1].rsplit(".", 1)[0]
            idx = [c.lower().replace("/", "-").replace(" ", "-") for c in CLASSES].index(label)
            top = m.predict(p, topk=5)
            want[p] = (top[0].index == idx, idx in [t.index for t in top], idx)
    return want


def test_eval_matches_predict_and_run(model_so, tree):
    root, paths = tree
    want = _expected(model_so, paths)
    d = _json(_edge("eval", model_so, str(root), "--batch", "3", "--json"))
    assert d["schema"] == "qvit-edge.eval/1" and d["images"] == 20 and d["classes"] == 10 and d["k"] == 5
    assert d["correct_top1"] == sum(w[0] for w in want.values())
    assert d["correct_topk"] == sum(w[1] for w in want.values())
    assert d["top1"] == pytest.approx(d["correct_top1"] / 20) and d["topk"] >= d["top1"]
    assert d["images_per_s"] > 0 and d["inference_ms_per_image"] > 0
    per = {c["class"]: c for c in d["per_class"]}
    assert set(per) == set(CLASSES) and all(c["images"] == 2 for c in per.values())
    assert per["Ankle boot"]["folder"] == "9" and per["T-shirt/top"]["folder"] == "t-shirt-top"
    for name, c in per.items():
        hits = [w for w in want.values() if CLASSES[w[2]] == name]
        assert c["top1"] == pytest.approx(sum(h[0] for h in hits) / 2)
    # qvit-edge run on the same files gives the same top-1
    run = _json(_edge("run", model_so, *paths, "--topk", "1", "--json"))
    assert sum(r["top"][0]["index"] == want[r["image"]][2] for r in run["results"]) == d["correct_top1"]


def test_eval_text_topk_and_limit(model_so, tree):
    root, _ = tree
    r = _edge("eval", model_so, str(root), "--limit", "12", "--topk", "3", "--threads", "2")
    assert r.returncode == 0, r.stderr
    assert "12 images, 10 classes" in r.stdout and "top-1" in r.stdout and "top-3" in r.stdout
    d = _json(_edge("eval", model_so, str(root), "--limit", "12", "--topk", "50", "--json"))
    assert d["images"] == 12 and d["k"] == 10 and d["topk"] == 1.0  # top-k up to num_classes
    assert sorted(c["images"] for c in d["per_class"]) == [1] * 8 + [2] * 2  # every class in turn


def test_eval_errors_are_one_line(model_so, tmp_path):
    one_line_error(_edge("eval", model_so, str(tmp_path / "none")), "no such folder")
    one_line_error(_edge("eval", model_so, str(tmp_path)), "no class folders")
    (tmp_path / "shirt").mkdir()
    one_line_error(_edge("eval", model_so, str(tmp_path)), "no images")
    (tmp_path / "kitten").mkdir()
    line = one_line_error(_edge("eval", model_so, str(tmp_path)), "kitten",
                          "names none of the model's 10 classes")
    assert "T-shirt/top, Trouser" in line and "0..9" in line
    (tmp_path / "kitten").rmdir()
    (tmp_path / "6").mkdir()
    one_line_error(_edge("eval", model_so, str(tmp_path)), "both name class 6 (Shirt)")
    (tmp_path / "6").rmdir()
    (tmp_path / "shirt" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    one_line_error(_edge("eval", model_so, str(tmp_path)), "broken.png")
    one_line_error(_edge("eval", model_so, str(tmp_path), "--batch", "0"), "--batch")


def test_class_index_matching():
    from qvit_edge.cmd_eval import class_index

    assert class_index("T-shirt/top", CLASSES) == 0 and class_index("t-shirt-top", CLASSES) == 0
    assert class_index("ankle_boot", CLASSES) == 9 and class_index("SNEAKER", CLASSES) == 7
    assert class_index("3", CLASSES) == 3 and class_index("03", CLASSES) == 3
    assert class_index("10", CLASSES) is None
    assert class_index("kitten", CLASSES) is None
    # names that are numbers themselves: the name wins over the index
    assert class_index("1", ["2", "1", "0"]) == 1
