"""Record every memory block's life during training: allocation, each read and write (with the op,
the module and the phase), and free. A `TorchDispatchMode` sees every aten op, forward, backward
and optimizer alike; a block is a tensor storage (what the caching allocator hands out on GPU,
what malloc hands out on CPU). Categories (parameter, gradient, activation, optimizer state, ...)
and module names come from PyTorch's own `MemTracker`, which runs underneath: we add the per-block
access trace it does not keep."""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

EVENT_KINDS = ("alloc", "read", "write", "free")
INPUT = "Input"  # the training batch; MemTracker would call it an activation
OTHER = "Other"
OPTSTATE, TEMP = "Optstate", "Temp"  # MemTracker's names
CUDA_ROUND = 512


@dataclass
class Trace:
    """What a recording holds, column by column. Events are in program order; `seq` counts the
    ops (an op's reads, then its writes and allocations, share its seq; a free gets the seq of
    the next op). Blocks are indexed by their id."""

    # events
    seq: list[int] = field(default_factory=list)
    time_ns: list[int] = field(default_factory=list)
    kind: list[str] = field(default_factory=list)
    block: list[int] = field(default_factory=list)
    # ops, indexed by seq
    op: list[str] = field(default_factory=list)
    op_module: list[str] = field(default_factory=list)
    op_phase: list[str] = field(default_factory=list)
    op_step: list[int] = field(default_factory=list)
    # blocks, indexed by block id
    nbytes: list[int] = field(default_factory=list)
    category: list[str] = field(default_factory=list)
    module: list[str] = field(default_factory=list)  # the module whose op allocated it
    preexisting: list[bool] = field(default_factory=list)  # alive before recording began
    device: str = "cpu"
    step_starts: list[int] = field(default_factory=list)  # seq at which each marked step began

    @property
    def n_ops(self) -> int:
        return len(self.op)


def _storage(t: Tensor) -> torch.UntypedStorage | None:
    if not isinstance(t, Tensor) or t.layout != torch.strided or t.is_meta:
        return None
    try:
        st = t.untyped_storage()
    except (NotImplementedError, RuntimeError):  # tensor subclasses without storage
        return None
    return st if st.nbytes() > 0 else None


def _innermost(parents: set[str], root: str) -> str:
    """The deepest module name in ModTracker's `parents`, as a state-dict path ('' for the
    model itself, 'Global' outside every module)."""
    names = [p for p in parents if p != "Global"]
    if not names:
        return ""
    deepest = max(names, key=lambda n: n.count("."))
    return deepest[len(root) + 1:] if deepest.startswith(root + ".") else ("" if deepest == root else deepest)


class MemoryRecorder(TorchDispatchMode):
    """Context manager: `with MemoryRecorder(model, optimizer) as rec:` then call
    `rec.mark_step()` before each training step; `rec.trace` holds the result. Storages alive
    when recording starts (parameters, buffers, gradients, optimizer state) are pre-existing
    blocks; anything else is allocated, read, written and freed on the record."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> None:
        super().__init__()
        self.model = model
        # imported here: torch.distributed._tools costs seconds of import time
        from torch.distributed._tools.mem_tracker import MemTracker

        self.trace = Trace()
        self._tracker = MemTracker()
        self._tracker.track_external(*(x for x in (model, optimizer) if x is not None))
        self._optimizer = optimizer
        self._live: dict[int, tuple[int, weakref.ref]] = {}  # id(storage) -> (block, weak ref)
        self._labels: dict[int, str] = {}  # block -> category we set ourselves (the batch)
        self._made_at: dict[int, int] = {}  # block -> seq of the op that allocated it
        self._root = type(model).__name__
        self._step = -1
        self._recording = False

    # -- lifecycle ------------------------------------------------------------------------
    def __enter__(self) -> MemoryRecorder:
        self._tracker.__enter__()
        for t in self._persistent_tensors():
            self._block_of(t, seq=None)
        super().__enter__()
        self._recording = True
        return self

    def __exit__(self, *exc: Any) -> None:
        self._recording = False
        super().__exit__(*exc)
        self._tracker.__exit__(*exc)
        for block, ref in self._live.values():  # categories of blocks still alive, final word
            st = ref()
            if st is not None:
                self._refresh_category(block, st)

    def _persistent_tensors(self) -> Iterator[Tensor]:
        for p in self.model.parameters():
            yield p
            if p.grad is not None:
                yield p.grad
        yield from self.model.buffers()
        if self._optimizer is not None:
            for state in self._optimizer.state.values():
                yield from (v for v in state.values() if isinstance(v, Tensor))

    def mark_step(self) -> None:
        """Call before each training step: steps are numbered in the trace, and MemTracker's
        per-module statistics restart (it refuses a second forward otherwise)."""
        self._step += 1
        self.trace.step_starts.append(self.trace.n_ops)
        self._tracker.reset_mod_stats()

    def label(self, t: Tensor, category: str = INPUT) -> None:
        """Give the block holding `t` our own category (the training batch is `Input`)."""
        block = self._block_of(t, seq=self.trace.n_ops)
        if block is not None:
            self._labels[block] = category
            self.trace.category[block] = category

    # -- blocks ---------------------------------------------------------------------------
    def _event(self, kind: str, block: int, seq: int) -> None:
        tr = self.trace
        tr.seq.append(seq)
        tr.time_ns.append(time.perf_counter_ns())
        tr.kind.append(kind)
        tr.block.append(block)

    def _block_of(self, t: Tensor, seq: int | None) -> int | None:
        """The block id of `t`'s storage, creating it when this storage is new: with an alloc
        event at `seq` (a storage made outside the recording, like the batch, counts from its
        first use), or as pre-existing when `seq` is None."""
        st = _storage(t)
        if st is None:
            return None
        known = self._live.get(id(st))
        if known is not None and known[1]() is st:
            return known[0]
        tr = self.trace
        block = len(tr.nbytes)
        size = st.nbytes()
        if st.device.type == "cuda":  # the caching allocator hands out multiples of 512 bytes
            size = -(-size // CUDA_ROUND) * CUDA_ROUND
        tr.nbytes.append(size)
        tr.category.append(OTHER)
        tr.module.append(tr.op_module[seq] if seq is not None and seq < tr.n_ops else "")
        tr.preexisting.append(seq is None)
        tr.device = str(st.device.type)
        self._live[id(st)] = (block, weakref.ref(st, partial(self._freed, block, id(st))))
        self._refresh_category(block, st)
        if seq is not None:
            self._event("alloc", block, seq)
            self._made_at[block] = seq
        return block

    def _freed(self, block: int, key: int, _ref: weakref.ref) -> None:
        if self._live.get(key, (None,))[0] == block:
            del self._live[key]
        if not self._recording:  # a block that outlives the recording stays alive in the trace
            return
        self._event("free", block, self.trace.n_ops)
        tr = self.trace
        made = self._made_at.get(block)
        # MemTracker labels everything an optimizer step allocates as optimizer state; what the
        # step also frees was its scratch (the profiler's TEMPORARY), so call it that
        if tr.category[block] == OPTSTATE and made is not None and tr.op_step[made] == self._step \
                and tr.op_phase[made] == "optimizer" and self._phase() == "optimizer":
            tr.category[block] = TEMP

    def _refresh_category(self, block: int, st: torch.UntypedStorage) -> None:
        if block in self._labels:
            return
        info = self._tracker._WINFO.get(st, (None, None))[0]  # MemTracker's label, if any
        if info is not None:
            self.trace.category[block] = info.reftype.value

    def _phase(self) -> str:
        # MemTracker and its ModTracker know whether an optimizer step or a backward pass is
        # running; they keep it in private attributes (no public accessor in torch 2.11-2.14).
        if self._tracker._in_opt:
            return "optimizer"
        return "backward" if self._tracker._mod_tracker.is_bw else "forward"

    # -- the dispatch hook ----------------------------------------------------------------
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        tr = self.trace
        seq = tr.n_ops
        tr.op.append(func.__name__ if hasattr(func, "__name__") else str(func))
        tr.op_module.append(_innermost(self._tracker._mod_tracker.parents, self._root))
        tr.op_phase.append(self._phase())
        tr.op_step.append(self._step)

        schema = func._schema
        inputs: list[tuple[Tensor, bool]] = []
        for i, arg in enumerate(schema.arguments):
            value = args[i] if i < len(args) else kwargs.get(arg.name)
            written = arg.alias_info is not None and arg.alias_info.is_write
            for t in tree_flatten(value)[0]:
                if isinstance(t, Tensor):
                    inputs.append((t, written))
        # a view op (every output aliases an input, nothing written) touches no data
        view = bool(schema.returns) and all(
            r.alias_info is not None and not r.alias_info.is_write for r in schema.returns
        )
        seen_in: set[int] = set()
        for t, written in inputs:
            block = self._block_of(t, seq=seq)
            if block is None:
                continue
            seen_in.add(block)
            if not view:
                self._event("write" if written else "read", block, seq)
            self._refresh_category(block, t.untyped_storage())
        for t in tree_flatten(out)[0]:
            st = _storage(t) if isinstance(t, Tensor) else None
            if st is None:
                continue
            known = self._live.get(id(st))
            if known is not None and known[1]() is st:
                if known[0] not in seen_in:  # an existing block written through an out= path
                    self._event("write", known[0], seq)
                    self._refresh_category(known[0], st)
                continue  # a view of an input (or an in-place result): recorded above
            block = self._block_of(t, seq=seq)
            self._event("write", block, seq)
        return out



def record_steps(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: list[tuple[Tensor, Tensor]],
    loss_fn: Callable[[Tensor, Tensor], Tensor] = F.cross_entropy,
    set_to_none: bool = True,
) -> Trace:
    """Record one plain training step (zero_grad, forward, loss, backward, step) per (x, y) in
    `batches`, which is emptied: each batch is handed over when its step begins and freed when
    it ends, as a data loader would. For a custom loop, use MemoryRecorder directly."""
    rec = MemoryRecorder(model, optimizer)
    with rec:
        while batches:
            x, y = batches.pop(0)
            rec.mark_step()
            rec.label(x)
            rec.label(y)
            optimizer.zero_grad(set_to_none=set_to_none)
            loss_fn(model(x), y).backward()
            optimizer.step()
            del x, y
    return rec.trace
