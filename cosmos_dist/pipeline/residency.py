"""Residency levels: which models stay on the GPU, and which wait in pinned CPU memory for their stage.

Levels (`offload=`), cumulative, the model card's five strategies plus `none`:

    none < upsampler < guardrails < text_encoder < tokenizer < dit

A level offloads its own component and those of every level before it (offload=text_encoder offloads the
upsampler, the guardrail models and T5). An offloaded component is loaded once, kept in pinned host memory
(pinned when the run device is CUDA; `offload.pin_memory`), and moved to the GPU only inside
`Residency.stage(...)`; it is never re-read from disk.

How a move works: every parameter and buffer of the component's modules keeps a host copy; moving in sets
`tensor.data` to a device copy of it, moving out sets `tensor.data` back to the host copy (the device memory is
freed; nothing is copied back because inference never changes weights). The module objects, their parameters
and their names stay the same, so `torch.compile`d blocks stay valid and the numbers of every stage are the
same whatever the level.

The DiT at level `dit` (with `offload.dit_stream`, the default) is not moved whole: inside its stage the small
non-block parameters are resident and the transformer blocks stream in one at a time, the copy of block i+1
overlapping the compute of block i on a side CUDA stream; a block's device copy is dropped right after it ran.
Its peak is then the activations plus two blocks instead of the whole network.

`moves` logs every move ("text_encoder", "in") for tests and the sidecar; `move_seconds` adds up their time.
"""
from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterable, Iterator, Optional, Sequence

import torch
from torch import nn

from cosmos_dist.config import OFFLOAD_LEVELS
from cosmos_dist.errors import ConfigError

log = logging.getLogger("cosmos_dist")

#: Component name -> the level from which it is offloaded.
COMPONENTS = {
    "upsampler": "upsampler",
    "guardrails": "guardrails",
    "text_encoder": "text_encoder",
    "tokenizer": "tokenizer",
    "dit": "dit",
}


def level_index(level: str) -> int:
    if level not in OFFLOAD_LEVELS:
        raise ConfigError(
            f"offload: {level!r} is not a residency level; choose one of {', '.join(OFFLOAD_LEVELS)} "
            "(each offloads the models of the levels before it too)"
        )
    return OFFLOAD_LEVELS.index(level)


def offloaded_components(level: str) -> list[str]:
    """The components a level offloads, in level order."""
    i = level_index(level)
    return [c for c, lv in COMPONENTS.items() if OFFLOAD_LEVELS.index(lv) <= i and i > 0]


def _unique_tensors(modules: Iterable[nn.Module]) -> list[torch.Tensor]:
    seen: set[int] = set()
    out: list[torch.Tensor] = []
    for m in modules:
        if m is None:
            continue
        for t in [*m.parameters(), *m.buffers()]:
            if id(t) not in seen:
                seen.add(id(t))
                out.append(t)
    return out


def _host_copy(t: torch.Tensor, pin: bool) -> torch.Tensor:
    src = t.detach()
    if src.device.type == "cpu" and (not pin or src.is_pinned()):
        return src  # already a usable host copy (e.g. a model loaded into pinned memory)
    if pin:
        h = torch.empty(src.shape, dtype=src.dtype, device="cpu", pin_memory=True)
        h.copy_(src)
        return h
    return src.to("cpu")


@dataclass
class _Component:
    name: str
    tensors: list[torch.Tensor]
    host: list[torch.Tensor]
    offloaded: bool
    stream_blocks: Optional[nn.ModuleDict] = None
    resident: bool = True
    nbytes: int = 0


class _Streamed(nn.Module):
    """Stands in for one transformer block while the DiT streams: loads it before and drops it after."""

    def __init__(self, inner: nn.Module, streamer: "_BlockStreamer", index: int):
        super().__init__()
        self.inner = inner
        object.__setattr__(self, "_streamer", streamer)  # not a submodule
        self._index = index

    def forward(self, *args, **kwargs):
        self._streamer.before(self._index)
        try:
            return self.inner(*args, **kwargs)
        finally:
            self._streamer.after(self._index)


class _BlockStreamer:
    """Block i's tensors are copied in (on a side stream on CUDA) while block i-1 computes."""

    def __init__(self, blocks: list[tuple[list[torch.Tensor], list[torch.Tensor]]], device: torch.device):
        self.blocks = blocks  # per block: (tensors, host copies)
        self.device = device
        self.cuda = device.type == "cuda"
        self.copy_stream = torch.cuda.Stream(device) if self.cuda else None
        self.pending: dict[int, tuple[list[torch.Tensor], object]] = {}
        self.bytes_moved = 0

    def prefetch(self, i: int) -> None:
        if i in self.pending:
            return
        tensors, hosts = self.blocks[i]
        if not self.cuda:
            self.pending[i] = ([h.to(self.device) for h in hosts], None)
        else:
            cur = torch.cuda.current_stream(self.device)
            dsts = [torch.empty_like(h, device=self.device) for h in hosts]  # allocated on the compute stream
            self.copy_stream.wait_stream(cur)  # never write memory the compute stream may still read
            with torch.cuda.stream(self.copy_stream):
                for d, h in zip(dsts, hosts):
                    d.copy_(h, non_blocking=True)
            event = torch.cuda.Event()
            event.record(self.copy_stream)
            self.pending[i] = (dsts, event)
        self.bytes_moved += sum(h.numel() * h.element_size() for h in hosts)

    def before(self, i: int) -> None:
        self.prefetch(i)
        dsts, event = self.pending.pop(i)
        if event is not None:
            torch.cuda.current_stream(self.device).wait_event(event)
        for t, d in zip(self.blocks[i][0], dsts):
            t.data = d
        self.prefetch((i + 1) % len(self.blocks))  # the next block (or the next pass's first)

    def after(self, i: int) -> None:
        tensors, hosts = self.blocks[i]
        for t, h in zip(tensors, hosts):
            t.data = h  # the device copy is freed once the compute stream is done with it

    def close(self) -> None:
        self.pending.clear()


class Residency:
    """Where each model lives between its stages; see the module docstring."""

    def __init__(
        self,
        level: str = "none",
        device: torch.device | str = "cpu",
        *,
        pin_memory: str | bool = "auto",
        dit_stream: bool = True,
        chunk: int = 16,
    ):
        level_index(level)
        self.level = level
        self.device = torch.device(device)
        pin = str(pin_memory).lower()
        self.pin = (self.device.type == "cuda") if pin == "auto" else pin == "true"
        if self.pin and not torch.cuda.is_available():
            self.pin = False  # pinning needs CUDA; a CPU run keeps plain host copies
        self.dit_stream = bool(dit_stream)
        self.chunk = max(1, int(chunk))
        self.components: dict[str, _Component] = {}
        self.moves: list[tuple[str, str]] = []
        self.move_seconds = 0.0
        self.streamed_bytes = 0

    @classmethod
    def from_config(cls, cfg, device) -> "Residency":
        off = cfg.get("offload") if hasattr(cfg, "get") else getattr(cfg, "offload", None)
        if off is None:
            return cls("none", device)
        get = off.get if hasattr(off, "get") else (lambda k, d=None: getattr(off, k, d))
        return cls(str(off.level), device, pin_memory=get("pin_memory", "auto"),
                   dit_stream=bool(get("dit_stream", True)), chunk=int(get("chunk", 16)))

    # ---- questions -------------------------------------------------------------------------------
    def offloads(self, component: str) -> bool:
        if component not in COMPONENTS:
            raise KeyError(f"unknown component {component!r}; one of {', '.join(COMPONENTS)}")
        return component in offloaded_components(self.level)

    def load_device(self, component: str) -> torch.device:
        """Where a (plain PyTorch) component should be built or loaded: the CPU when it is offloaded."""
        return torch.device("cpu") if self.offloads(component) else self.device

    def any_offloaded(self) -> bool:
        """Whether some registered model (with weights) is offloaded."""
        return any(c.offloaded and c.tensors for c in self.components.values())

    def chunk_size(self) -> int:
        """Samples per chunk of the stage order: 1 unless something registered is offloaded."""
        return self.chunk if self.any_offloaded() else 1

    def is_resident(self, name: str) -> bool:
        c = self.components.get(name)
        return c is None or c.resident

    def describe(self) -> dict:
        return {
            "level": self.level,
            "offloaded": [n for n, c in self.components.items() if c.offloaded and c.tensors],
            "pinned": self.pin,
            "dit_stream": self.dit_stream and "dit" in self.components and self.components["dit"].offloaded,
            "chunk": self.chunk_size(),
        }

    # ---- registration ----------------------------------------------------------------------------
    def register(
        self, name: str, modules: Sequence[nn.Module | None], *, stream_blocks: Optional[nn.ModuleDict] = None
    ) -> None:
        """Take charge of a component. Offloaded: its tensors move to (pinned) host copies now. Resident: its
        tensors move to the run device if they are not there yet."""
        offloaded = self.offloads(name)
        tensors = _unique_tensors(modules)
        comp = _Component(name, tensors, [], offloaded,
                          stream_blocks=stream_blocks if (offloaded and self.dit_stream) else None)
        comp.nbytes = sum(t.numel() * t.element_size() for t in tensors)
        if offloaded:
            for t in tensors:
                h = _host_copy(t, self.pin)
                comp.host.append(h)
                t.data = h
            comp.resident = False
            if self.device.type == "cuda":
                torch.cuda.empty_cache()  # give back what a component loaded on the device held
        else:
            for t in tensors:
                if t.device != self.device:
                    t.data = t.data.to(self.device)
        self.components[name] = comp
        log.debug("residency: %s (%.2f GB) %s", name, comp.nbytes / 1e9, "offloaded" if offloaded else "resident")

    # ---- moves -----------------------------------------------------------------------------------
    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _move_in(self, comp: _Component, skip: set[int] | None = None) -> None:
        t0 = time.perf_counter()
        for t, h in zip(comp.tensors, comp.host):
            if skip is None or id(t) not in skip:
                t.data = h.to(self.device, non_blocking=True)
        self._sync()
        self.move_seconds += time.perf_counter() - t0
        comp.resident = True
        self.moves.append((comp.name, "in"))

    def _move_out(self, comp: _Component) -> None:
        t0 = time.perf_counter()
        self._sync()  # the stage's kernels are done with the device copies
        for t, h in zip(comp.tensors, comp.host):
            t.data = h
        self.move_seconds += time.perf_counter() - t0
        comp.resident = False
        self.moves.append((comp.name, "out"))

    @contextmanager
    def stage(self, *names: str) -> Iterator[None]:
        """The named components are on the device inside the block (offloaded ones move in, then out)."""
        entered: list[_Component] = []
        streams: list[tuple[_Component, _BlockStreamer, dict]] = []
        try:
            for name in names:
                comp = self.components.get(name)
                if comp is None or not comp.offloaded or comp.resident or not comp.tensors:
                    continue  # unknown, resident, or nothing to move (a provider without weights)
                if comp.stream_blocks is not None:
                    streams.append(self._start_stream(comp))
                else:
                    self._move_in(comp)
                entered.append(comp)
            yield
        finally:
            for comp, streamer, originals in streams:
                self._stop_stream(comp, streamer, originals)
            for comp in entered:
                if comp.resident:
                    self._move_out(comp)
            if entered and self.device.type == "cuda":
                torch.cuda.empty_cache()

    def _start_stream(self, comp: _Component):
        blocks = comp.stream_blocks
        index = {id(t): i for i, t in enumerate(comp.tensors)}
        per_block, block_ids = [], set()
        for block in blocks.values():
            ts = _unique_tensors([block])
            ids = [index[id(t)] for t in ts]
            block_ids.update(id(t) for t in ts)
            per_block.append(([comp.tensors[i] for i in ids], [comp.host[i] for i in ids]))
        self._move_in(comp, skip=block_ids)  # everything but the blocks (embedders, final layer, norms)
        streamer = _BlockStreamer(per_block, self.device)
        originals = dict(blocks.items())
        for i, (key, block) in enumerate(originals.items()):
            blocks[key] = _Streamed(block, streamer, i)
        streamer.prefetch(0)
        return comp, streamer, originals

    def _stop_stream(self, comp: _Component, streamer: _BlockStreamer, originals: dict) -> None:
        blocks = comp.stream_blocks
        for key, block in originals.items():
            blocks[key] = block
        self._sync()
        streamer.close()
        self.streamed_bytes += streamer.bytes_moved


def uses(residency: Optional[Residency], *names: str):
    """`residency.stage(*names)`, or nothing when there is no residency manager."""
    if residency is None:
        from contextlib import nullcontext

        return nullcontext()
    return residency.stage(*names)
