"""How a native module tree lines up with the reference's: names, calls and outputs.

Native models load Diffusers' (and transformers') state-dict names, so most modules align by their dotted name
with nothing declared, are called the same way (a Linear, a norm, a convolution: one tensor in) and return the
same thing. Where a native module really differs, its family declares it in `references/<family>/drill.py` as
plain data, a `ComponentAlignment` per native component class, registered with `register_alignment`:
- `renames`: (native prefix, reference prefix) tried when a native name has no reference module (transformers 5
  drops CLIP's `text_model.` level, which the checkpoint and so the native model keep);
- `rules`: per native module-name pattern (`*` is one dotted component, as in the parallel plans), an `inputs`
  adapter that turns the reference module's recorded call into the native module's call (a fused block that
  takes the text and image streams concatenated, rotary tables in another layout), output adapters that pick or
  reshape what the two sides return, or `skip` with the reason a module is not compared.
Everything else follows the generic call mapping of `map_call`: the reference's positional arguments (trailing
Nones dropped) and its keyword arguments that the native signature accepts; a keyword the native side does not
take is dropped only when it carries nothing (None, False, an empty container, `return_dict`), else the module
is reported as not forceable, with the reason.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from harness.drill.outputs import Flat, flatten
from harness.families import FamilyRegistry

# keywords a reference passes that only shape its return value or carry optional extras
DROPPABLE_KEYWORDS = frozenset({"return_dict", "output_attentions", "use_cache"})


class NotForceable(Exception):
    """A native module cannot be called with the reference's recorded inputs (the reason, one line)."""


@dataclass
class DrillContext:
    """What adapters may read besides the module call: the native component and the component's reference call."""

    component: str
    root: nn.Module  # the native component
    reference_args: tuple[Any, ...]
    reference_kwargs: dict[str, Any]

    def argument(self, name: str, position: int) -> Any:
        """The component call's argument `name` (keyword) or at `position` (positional), None when absent."""
        if name in self.reference_kwargs:
            return self.reference_kwargs[name]
        return self.reference_args[position] if len(self.reference_args) > position else None


Call = tuple[tuple[Any, ...], dict[str, Any]]
InputAdapter = Callable[[tuple[Any, ...], dict[str, Any], nn.Module, DrillContext], Call]
OutputAdapter = Callable[[Any, DrillContext], Flat]


def pattern_regex(pattern: str) -> re.Pattern[str]:
    """`*` matches one dotted component ('transformer_blocks.*.attn' matches 'transformer_blocks.3.attn')."""
    return re.compile("".join("[^.]*" if part == "*" else re.escape(part) for part in re.split(r"(\*)", pattern)))


def generic_name(name: str, root: nn.Module | None = None) -> str:
    """The pattern of a module name with the indices of repeated stacks starred: 'blocks.3.attn1' ->
    'blocks.*.attn1', so a floor measured on one depth holds for any. With `root`, an index is starred only
    where every sibling has the same class (T5's `layer.0` self-attention and `layer.1` feed-forward keep their
    indices; its blocks do not)."""
    if not name:
        return name
    parts = name.split(".")
    if root is None:
        return ".".join("*" if part.isdigit() else part for part in parts)
    out = []
    module: nn.Module | None = root
    for part in parts:
        child = module.get_submodule(part) if module is not None and part in module._modules else None
        if part.isdigit() and module is not None and child is not None:
            kinds = {type(sibling) for sibling in module.children()}
            out.append("*" if len(kinds) == 1 else part)
        else:
            out.append(part)
        module = child
    return ".".join(out)


@dataclass(frozen=True)
class ModuleRule:
    """How native modules whose name matches `pattern` are fed the reference's inputs and compared."""

    pattern: str
    inputs: InputAdapter | None = None  # None: `map_call`
    native_outputs: OutputAdapter | None = None  # None: `flatten`
    reference_outputs: OutputAdapter | None = None
    skip: str | None = None  # not compared at all, for this reason
    note: str = ""  # shown in the report beside the module

    def matches(self, name: str) -> bool:
        return pattern_regex(self.pattern).fullmatch(name) is not None


@dataclass(frozen=True)
class ComponentAlignment:
    """The alignment map of one native component class (`native_class`, e.g. 'FluxTransformer2DModel')."""

    native_class: str
    aliases: tuple[tuple[str, str], ...] = ()  # (native name, reference name): one module the two sides name apart
    renames: tuple[tuple[str, str], ...] = ()
    rules: tuple[ModuleRule, ...] = ()
    description: str = ""
    rules_by_name: dict[str, ModuleRule | None] = field(default_factory=dict, compare=False, repr=False)

    def rule_for(self, name: str) -> ModuleRule | None:
        if name not in self.rules_by_name:
            self.rules_by_name[name] = next((rule for rule in self.rules if rule.matches(name)), None)
        return self.rules_by_name[name]

    def reference_name(self, native_name: str, reference_names: set[str] | dict[str, Any]) -> str | None:
        """The reference module a native one aligns with: a declared alias, the same dotted name, a rename."""
        for native_alias, reference_alias in self.aliases:
            if native_name == native_alias and reference_alias in reference_names:
                return reference_alias
        if native_name in reference_names:
            return native_name
        for native_prefix, reference_prefix in self.renames:
            if native_name == native_prefix.rstrip("."):
                candidate = reference_prefix.rstrip(".")
            elif native_name.startswith(native_prefix):
                candidate = reference_prefix + native_name[len(native_prefix):]
            else:
                continue
            if candidate in reference_names:
                return candidate
        return None

    def native_flat(self, name: str, output: Any, ctx: DrillContext) -> Flat:
        rule = self.rule_for(name)
        return rule.native_outputs(output, ctx) if rule and rule.native_outputs else flatten(output)

    def reference_flat(self, name: str, output: Any, ctx: DrillContext) -> Flat:
        """The reference module's result, read by the rule of `name`, the *native* module it aligns with."""
        rule = self.rule_for(name)
        return rule.reference_outputs(output, ctx) if rule and rule.reference_outputs else flatten(output)

    def native_call(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any], module: nn.Module,
                    ctx: DrillContext) -> Call:
        """The native module's call for the reference's (args, kwargs); raises NotForceable."""
        rule = self.rule_for(name)
        if rule is not None and rule.skip:
            raise NotForceable(rule.skip)
        if rule is not None and rule.inputs is not None:
            return rule.inputs(args, kwargs, module, ctx)
        return map_call(args, kwargs, module.forward)


# native component class name -> its alignment, filled by the families' `drill` modules on first use
ALIGNMENTS: FamilyRegistry[ComponentAlignment] = FamilyRegistry("drill")


def register_alignment(alignment: ComponentAlignment) -> ComponentAlignment:
    """Declare the alignment map of a native component class (idempotent for the same map)."""
    existing = ALIGNMENTS.get(alignment.native_class)
    if existing is not None and existing is not alignment:
        raise ValueError(f"an alignment for {alignment.native_class} is already registered")
    ALIGNMENTS[alignment.native_class] = alignment
    return alignment


def alignment_for(native: nn.Module) -> ComponentAlignment:
    """The registered map of `native`'s class, else the generic one (names and calls as they are)."""
    found = ALIGNMENTS.get(type(native).__name__)
    return found if found is not None else ComponentAlignment(type(native).__name__)


def _carries_nothing(name: str, value: Any) -> bool:
    if name in DROPPABLE_KEYWORDS or value is None or value is False:
        return True
    return isinstance(value, dict | list | tuple) and not value


def map_call(args: tuple[Any, ...], kwargs: dict[str, Any], function: Callable[..., Any]) -> Call:
    """The reference call (args, kwargs) as a call of `function` (a native forward or method), or NotForceable."""
    args = tuple(args)
    while args and args[-1] is None:
        args = args[:-1]
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):
        return args, dict(kwargs)
    params = signature.parameters
    var_keyword = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    accepted = {name for name, p in params.items()
                if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)}
    mapped: dict[str, Any] = {}
    for name, value in kwargs.items():
        if name in accepted or var_keyword:
            mapped[name] = value
        elif not _carries_nothing(name, value):
            raise NotForceable(f"the native signature {signature} takes no '{name}' ({type(value).__name__})")
    try:
        signature.bind(*args, **mapped)
    except TypeError as exc:
        raise NotForceable(f"the reference call does not fit the native signature {signature}: {exc}") from None
    return args, mapped


def floating_dtypes(module: nn.Module) -> set[torch.dtype]:
    return {p.dtype for p in module.parameters() if p.is_floating_point()}


def cast_inputs(args: tuple[Any, ...], kwargs: dict[str, Any], native: nn.Module, reference: nn.Module) -> Call:
    """The reference inputs cast to the native module's precision when its weights are in another one.

    Only when every floating parameter of the native module has one dtype that the reference module's
    weights do not share (a VAE run in bf16 inside an fp32 pipeline): then the reference values enter in the
    precision the native module computes in. Otherwise the inputs are exactly the reference's.
    """
    native_dtypes, reference_dtypes = floating_dtypes(native), floating_dtypes(reference)
    if len(native_dtypes) != 1 or native_dtypes == reference_dtypes:
        return args, kwargs
    dtype = next(iter(native_dtypes))

    def cast(value: Any) -> Any:
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            return value.to(dtype)
        if type(value) in (tuple, list):
            return type(value)(cast(v) for v in value)
        return value

    return tuple(cast(a) for a in args), {k: cast(v) for k, v in kwargs.items()}
