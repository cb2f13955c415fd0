"""Feature extraction as timm does it: `FeatureInfo`, index resolution, and the three wrappers that
`create_model(..., features_only=True, feature_cls=...)` puts around a classifier.

- 'getter' (`FeatureGetterNet`): prunes the classifier to the deepest requested level and calls its
  `forward_intermediates`; works with TorchScript-free eager code, FX and grad checkpointing.
- 'hook' (`FeatureHookNet`): runs the unchanged network and collects stage outputs by forward hooks.
- 'fx' (`FeatureGraphNet`): an FX graph of the network that returns the stage outputs; effnet's
  notrace modules and functions (see `effnet.layers`) stay single calls in the graph.
"""

from __future__ import annotations

import copy
import numbers
from typing import Any, Sequence

import torch
import torch.fx
from torch import Tensor, nn

from .config import HEAD_ENTRIES
from .layers import get_notrace_functions, get_notrace_modules

OUTPUT_FORMATS = ("NCHW", "NHWC")


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def feature_take_indices(num_features: int, indices: int | Sequence[int] | None = None) -> tuple[list[int], int]:
    """timm's index rule: None takes every level, an int n the last n, a sequence those levels
    (negative ones count from the end). Returns (absolute indices, the largest)."""
    if indices is None:
        indices = num_features
    if _is_int(indices):
        if not 0 < indices <= num_features:
            raise ValueError(f"indices: last-n {indices} is out of range (1 to {num_features})")
        take = list(range(num_features - int(indices), num_features))
    else:
        take = []
        for i in indices:
            if not _is_int(i):
                raise ValueError(f"indices: {i!r} is not an integer")
            j = num_features + int(i) if i < 0 else int(i)
            if not 0 <= j < num_features:
                raise ValueError(f"indices: feature index {i} is out of range "
                                 f"({-num_features} to {num_features - 1})")
            take.append(j)
        if not take:
            raise ValueError("indices: an empty sequence selects no feature level")
    return take, max(take)


def resolve_out_indices(out_indices: int | Sequence[int], num_features: int) -> tuple[int, ...]:
    """`out_indices` as absolute level indices; an int n means the last n levels (as in timm)."""
    if _is_int(out_indices):
        if not 0 < out_indices <= num_features:
            raise ValueError(f"out_indices: last-n {out_indices} is out of range (1 to {num_features})")
        return tuple(range(num_features - int(out_indices), num_features))
    try:
        return tuple(feature_take_indices(num_features, list(out_indices))[0])
    except (TypeError, ValueError) as e:
        raise ValueError(f"out_indices {tuple(out_indices)!r}: {str(e).removeprefix('indices: ')}") from None


class FeatureInfo:
    """Channels, reduction and module name of each feature level, and the levels a model returns.

    As in timm: accessors with `idx=None` answer for the returned levels (`out_indices`); an int or
    a list `idx` names levels directly, whatever is returned.
    """

    def __init__(self, info: Sequence[dict[str, Any]], out_indices: int | Sequence[int]) -> None:
        self.info = [dict(d, index=d.get("index", i)) for i, d in enumerate(info)]
        self.out_indices = resolve_out_indices(out_indices, len(self.info))

    def from_other(self, out_indices: int | Sequence[int]) -> FeatureInfo:
        """The same levels with other returned ones."""
        return FeatureInfo(copy.deepcopy(self.info), out_indices)

    def get(self, key: str, idx: int | Sequence[int] | None = None) -> Any:
        """`key` of the returned levels (idx None), of level `idx`, or of each level in `idx`."""
        if idx is None:
            return [self.info[i][key] for i in self.out_indices]
        if isinstance(idx, (list, tuple)):
            return [self.info[i][key] for i in idx]
        return self.info[idx][key]

    def get_dicts(self, keys: Sequence[str] | None = None,
                  idx: int | Sequence[int] | None = None) -> list[dict[str, Any]] | dict[str, Any]:
        """The info dicts (restricted to `keys`) of the returned levels, or of `idx`."""
        def pick(i: int) -> dict[str, Any]:
            return dict(self.info[i]) if keys is None else {k: self.info[i][k] for k in keys}
        if idx is None:
            return [pick(i) for i in self.out_indices]
        if isinstance(idx, (list, tuple)):
            return [pick(i) for i in idx]
        return pick(idx)

    def channels(self, idx: int | Sequence[int] | None = None) -> Any:
        return self.get("num_chs", idx)

    def reduction(self, idx: int | Sequence[int] | None = None) -> Any:
        return self.get("reduction", idx)

    def module_name(self, idx: int | Sequence[int] | None = None) -> Any:
        return self.get("module", idx)

    def __getitem__(self, idx: int) -> dict[str, Any]:
        return self.info[idx]

    def __len__(self) -> int:
        return len(self.info)


def _feature_info_of(model: nn.Module, out_indices: int | Sequence[int]) -> FeatureInfo:
    info = model.feature_info
    return info.from_other(out_indices) if isinstance(info, FeatureInfo) else FeatureInfo(info, out_indices)


def _check_output_fmt(output_fmt: str) -> str:
    if output_fmt not in OUTPUT_FORMATS:
        raise ValueError(f"output_fmt must be one of {OUTPUT_FORMATS}; got {output_fmt!r}")
    return output_fmt


class PretrainedCfgAlias:
    """`default_cfg`, timm's older name of `pretrained_cfg`, as a live alias."""

    __jit_unused_properties__ = ["default_cfg"]

    @property
    def default_cfg(self) -> dict[str, Any]:
        return self.pretrained_cfg

    @default_cfg.setter
    def default_cfg(self, value: dict[str, Any]) -> None:
        self.pretrained_cfg = value


class FeatureGetterNet(PretrainedCfgAlias, nn.Module):
    """Features from the wrapped model's `forward_intermediates` (timm's 'getter' wrapper).

    With `prune` (default) the model loses the stages after the deepest requested level, and its
    head; with `norm=False` (default) the head conv and its BatchNorm go too, as in timm.
    """

    def __init__(self, model: nn.Module, out_indices: int | Sequence[int] = (0, 1, 2, 3, 4),
                 output_fmt: str = "NCHW", norm: bool = False, prune: bool = True) -> None:
        super().__init__()
        self.output_fmt = _check_output_fmt(output_fmt)
        indices = resolve_out_indices(out_indices, len(model.feature_info))
        if prune and hasattr(model, "prune_intermediate_layers"):
            indices = tuple(model.prune_intermediate_layers(list(indices), prune_norm=not norm))
        self.feature_info = _feature_info_of(model, indices)
        self.model = model
        self.out_indices = list(indices)
        self.norm = norm

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.model.set_grad_checkpointing(enable)

    def forward(self, x: Tensor) -> list[Tensor]:
        return self.model.forward_intermediates(x, indices=self.out_indices, norm=self.norm,
                                                output_fmt=self.output_fmt, intermediates_only=True)


class FeatureHookNet(PretrainedCfgAlias, nn.Module):
    """Features collected by forward hooks on the wrapped, otherwise unchanged model (timm's
    'hook' wrapper; eager only). The classifier is removed; `return_dict` keys are module names."""

    def __init__(self, model: nn.Module, out_indices: int | Sequence[int] = (0, 1, 2, 3, 4),
                 return_dict: bool = False, output_fmt: str = "NCHW", default_hook_type: str = "forward") -> None:
        super().__init__()
        if default_hook_type not in ("forward", "forward_pre"):
            raise ValueError(f"default_hook_type must be 'forward' or 'forward_pre'; got {default_hook_type!r}")
        self.output_fmt = _check_output_fmt(output_fmt)
        self.feature_info = _feature_info_of(model, out_indices)
        self.return_dict = return_dict
        if hasattr(model, "reset_classifier"):
            model.reset_classifier(0)
        self.body = model
        self._outputs: dict[str, Tensor] = {}
        modules = dict(model.named_modules())
        for d in self.feature_info.get_dicts():
            hook_type = d.get("hook_type", default_hook_type)
            module = modules[d["module"]]
            if hook_type == "forward_pre":
                module.register_forward_pre_hook(self._collector(d["module"]))
            else:
                module.register_forward_hook(self._collector(d["module"]))

    def _collector(self, name: str) -> Any:
        def collect(module: nn.Module, *args: Any) -> None:
            x = args[-1]  # the output of a forward hook; the inputs tuple of a pre-hook
            self._outputs[name] = x[0] if isinstance(x, tuple) else x
        return collect

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.body.set_grad_checkpointing(enable)

    def forward(self, x: Tensor) -> list[Tensor] | dict[str, Tensor]:
        self._outputs = {}
        run = getattr(self.body, "forward_features", self.body)
        run(x)
        out, self._outputs = self._outputs, {}
        if self.output_fmt == "NHWC":
            out = {k: v.permute(0, 2, 3, 1) for k, v in out.items()}
        return out if self.return_dict else list(out.values())


class _Tracer(torch.fx.Tracer):
    """Symbolic tracer that keeps effnet's notrace modules, and the modules whose outputs are
    wanted, as single calls."""

    def __init__(self, keep: set[str]) -> None:
        super().__init__(autowrap_functions=tuple(get_notrace_functions()))
        self.keep = keep
        self.leaf_types = tuple(get_notrace_modules())

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if module_qualified_name in self.keep or isinstance(m, self.leaf_types):
            return True
        return super().is_leaf_module(m, module_qualified_name)


def create_feature_extractor(model: nn.Module, return_nodes: dict[str, str]) -> torch.fx.GraphModule:
    """An FX GraphModule of `model` returning {name: output} for each module path in
    `return_nodes` ({module path: output name}); layers after the last one are dropped."""
    tracer = _Tracer(set(return_nodes))
    graph = tracer.trace(model)
    found = {n.target: n for n in graph.nodes if n.op == "call_module" and n.target in return_nodes}
    missing = sorted(set(return_nodes) - set(found))
    if missing:
        raise ValueError(f"return_nodes: no module {', '.join(missing)} is called in the traced graph")
    old_output = next(n for n in graph.nodes if n.op == "output")
    with graph.inserting_before(old_output):
        graph.output({name: found[path] for path, name in return_nodes.items()})
    graph.erase_node(old_output)
    module = torch.fx.GraphModule(tracer.root, graph, type(model).__name__)
    # drop the unused head, but keep the input check (a call without users)
    notrace = set(get_notrace_functions())
    module.graph.eliminate_dead_code(is_impure_node=lambda n: n.is_impure() or n.target in notrace)
    module.graph.lint()
    module.delete_all_unused_submodules()
    module.recompile()
    return module


class FeatureGraphNet(PretrainedCfgAlias, nn.Module):
    """Features from an FX graph of the model (timm's 'fx' wrapper)."""

    def __init__(self, model: nn.Module, out_indices: int | Sequence[int] = (0, 1, 2, 3, 4),
                 output_fmt: str = "NCHW", return_dict: bool = False) -> None:
        super().__init__()
        self.output_fmt = _check_output_fmt(output_fmt)
        self.feature_info = _feature_info_of(model, out_indices)
        self.return_dict = return_dict
        return_nodes = {name: str(i) for name, i in zip(self.feature_info.module_name(), self.feature_info.out_indices)}
        self.graph_module = create_feature_extractor(model, return_nodes)

    def forward(self, x: Tensor) -> list[Tensor] | dict[str, Tensor]:
        out = self.graph_module(x)
        if self.output_fmt == "NHWC":
            out = {k: v.permute(0, 2, 3, 1) for k, v in out.items()}
        return out if self.return_dict else list(out.values())


FEATURE_CLASSES: dict[str, type[nn.Module]] = {
    "getter": FeatureGetterNet, "hook": FeatureHookNet, "fx": FeatureGraphNet}


def wrap_features(model: nn.Module, feature_cls: str | type[nn.Module] | None = None,
                  feature_cfg: dict[str, Any] | None = None,
                  out_indices: int | Sequence[int] | None = None) -> nn.Module:
    """Wrap a classifier as `create_model(features_only=True, feature_cls=..., feature_cfg=...)`
    does: `feature_cls` 'getter' (default), 'hook', 'fx' or a class; `feature_cfg` its keyword
    arguments; `out_indices` (default all five levels) wins over one in `feature_cfg`."""
    cfg = dict(feature_cfg or {})
    cfg.setdefault("out_indices", (0, 1, 2, 3, 4))
    if out_indices is not None:
        cfg["out_indices"] = out_indices
    name = feature_cls or "getter"
    if isinstance(name, str):
        if name.lower() not in FEATURE_CLASSES:
            raise ValueError(f"unknown feature_cls {feature_cls!r}; expected one of {', '.join(FEATURE_CLASSES)}")
        cls = FEATURE_CLASSES[name.lower()]
    else:
        cls = name
    try:
        wrapped = cls(model, **cfg)
    except TypeError as e:
        raise ValueError(f"feature_cfg {sorted(cfg)} does not fit feature_cls {cls.__name__}: {e}") from None
    wrapped.pretrained_cfg = pretrained_cfg_for_features(model.pretrained_cfg)
    return wrapped


def pretrained_cfg_for_features(pretrained_cfg: dict[str, Any]) -> dict[str, Any]:
    """A classifier's pretrained config without the entries about its head (as timm drops them)."""
    return {k: v for k, v in copy.deepcopy(pretrained_cfg).items() if k not in (*HEAD_ENTRIES, "global_pool")}
