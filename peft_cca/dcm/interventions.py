"""The DCM mask and the hooks that apply it at the last position of each prefix.

Two forms of the intervention on a component's features ``h`` (selectable, see :data:`FORMS`):

* ``paper`` (default, arXiv 2512.16914): ``h -> (1 + m) h``. ``m`` starts at 0 (identity); the mask
  penalty pulls it back to 0; ``m = 1`` doubles the component.
* ``authors`` (the authors' code): ``h -> 2 m h``. ``m`` starts at 1 (doubling); 0.5 is the identity;
  the penalty pulls ``m`` toward 0, i.e. toward *ablating* the component.

In both forms ``m`` lives in [0, 1] (clamped after every step) and a component is **selected when
m > 0.5**: for ``authors`` that is "m rounds to 1" (0.5 rounds to 0); for ``paper`` it is the same
threshold, halfway between identity and doubling.

Plain torch hooks (no interpretability library): a forward hook rescales a projection's output
features, a forward pre-hook rescales the down projection's input. Only one position per row is
touched, so hooks take the positions to scale from :attr:`MaskIntervention.positions`.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import torch
from torch import nn

from peft_cca.method.arch import COMPONENT_KINDS, ArchSpec, ModelShape
from peft_cca.method.circuit import Circuit

THRESHOLD = 0.5


@dataclass(frozen=True)
class Form:
    """One parameterisation of the intervention: ``scale = offset + slope * m``."""

    name: str
    init: float
    offset: float
    slope: float

    def scale(self, m: torch.Tensor) -> torch.Tensor:
        return self.offset + self.slope * m


FORMS: dict[str, Form] = {
    "paper": Form("paper", init=0.0, offset=1.0, slope=1.0),
    "authors": Form("authors", init=1.0, offset=0.0, slope=2.0),
}


class ComponentMask(nn.Module):
    """One trainable value per component: ``values[kind]`` has shape ``(num_layers, count(kind))``."""

    def __init__(self, shape: ModelShape, form: str = "paper") -> None:
        super().__init__()
        if form not in FORMS:
            raise ValueError(f"unknown intervention form {form!r}; choose from {sorted(FORMS)}")
        self.shape = shape
        self.form = FORMS[form]
        self.values = nn.ParameterDict(
            {
                kind: nn.Parameter(torch.full((shape.num_layers, shape.count(kind)), self.form.init))
                for kind in COMPONENT_KINDS
            }
        )

    def scale(self, kind: str) -> torch.Tensor:
        """Multiplier of every component of ``kind``, ``(num_layers, count)``; differentiable."""
        return self.form.scale(self.values[kind])

    def total(self) -> torch.Tensor:
        """``sum(m)`` over all components: the sparsity penalty."""
        return sum(v.sum() for v in self.values.values())

    @torch.no_grad()
    def clamp_(self) -> None:
        for v in self.values.values():
            v.clamp_(0.0, 1.0)

    @torch.no_grad()
    def selected(self) -> dict[str, torch.Tensor]:
        """Boolean ``(num_layers, count)`` per kind: ``m > 0.5`` (see the module docstring)."""
        return {kind: v.detach() > THRESHOLD for kind, v in self.values.items()}

    def to_circuit(self) -> Circuit:
        return Circuit.from_masks(self.shape, self.selected())

    def flat(self) -> torch.Tensor:
        """All values in one vector (kinds in :data:`COMPONENT_KINDS` order), for comparisons and history."""
        return torch.cat([self.values[k].detach().reshape(-1) for k in COMPONENT_KINDS])


class FixedScales(nn.Module):
    """A frozen "mask" that doubles the components of a circuit and leaves the rest alone.

    Used to score a learned circuit "amplified", whatever form it was learned with.
    """

    def __init__(self, circuit: Circuit, factor: float = 2.0) -> None:
        super().__init__()
        self.shape = circuit.shape
        masks = circuit.masks()
        for kind in COMPONENT_KINDS:
            self.register_buffer(f"scale_{kind}", 1.0 + (factor - 1.0) * masks[kind].float())

    def scale(self, kind: str) -> torch.Tensor:
        return getattr(self, f"scale_{kind}")


class MaskIntervention:
    """Context manager: while active, every site of ``spec`` is rescaled by ``mask.scale(kind)`` at one
    position per row, ``positions[b]`` (set it before each forward with :meth:`at`).

    Kinds that share a fused module (GPT-2 ``c_attn``, Phi-3 ``qkv_proj``) are combined into one hook
    with one per-feature factor vector, so the order of hooks never matters.
    """

    def __init__(self, model: nn.Module, spec: ArchSpec, mask: nn.Module) -> None:
        self.model = model
        self.spec = spec
        self.mask = mask
        self.positions: torch.Tensor | None = None
        self._positions: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}
        self._index: dict[tuple[str, torch.device], torch.Tensor] = {}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def at(self, positions: torch.Tensor) -> MaskIntervention:
        self.positions = positions
        self._positions.clear()
        return self

    def _rows_and_positions(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Row and position indices on ``device``, copied there once per forward, not once per site."""
        if device not in self._positions:
            pos = self.positions.to(device)
            self._positions[device] = (torch.arange(pos.shape[0], device=device), pos)
        return self._positions[device]

    def _site_index(self, kind: str, device: torch.device) -> torch.Tensor:
        """The feature index of ``kind``'s components on ``device``, moved there once per run."""
        key = (kind, device)
        if key not in self._index:
            self._index[key] = self.spec.site(kind).index.reshape(-1).to(device)
        return self._index[key]

    def _factor(self, layer: int, kinds: list[str], width: int, like: torch.Tensor) -> torch.Tensor:
        """Per-feature multipliers; the mask stays fp32 and is cast to the activations' dtype only here."""
        factor = torch.ones(width, dtype=like.dtype, device=like.device)
        for kind in kinds:
            site = self.spec.site(kind)
            per_component = self.mask.scale(kind)[layer].to(dtype=like.dtype, device=like.device)
            src = per_component.repeat_interleave(site.index.shape[1])
            factor = factor.scatter(0, self._site_index(kind, like.device), src)
        return factor

    def _apply(self, h: torch.Tensor, layer: int, kinds: list[str]) -> torch.Tensor:
        axes = self.spec.site(kinds[0]).head_axes
        if axes is not None:  # a per-head norm's output: scale the flattened (heads, head_dim) features
            tokens_first = h if axes == "tokens_first" else h.transpose(1, 2)
            scaled = self._apply_flat(tokens_first.flatten(2), layer, kinds).view_as(tokens_first)
            return scaled if axes == "tokens_first" else scaled.transpose(1, 2)
        return self._apply_flat(h, layer, kinds)

    def _apply_flat(self, h: torch.Tensor, layer: int, kinds: list[str]) -> torch.Tensor:
        if self.positions is None:
            raise RuntimeError("MaskIntervention.at(positions) must be called before the forward pass")
        rows, pos = self._rows_and_positions(h.device)
        factor = self._factor(layer, kinds, h.shape[-1], h)
        # out-of-place index_put keeps autograd happy and leaves every other position untouched
        return h.index_put((rows, pos), h[rows, pos] * factor)

    def __enter__(self) -> MaskIntervention:
        groups: dict[tuple[str, str], list[str]] = defaultdict(list)  # kinds sharing one module and side
        for kind in COMPONENT_KINDS:
            site = self.spec.site(kind)
            groups[(site.module, site.side)].append(kind)
        for layer, block in enumerate(self.spec.layers(self.model)):
            for (path, side), kinds in groups.items():
                module = block.get_submodule(path)
                if side == "output":
                    hook = self._output_hook(layer, kinds)
                    self._handles.append(module.register_forward_hook(hook))
                else:
                    hook = self._input_hook(layer, kinds)
                    self._handles.append(module.register_forward_pre_hook(hook))
        return self

    def _output_hook(self, layer: int, kinds: list[str]):
        def hook(_module, _args, output):
            return self._apply(output, layer, kinds)

        return hook

    def _input_hook(self, layer: int, kinds: list[str]):
        def hook(_module, args):
            return (self._apply(args[0], layer, kinds), *args[1:])

        return hook

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
