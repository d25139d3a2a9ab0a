"""Checkpoint conversion: one small rule engine, and the tensor helpers the families' rule sets use.

**The engine.** A converter is a pure ``state_dict -> state_dict`` function; every family writes its
converters as *rule sets*: module-level tuples of :class:`Rule`, one per source format, applied by
:func:`apply_rules`. Each rule is ``(source, target, transform)``:

* ``source`` is a regular expression that must match the **whole** key; its named groups are the
  fields of the target template (``Rule.prefix`` builds one from a literal prefix);
* ``target`` is a ``str.format`` template over those fields and the ``fields=`` given to
  :func:`apply_rules` (a group that did not take part in the match falls back to ``fields``); a field
  may carry an integer offset, ``"layer{s-1}"``; ``None`` drops the key;
* ``transform`` (optional) maps the tensor: a callable ``Tensor -> Tensor``, or the name of one given
  in ``transforms=`` (how a model-dependent step, e.g. inflating a stem to the model's tubelet, enters
  a rule set that is plain data). A ``ValueError`` it raises is re-raised naming the key.

Keys are tried against the rules **in order and the first match wins**, so specific rules go before
general ones. A rule whose ``group`` is set does not rename: the keys it matches are gathered, by
rendered target, into ``{rest: tensor}`` dicts (``rest`` is the pattern's named group of that name)
and each dict is converted as one piece by ``group(sub_state_dict, target) -> state_dict`` (e.g. a
released routing function, whose q/k/v projection needs its shape). A rule with
``if_target_exists=True`` applies only when its target is among ``targets=`` (the model's keys).

**Unmatched keys** follow ``unmatched=``: ``"keep"`` (passed through unchanged, so a strict load names
them: the default), ``"drop"``, or ``"error"`` (``ValueError`` naming them). **A rule that matches
nothing is harmless**: one rule set serves several variants of a format (with or without biases,
T-Pool, a second pathway...); :func:`explain_rules` lists such rules, and the keys no rule matched, for
whoever writes a rule set. Two keys converted to one target are an error.

The genuinely structural steps (renumbering blocks, fitting 2D kernels to 3D layers, checking a
format) are small pure functions next to the rule sets that need them.

**Helpers.** The paper's released checkpoints (SPEC §6) store TAdaConv weights 6-D ``(1, 1, C_out,
C_in/g, kh, kw)`` and biases ``(1, 1, C_out)``, their 2D convs as ``Conv3d`` with ``(1, kh, kw)``
kernels, run their routing functions as ``Conv3d`` with ``(k, 1, 1)`` kernels, and lay out the V2
routing's q/k/v projection with heads interleaved; the helpers below turn those pieces into this
project's layout.
"""
from __future__ import annotations

import re
import string
from dataclasses import dataclass, field
from functools import partial
from typing import Callable, Collection, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

__all__ = [
    "Rule",
    "RuleReport",
    "apply_rules",
    "explain_rules",
    "squeeze_tada_weight",
    "squeeze_tada_bias",
    "conv3d_to_conv1d",
    "conv3d_to_conv2d",
    "conv_to_linear",
    "flatten",
    "interleaved_to_head_major",
    "fit_singleton_time",
    "convert_released_route_mlp",
    "convert_released_route_attn",
    "pop_prefix",
    "strip_prefix",
]

Transform = Union[Callable[[Tensor], Tensor], str]
GroupFn = Union[Callable[[Dict[str, Tensor], str], Dict[str, Tensor]], str]
UNMATCHED = ("keep", "drop", "error")


# -- the engine -----------------------------------------------------------------------------------
class _Template(string.Formatter):
    """``str.format`` whose fields may carry an integer offset: ``{s-1}``, ``{n+1}``."""

    _FIELD = re.compile(r"^(\w+)([+-]\d+)?$")

    def get_field(self, field_name, args, kwargs):
        m = self._FIELD.match(field_name)
        if not m:
            raise ValueError(f"template field {{{field_name}}}: expected a name, optionally with +N / -N")
        name, offset = m.groups()
        if name not in kwargs:
            raise KeyError(name)
        value = kwargs[name]
        return (value if offset is None else int(value) + int(offset)), name

    @classmethod
    def names(cls, template: str) -> List[str]:
        out = []
        for _, fname, _, _ in cls().parse(template):
            if fname is not None:
                m = cls._FIELD.match(fname)
                if not m:
                    raise ValueError(f"template {template!r}: field {{{fname}}} is not a name with an optional +N / -N")
                out.append(m.group(1))
        return out


_FORMATTER = _Template()


@dataclass(frozen=True)
class Rule:
    """``source`` (full-match regex, named groups = fields) -> ``target`` (template, or None: drop),
    with an optional tensor ``transform``; see the module doc for ``group`` and ``if_target_exists``."""

    source: str
    target: Optional[str]
    transform: Optional[Transform] = None
    group: Optional[GroupFn] = None
    if_target_exists: bool = False
    regex: "re.Pattern" = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        try:
            regex = re.compile(self.source)
        except re.error as e:
            raise ValueError(f"rule source {self.source!r} is not a regular expression: {e}") from e
        object.__setattr__(self, "regex", regex)
        if self.target is not None:
            _Template.names(self.target)  # a malformed template fails here, not at the first key
        if self.group is not None:
            if self.target is None or self.transform is not None or self.if_target_exists:
                raise ValueError(f"rule {self.source!r}: a group rule needs a target and takes no transform")
            if "rest" not in regex.groupindex:
                raise ValueError(f"rule {self.source!r}: a group rule needs a named group 'rest' (the key in the group)")

    @classmethod
    def prefix(cls, src: str, dst: Optional[str], transform: Optional[Transform] = None, **kw) -> "Rule":
        """Keys starting with ``src`` get ``dst`` instead (``None``: dropped)."""
        return cls(re.escape(src) + r"(?P<rest>.*)", None if dst is None else dst + "{rest}", transform, **kw)


@dataclass
class RuleReport:
    """What :func:`explain_rules` found: each key's target (None: dropped; for a group rule, the group),
    the keys no rule matched, and the rules that matched no key."""

    targets: Dict[str, Optional[str]]
    unmatched: List[str]
    unused: List[Rule]


def _plan(keys: Iterable[str], rules: Sequence[Rule], fields: Mapping[str, object],
          targets: Optional[Collection[str]]):
    rules = tuple(rules)
    for r in rules:
        if not isinstance(r, Rule):
            raise TypeError(f"a rule set holds Rule objects, got {type(r).__name__}: {r!r}")
        if r.if_target_exists and targets is None:
            raise ValueError(f"rule {r.source!r} applies only to existing targets: give targets= (the model's keys)")
    used = [False] * len(rules)
    plan: List[Tuple[str, Optional[int], Optional[str]]] = []
    for key in keys:
        for i, r in enumerate(rules):
            m = r.regex.fullmatch(key)
            if m is None:
                continue
            dst = None
            if r.target is not None:
                values = dict(fields)
                values.update({k: v for k, v in m.groupdict().items() if v is not None})
                try:
                    dst = _FORMATTER.format(r.target, **values)
                except KeyError as e:
                    raise ValueError(f"rule {r.source!r} -> {r.target!r}: no field {e} "
                                     f"(named groups: {sorted(m.groupdict())}, fields: {sorted(fields)})") from None
                if r.if_target_exists and dst not in targets:
                    continue
            used[i] = True
            plan.append((key, i, dst))
            break
        else:
            plan.append((key, None, None))
    return rules, plan, used


def explain_rules(state_dict: Mapping[str, Tensor], rules: Sequence[Rule], *, fields: Optional[Mapping[str, object]] = None,
                  targets: Optional[Collection[str]] = None) -> RuleReport:
    """Which rule takes which key, without converting anything (for writing and checking rule sets)."""
    rules, plan, used = _plan(state_dict, rules, fields or {}, targets)
    return RuleReport(
        targets={k: dst for k, i, dst in plan if i is not None},
        unmatched=[k for k, i, _ in plan if i is None],
        unused=[r for r, u in zip(rules, used) if not u],
    )


def _resolve(fn, names: Mapping[str, Callable], what: str, rule: Rule):
    if isinstance(fn, str):
        if fn not in names:
            raise ValueError(f"rule {rule.source!r} names the {what} {fn!r}, which was not given (given: {sorted(names)})")
        return names[fn]
    return fn


def apply_rules(
    state_dict: Mapping[str, Tensor],
    rules: Sequence[Rule],
    *,
    fields: Optional[Mapping[str, object]] = None,
    transforms: Optional[Mapping[str, Callable]] = None,
    targets: Optional[Collection[str]] = None,
    unmatched: str = "keep",
    what: str = "checkpoint",
) -> Dict[str, Tensor]:
    """Convert ``state_dict`` with ``rules`` (first match wins; see the module doc). Pure: returns a new
    dict and leaves the input as it is.

    Args:
        fields: template values besides the sources' named groups (e.g. ``{"bn2": "agg.norm1"}``).
        transforms: the named transforms and group converters the rules use.
        targets: the model's keys, for ``if_target_exists`` rules.
        unmatched: ``"keep"``, ``"drop"`` or ``"error"`` for keys that match no rule.
        what: the source, as named in errors (``"{what}: keys that match no conversion rule: [...]"``).
    """
    if unmatched not in UNMATCHED:
        raise ValueError(f"unmatched must be one of {UNMATCHED}, got {unmatched!r}")
    names = dict(transforms or {})
    rules, plan, _ = _plan(state_dict, rules, fields or {}, targets)
    out: Dict[str, Tensor] = {}
    source_of: Dict[str, str] = {}
    groups: Dict[str, Tuple[Rule, Dict[str, Tensor]]] = {}

    def put(dst: str, v: Tensor, src: str) -> None:
        if dst in out:
            raise ValueError(f"{what}: {source_of[dst]!r} and {src!r} both convert to {dst!r}")
        out[dst], source_of[dst] = v, src

    left = []
    for key, i, dst in plan:
        v = state_dict[key]
        if i is None:
            left.append(key)
            if unmatched == "keep":
                put(key, v, key)
            continue
        r = rules[i]
        if dst is None:
            continue
        if r.group is not None:
            rest = r.regex.fullmatch(key).group("rest")
            groups.setdefault(dst, (r, {}))[1][rest] = v
            continue
        if r.transform is not None:
            fn = _resolve(r.transform, names, "transform", r)
            try:
                v = fn(v)
            except ValueError as e:
                raise ValueError(f"{key}: {e}") from e
        put(dst, v, key)
    if left and unmatched == "error":
        raise ValueError(f"{what}: keys that match no conversion rule: {sorted(left)[:8]}")
    for dst, (r, sub) in groups.items():
        fn = _resolve(r.group, names, "group converter", r)
        try:
            converted = fn(sub, dst)
        except ValueError as e:
            raise ValueError(f"{dst}: {e}") from e  # e.g. "blocks.0.tada: tada_proj.weight: expected ..."
        for k, v in converted.items():
            put(k, v, f"{dst}.*")
    return out


# -- tensor helpers -------------------------------------------------------------------------------
def squeeze_tada_weight(w: Tensor) -> Tensor:
    """Released 6-D TAdaConv weight ``(1, 1, O, I, kh, kw)`` -> Conv2d layout ``(O, I, kh, kw)``."""
    if w.dim() == 4:
        return w
    if w.dim() != 6 or w.shape[0] != 1 or w.shape[1] != 1:
        raise ValueError(f"expected a TAdaConv weight (1, 1, C_out, C_in/g, kh, kw), got shape {tuple(w.shape)}")
    return w.reshape(w.shape[2:])


def squeeze_tada_bias(b: Tensor) -> Tensor:
    """Released TAdaConv bias ``(1, 1, O)`` -> ``(O,)``."""
    if b.dim() == 1:
        return b
    if b.dim() != 3 or b.shape[0] != 1 or b.shape[1] != 1:
        raise ValueError(f"expected a TAdaConv bias (1, 1, C_out), got shape {tuple(b.shape)}")
    return b.reshape(-1)


def conv3d_to_conv1d(w: Tensor) -> Tensor:
    """A temporal ``Conv3d`` weight ``(O, I, k, 1, 1)`` (or a Conv1d/Conv2d one) -> Conv1d ``(O, I, k)``."""
    if w.dim() == 3:
        return w
    if w.dim() < 3 or any(s != 1 for s in w.shape[3:]):
        raise ValueError(f"expected a temporal conv weight (O, I, k, 1, 1), got shape {tuple(w.shape)}")
    return w.reshape(w.shape[:3])


def conv3d_to_conv2d(w: Tensor) -> Tensor:
    """A 2D conv stored as ``Conv3d`` ``(O, I, 1, kh, kw)`` -> Conv2d ``(O, I, kh, kw)`` (4-D passes)."""
    if w.dim() == 4:
        return w
    if w.dim() != 5 or w.shape[2] != 1:
        raise ValueError(f"expected a 2D conv stored as Conv3d (O, I, 1, kh, kw), got shape {tuple(w.shape)}")
    return w.reshape(w.shape[:2] + w.shape[3:])


def conv_to_linear(w: Tensor) -> Tensor:
    """A pointwise conv weight ``(O, I, 1, ...)`` -> Linear ``(O, I)``."""
    if w.dim() == 2:
        return w
    if any(s != 1 for s in w.shape[2:]):
        raise ValueError(f"expected a pointwise (kernel 1) conv weight, got shape {tuple(w.shape)}")
    return w.reshape(w.shape[:2])


def flatten(t: Tensor) -> Tensor:
    """Any tensor -> 1-D (a bias or layer scale stored with singleton dims)."""
    return t.reshape(-1)


def interleaved_to_head_major(t: Tensor, num_heads: int) -> Tensor:
    """Reorder a q/k/v projection's output channels from the release's ``[q | k | v]`` with channel
    ``d * num_heads + h`` inside each part to ``[q | k | v]`` with ``h * head_dim + d``.

    Works on the projection's weight ``(3c', c')`` and bias ``(3c',)`` (dim 0 is permuted).
    """
    three_c = t.shape[0]
    if three_c % 3 or (three_c // 3) % num_heads:
        raise ValueError(f"q/k/v projection with {three_c} outputs cannot hold 3 x {num_heads} heads")
    c = three_c // 3
    head_dim = c // num_heads
    j = torch.arange(c)
    src = (j % head_dim) * num_heads + j // head_dim  # our channel h*hd+d comes from release d*nh+h
    perm = torch.cat([src + i * c for i in range(3)])
    return t[perm]


def fit_singleton_time(sd: Mapping[str, Tensor], model_sd: Mapping[str, Tensor]) -> Dict[str, Tensor]:
    """A ``1 x kh x kw`` Conv3d kernel whose model tensor is a (per-frame) Conv2d one loses its time dim."""
    out = {}
    for k, v in sd.items():
        ref = model_sd.get(k)
        if ref is not None and ref.dim() == 4 and v.dim() == 5 and v.shape[2] == 1:
            v = v[:, :, 0]
        out[k] = v
    return out


def pop_prefix(sd: Dict[str, Tensor], prefix: str) -> Dict[str, Tensor]:
    """Remove and return every entry under ``prefix.`` (keys relative to it)."""
    p = prefix + "."
    keys = [k for k in sd if k.startswith(p)]
    return {k[len(p):]: sd.pop(k) for k in keys}


def strip_prefix(sd: Mapping[str, Tensor], prefix: str) -> Dict[str, Tensor]:
    """Keys starting with ``prefix`` lose it; others are kept as they are."""
    return {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in sd.items()}


# -- released routing functions (rule sets over the routing module's keys, targets under {dst}) -----
_NORM = r"(?P<p>weight|bias|running_mean|running_var|num_batches_tracked)"
RELEASED_ROUTE_MLP = (
    Rule(r"(?P<m>g|a)\.weight", "{dst}.{m}.weight", conv3d_to_conv1d),
    Rule(r"(?P<m>g|a)\.bias", "{dst}.{m}.bias"),
    Rule(r"bn\." + _NORM, "{dst}.bn.{p}"),
    Rule(r"b\.weight", "{dst}.heads.b.weight", conv3d_to_conv1d),
)
RELEASED_ROUTE_ATTN = (
    Rule(r"a\.weight", "{dst}.a.weight", conv3d_to_conv1d),
    Rule(r"a\.bias", "{dst}.a.bias"),
    Rule(r"norm\.(?P<p>weight|bias)", "{dst}.norm.{p}"),
    Rule(r"norm_transformer\.(?P<p>weight|bias)", "{dst}.norm_attn.{p}"),
    Rule(r"qkv_proj\.weight", "{dst}.qkv.weight", "qkv_weight"),
    Rule(r"qkv_proj\.bias", "{dst}.qkv.bias", "qkv_bias"),
    Rule(r"attn_out\.weight", "{dst}.proj.weight", conv_to_linear),
    Rule(r"attn_out\.bias", "{dst}.proj.bias"),
    Rule(r"(?P<h>b|b_bias)\.weight", "{dst}.heads.{h}.weight", conv3d_to_conv1d),
)


def convert_released_route_mlp(rf: Mapping[str, Tensor], dst: str) -> Dict[str, Tensor]:
    """Released V1 routing ``{g, a, bn, b}`` (Conv3d temporal convs, keys relative to the routing
    module) -> :class:`tada.nn.RouteFuncMLP` keys under ``dst``."""
    return apply_rules(rf, RELEASED_ROUTE_MLP, fields={"dst": dst}, unmatched="error",
                       what="unexpected keys in a released V1 routing")


def convert_released_route_attn(rf: Mapping[str, Tensor], dst: str, num_heads: Optional[int] = None,
                                head_dim: Optional[int] = None) -> Dict[str, Tensor]:
    """Released V2 routing ``{a, norm, norm_transformer, qkv_proj, attn_out, b, b_bias}`` (keys relative
    to the routing module) -> :class:`tada.nn.RouteFuncAttn` keys under ``dst``.

    The q/k/v projection is permuted from the release's interleaved head layout to head-major
    (:func:`interleaved_to_head_major`); the attention output is head-major in both, so ``attn_out`` is
    copied as it is. Give ``num_heads`` or ``head_dim``.
    """
    if "qkv_proj.weight" not in rf:
        raise ValueError(f"not a released V2 routing: no qkv_proj.weight among {sorted(rf)[:8]}")
    c = rf["qkv_proj.weight"].shape[0] // 3
    if num_heads is None:
        if head_dim is None:
            raise ValueError("give num_heads or head_dim")
        if c % head_dim:
            raise ValueError(f"reduced width {c} is not a multiple of head_dim={head_dim}")
        num_heads = c // head_dim
    heads = partial(interleaved_to_head_major, num_heads=num_heads)
    return apply_rules(rf, RELEASED_ROUTE_ATTN, fields={"dst": dst}, unmatched="error",
                       what="unexpected keys in a released V2 routing",
                       transforms={"qkv_weight": lambda w: heads(conv_to_linear(w)), "qkv_bias": heads})
