"""Speed benchmark: the bundle's GU2Net inference and training against a plain GU2Net, on this machine.

    python bench/speed.py                       # 2 CPU threads; prints one table
    python bench/speed.py --json runs/speed.json --ckpt runs/demo/models/model.pt

**reference**: a plain, straightforward GU2Net written below (``nn.Conv2d`` depth-wise + point-wise, batch
norm, LeakyReLU, eval mode, float32, NCHW, the default allocator), loaded with the same weights as the
bundle's network. **bundle**: the bundle's own path, built from its configs exactly as a workflow builds it:
``inference.yaml``'s ``initialize``, ``network`` and ``inferer`` (the default engine) for inference, and
``train.yaml``'s ``network``, ``loss`` and ``optimizer`` for training. Each side runs in its own process (the
allocator setting is process wide, so the reference keeps the default); inference repetitions alternate
between the two processes so that both see the same load from whatever else runs on the machine.

Rows: seconds per 416 x 512 head image (batch 1, median of ``--repeats`` after warm-up); images per second for
8 mixed-anatomy images (3 head, 3 hand, 2 chest; the reference runs them one by one, the bundle groups them
by anatomy with its ``AnatomyBatchSampler``); train step seconds at batch 4 (forward, BCE, backward, Adam;
median); the share of a training step spent waiting for the bundle's real training DataLoader (warm
CacheDataset, paper-size images); peak resident memory of each process. Then a correctness line: max abs
difference of the final heatmaps over all images, whether every decoded landmark is identical, and the
relative difference of the first training step's loss. On a CUDA machine the GPU path is timed as well
(reference float32 NCHW; bundle AMP + channels_last).

Weights: ``--ckpt`` (a bundle checkpoint) or, by default, a seeded random GU2Net for head, hand and chest
([19, 37, 6]). This is a benchmark, not a test.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUNDLE = os.path.join(REPO, "bundle")
SHARED = os.path.join(REPO, "..", "shared", "data")
sys.path.insert(0, BUNDLE)

# the paper's network sizes (W, H) of the anatomies benchmarked
ANATOMIES = {"head": {"landmarks": 19, "size": [416, 512]}, "hand": {"landmarks": 37, "size": [352, 512]},
             "chest": {"landmarks": 6, "size": [512, 512]}}
MIXED = ["head", "hand", "chest", "head", "hand", "head", "chest", "hand"]


# ---------------------------------------------------------------------------------------------------------
# the reference: GU2Net as a careful engineer ports it, no tricks (module names as the bundle's, so that
# the bundle's state dict loads unchanged)
# ---------------------------------------------------------------------------------------------------------
class PlainSeparableConv(nn.Module):
    def __init__(self, cin: int, cout: int, domains: int) -> None:
        super().__init__()
        self.depthwise = nn.ModuleList(nn.Conv2d(cin, cin, 3, padding=1, groups=cin) for _ in range(domains))
        self.pointwise = nn.Conv2d(cin, cout, 1)
        self.norm = nn.ModuleList(nn.BatchNorm2d(cout) for _ in range(domains))
        self.act = nn.LeakyReLU(0.01)

    def forward(self, x: torch.Tensor, d: int) -> torch.Tensor:
        return self.act(self.norm[d](self.pointwise(self.depthwise[d](x))))


class PlainDoubleConv(nn.Module):
    def __init__(self, cin: int, cout: int, domains: int, mid: int | None = None) -> None:
        super().__init__()
        self.conv1 = PlainSeparableConv(cin, mid or cout, domains)
        self.conv2 = PlainSeparableConv(mid or cout, cout, domains)

    def forward(self, x: torch.Tensor, d: int) -> torch.Tensor:
        return self.conv2(self.conv1(x, d), d)


class PlainPerDomain(nn.Module):
    def __init__(self, cins: Sequence[int], couts: Sequence[int], k: int = 1) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(i, o, k, padding=k // 2) for i, o in zip(cins, couts))

    def forward(self, x: torch.Tensor, d: int) -> torch.Tensor:
        return self.convs[d](x)


class PlainLocal(nn.Module):
    def __init__(self, counts: Sequence[int]) -> None:
        super().__init__()
        t = len(counts)
        self.inc = PlainPerDomain([1] * t, [64] * t)
        widths = [(64, 64), (64, 128), (128, 256), (256, 512), (512, 512)]
        self.enc = nn.ModuleList(PlainDoubleConv(i, o, t) for i, o in widths)
        self.dec = nn.ModuleList(
            PlainDoubleConv(i, o, t, m) for i, o, m in [(1024, 256, 512), (512, 128, 256), (256, 64, 128), (128, 64, 64)]
        )
        self.head = PlainPerDomain([64] * t, counts)

    def forward(self, x: torch.Tensor, d: int) -> torch.Tensor:
        x = self.inc(x, d)
        skips = []
        for i, block in enumerate(self.enc):
            x = block(F.max_pool2d(x, 2) if i else x, d)
            skips.append(x)
        for block, skip in zip(self.dec, reversed(skips[:-1])):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=True)
            x = block(torch.cat([skip, x], 1), d)
        return self.head(x, d)


class PlainGlobal(nn.Module):
    def __init__(self, counts: Sequence[int]) -> None:
        super().__init__()
        t = len(counts)
        self.image_conv = PlainPerDomain([1] * t, [64] * t, 3)
        self.heatmap_conv = PlainPerDomain(counts, [64] * t, 3)
        self.dilated = nn.ModuleList(
            nn.Sequential(*[nn.Sequential(nn.Conv2d(128, 128, 3, padding=r, dilation=r), nn.BatchNorm2d(128), nn.ReLU())
                            for r in (1, 2, 5, 2, 1)])
            for _ in range(t)
        )
        self.head = PlainPerDomain([128] * t, counts)

    def forward(self, image: torch.Tensor, local: torch.Tensor, d: int) -> torch.Tensor:
        a = self.image_conv(F.interpolate(image, scale_factor=0.25, mode="nearest"), d)
        b = self.heatmap_conv(F.interpolate(local, scale_factor=0.25, mode="nearest"), d)
        y = self.head(self.dilated[d](torch.cat([a, b], 1)), d)
        return F.interpolate(y, size=image.shape[-2:], mode="nearest")


class PlainGU2Net(nn.Module):
    def __init__(self, counts: Sequence[int]) -> None:
        super().__init__()
        self.local_net, self.global_net = PlainLocal(counts), PlainGlobal(counts)

    def forward(self, x: torch.Tensor, d: int) -> torch.Tensor:
        local = torch.sigmoid(self.local_net(x, d))
        return local * torch.sigmoid(self.global_net(x, local, d))


# ---------------------------------------------------------------------------------------------------------
# the two sides, each served from its own process
# ---------------------------------------------------------------------------------------------------------
def bundle_config(files: Sequence[str], overrides: dict[str, Any]) -> Any:
    """The bundle's configs, parsed as ``python -m monai.bundle`` parses them, with overrides."""
    from monai.bundle import ConfigParser

    os.chdir(BUNDLE)  # train.yaml's macros name the base config relative to the bundle folder
    parser = ConfigParser()
    parser.read_config([os.path.join(BUNDLE, "configs", f) for f in files])
    parser.update(overrides)
    return parser


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # kB on Linux


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


class Side:
    """One side of the benchmark (reference or bundle) in its worker process: inference and a train step."""

    def __init__(self, role: str, setup: dict[str, Any]) -> None:
        torch.set_num_threads(setup["threads"])
        self.role, self.setup = role, setup
        self.counts = setup["counts"]
        self.state = torch.load(setup["weights"], weights_only=True)
        if role == "bundle":
            self.parser = bundle_config(setup["configs"], {"anatomies": setup["anatomies_expr"], "device": "$torch.device('cpu')",
                                                           **setup.get("overrides", {})})
            self.parser.get_parsed_content("initialize")  # what a workflow runs first (allocator setting)

    # inference --------------------------------------------------------------------------------------------
    def load_inference(self) -> None:
        if self.role == "bundle":
            self.net = self.parser.get_parsed_content("network")
            self.inferer = self.parser.get_parsed_content("inferer")
        else:
            self.net = PlainGU2Net(self.counts)
        self.net.load_state_dict(self.state)
        self.net.eval()

    def _forward(self, x: torch.Tensor, d: int) -> torch.Tensor:
        with torch.no_grad():
            if self.role == "bundle":
                return self.inferer(x, self.net, domain=torch.full((x.shape[0],), d))
            return self.net(x, d)

    def infer(self, x: torch.Tensor, d: int) -> tuple[float, torch.Tensor]:
        return _timed(lambda: self._forward(x, d))

    def infer_mixed(self, images: list[torch.Tensor], domains: list[int]) -> tuple[float, list[torch.Tensor]]:
        def run() -> list[torch.Tensor]:
            out: list[Any] = [None] * len(images)
            if self.role == "bundle":  # one batch per anatomy, as the bundle's dataloader makes them
                from scripts import AnatomyBatchSampler

                for idx in AnatomyBatchSampler(domains, batch_size=len(images), shuffle=False):
                    heatmaps = self._forward(torch.cat([images[i] for i in idx]), domains[idx[0]])
                    for i, h in zip(idx, heatmaps):
                        out[i] = h[None]
            else:
                for i, (x, d) in enumerate(zip(images, domains)):
                    out[i] = self._forward(x, d)
            return out

        return _timed(run)

    # training ---------------------------------------------------------------------------------------------
    def load_training(self) -> None:
        if self.role == "bundle":
            self.net = self.parser.get_parsed_content("network")
            self.net.load_state_dict(self.state)
            self.loss_fn = self.parser.get_parsed_content("loss")
            self.optimizer = self.parser.get_parsed_content("optimizer")
        else:
            self.net = PlainGU2Net(self.counts)
            self.net.load_state_dict(self.state)
            self.loss_fn = nn.BCELoss()
            self.optimizer = torch.optim.Adam(self.net.parameters(), lr=1e-4, weight_decay=1e-4)
        self.net.train()

    def train_step(self, x: torch.Tensor, y: torch.Tensor, d: int) -> tuple[float, float]:
        def step() -> float:
            self.optimizer.zero_grad(set_to_none=True)
            loss = self.loss_fn(self.net(x, d) if self.role == "reference" else self.net(x, domain=d), y)
            loss.backward()
            self.optimizer.step()
            return loss.item()

        return _timed(step)

    def data_wait(self, batches: int) -> list[float]:
        """Seconds per batch from the bundle's training DataLoader, its CacheDataset filled (warm)."""
        loader = self.parser.get_parsed_content("train#dataloader")

        def endless() -> Any:
            while True:
                yield from loader

        it = endless()
        next(it)  # the first batch starts the iterator
        return [_timed(lambda: next(it))[0] for _ in range(batches)]

    def peak_rss_gb(self) -> float:
        return peak_rss_gb()


def _serve(role: str, setup: dict[str, Any], conn: Any) -> None:
    side = Side(role, setup)
    while True:
        cmd, args = conn.recv()
        if cmd == "stop":
            return
        try:
            conn.send(getattr(side, cmd)(*args))
        except Exception as e:  # report it to the main process rather than dying silently
            conn.send(RuntimeError(f"{role} side, {cmd}: {type(e).__name__}: {e}"))


class Worker:
    """A :class:`Side` in a fresh process, called like a local object."""

    def __init__(self, role: str, setup: dict[str, Any]) -> None:
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_serve, args=(role, setup, child), daemon=True)
        self.proc.start()

    def __call__(self, cmd: str, *args: Any) -> Any:
        self.conn.send((cmd, args))
        out = self.conn.recv()
        if isinstance(out, RuntimeError):
            raise out
        return out

    def stop(self) -> None:
        self.conn.send(("stop", ()))
        self.proc.join()


# ---------------------------------------------------------------------------------------------------------
# inputs
# ---------------------------------------------------------------------------------------------------------
def load_images(anatomy_names: list[str], tmp: str) -> dict[str, list[torch.Tensor]]:
    """Preprocessed images (the bundle's reading and resizing) per anatomy: real ones from ../shared/data where
    present (head JPEGs, hand MHAs), else the synthetic demo's; three of each."""
    from monai.transforms import Compose
    from scripts.datasets.demo import generate_demo

    parser = bundle_config(["inference.yaml"], {})
    transform = Compose(parser.get_parsed_content("load_transforms") + parser.get_parsed_content("resize_transforms"))
    demo = os.path.dirname(generate_demo(os.path.join(tmp, "demo"), n_train=3, n_val=0, n_test=0, seed=1))
    real = {
        "head": [os.path.join(SHARED, "head", "images", f"{i:03d}.jpg") for i in (1, 2, 3)],
        "hand": sorted(os.path.join(SHARED, "hand", "images", f) for f in os.listdir(os.path.join(SHARED, "hand", "images")))[:3]
        if os.path.isdir(os.path.join(SHARED, "hand", "images")) else [],
    }
    out = {}
    for name in anatomy_names:
        paths = [p for p in real.get(name, []) if os.path.isfile(p)]
        if len(paths) < 3:
            paths = [os.path.join(demo, "images", name, f"{name}_{i:03d}.png") for i in range(3)]
        size = ANATOMIES.get(name, {"size": [512, 512]})["size"]
        out[name] = [transform({"image": p, "size": size})["image"].as_tensor()[None] for p in paths]
    return out


def data_wait_config(tmp: str, names: list[str]) -> dict[str, Any]:
    """Overrides that point the bundle's training config at a small demo datalist of the benchmarked anatomies
    (``names``, in the network's order) at the paper's sizes."""
    from scripts.datasets.demo import generate_demo

    path = generate_demo(os.path.join(tmp, "loader"), n_train=8, n_val=1, n_test=1, seed=3)
    data = json.load(open(path))
    data["anatomies"] = {n: {**data["anatomies"][n], "size": ANATOMIES.get(n, {"size": [512, 512]})["size"]} for n in names}
    for split in ("training", "validation", "test"):
        data[split] = [item for item in data[split] if item["anatomy"] in names]
    json.dump(data, open(path, "w"))
    return {"dataset_dir": os.path.dirname(path), "batch_size": 4}


# ---------------------------------------------------------------------------------------------------------
# the benchmark
# ---------------------------------------------------------------------------------------------------------
def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def compare(ref: list[torch.Tensor], fast: list[torch.Tensor], decoder: str) -> dict[str, Any]:
    """Max abs heatmap difference; landmarks decoded both ways (argmax: must be equal; the bundle's decoder)."""
    from scripts.heatmaps import decode_heatmaps

    diff, same, total, subpixel = 0.0, 0, 0, 0.0
    for a, b in zip(ref, fast):
        diff = max(diff, float((a.float() - b.float()).abs().max()))
        for ha, hb in zip(a, b):
            pa, pb = decode_heatmaps(ha, "argmax")[0], decode_heatmaps(hb, "argmax")[0]
            same += int((pa == pb).all(1).sum())
            total += pa.shape[0]
            subpixel = max(subpixel, float((decode_heatmaps(ha, decoder)[0] - decode_heatmaps(hb, decoder)[0]).abs().max()))
    return {"max_abs_diff": diff, "landmarks_identical": same == total, "landmarks_same": f"{same}/{total}",
            "decoded_max_px_diff": subpixel}


def gpu_timings(state: dict[str, torch.Tensor], counts: list[int], x: torch.Tensor, y: torch.Tensor, repeats: int) -> dict[str, Any]:
    """Inference and train step on the GPU: reference float32 NCHW, bundle AMP + channels_last."""
    from scripts import DeployInferer, GU2Net

    dev = torch.device("cuda")

    def cuda_time(fn: Callable[[], Any]) -> float:
        fn()
        ts = []
        for _ in range(repeats):
            torch.cuda.synchronize()
            start = time.perf_counter()
            fn()
            torch.cuda.synchronize()
            ts.append(time.perf_counter() - start)
        return median(ts)

    ref = PlainGU2Net(counts).to(dev).eval()
    ref.load_state_dict(state)
    net = GU2Net(counts).to(dev, memory_format=torch.channels_last).eval()
    net.load_state_dict(state)
    inferer = DeployInferer("pytorch")
    x1, xb, yb = x[:1].to(dev), x.to(dev), y.to(dev)
    with torch.no_grad():
        infer_ref = cuda_time(lambda: ref(x1, 0))
        with torch.autocast("cuda"):
            infer_bundle = cuda_time(lambda: inferer(x1, net, domain=0))
    ref.train()
    net.train()
    opt_r = torch.optim.Adam(ref.parameters(), 1e-4, weight_decay=1e-4)
    opt_b = torch.optim.Adam(net.parameters(), 1e-4, weight_decay=1e-4)
    scaler = torch.amp.GradScaler("cuda")

    def step_ref() -> None:
        opt_r.zero_grad(set_to_none=True)
        F.binary_cross_entropy(ref(xb, 0), yb).backward()
        opt_r.step()

    def step_bundle() -> None:
        from scripts import HeatmapBCELoss

        opt_b.zero_grad(set_to_none=True)
        with torch.autocast("cuda"):
            pred = net(xb, 0)
        scaler.scale(HeatmapBCELoss()(pred, yb)).backward()
        scaler.step(opt_b)
        scaler.update()

    torch.cuda.reset_peak_memory_stats()
    train_ref = cuda_time(step_ref)
    mem_ref = torch.cuda.max_memory_allocated() / 1e9
    torch.cuda.reset_peak_memory_stats()
    train_bundle = cuda_time(step_bundle)
    mem_bundle = torch.cuda.max_memory_allocated() / 1e9
    return {"device": torch.cuda.get_device_name(), "infer_s": {"reference": infer_ref, "bundle": infer_bundle},
            "train_step_s": {"reference": train_ref, "bundle": train_bundle},
            "peak_mem_gb": {"reference": mem_ref, "bundle": mem_bundle}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2, help="CPU threads of each side (default 2)")
    ap.add_argument("--repeats", type=int, default=5, help="timed inference runs per side, after warm-up")
    ap.add_argument("--mixed-repeats", type=int, default=3, help="timed runs of the 8 mixed-anatomy images")
    ap.add_argument("--train-repeats", type=int, default=3, help="timed train steps per side, after one warm-up")
    ap.add_argument("--ckpt", default=None, help="a bundle checkpoint (default: seeded random weights)")
    ap.add_argument("--json", default=None, help="also write the figures to this JSON file")
    ap.add_argument("--skip-train", action="store_true", help="inference rows only")
    args = ap.parse_args()

    from scripts import AnatomySet, GU2Net, LandmarkHeatmap, read_checkpoint

    tmp = tempfile.mkdtemp(prefix="gu2net_speed_")
    if args.ckpt:
        ckpt = read_checkpoint(args.ckpt)
        # the checkpoint's anatomies, at the paper's network sizes
        spec = {a.name: {"landmarks": list(a.landmarks), "size": ANATOMIES.get(a.name, {"size": [512, 512]})["size"]}
                for a in AnatomySet.from_checkpoint(args.ckpt)}
        state, source = ckpt["model"], args.ckpt
    else:
        spec = ANATOMIES
        torch.manual_seed(0)
        state, source = GU2Net([a["landmarks"] for a in ANATOMIES.values()]).state_dict(), "seeded random GU2Net"
    anatomies = AnatomySet.from_dict(spec)
    anatomies_expr = f"$scripts.AnatomySet.from_dict({spec!r})"
    names = [n for n in ANATOMIES if n in anatomies.names]
    weights = os.path.join(tmp, "weights.pt")
    torch.save(state, weights)
    setup = {"threads": args.threads, "counts": anatomies.landmark_counts, "weights": weights, "anatomies_expr": anatomies_expr}
    images = load_images(names, tmp)
    head = images["head"][0]
    mixed_names = [n for n in MIXED if n in names]
    mixed = [images[n][i % 3] for i, n in enumerate(mixed_names)]
    mixed_domains = [anatomies.domain(n) for n in mixed_names]
    d_head = anatomies.domain("head")
    decoder = bundle_config(["inference.yaml"], {}).get_parsed_content("decoder")
    print(f"GU2Net speed: {args.threads} CPU threads per side, weights: {source}, input (W x H) head 416 x 512", flush=True)

    # inference: both sides alive, repetitions alternating
    sides = {role: Worker(role, {**setup, "configs": ["inference.yaml"]}) for role in ("reference", "bundle")}
    for w in sides.values():
        w("load_inference")
    infer = {r: [] for r in sides}
    outputs: dict[str, list[torch.Tensor]] = {r: [] for r in sides}
    for r, w in sides.items():  # warm-up (the bundle builds its engine here)
        outputs[r].append(w("infer", head, d_head)[1])
        w("infer", head, d_head)
    for _ in range(args.repeats):
        for r, w in sides.items():
            infer[r].append(w("infer", head, d_head)[0])
    mixed_s = {r: [] for r in sides}
    for r, w in sides.items():
        outputs[r] += w("infer_mixed", mixed, mixed_domains)[1]  # warm-up: engines of the other anatomies
    for _ in range(args.mixed_repeats):
        for r, w in sides.items():
            mixed_s[r].append(w("infer_mixed", mixed, mixed_domains)[0])
    rss_infer = {r: w("peak_rss_gb") for r, w in sides.items()}
    for w in sides.values():
        w.stop()
    result: dict[str, Any] = {
        "cpu_threads": args.threads,
        "infer_s": {r: median(v) for r, v in infer.items()},
        "infer_runs_s": infer,  # every timed repetition, to see the spread behind the medians
        "mixed_images_per_s": {r: len(mixed) / median(v) for r, v in mixed_s.items()},
        "peak_rss_infer_gb": rss_infer,
        **compare(outputs["reference"], outputs["bundle"], decoder),
        "weights": source,
        "machine": {"cpu_count": os.cpu_count(), "torch": torch.__version__,
                    "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                    "loadavg_start": os.getloadavg()},
    }

    result["machine"]["loadavg_end"] = os.getloadavg()
    print(format_table(result), flush=True)  # the inference rows now; the full table at the end

    # training: one side at a time (each holds several GB), the same batch for both
    if not args.skip_train:
        torch.manual_seed(1)
        x = torch.cat([images["head"][i % 3] for i in range(4)])
        points = torch.rand(4, anatomies.landmark_counts[d_head], 2) * torch.tensor(x.shape[-2:]).float()
        y = torch.stack([LandmarkHeatmap(3.0)(p, tuple(x.shape[-2:])) for p in points])
        train, losses, rss_train, wait = {}, {}, {}, []
        for role in ("reference", "bundle"):
            overrides = data_wait_config(tmp, anatomies.names) if role == "bundle" else {}
            w = Worker(role, {**setup, "configs": ["inference.yaml", "train.yaml"], "overrides": overrides})
            w("load_training")
            steps = [w("train_step", x, y, d_head) for _ in range(args.train_repeats + 1)]
            losses[role] = steps[0][1]
            train[role] = median([s for s, _ in steps[1:]])
            if role == "bundle":
                wait = w("data_wait", 6)
            rss_train[role] = w("peak_rss_gb")
            w.stop()
        result["train_step_s"] = train
        result["loss_rel_diff"] = abs(losses["bundle"] - losses["reference"]) / abs(losses["reference"])
        result["data_wait_s"] = median(wait)
        result["data_wait_share"] = median(wait) / (median(wait) + train["bundle"])
        result["peak_rss_train_gb"] = rss_train
    if torch.cuda.is_available():
        torch.manual_seed(1)
        xg = torch.cat([images["head"][i % 3] for i in range(4)])
        result["gpu"] = gpu_timings(state, anatomies.landmark_counts, xg, torch.rand(4, anatomies.landmark_counts[d_head], *xg.shape[-2:]), max(args.repeats, 5))
    result["machine"]["loadavg_end"] = os.getloadavg()
    print(format_table(result), flush=True)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        json.dump(result, open(args.json, "w"), indent=2)


def format_table(r: dict[str, Any]) -> str:
    """The figures as one Markdown table (ratio = reference / bundle, or bundle / reference for throughput)."""
    rows = [("inference s / head image (batch 1, median)", r["infer_s"], "s"),
            ("images / s, 8 mixed-anatomy images", r["mixed_images_per_s"], "rate"),
            ("peak memory, inference (RSS GB)", r["peak_rss_infer_gb"], "s")]
    if "train_step_s" in r:
        rows += [("train step s, batch 4 (median)", r["train_step_s"], "s"),
                 ("peak memory, training (RSS GB)", r["peak_rss_train_gb"], "s")]
    for label, key in (("GPU inference s / head image", "infer_s"), ("GPU train step s, batch 4", "train_step_s"),
                       ("GPU peak memory, training (GB)", "peak_mem_gb")):
        if "gpu" in r:
            rows.append((label, r["gpu"][key], "s"))
    lines = ["| measure | reference | bundle | reference / bundle |", "|---|---|---|---|"]
    for label, v, kind in rows:
        ratio = v["bundle"] / v["reference"] if kind == "rate" else v["reference"] / v["bundle"]
        lines.append(f"| {label} | {v['reference']:.3f} | {v['bundle']:.3f} | {ratio:.2f}x |")
    if "data_wait_share" in r:
        lines.append(f"| data wait, share of a bundle train step | | {100 * r['data_wait_share']:.1f} % "
                     f"({r['data_wait_s']:.3f} s / batch) | |")
    lines.append(f"\ncorrectness: heatmap max abs diff {r['max_abs_diff']:.2e}; decoded landmarks identical: "
                 f"{r['landmarks_identical']} ({r['landmarks_same']} argmax peaks; bundle decoder max diff "
                 f"{r['decoded_max_px_diff']:.1e} px)"
                 + (f"; first-step loss relative diff {r['loss_rel_diff']:.1e}" if "loss_rel_diff" in r else ""))
    m = r["machine"]
    lines.append(f"conditions: {r['cpu_threads']} CPU threads per side, {m['cpu_count']} cores ({m['cpu_capability']}), "
                 f"torch {m['torch']}, load average {m['loadavg_start'][0]:.1f} at start, {m['loadavg_end'][0]:.1f} at end"
                 + (f"; GPU: {r['gpu']['device']}" if "gpu" in r else ""))
    return "\n".join(lines)


if __name__ == "__main__":
    main()
