"""The MONAI Label app (monailabel_app/): a real server on 127.0.0.1 serving a tiny model trained for one epoch.

Needs MONAI Label (``bash monailabel_app/install.sh``); skipped with that reason where it is not importable.
The module trains the model (about 45 s on 2 cores), starts the server while the bundle's own ``run inference``
makes the reference landmarks, and runs every check against that one server; the training check goes last,
since it replaces the served checkpoint.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import shutil
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import BUNDLE, REPO

try:
    import monailabel  # noqa: F401
except ImportError as e:  # pragma: no cover - depends on the install
    pytest.skip(
        f"MONAI Label is not importable ({e}); install it with `bash monailabel_app/install.sh`",
        allow_module_level=True,
    )

import requests  # noqa: E402  (a MONAI Label dependency)

APP = os.path.join(REPO, "monailabel_app")
sys.path.insert(0, APP)
TRAIN = "['configs/inference.yaml','configs/train.yaml']"
HEAD, HAND = "head_006", "hand_006"  # the tiny demo's first test image of each (4 training + 2 validation before)
ENV = {**{k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}, "PYTHONWARNINGS": "ignore"}


def _bundle(*args: str, **popen: object) -> subprocess.Popen:
    """``python -m monai.bundle ARGS`` from the bundle folder, as the README runs it."""
    return subprocess.Popen(
        [sys.executable, "-m", "monai.bundle", *args], cwd=BUNDLE, env=ENV, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **popen,
    )  # fmt: skip


def _finish(proc: subprocess.Popen, what: str, timeout: float = 600) -> None:
    out, _ = proc.communicate(timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"{what} failed:\n{out[-5000:]}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tiny_demo, tmp_path_factory):
    """Train one epoch, start the server on a copy of the checkpoint, and make the bundle's reference landmarks."""
    root = tmp_path_factory.mktemp("monailabel")
    run = str(root / "run")
    _finish(_bundle("run", "training", "--config_file", TRAIN, "--dataset_dir", tiny_demo, "--output_dir", run,
                    "--max_epochs", "1", "--val_interval", "1", "--batch_size", "2"), "training")  # fmt: skip
    trained = os.path.join(run, "models", "model.pt")
    served = str(root / "served" / "model.pt")
    os.makedirs(os.path.dirname(served))
    shutil.copyfile(trained, served)

    studies = root / "studies"
    studies.mkdir()
    for name in (HEAD, HAND):
        shutil.copyfile(os.path.join(tiny_demo, "images", name.split("_")[0], f"{name}.png"), studies / f"{name}.png")
    from PIL import Image

    Image.fromarray(np.zeros((8, 8), np.uint8)).save(studies / "tiny_8x8.png")
    Image.fromarray(np.zeros((1, 1), np.uint8)).save(studies / "dot_1x1.png")
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (256, 256), dtype=np.uint8)).save(studies / "noise_256.png")

    # the reference: the bundle's own inference on the same two files (one run, a datalist split of both)
    ref_data, ref_out = root / "reference_data", str(root / "reference")
    ref_data.mkdir()
    check = [{"image": str(studies / f"{n}.png"), "anatomy": n.split("_")[0]} for n in (HEAD, HAND)]
    (ref_data / "datalist.json").write_text(json.dumps({"check": check}))
    reference = _bundle("run", "inference", "--config_file", "configs/inference.yaml", "--dataset_dir", str(ref_data),
                        "--input_split", "check", "--ckpt_path", trained, "--output_dir", ref_out)  # fmt: skip

    port = _free_port()
    log_path = str(root / "server.log")
    log = open(log_path, "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "monailabel.main", "start_server", "--app", APP, "--studies", str(studies),
         "--host", "127.0.0.1", "--port", str(port), "--conf", "checkpoint", served,
         "--conf", "output_dir", str(root / "train_runs")],
        cwd=REPO, env=ENV, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"the server exited ({proc.returncode}):\n{open(log_path).read()[-5000:]}")
            try:
                if requests.get(f"{base}/info/", timeout=5).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.time() > deadline:
                raise AssertionError(f"the server did not answer /info/ within 120 s:\n{open(log_path).read()[-5000:]}")
            time.sleep(1)
        _finish(reference, "the bundle's reference inference")
        yield {"base": base, "pid": proc.pid, "served": served, "reference": ref_out, "log": log_path, "demo": tiny_demo}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=20)
        log.close()
        if reference.poll() is None:
            reference.kill()
            reference.wait()


def infer(server, task: str, image: str, output: str = "json", **params):
    return requests.post(
        f"{server['base']}/infer/{task}", params={"image": image, "output": output},
        data={"params": json.dumps(params)}, timeout=120,
    )  # fmt: skip


def test_info_lists_one_task_per_anatomy_landmarks_and_training(server):
    info = requests.get(f"{server['base']}/info/", timeout=30).json()
    assert set(info["models"]) == {"head", "hand", "chest", "pelvis", "landmarks"}
    assert info["models"]["head"]["labels"][0] == "head_1" and len(info["models"]["hand"]["labels"]) == 37
    assert info["models"]["landmarks"]["config"]["anatomy"] == ["head", "hand", "chest", "pelvis"]
    assert set(info["trainers"]) == {"gu2net"}


@pytest.mark.parametrize("task, image, anatomy", [("head", HEAD, "head"), ("landmarks", HAND, "hand")])
def test_landmarks_equal_the_bundles_inference_and_the_markups_file_places_them(server, task, image, anatomy):
    params = {"anatomy": anatomy} if task == "landmarks" else {}
    r = infer(server, task, image, **params)
    assert r.status_code == 200, r.text
    result = r.json()
    reference = json.load(open(os.path.join(server["reference"], f"{image}.json")))
    ours = np.array([[p["x"], p["y"]] for p in result["landmarks"]])
    theirs = np.array([[p["x"], p["y"]] for p in reference["landmarks"]])
    assert [p["name"] for p in result["landmarks"]] == [p["name"] for p in reference["landmarks"]]
    assert np.abs(ours - theirs).max() <= 0.5
    assert result["anatomy"] == anatomy and result["checkpoint"] == server["served"]
    assert all((p["confidence"] < result["review_threshold"]) == p["review"] for p in result["landmarks"])
    # the threshold saved with the checkpoint (chosen on validation) where it has one for the anatomy, as the bundle's
    sys.path.insert(0, BUNDLE)
    from scripts.review import ReviewThresholds

    saved = ReviewThresholds.from_checkpoint(server["served"]).thresholds.get(anatomy)
    assert (result["review_threshold"], result["review_threshold_source"]) == ((saved, "checkpoint") if saved else (0.3, "app config"))
    assert [p["review"] for p in result["landmarks"]] == [p["review"] for p in reference["landmarks"]]
    # the same orientation chosen and the same refinement stage (none beside this checkpoint)
    assert (result["mirrored"], result["refined"]) == (reference["mirrored"], reference["refined"])
    # PNG: ITK's geometry is origin 0, spacing 1, identity, so the position in mm is (x, y, 0)
    assert np.allclose([p["position"] for p in result["landmarks"]], np.c_[ours, np.zeros(len(ours))])

    m = infer(server, task, image, output="image", **params)
    assert m.status_code == 200, m.text
    markups = json.loads(m.content)
    assert markups["@schema"].endswith("markups-schema-v1.0.3.json#")
    (node,) = markups["markups"]
    assert node["type"] == "Fiducial" and node["coordinateSystem"] == "LPS" and node["name"] == anatomy
    assert [cp["label"] for cp in node["controlPoints"]] == [p["name"] for p in result["landmarks"]]
    assert all(len(cp["position"]) == 3 and cp["positionStatus"] == "defined" for cp in node["controlPoints"])
    assert np.allclose([cp["position"] for cp in node["controlPoints"]], [p["position"] for p in result["landmarks"]])


def test_label_image_has_a_disk_per_landmark_in_the_input_geometry(server):
    import nrrd  # pynrrd, a MONAI Label dependency (lighter to import here than ITK)

    r = infer(server, "head", HEAD, output="image", result_file="label")
    assert r.status_code == 200, r.text
    path = os.path.join(os.path.dirname(server["log"]), "label.nrrd")
    with open(path, "wb") as f:
        f.write(r.content)
    label, header = nrrd.read(path)  # (x, y) index order
    assert label.shape == (192, 240) and list(header["space origin"]) == [0, 0]
    assert np.array_equal(header["space directions"], np.eye(2))
    points = np.array([[p["x"], p["y"]] for p in infer(server, "head", HEAD).json()["landmarks"]])
    values = set(np.unique(label).tolist()) - {0}
    assert values and values <= set(range(1, 20))
    for v in values:  # each disk (radius 2 px here; later disks may cover parts of earlier ones) is at its landmark
        xy = np.argwhere(label == v)
        assert np.hypot(*(xy - points[v - 1]).T).max() <= 2.0 + 1e-6


def test_load_50_requests_8_at_a_time_without_a_failure(server):
    import psutil

    def one(k: int) -> tuple[int, float]:
        t = time.perf_counter()
        task, image = ("head", HEAD) if k % 2 == 0 else ("hand", HAND)
        code = infer(server, task, image).status_code
        return code, time.perf_counter() - t

    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(50)))
    wall = time.perf_counter() - started
    latencies = np.array([s for _, s in results])
    failures = [c for c, _ in results if c != 200]
    rss = psutil.Process(server["pid"]).memory_info().rss / 2**20
    print(
        f"\nMONAI Label load: 50 requests, 8 concurrent, {len(failures)} failures; latency p50 {np.percentile(latencies, 50):.2f} s, "
        f"p95 {np.percentile(latencies, 95):.2f} s; {50 / wall:.1f} requests/s; server RSS {rss:.0f} MiB"
    )
    assert not failures, failures


def test_bad_requests_answer_with_the_problem_and_the_server_keeps_answering(server):
    cases = [
        ("head", "no_such_image", {}, 404, "no_such_image"),
        ("no_such_task", HEAD, {}, 404, "no_such_task"),
        ("head", "tiny_8x8", {}, 400, "8x8 pixels is too small"),
        ("head", "dot_1x1", {}, 400, "1x1 pixels is too small"),
        ("landmarks", "noise_256", {}, 400, "noise_256.png: unknown anatomy: the image looks like none of"),
        ("landmarks", HEAD, {"anatomy": "knee"}, 400, "unknown anatomy 'knee'"),
    ]
    for task, image, params, status, message in cases:
        r = infer(server, task, image, **params)
        assert r.status_code == status and message in r.json()["detail"], (task, image, r.status_code, r.text)
    assert infer(server, "head", HEAD).status_code == 200


def test_the_generic_task_without_an_anatomy_recognises_it(server):
    for name in (HEAD, HAND):
        named = infer(server, name.split("_")[0], name)
        recognised = infer(server, "landmarks", name)
        assert named.status_code == 200 and recognised.status_code == 200, (named.text, recognised.text)
        a, b = named.json(), recognised.json()
        assert b["anatomy"] == name.split("_")[0] and b["anatomy_recognized"] is True and b["anatomy_probability"] > 0.5, b
        assert "anatomy_recognized" not in a
        assert [lm["x"] for lm in a["landmarks"]] == [lm["x"] for lm in b["landmarks"]]


def test_markups_round_trip_through_a_rotated_geometry():
    """Pixels -> LPS mm -> markups -> pixels, LPS and RAS, on an image with origin, spacing and a rotation."""
    from lib.geometry import ImageGeometry
    from lib.markups import markups_to_pixels, slicer_markups

    c, s = np.cos(0.3), np.sin(0.3)
    geometry = ImageGeometry(size=(40, 30), origin=(10.0, -5.0), spacing=(0.5, 0.7), direction=((c, -s), (s, c)))
    pts = np.array([[0.0, 0.0], [3.0, 7.0], [39.0, 29.0]])
    doc = slicer_markups("x", ["a", "b", "c"], geometry.index_to_physical(pts), np.ones(3), [False] * 3)
    assert np.allclose(doc["markups"][0]["controlPoints"][1]["position"], [10 + 0.5 * 3 * c - 0.7 * 7 * s, -5 + 0.5 * 3 * s + 0.7 * 7 * c, 0])
    assert np.allclose(markups_to_pixels(doc, geometry, ["a", "b", "c"]), pts)
    node = doc["markups"][0]
    node["coordinateSystem"] = "RAS"
    for cp in node["controlPoints"]:
        cp["position"] = [-cp["position"][0], -cp["position"][1], cp["position"][2]]
    node["controlPoints"][2]["positionStatus"] = "undefined"
    back = markups_to_pixels(doc, geometry, ["a", "b", "c"])
    assert np.allclose(back[:2], pts[:2]) and back[2] is None


def test_training_through_the_server_publishes_a_checkpoint_that_the_next_request_uses(server):
    """Labels saved as a Slicer markups file (head) and as datalist JSON (hand); one short epoch; new checkpoint."""
    from lib.markups import slicer_markups

    base = server["base"]
    before = infer(server, "head", HEAD).json()["checkpoint_mtime"]
    datalist = json.load(open(os.path.join(server["demo"], "datalist.json")))
    truth = {os.path.basename(it["image"]).split(".")[0]: it for it in datalist["test"]}
    head = np.array(truth[HEAD]["landmarks"], dtype=np.float64)
    # a PNG's geometry is ITK's default (checked above), so a point at pixel (x, y) lies at (x, y, 0) mm
    doc = slicer_markups("head", datalist["anatomies"]["head"]["landmarks"], np.c_[head, np.zeros(len(head))],
                         np.ones(len(head)), [False] * len(head))  # fmt: skip
    labels = [
        (HEAD, "head.mrk.json", json.dumps(doc), {}),
        (HAND, "hand.json", json.dumps({"anatomy": "hand", "landmarks": truth[HAND]["landmarks"]}), {"anatomy": "hand"}),
    ]
    for image_id, filename, content, params in labels:
        r = requests.put(f"{base}/datastore/label", params={"image": image_id, "tag": "final"},
                         files={"label": (filename, content)}, data={"params": json.dumps(params)}, timeout=30)  # fmt: skip
        assert r.status_code == 200, r.text

    r = requests.post(f"{base}/train/gu2net", json={"max_epochs": 1, "train_batch_size": 2}, timeout=30)
    assert r.status_code == 200, r.text
    deadline = time.time() + 300
    while True:
        status = requests.get(f"{base}/train/", timeout=30).json()
        if status["status"] in ("DONE", "ERROR") or time.time() > deadline:
            break
        time.sleep(2)
    assert status["status"] == "DONE", "\n".join(status.get("details", []))

    after = infer(server, "head", HEAD).json()
    assert after["checkpoint"] == server["served"] and after["checkpoint_mtime"] > before
    stats = requests.get(f"{base}/info/", timeout=30).json()["train_stats"]["gu2net"]
    assert stats["data"]["training"] + stats["data"]["validation"] == 2 and not stats["data"]["skipped"]
    written = json.load(open(os.path.join(stats["dataset_dir"], "datalist.json")))
    items = {os.path.basename(it["image"]).split(".")[0]: it for it in written["training"] + written["validation"]}
    assert np.allclose(items[HEAD]["landmarks"], head, atol=1e-6)  # markups mm -> the annotated pixels again
    assert list(written["anatomies"]) == ["head", "hand", "chest", "pelvis"]
    assert "loaded checkpoint" in open(server["log"]).read()
