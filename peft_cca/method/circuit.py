"""Circuit: the components CCA updates, as a file a person can read, diff and validate.

A circuit is, per decoder layer, the selected query heads, key heads, value heads and MLP neurons.
It carries the shape of the model it was learned on, so applying it to another model is a clear
error that names what differs instead of a silent out-of-range index.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from peft_cca.errors import UsageError
from peft_cca.jsonfiles import parse_object
from peft_cca.method.arch import COMPONENT_KINDS, ModelShape, describe

FORMAT = "peft-cca/circuit@1"


class CircuitShapeError(UsageError):
    """A circuit applied to a model of another shape, or with indices outside the model."""


def _shape_of(model_or_shape: nn.Module | ModelShape) -> ModelShape:
    return model_or_shape if isinstance(model_or_shape, ModelShape) else describe(model_or_shape).shape


def _shape_from(model: Any) -> ModelShape:
    """The ``model`` block of a circuit file, each field checked (a float or a true would slip through int())."""
    if not isinstance(model, Mapping):
        raise ValueError('key "model" must be the model shape object that `peft-cca circuit` records')
    names = list(ModelShape.__dataclass_fields__)
    missing, unknown = [n for n in names if n not in model], sorted(set(model) - set(names))
    if missing or unknown:
        raise ValueError(f"key model: missing {missing}, unknown {unknown}; expected exactly {names}")
    for name in names[1:]:
        value = model[name]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"key model.{name}: must be a positive whole number, found {value!r}")
    if not isinstance(model["model_type"], str):
        raise ValueError(f"key model.model_type: must be a string, found {model['model_type']!r}")
    return ModelShape(**model)


class Circuit:
    """Selected components per layer: ``circuit.selected(layer, kind) -> sorted list of indices``."""

    def __init__(self, shape: ModelShape, selection: Mapping[int, Mapping[str, list[int]]] | None = None):
        self.shape = shape
        self._selection: dict[int, dict[str, list[int]]] = {}
        for layer, kinds in (selection or {}).items():
            layer = int(layer)
            if not 0 <= layer < shape.num_layers:
                raise CircuitShapeError(f"layer {layer} is outside the model's {shape.num_layers} layers")
            for kind, indices in kinds.items():
                if kind not in COMPONENT_KINDS:
                    raise CircuitShapeError(f"unknown component kind {kind!r}; expected {COMPONENT_KINDS}")
                # int() would silently truncate 504.7 to 504 and turn true into 1: only whole numbers are indices
                not_whole = [i for i in indices if isinstance(i, bool) or not hasattr(i, "__index__")]
                if not_whole:
                    raise CircuitShapeError(
                        f"layers.{layer}.{kind}: index {not_whole[0]!r} is not a whole number; "
                        "write component indices as integers"
                    )
                clean = sorted({int(i) for i in indices})
                limit = shape.count(kind)
                bad = [i for i in clean if not 0 <= i < limit]
                if bad:
                    raise CircuitShapeError(
                        f"layer {layer} {kind}: indices {bad[:5]} outside 0..{limit - 1}: the model has {limit} "
                        f"{kind} components per layer (key layers.{layer}.{kind})"
                    )
                if clean:
                    self._selection.setdefault(layer, {})[kind] = clean

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def full(cls, model_or_shape: nn.Module | ModelShape) -> Circuit:
        """Every component: the paper's "CCA w/o mask" ablation."""
        shape = _shape_of(model_or_shape)
        every = {kind: list(range(shape.count(kind))) for kind in COMPONENT_KINDS}
        return cls(shape, {layer: every for layer in range(shape.num_layers)})

    @classmethod
    def empty(cls, model_or_shape: nn.Module | ModelShape) -> Circuit:
        return cls(_shape_of(model_or_shape))

    @classmethod
    def from_masks(cls, shape: ModelShape, masks: Mapping[str, torch.Tensor]) -> Circuit:
        """From boolean tensors ``masks[kind]`` of shape ``(num_layers, count(kind))``, as DCM produces."""
        selection: dict[int, dict[str, list[int]]] = {}
        for kind, mask in masks.items():
            expected = (shape.num_layers, shape.count(kind))
            if tuple(mask.shape) != expected:
                raise CircuitShapeError(f"{kind} mask has shape {tuple(mask.shape)}, expected {expected}")
            for layer, index in mask.nonzero().tolist():
                selection.setdefault(layer, {}).setdefault(kind, []).append(index)
        return cls(shape, selection)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Circuit:
        """From :meth:`to_dict`'s form; every malformed field is a ``ValueError`` naming its key."""
        if not isinstance(data, Mapping):
            raise ValueError(f"holds a JSON {type(data).__name__}, not a circuit object; pass a circuit.json")
        fmt = data.get("format")
        if fmt != FORMAT:
            versioned = isinstance(fmt, str) and fmt.startswith(FORMAT.split("@")[0] + "@")
            why = "another version of peft-cca wrote it; use that version" if versioned else "not a circuit file"
            raise ValueError(f"{why}: format is {fmt!r}, expected {FORMAT!r}")
        shape = _shape_from(data.get("model"))
        layers = data.get("layers")
        if not isinstance(layers, Mapping):
            raise ValueError('key "layers" must be an object {"<layer>": {"q": [...], ...}}')
        selection: dict[int, Mapping[str, list[int]]] = {}
        for layer, kinds in layers.items():
            if not (isinstance(layer, str) and layer.isdecimal()) or not isinstance(kinds, Mapping):
                raise ValueError(f'key layers.{layer}: layers are "<whole number>": {{"q": [...], ...}}')
            for kind, indices in kinds.items():
                if not isinstance(indices, list):
                    raise ValueError(f"key layers.{layer}.{kind}: must be a list of indices, found {indices!r}")
            selection[int(layer)] = kinds
        return cls(shape, selection)

    @classmethod
    def load(cls, path: str | Path, model: nn.Module | ModelShape | None = None) -> Circuit:
        """Read a circuit file (checked against ``model``'s shape when given); a malformed file or another
        model's circuit is a one-line :class:`UsageError` that names the file."""
        path = Path(path)
        try:
            text = path.read_text()
        except (FileNotFoundError, IsADirectoryError):
            hint = "pass the circuit.json `peft-cca circuit` wrote"
            raise UsageError(f"circuit file {path} does not exist; {hint}") from None
        except UnicodeDecodeError:
            raise UsageError(f"{path}: not a text file; pass the circuit.json written by `peft-cca circuit`") from None
        if not text.strip():
            raise UsageError(f"{path}: the file is empty; rerun `peft-cca circuit` to write it again")
        data = parse_object(text, path, "truncated? rerun `peft-cca circuit`", kind="a circuit object")
        try:
            circuit = cls.from_dict(data)
            if model is not None:
                circuit.validate(model)
        except ValueError as error:
            raise UsageError(f"{path}: {error}") from None
        return circuit

    # -- io -----------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form; layers and kinds in a fixed order so that two files diff line by line."""
        return {
            "format": FORMAT,
            "model": self.shape.to_dict(),
            "stats": self.stats(),
            "layers": {
                str(layer): {
                    kind: self._selection[layer][kind] for kind in COMPONENT_KINDS if kind in self._selection[layer]
                }
                for layer in sorted(self._selection)
            },
        }

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = self.to_dict()
        # one line per layer and kind keeps the file short and diffable even for thousands of neurons
        lines = [
            "{",
            f'  "format": {json.dumps(data["format"])},',
            f'  "model": {json.dumps(data["model"])},',
            f'  "stats": {json.dumps(data["stats"])},',
            '  "layers": {',
        ]
        layer_items = list(data["layers"].items())
        for n, (layer, kinds) in enumerate(layer_items):
            inner = ",\n".join(f"    {json.dumps(kind)}: {json.dumps(idx)}" for kind, idx in kinds.items())
            end = "," if n < len(layer_items) - 1 else ""
            lines.append(f"   {json.dumps(layer)}: {{\n{inner}\n   }}{end}")
        lines += ["  }", "}"]
        path.write_text("\n".join(lines) + "\n")
        return path

    # -- queries ------------------------------------------------------------------------------
    def selected(self, layer: int, kind: str) -> list[int]:
        return list(self._selection.get(layer, {}).get(kind, []))

    def masks(self) -> dict[str, torch.Tensor]:
        """Boolean ``(num_layers, count(kind))`` tensor per kind."""
        out = {k: torch.zeros(self.shape.num_layers, self.shape.count(k), dtype=torch.bool) for k in COMPONENT_KINDS}
        for layer, kinds in self._selection.items():
            for kind, indices in kinds.items():
                out[kind][layer, indices] = True
        return out

    def counts(self) -> dict[str, int]:
        """Selected components per kind (the paper's Table 7)."""
        return {kind: sum(len(k.get(kind, [])) for k in self._selection.values()) for kind in COMPONENT_KINDS}

    def __len__(self) -> int:
        return sum(self.counts().values())

    @property
    def fraction(self) -> float:
        """The paper's "% Mask" as a fraction: selected / (layers x (heads + 2 kv heads + MLP width))."""
        return len(self) / self.shape.total_components

    def stats(self) -> dict[str, Any]:
        return {
            "selected": len(self),
            "total": self.shape.total_components,
            "fraction": self.fraction,
            "percent": 100.0 * self.fraction,
            "counts": self.counts(),
        }

    def validate(self, model_or_shape: nn.Module | ModelShape) -> None:
        """Raise :class:`CircuitShapeError` naming every field where the model's shape differs."""
        other = _shape_of(model_or_shape)
        diffs = self.shape.differences(other)
        if diffs:
            raise CircuitShapeError(
                "this circuit was made for another model shape (circuit != model): " + "; ".join(diffs)
            )

    # -- set operations -----------------------------------------------------------------------
    def _combine(self, other: Circuit, op: str) -> Circuit:
        if self.shape != other.shape:
            raise CircuitShapeError(
                "cannot combine circuits of different shapes: " + "; ".join(self.shape.differences(other.shape))
            )
        mine, theirs = self.masks(), other.masks()
        combined = {k: (mine[k] | theirs[k]) if op == "or" else (mine[k] & theirs[k]) for k in COMPONENT_KINDS}
        return Circuit.from_masks(self.shape, combined)

    def union(self, other: Circuit) -> Circuit:
        return self._combine(other, "or")

    def intersection(self, other: Circuit) -> Circuit:
        return self._combine(other, "and")

    __or__ = union
    __and__ = intersection

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Circuit) and self.shape == other.shape and self._selection == other._selection

    def __hash__(self) -> int:
        return hash((self.shape, json.dumps(self._selection, sort_keys=True)))

    def __repr__(self) -> str:
        c = self.counts()
        return (
            f"Circuit({self.shape.model_type}, {len(self)}/{self.shape.total_components} components "
            f"= {100 * self.fraction:.3f}%: q={c['q']} k={c['k']} v={c['v']} mlp={c['mlp']})"
        )
