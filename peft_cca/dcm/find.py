"""Stage 2 as one call: records in, a lambda sweep, the chosen :class:`Circuit` out (and its files when asked).

:func:`find_circuit` is what a Python user calls; ``peft-cca circuit`` calls :func:`search_circuits`, the same code,
and prints the sweep's table. A sweep whose pick is empty still writes its files (the table is what tells a user
which lambda to try next); :func:`find_circuit` then refuses it in one line, and the CLI prints the same line as a
warning, because amplifying nothing fails later, far from the setting to change.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from torch import nn

from peft_cca.dcm.plot import plot_circuit, plot_history
from peft_cca.dcm.sweep import SELECTION_RULE, SweepResult, choose, sweep
from peft_cca.dcm.train import DCMConfig
from peft_cca.errors import UsageError
from peft_cca.localize.records import Record, load_records
from peft_cca.method.circuit import Circuit
from peft_cca.runtime.runfolder import atomic_write_json

DEFAULT_LAMBDAS: tuple[float, ...] = (1e-2,)


@dataclass
class CircuitSearch:
    """A lambda sweep and its pick: ``circuit`` is ``chosen.circuit``."""

    chosen: SweepResult
    results: list[SweepResult]
    epochs: int

    @property
    def circuit(self) -> Circuit:
        return self.chosen.circuit


def _record(row: Mapping[str, Any] | Record, index: int) -> Record:
    if isinstance(row, Record):
        return row
    try:
        return Record(
            prefix_ids=tuple(int(i) for i in row["prefix_ids"]),
            desired=int(row["desired_token_id"]),
            undesired=int(row["undesired_token_id"]),
            split=str(row.get("split", "train")),
            problem_id=str(row.get("problem_id", index)),
        )
    except (KeyError, TypeError, ValueError) as error:
        raise UsageError(
            f"record {index}: {error!r}; give rows with prefix_ids, desired_token_id and undesired_token_id "
            "(peft_cca.load_error_localization(folder) gives them) or the folder stage 1 wrote"
        ) from None


def records_of(data: Any, model: nn.Module, tokenizer=None) -> list[Record]:
    """Records from a stage-1 folder (or its records.jsonl), a ``DatasetDict``/dict of splits, or rows."""
    if isinstance(data, str | Path):
        vocab = model.get_input_embeddings().num_embeddings
        return load_records(data, vocab_size=vocab, tokenizer=tokenizer)
    if isinstance(data, Mapping) and "prefix_ids" not in data:  # splits: each row takes its split's name
        return [replace(_record(row, i), split=str(name)) for name, rows in data.items() for i, row in enumerate(rows)]
    return [_record(row, i) for i, row in enumerate(data)]


def search_circuits(
    model: nn.Module,
    data: Any,
    lambdas: Sequence[float] = DEFAULT_LAMBDAS,
    config: DCMConfig | None = None,
    *,
    tokenizer=None,
    out_dir: str | Path | None = None,
    max_fraction: float | None = None,
    resume: bool = False,
    extra_settings: dict[str, Any] | None = None,
) -> CircuitSearch:
    """Train one DCM mask per lambda on the train records, rank them on validation (``SELECTION_RULE``), and with
    ``out_dir`` write ``circuit.json``, ``sweep.json``, ``history.json`` and plots (one folder per lambda)."""
    records = records_of(data, model, tokenizer)
    train = [r for r in records if r.split == "train"]
    validation = [r for r in records if r.split == "validation"]
    if not train:
        raise UsageError("the Error-Localization data has no records in the train split: run stage 1 on more problems")
    if not lambdas:
        raise UsageError("no lambda to sweep: give at least one (--lambda)")
    config = replace(config or DCMConfig(), lam=lambdas[0])
    out = Path(out_dir) if out_dir is not None else None
    results = sweep(model, train, validation, list(lambdas), config, out, resume, extra_settings=extra_settings)
    chosen = choose(results, max_fraction=max_fraction)
    search = CircuitSearch(chosen, results, config.epochs)
    if out is not None:
        _write(out, search, max_fraction, config.seed)
    return search


def empty_circuit_advice(search: CircuitSearch) -> str | None:
    """The one line that says what to change when the sweep's pick selects nothing; ``None`` when it selects some."""
    if len(search.circuit):
        return None
    tried = ", ".join(f"{r.lam:g}" for r in search.results)
    return (
        f"DCM selected no component at lambda {tried} after {search.epochs} epochs: lower lambda, train more "
        "epochs, or sweep smaller values (--lambda 1e-3,1e-4)"
    )


def _write(out: Path, search: CircuitSearch, max_fraction: float | None, seed: int) -> None:
    for result in search.results:
        folder = out / f"lambda_{result.lam:g}"
        result.circuit.save(folder / "circuit.json")
        plot_circuit(result.circuit, folder / "circuit.png", seed=seed, lam=result.lam)
    chosen = search.chosen
    if len(chosen.circuit):
        chosen.circuit.save(out / "circuit.json")
    else:  # no circuit.json a later stage could take for a circuit (nor a stale one of an earlier run)
        (out / "circuit.json").unlink(missing_ok=True)
    atomic_write_json(out / "history.json", {"lambda": chosen.lam, **chosen.history})
    atomic_write_json(
        out / "sweep.json",
        {
            "rule": SELECTION_RULE,
            "max_fraction": max_fraction,
            "chosen_lambda": chosen.lam,
            "rows": [r.row() for r in search.results],
        },
    )
    plot_circuit(chosen.circuit, out / "circuit.png", seed=seed, lam=chosen.lam)
    plot_history(chosen.history, out / "history.png")


def find_circuit(
    model: nn.Module,
    data: Iterable[Any] | str | Path,
    lambdas: Sequence[float] = DEFAULT_LAMBDAS,
    config: DCMConfig | None = None,
    **options: Any,
) -> Circuit:
    """The circuit DCM finds for ``data`` (a stage-1 folder, ``load_error_localization``'s output, or rows):
    one lambda, or the sweep's pick. ``options``: as :func:`search_circuits` (``out_dir``, ``max_fraction``, ...).
    An empty pick is refused (:func:`empty_circuit_advice`): there would be nothing for CCA to train."""
    search = search_circuits(model, data, lambdas, config, **options)
    advice = empty_circuit_advice(search)
    if advice is not None:
        raise UsageError(advice)
    return search.circuit
