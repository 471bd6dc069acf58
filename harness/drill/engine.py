"""The two passes of a drill over one component call: module-level forcing, then the free run.

Forced pass (`forced_pass`): the reference component runs once on its inputs with a hook on every module; as
each reference module returns, its aligned native module is called on that module's recorded inputs (mapped
by harness/drill/alignment.py) and the two outputs are compared while both are alive: the native module's
*local* error, unaffected by anything upstream. The reference's outputs are kept in a bounded store
(harness/drill/store.py). Only one native output exists at a time: at most one extra copy of the largest
activation, plus what that one module allocates while it runs.

Free pass (`free_pass`): the native component runs once on the same component inputs with a hook on every
module; each output is compared with the stored reference output of the same module and call: the *inherited*
error, what the module's output carries after everything before it. Its completion order is the execution
order a verdict is read in.

Both passes are generic over any module tree: calibration (harness/golden/module_floors.py) runs them with the
reference itself, perturbed, in the native role.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from harness.drill.alignment import ComponentAlignment, DrillContext, NotForceable, cast_inputs, map_call
from harness.drill.metrics import compare, worst
from harness.drill.outputs import Flat, pair
from harness.drill.store import OutputStore

ContextFactory = Callable[[], contextlib.AbstractContextManager]
Gather = Callable[[str, int, str, torch.Tensor], torch.Tensor | None]  # canonical tensor, None: cannot


@dataclass
class CallResult:
    """One module call compared: the worst output's metrics, or why it was not compared."""

    metrics: dict[str, float] | None = None
    output: str | None = None  # the label of the worst output
    sampled: bool = False  # compared on a fixed sample of a large tensor only
    problem: str | None = None  # not compared, or (with `fails`) what went wrong
    fails: bool = False  # a problem that is itself a divergence: another shape, an exception on the same inputs


@dataclass
class Variant:
    """A module tree in the native role of the forced pass, and the context each of its calls runs in."""

    label: str
    root: nn.Module
    alignment: ComponentAlignment
    context: ContextFactory = contextlib.nullcontext


@dataclass
class Baseline:
    """Stored outputs the free pass compares with, and the name under which each native module was stored."""

    label: str
    store: OutputStore
    signatures: dict[tuple[str, int], tuple[tuple[str, ...], bool]]  # (name, call) -> (labels, named)
    name_of: Callable[[str], str | None]


def tensor_specs(args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[str]:
    """'name (shape dtype)' of the tensors a call received (positional ones numbered), for the report."""
    specs = []

    def add(name: str, value: Any) -> None:
        if isinstance(value, torch.Tensor):
            dtype = str(value.dtype).removeprefix("torch.")
            specs.append(f"{name} {tuple(value.shape)} {dtype}")
        elif type(value) in (tuple, list) and len(value) <= 8:
            for i, item in enumerate(value):
                add(f"{name}[{i}]", item)

    for i, value in enumerate(args):
        add(f"arg{i}", value)
    for name, value in kwargs.items():
        add(name, value)
    return specs


def _versions(args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[tuple[torch.Tensor, int]]:
    values = list(args) + list(kwargs.values())
    return [(v, v._version) for v in values if isinstance(v, torch.Tensor)]


def compare_flats(native: Flat, reference: Flat, stored: bool = False) -> CallResult:
    """The worst of the paired outputs; `reference` holds tensors, or `Stored` entries when `stored`."""
    pairs, reason = pair(native, reference)
    if reason is not None:
        return CallResult(problem=reason)
    result = CallResult()
    for label, nat, ref in pairs:
        sampled = False
        if stored:
            if ref is None:
                return CallResult(problem=f"output '{label}' was not stored")
            if tuple(nat.shape) != ref.shape:
                return CallResult(problem=f"output '{label}': native shape {tuple(nat.shape)}, reference {ref.shape}",
                                  fails=True)
            nat, ref, sampled = ref.counterpart(nat), ref.tensor, ref.sampled
        elif tuple(nat.shape) != tuple(ref.shape):
            return CallResult(problem=f"output '{label}': native shape {tuple(nat.shape)}, "
                                      f"reference {tuple(ref.shape)}", fails=True)
        metrics = compare(nat, ref)
        if worst(result.metrics, metrics) is metrics:
            result.metrics, result.output = metrics, label
        result.sampled = result.sampled or sampled
    return result


@dataclass
class FreeRun:
    """What one free pass saw: per native module its calls, class, output shapes; the comparisons by baseline."""

    calls: dict[str, int] = field(default_factory=dict)
    kinds: dict[str, str] = field(default_factory=dict)
    outputs: dict[str, list[str]] = field(default_factory=dict)  # first call's output shapes, for the report
    order: list[str] = field(default_factory=list)  # modules in completion order of their first call
    signatures: dict[tuple[str, int], tuple[tuple[str, ...], bool]] = field(default_factory=dict)
    shapes: dict[tuple[str, int, str], tuple[int, ...]] = field(default_factory=dict)  # (module, call, label)
    inherited: dict[tuple[str, str, int], CallResult] = field(default_factory=dict)  # (baseline, module, call)
    problems: dict[tuple[str, int], str] = field(default_factory=dict)  # outputs that could not be canonical


@dataclass
class DrillPasses:
    """Both passes over one component call, and everything they recorded (plain data once they ran)."""

    component: str
    reference_root: nn.Module | None  # None on a rank of a multi-rank drill, which runs the free pass only
    method: str  # the component method the pipeline called: "forward" or e.g. "decode"
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    alignment: ComponentAlignment
    store: OutputStore
    # filled by the passes
    reference_calls: dict[str, int] = field(default_factory=dict)
    reference_kinds: dict[str, str] = field(default_factory=dict)
    reference_inputs: dict[str, list[str]] = field(default_factory=dict)  # first call's input tensors
    signatures: dict[tuple[str, int], tuple[tuple[str, ...], bool]] = field(default_factory=dict)
    local: dict[tuple[str, str, int], CallResult] = field(default_factory=dict)  # (variant, ref name, call)
    native_of: dict[str, dict[str, str]] = field(default_factory=dict)  # variant -> ref name -> native name

    def context(self, root: nn.Module) -> DrillContext:
        return DrillContext(self.component, root, self.args, self.kwargs)

    # ---- the forced pass ----------------------------------------------------------------------------------
    def forced_pass(self, variants: list[Variant]) -> Any:
        """Run the reference component once; force every variant's aligned modules at module level. Returns
        the reference component's output."""
        if self.reference_root is None:
            raise ValueError("a forced pass needs the reference component")
        reference_modules = dict(self.reference_root.named_modules())
        mapping: dict[str, dict[str, tuple[str, nn.Module]]] = {}
        for variant in variants:
            found: dict[str, tuple[str, nn.Module]] = {}
            for native_name, module in variant.root.named_modules():
                ref_name = variant.alignment.reference_name(native_name, reference_modules)
                if ref_name is not None and ref_name not in found:
                    found[ref_name] = (native_name, module)
            mapping[variant.label] = found
            self.native_of[variant.label] = {r: n for r, (n, _) in found.items()}
        # the alignment's rules are written for native names: a reference module's result is read by the rule of
        # the native module it aligns with (the first variant's), itself when none does
        rule_name = {r: n for r, (n, _) in mapping[variants[0].label].items()} if variants else {}
        pending: dict[str, list[tuple[tuple[Any, ...], dict[str, Any], list]]] = {}
        guard = [False]

        def pre_hook(name: str) -> Callable[..., None]:
            def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
                if not guard[0]:
                    pending.setdefault(name, []).append((args, kwargs, _versions(args, kwargs)))
                    if name not in self.reference_inputs:
                        self.reference_inputs[name] = tensor_specs(args, kwargs)
            return hook

        def post_hook(name: str) -> Callable[..., None]:
            def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
                if guard[0]:
                    return
                ref_args, ref_kwargs, versions = pending[name].pop()
                call = self.reference_calls.get(name, 0)
                self.reference_calls[name] = call + 1
                self.reference_kinds.setdefault(name, type(module).__name__)
                ref_flat = self.alignment.reference_flat(rule_name.get(name, name), output,
                                                         self.context(self.reference_root))
                self._store(name, call, ref_flat)
                if name == "":
                    return  # the component itself: compared by the free pass, on the same inputs
                modified = any(t._version != v for t, v in versions)
                for variant in variants:
                    key = (variant.label, name, call)
                    target = mapping[variant.label].get(name)
                    if target is None:
                        continue
                    if modified:
                        self.local[key] = CallResult(problem="the reference modified its inputs in place")
                        continue
                    guard[0] = True
                    try:
                        self.local[key] = self._force(variant, target, module, ref_args, ref_kwargs, ref_flat)
                    finally:
                        guard[0] = False
            return hook

        handles = []
        try:
            for name, module in reference_modules.items():
                handles.append(module.register_forward_pre_hook(pre_hook(name), with_kwargs=True))
                handles.append(module.register_forward_hook(post_hook(name), with_kwargs=True))
            with torch.no_grad():
                output = self._invoke(self.reference_root, self.method, self.args, self.kwargs)
        finally:
            for handle in handles:
                handle.remove()
        if ("", 0) not in self.signatures:  # a method other than forward: no hook saw the component's result
            self.reference_kinds.setdefault("", type(self.reference_root).__name__)
            self.reference_calls[""] = 1
            self._store("", 0, self.alignment.reference_flat("", output, self.context(self.reference_root)))
        return output

    def _store(self, name: str, call: int, flat: Flat) -> None:
        self.signatures[(name, call)] = (flat.labels, flat.named)
        for label, tensor in zip(flat.labels, flat.tensors, strict=True):
            self.store.put((name, call, label), tensor)

    def _force(self, variant: Variant, target: tuple[str, nn.Module], reference: nn.Module,
               args: tuple[Any, ...], kwargs: dict[str, Any], ref_flat: Flat) -> CallResult:
        native_name, native = target
        ctx = self.context(variant.root)
        shared = [v for v in (*args, *kwargs.values()) if isinstance(v, list | dict) and v]
        if shared:  # e.g. a causal VAE's feature cache and its running index: calling again would advance them
            return CallResult(problem=f"not forceable: takes run state ({type(shared[0]).__name__} argument)")
        try:
            args, kwargs = cast_inputs(args, kwargs, native, reference)
            call_args, call_kwargs = variant.alignment.native_call(native_name, args, kwargs, native, ctx)
        except NotForceable as exc:
            return CallResult(problem=f"not forceable: {exc}")
        try:
            with torch.no_grad(), variant.context():
                output = native(*call_args, **call_kwargs)
        except Exception as exc:  # noqa: BLE001 - a module that cannot take the reference's inputs is a finding
            first = (str(exc).splitlines() or [""])[0][:200]
            return CallResult(problem=f"raised {type(exc).__name__} on the reference's inputs: {first}",
                              fails=True)
        return compare_flats(variant.alignment.native_flat(native_name, output, ctx), ref_flat)

    # ---- the free pass ------------------------------------------------------------------------------------
    def baseline(self) -> Baseline:
        """The reference outputs of the forced pass, as a baseline for `free_pass`."""
        if self.reference_root is None:
            raise ValueError("no reference component: no reference baseline")
        modules = dict(self.reference_root.named_modules())
        return Baseline("reference", self.store, self.signatures,
                        lambda name: self.alignment.reference_name(name, modules))

    def free_pass(self, native_root: nn.Module, baselines: list[Baseline], alignment: ComponentAlignment,
                  context: ContextFactory = contextlib.nullcontext, gather: Gather | None = None,
                  record_into: OutputStore | None = None) -> FreeRun:
        """Run `native_root` on the component inputs, comparing every module's output with each baseline;
        `gather` turns a rank's shard into the canonical tensor (multi-rank runs); `record_into` keeps the
        (canonical) outputs for a later comparison."""
        ctx = self.context(native_root)
        run = FreeRun()
        root_seen = [False]

        def observe(name: str, module: nn.Module, output: Any) -> None:
            call = run.calls.get(name, 0)
            run.calls[name] = call + 1
            run.kinds.setdefault(name, type(module).__name__)
            if call == 0:
                run.order.append(name)
            flat = alignment.native_flat(name, output, ctx)
            if gather is not None:
                tensors = tuple(gather(name, call, label, t) for label, t in zip(flat.labels, flat.tensors,
                                                                                 strict=True))
                if any(t is None for t in tensors):
                    run.problems[(name, call)] = "a rank's shard could not be turned into the canonical tensor"
                    for baseline in baselines:
                        run.inherited[(baseline.label, name, call)] = CallResult(problem=run.problems[(name, call)])
                    return
                flat = Flat(flat.labels, tensors, flat.named)  # type: ignore[arg-type]
            if call == 0:
                run.outputs[name] = [f"{label or 'out'} {tuple(t.shape)}" for label, t in
                                     zip(flat.labels, flat.tensors, strict=True)]
            run.signatures[(name, call)] = (flat.labels, flat.named)
            for label, tensor in zip(flat.labels, flat.tensors, strict=True):
                run.shapes[(name, call, label)] = tuple(tensor.shape)
            if record_into is not None:
                for label, tensor in zip(flat.labels, flat.tensors, strict=True):
                    record_into.put((name, call, label), tensor)
            for baseline in baselines:
                stored_name = baseline.name_of(name)
                if stored_name is None:
                    continue
                signature = baseline.signatures.get((stored_name, call))
                if signature is None:
                    continue
                labels, named = signature
                entries = tuple(baseline.store.get((stored_name, call, label)) for label in labels)
                run.inherited[(baseline.label, name, call)] = compare_flats(
                    flat, Flat(labels, entries, named), stored=True)  # type: ignore[arg-type]

        def hook(name: str) -> Callable[..., None]:
            def run(module: nn.Module, _: tuple[Any, ...], output: Any) -> None:
                if name == "":
                    root_seen[0] = True
                observe(name, module, output)
            return run

        handles = [module.register_forward_hook(hook(name)) for name, module in native_root.named_modules()]
        try:
            method = getattr(native_root, "forward" if self.method == "forward" else self.method)
            call_args, call_kwargs = self.args, self.kwargs
            if self.reference_root is not None:
                call_args, call_kwargs = cast_inputs(call_args, call_kwargs, native_root, self.reference_root)
            call_args, call_kwargs = map_call(call_args, call_kwargs, method)
            with torch.no_grad(), context():
                output = self._invoke(native_root, self.method, call_args, call_kwargs)
        finally:
            for handle in handles:
                handle.remove()
        if not root_seen[0]:
            observe("", native_root, output)
        return run

    @staticmethod
    def _invoke(root: nn.Module, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if method == "forward":
            return root(*args, **kwargs)  # through __call__, so module hooks fire
        return getattr(root, method)(*args, **kwargs)


@contextlib.contextmanager
def no_context() -> Iterator[None]:
    yield
