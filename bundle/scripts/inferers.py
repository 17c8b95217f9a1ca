"""Inference engines: a batch of one anatomy through its fixed-domain network, eager, TorchScript or ONNX Runtime.

:class:`DeployInferer` is a MONAI ``Inferer``, so a workflow chooses the engine in its config and the
evaluator, decoding and outputs stay the same. It builds the fixed-domain network of
:mod:`scripts.deploy` from the network's *current* weights on first use of each anatomy and rebuilds it
when those weights change (a parameter's version counter moves on every in-place update), so it is also
safe where the weights are loaded after the workflow is built, or during training's validation. Or it
runs an exported file instead: a TorchScript network from ``ckpt_export`` (all anatomies) or an ONNX
model of one anatomy from :func:`scripts.deploy.export_onnx`.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Callable
from typing import Any, Union

import torch
import torch.nn as nn
from monai.inferers import Inferer

from .deploy import DeployGU2Net, export_onnx, read_onnx_domain
from .gu2net import resolve_domain

__all__ = ["DeployInferer", "ENGINES"]

ENGINES = ("pytorch", "torchscript", "onnx")
logger = logging.getLogger(__name__)

Runner = Callable[[torch.Tensor], torch.Tensor]


_SHARED_ARENA = False


def _onnx_session(model: Union[str, bytes]) -> Any:
    """An ONNX Runtime CPU session using as many threads as torch (``torch.set_num_threads``).

    All sessions of the process share one memory arena that grows only by what is asked: with one arena per
    session (ONNX Runtime's default) every anatomy's session keeps its own peak memory.
    """
    import onnxruntime as ort

    global _SHARED_ARENA
    if not _SHARED_ARENA:
        memory = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
        ort.create_and_register_allocator(memory, ort.OrtArenaCfg(0, 1, -1, -1))  # 1: extend as requested
        _SHARED_ARENA = True
    options = ort.SessionOptions()
    options.add_session_config_entry("session.use_env_allocators", "1")
    # idle threads sleep rather than spin: spinning takes cores from the other threads and processes sharing them
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    # no pre-planned memory block per session: it would hold memory beside the shared arena without running faster
    options.enable_mem_pattern = False
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def _onnx_runner(session: Any) -> Runner:
    name = session.get_inputs()[0].name

    def run(x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu":
            raise ValueError("DeployInferer: the 'onnx' engine runs on the CPU; use engine 'pytorch' on a GPU.")
        # one image at a time: on few CPU cores ONNX Runtime runs a batch slower per image than single images
        x = x.detach().float()
        return torch.cat([torch.from_numpy(session.run(None, {name: xi.contiguous().numpy()})[0]) for xi in x.split(1)])

    return run


def _weights_version(network: nn.Module) -> int:
    """Changes whenever a parameter or buffer is updated in place (optimizer step, ``load_state_dict``)."""
    return sum(t._version for t in network.state_dict().values())


class DeployInferer(Inferer):
    """Run ``network(x, domain)`` for a one-anatomy batch through a faster fixed-domain engine.

    Args:
        engine: ``"onnx"`` (ONNX Runtime, the fastest on CPU), ``"torchscript"`` (frozen TorchScript) or
            ``"pytorch"`` (eager; use it on a GPU, where the evaluator's AMP applies). All run the network of
            :class:`~scripts.deploy.DeployGU2Net` (one domain, batch norm folded, channels_last).
        exported_model: run this file instead of ``network``: a TorchScript file (``ckpt_export``) or an
            ONNX file of one anatomy (``export_onnx``); ``engine`` is then ignored.

    The heatmaps equal ``network(x, domain)`` within float rounding (tests check 1e-4).
    """

    def __init__(self, engine: str = "onnx", exported_model: str | None = None) -> None:
        super().__init__()
        if engine not in ENGINES:
            raise ValueError(f"DeployInferer: unknown engine {engine!r}; choose one of {list(ENGINES)}.")
        self.engine = engine
        self.exported_model = exported_model
        self._runners: dict[tuple[int, int, str, tuple[int, ...]], tuple[int, Runner]] = {}
        self._exported: Any = None

    def __call__(self, inputs: torch.Tensor, network: nn.Module, domain: Any = 0, *args: Any, **kwargs: Any) -> torch.Tensor:
        x = inputs.as_tensor() if hasattr(inputs, "as_tensor") else inputs
        d = resolve_domain(domain, network.num_domains)
        with torch.no_grad():
            if self.exported_model:
                return self._run_exported(x, d)
            return self._runner(network, d, x)(x).to(x.device)

    def _runner(self, network: nn.Module, domain: int, x: torch.Tensor) -> Runner:
        # ONNX engines are built for one image size (the anatomy's: workflows resize to it), the others for any
        size = tuple(x.shape[-2:]) if self.engine == "onnx" else ()
        key = (id(network), domain, str(x.device), size)
        version = _weights_version(network)
        cached = self._runners.get(key)
        if cached is not None and cached[0] == version:
            return cached[1]
        if self.engine == "onnx":
            buffer = io.BytesIO()
            export_onnx(network, domain, buffer, example_size=size, fixed_size=True)
            runner: Runner = _onnx_runner(_onnx_session(buffer.getvalue()))
        elif self.engine == "torchscript":
            runner = torch.jit.freeze(torch.jit.script(DeployGU2Net(network, domain)))
        else:
            runner = DeployGU2Net(network, domain)
        logger.info("DeployInferer: built the %s engine for domain %d%s", self.engine, domain, f", size {size}" if size else "")
        self._runners[key] = (version, runner)
        return runner

    def _run_exported(self, x: torch.Tensor, domain: int) -> torch.Tensor:
        path = str(self.exported_model)
        if self._exported is None:
            if not os.path.isfile(path):
                raise FileNotFoundError(f"DeployInferer: exported model {path} does not exist.")
            if path.endswith(".onnx"):
                session = _onnx_session(path)
                self._exported = (read_onnx_domain(session.get_modelmeta().custom_metadata_map, path), _onnx_runner(session))
            else:
                self._exported = (None, torch.jit.load(path, map_location=x.device).eval())
        meta, model = self._exported
        if meta is None:  # TorchScript GU2Net: all anatomies, the domain is an input
            return model(x, domain)
        if meta[0] != domain:
            raise ValueError(
                f"DeployInferer: {path} was exported for domain {meta[0]} ({meta[1] or 'unnamed anatomy'}), "
                f"but this batch is of domain {domain}; export one model per anatomy."
            )
        return model(x).to(x.device)
