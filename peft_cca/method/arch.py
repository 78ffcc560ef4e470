"""Per-architecture facts: where each CCA component lives inside a decoder layer.

Every stage needs the same answer to "which features of which module belong to query head 3?":
DCM hooks those features to scale them, the adapter trains the weight rows that produce them.
Keeping that knowledge in one table means a new architecture is one entry here, not a change in
every stage.

A *component* is one query head, one key head, one value head (grouped-query aware) or one MLP
neuron (one channel of the down projection's input). A :class:`Site` names a module (path relative
to a decoder layer), whether the component is read at its output or its input, and for every
component the feature positions along the last dimension there. For a ``nn.Linear`` output
feature ``j`` is weight row ``j``, input feature ``j`` is weight column ``j``; GPT-2's ``Conv1D``
stores the transpose, which the adapter handles.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field, replace
from typing import Literal

import torch
from peft.tuners.tuners_utils import BaseTuner
from torch import nn

from peft_cca.errors import UsageError

COMPONENT_KINDS: tuple[str, ...] = ("q", "k", "v", "mlp")
MLP_TARGETS: tuple[str, ...] = ("up", "gate", "down")

Side = Literal["output", "input"]


@dataclass(frozen=True)
class ModelShape:
    """The numbers a circuit must agree with to be applied to a model."""

    model_type: str
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int

    def count(self, kind: str) -> int:
        """Number of components of ``kind`` in one layer."""
        counts = {
            "q": self.num_heads,
            "k": self.num_kv_heads,
            "v": self.num_kv_heads,
            "mlp": self.intermediate_size,
        }
        if kind not in counts:
            raise ValueError(f"unknown component kind {kind!r}; expected one of {COMPONENT_KINDS}")
        return counts[kind]

    @property
    def components_per_layer(self) -> int:
        return sum(self.count(kind) for kind in COMPONENT_KINDS)

    @property
    def total_components(self) -> int:
        """The paper's "% Mask" denominator: layers x (heads + 2 kv heads + MLP width)."""
        return self.num_layers * self.components_per_layer

    def to_dict(self) -> dict[str, int | str]:
        return asdict(self)

    def differences(self, other: ModelShape) -> list[str]:
        """Human-readable list of fields where ``other`` differs from ``self``."""
        return [
            f"{name}: {getattr(self, name)!r} != {getattr(other, name)!r}"
            for name in self.__dataclass_fields__
            if getattr(self, name) != getattr(other, name)
        ]


@dataclass(frozen=True)
class Site:
    """Feature positions of every component of one kind at one module of a decoder layer.

    ``index`` has shape ``(num_components, features_per_component)``. ``head_axes`` is set for a per-head
    output (a q/k norm): ``"tokens_first"`` for (batch, tokens, heads, head_dim) or ``"heads_first"`` for
    (batch, heads, tokens, head_dim); the features are then the flattened (heads, head_dim).
    """

    module: str
    side: Side
    index: torch.Tensor = field(repr=False)
    head_axes: Literal["tokens_first", "heads_first"] | None = None

    def features(self, components: list[int] | torch.Tensor) -> torch.Tensor:
        """Flat, sorted feature positions of the given components."""
        comps = torch.as_tensor(components, dtype=torch.long)
        return self.index[comps].reshape(-1).sort().values


def _blocks(start: int, count: int, width: int, stride: int | None = None) -> torch.Tensor:
    """``count`` contiguous blocks of ``width`` features, block ``c`` at ``start + c * stride``."""
    stride = width if stride is None else stride
    return start + torch.arange(count).unsqueeze(1) * stride + torch.arange(width).unsqueeze(0)


@dataclass(frozen=True)
class Layout:
    """Module names inside a decoder layer, and how fused projections are packed.

    ``attn_packing``: ``separate`` (q_proj/k_proj/v_proj), ``concat`` (one projection whose output
    is [all q | all k | all v], e.g. Phi-3 ``qkv_proj``, GPT-2 ``c_attn``) or ``per_head``
    (GPT-NeoX ``query_key_value``: [q_h | k_h | v_h] for each head h).
    ``mlp_packing``: ``separate`` (gate_proj/up_proj), ``concat`` ([gate | up], Phi-3
    ``gate_up_proj``) or ``none`` (no gate: GPT-2, GPT-NeoX).
    ``q_norm``/``k_norm``: per-head RMSNorms after the projections (Qwen3, Gemma 3). A norm over each
    head's features undoes any scaling of the head before it, so DCM scales those heads at the norm's
    output instead; ``norm_heads_first`` says that output is (batch, heads, tokens, head_dim) (Gemma 3)
    rather than (batch, tokens, heads, head_dim) (Qwen3). The adapter still trains the projection rows.
    """

    layers: str
    q: str
    k: str
    v: str
    o: str
    up: str
    down: str
    gate: str | None = None
    attn_packing: Literal["separate", "concat", "per_head"] = "separate"
    mlp_packing: Literal["separate", "concat", "none"] = "separate"
    q_norm: str | None = None
    k_norm: str | None = None
    norm_heads_first: bool = False


_LLAMA_LIKE = Layout(
    layers="model.layers",
    q="self_attn.q_proj",
    k="self_attn.k_proj",
    v="self_attn.v_proj",
    o="self_attn.o_proj",
    gate="mlp.gate_proj",
    up="mlp.up_proj",
    down="mlp.down_proj",
)

LAYOUTS: dict[str, Layout] = {
    # olmo2's q/k norms span all heads together, so a head scaled before them is not undone: no override
    **{name: _LLAMA_LIKE for name in ("llama", "mistral", "qwen2", "gemma", "gemma2", "olmo", "olmo2")},
    "qwen3": replace(_LLAMA_LIKE, q_norm="self_attn.q_norm", k_norm="self_attn.k_norm"),
    "gemma3_text": replace(_LLAMA_LIKE, q_norm="self_attn.q_norm", k_norm="self_attn.k_norm", norm_heads_first=True),
    "phi3": Layout(
        layers="model.layers",
        q="self_attn.qkv_proj",
        k="self_attn.qkv_proj",
        v="self_attn.qkv_proj",
        o="self_attn.o_proj",
        gate="mlp.gate_up_proj",
        up="mlp.gate_up_proj",
        down="mlp.down_proj",
        attn_packing="concat",
        mlp_packing="concat",
    ),
    "gpt2": Layout(
        layers="transformer.h",
        q="attn.c_attn",
        k="attn.c_attn",
        v="attn.c_attn",
        o="attn.c_proj",
        up="mlp.c_fc",
        down="mlp.c_proj",
        attn_packing="concat",
        mlp_packing="none",
    ),
    "gpt_neox": Layout(
        layers="gpt_neox.layers",
        q="attention.query_key_value",
        k="attention.query_key_value",
        v="attention.query_key_value",
        o="attention.dense",
        up="mlp.dense_h_to_4h",
        down="mlp.dense_4h_to_h",
        attn_packing="per_head",
        mlp_packing="none",
    ),
}


class UnsupportedModelError(ValueError):
    """Raised when a model's layout cannot be found; the message says how to describe it by hand."""


_HOW_TO_DESCRIBE = (
    "Describe the model by hand with peft_cca.method.arch.describe(model, layout=Layout(layers='model.layers', "
    "q='self_attn.q_proj', k='self_attn.k_proj', v='self_attn.v_proj', o='self_attn.o_proj', "
    "gate='mlp.gate_proj', up='mlp.up_proj', down='mlp.down_proj'), shape=ModelShape(...)) "
    "or register it with peft_cca.method.arch.LAYOUTS[model_type] = Layout(...)."
)


def _text_config(config):
    """Multimodal configs (Gemma 3) keep the decoder's numbers in ``text_config``."""
    return getattr(config, "text_config", None) or config


def shape_from_config(config) -> ModelShape:
    """Read heads, kv heads, head_dim and MLP width from a HF config (head_dim is not always hidden/heads)."""
    cfg = _text_config(config)
    hidden = getattr(cfg, "hidden_size", None) or cfg.n_embd
    num_heads = getattr(cfg, "num_attention_heads", None) or cfg.n_head
    num_kv_heads = getattr(cfg, "num_key_value_heads", None) or num_heads
    head_dim = getattr(cfg, "head_dim", None) or hidden // num_heads
    intermediate = getattr(cfg, "intermediate_size", None) or getattr(cfg, "n_inner", None) or 4 * hidden
    num_layers = getattr(cfg, "num_hidden_layers", None) or cfg.n_layer
    return ModelShape(
        model_type=cfg.model_type,
        num_layers=int(num_layers),
        num_heads=int(num_heads),
        num_kv_heads=int(num_kv_heads),
        head_dim=int(head_dim),
        intermediate_size=int(intermediate),
    )


def _get(module: nn.Module, path: str, what: str, model_type: str) -> nn.Module:
    try:
        return module.get_submodule(path)
    except AttributeError as err:
        raise UnsupportedModelError(
            f"could not find the {what} module {path!r} in a {model_type!r} model. {_HOW_TO_DESCRIBE}"
        ) from err


def _unwrap(model: nn.Module) -> nn.Module:
    """The transformers model under a PeftModel or a PEFT tuner (CCAModel, LoraModel), if any."""
    if hasattr(model, "get_base_model"):  # PeftModel
        model = model.get_base_model()
    if isinstance(model, BaseTuner):
        model = model.model
    return model


class ArchSpec:
    """Where the components of one model live. Build it with :func:`describe`."""

    def __init__(self, shape: ModelShape, layout: Layout) -> None:
        self.shape = shape
        self.layout = layout
        self._sites = self._build_sites()
        self._dcm_sites = self._build_norm_sites()

    def layers(self, model: nn.Module) -> nn.ModuleList:
        """The decoder layers of ``model`` (a bare transformers model or a PEFT wrapper of one)."""
        return _get(_unwrap(model), self.layout.layers, "decoder layers", self.shape.model_type)

    def layer_prefix(self, layer: int) -> str:
        """Fully qualified name prefix of decoder layer ``layer`` in the bare transformers model."""
        return f"{self.layout.layers}.{layer}"

    def site(self, kind: str) -> Site:
        """Where DCM reads and scales the components of ``kind``: q/k/v projection outputs (or the q/k
        per-head norm outputs, where the layout has them), down input."""
        return self._dcm_sites.get(kind) or self._sites[kind]

    @property
    def mlp_targets(self) -> tuple[str, ...]:
        """The weights of an MLP neuron this layout has (no ``"gate"`` where there is no gate projection)."""
        return tuple(target for target in MLP_TARGETS if f"mlp.{target}" in self._sites)

    def check_mlp_targets(self, mlp_targets: list[str] | tuple[str, ...]) -> None:
        """Refuse targets that leave a selected MLP neuron nothing to train here; warn about ones merely absent."""
        missing = [target for target in mlp_targets if target not in self.mlp_targets]
        if not missing:
            return
        what = f"a {self.shape.model_type!r} model has no {' or '.join(missing)} projection in its MLP"
        available = f"the MLP targets it has are {list(self.mlp_targets)}"
        if len(missing) == len(mlp_targets):
            raise UsageError(
                f"mlp_targets={list(mlp_targets)}: {what}, so every MLP neuron of the circuit would be dropped; "
                f"{available}"
            )
        skipped = "it is skipped" if len(missing) == 1 else "they are skipped"
        warnings.warn(f"mlp_targets={list(mlp_targets)}: {what}; {skipped} ({available})", UserWarning, stacklevel=2)

    def param_sites(self, kind: str, mlp_targets: tuple[str, ...] = ("up",)) -> list[Site]:
        """Weight slices the adapter trains for a component of ``kind``.

        q/k/v: the projection rows that produce the head. MLP neuron: the up projection row (the
        authors' choice), plus the gate row and/or down projection column when asked.
        """
        if kind != "mlp":
            return [self._sites[kind]]
        unknown = set(mlp_targets) - set(MLP_TARGETS)
        if unknown:
            raise ValueError(f"unknown mlp_targets {sorted(unknown)}; choose from {MLP_TARGETS}")
        return [self._sites[f"mlp.{target}"] for target in mlp_targets if f"mlp.{target}" in self._sites]

    def _build_sites(self) -> dict[str, Site]:
        s, lay = self.shape, self.layout
        hd, nq, nkv, inter = s.head_dim, s.num_heads, s.num_kv_heads, s.intermediate_size
        if lay.attn_packing == "separate":
            q, k, v = _blocks(0, nq, hd), _blocks(0, nkv, hd), _blocks(0, nkv, hd)
        elif lay.attn_packing == "concat":
            q, k, v = _blocks(0, nq, hd), _blocks(nq * hd, nkv, hd), _blocks((nq + nkv) * hd, nkv, hd)
        else:  # per_head: [q_h | k_h | v_h] per head, no grouped-query attention
            q, k, v = (_blocks(offset * hd, nq, hd, stride=3 * hd) for offset in range(3))
        neurons = torch.arange(inter).unsqueeze(1)
        sites = {
            "q": Site(lay.q, "output", q),
            "k": Site(lay.k, "output", k),
            "v": Site(lay.v, "output", v),
            "mlp": Site(lay.down, "input", neurons),
            "mlp.down": Site(lay.down, "input", neurons),
        }
        if lay.mlp_packing == "concat":
            sites["mlp.gate"] = Site(lay.up, "output", neurons)
            sites["mlp.up"] = Site(lay.up, "output", neurons + inter)
        else:
            sites["mlp.up"] = Site(lay.up, "output", neurons)
            if lay.mlp_packing == "separate":
                sites["mlp.gate"] = Site(lay.gate, "output", neurons)
        return sites

    def _build_norm_sites(self) -> dict[str, Site]:
        """DCM sites at the per-head q/k norms' outputs, for layouts that have them."""
        s, lay = self.shape, self.layout
        axes = "heads_first" if lay.norm_heads_first else "tokens_first"
        sites = {}
        for kind, path, heads in (("q", lay.q_norm, s.num_heads), ("k", lay.k_norm, s.num_kv_heads)):
            if path:
                sites[kind] = Site(path, "output", _blocks(0, heads, s.head_dim), head_axes=axes)
        return sites

    def check(self, model: nn.Module) -> None:
        """Fail early, naming the missing module, if ``model`` does not have this layout."""
        layers = self.layers(model)
        if len(layers) != self.shape.num_layers:
            raise UnsupportedModelError(
                f"expected {self.shape.num_layers} decoder layers at {self.layout.layers!r}, "
                f"found {len(layers)}. {_HOW_TO_DESCRIBE}"
            )
        for name, site in [*self._sites.items(), *self._dcm_sites.items()]:
            module = _get(layers[0], site.module, f"{name} ({site.side})", self.shape.model_type)
            width = _feature_width(module, site.side)
            if width is not None and int(site.index.max()) >= width:
                raise UnsupportedModelError(
                    f"{site.module!r} has {width} {site.side} features but the {name} components need "
                    f"{int(site.index.max()) + 1}; check head_dim / heads / MLP width. {_HOW_TO_DESCRIBE}"
                )


def _feature_width(module: nn.Module, side: Side) -> int | None:
    """Output or input width of a linear-like module (nn.Linear, Conv1D, bitsandbytes layers)."""
    if hasattr(module, "out_features") and hasattr(module, "in_features"):
        return module.out_features if side == "output" else module.in_features
    if hasattr(module, "nf"):  # transformers Conv1D: weight (in, out)
        return module.nf if side == "output" else module.weight.shape[0]
    return None


def describe(
    model: nn.Module,
    layout: Layout | None = None,
    shape: ModelShape | None = None,
) -> ArchSpec:
    """The :class:`ArchSpec` of a HF causal LM, from its config, or from a hand-written layout/shape."""
    base = _unwrap(model)
    config = getattr(base, "config", None)
    if shape is None:
        if config is None:
            raise UnsupportedModelError(f"model has no config to read its shape from. {_HOW_TO_DESCRIBE}")
        shape = shape_from_config(config)
    if layout is None:
        layout = LAYOUTS.get(shape.model_type)
        if layout is None:
            raise UnsupportedModelError(
                f"no layout known for model_type {shape.model_type!r} (known: {sorted(LAYOUTS)}). {_HOW_TO_DESCRIBE}"
            )
    spec = ArchSpec(shape, layout)
    spec.check(base)
    return spec
