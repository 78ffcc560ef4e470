"""Run folders that cannot lie: the settings a folder's files depend on, checked on every resume, and
writes that never leave a half-written file behind.

Every stage writes into a folder of its own. The first run records the settings that determine its output
in ``settings.json``; a later run into the same folder resumes only when its settings are the same, and
otherwise stops before any work with one line naming each differing setting, what the folder holds and how to
continue or start afresh. A folder that holds no finished work (only this bookkeeping) blocks nothing: a rerun
with other settings simply takes it over. And a folder a failed run made, holding no work, is removed
(:func:`discard_unfinished`, called by the CLI when a command fails), so failures leave no empty folders behind.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from peft_cca.errors import UsageError
from peft_cca.jsonfiles import read_object

logger = logging.getLogger(__name__)

SETTINGS_FILE = "settings.json"
# what a run writes about itself before (or besides) any work: neither is a unit of finished work
BOOKKEEPING = frozenset({SETTINGS_FILE, "runtime.json"})
_MADE: list[Path] = []  # folders this process created, for discard_unfinished


def finished_work(folder: Path) -> list[str]:
    """The entries of ``folder`` that hold work: anything but bookkeeping, empty files and empty folders."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    held = []
    for entry in sorted(folder.iterdir()):
        if entry.name in BOOKKEEPING or entry.name.startswith("."):
            continue
        if entry.is_dir() and any(f.is_file() and f.stat().st_size for f in entry.rglob("*")):
            held.append(entry.name + "/")
        elif entry.is_file() and entry.stat().st_size:
            held.append(entry.name)
    return held


def _make_folder(path: Path) -> None:
    """``mkdir -p``, remembering the topmost folder created, so a failed run can take it back."""
    missing = [p for p in (path, *path.parents) if not p.exists()]
    path.mkdir(parents=True, exist_ok=True)
    if missing:
        _MADE.append(missing[-1])


def discard_unfinished() -> list[Path]:
    """Remove every folder this process created that holds no finished work (a failed run's leftovers); returns
    them. A folder with any work in it stays, to be resumed."""
    removed = []
    while _MADE:
        folder = _MADE.pop()
        if folder.is_dir() and not finished_work(folder):  # a sub-folder with any non-empty file counts as work
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def json_safe(value: Any) -> Any:
    """``value`` with every NaN or infinity replaced by ``None``: ``NaN`` and ``-Infinity`` are not JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, fsync it, then rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """:func:`atomic_write_bytes` for UTF-8 text."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj: Any) -> None:
    """Strict JSON (non-finite floats become ``null``), indented, written atomically."""
    atomic_write_text(path, json.dumps(json_safe(obj), indent=2, allow_nan=False) + "\n")


def ensure_output_dir(path: Path, flag: str = "--out") -> Path:
    """Create ``path`` as a folder and prove it writable before any work starts; refuse a file or a
    read-only folder with one line."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UsageError(f"{flag} {path} is a file, not a folder: choose a folder path")
    try:
        _make_folder(path)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as err:
        raise UsageError(f"{flag} {path} is not writable ({err.strerror}): choose another folder") from err
    return path


def ensure_output_file(path: Path, flag: str = "--out") -> Path:
    """Check that ``path`` can be written as a file (its folder exists or can be made, and is writable)."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{flag} {path} is a folder, not a file: give a file path such as {path / 'out.json'}")
    ensure_output_dir(path.parent if str(path.parent) else Path("."), flag=f"the folder of {flag}")
    return path


def _describe(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def check_settings(
    folder: Path,
    settings: Mapping[str, Any],
    *,
    overwrite: bool = False,
    restart_hint: str = "pass --overwrite to start afresh, or choose another --out",
    record: bool = True,
    partial: bool = False,
) -> bool:
    """Compare ``settings`` with those recorded in ``folder``; record them when there are none.

    Returns ``True`` when the folder already held the same settings (a resume), ``False`` when they were
    recorded now. Raises :class:`UsageError` naming every differing setting and what the folder holds unless
    ``overwrite``, in which case the new settings replace the old (the caller clears the stale files), or the
    folder holds no finished work (:func:`finished_work`): then nothing is lost and the new settings take over.
    ``record=False`` only compares:
    the other processes of a launch check while the main one writes. ``partial=True`` compares only the keys of
    ``settings`` and records nothing: a check before the model loads, of the settings known without it.
    """
    folder = Path(folder)
    wanted = json.loads(json.dumps(json_safe(dict(settings)), sort_keys=True))
    recorded_path = folder / SETTINGS_FILE
    if recorded_path.exists() and not overwrite:
        recorded = read_object(recorded_path, restart_hint, kind="an object of settings")
        differing = [
            f"{key} {_describe(recorded.get(key))} (recorded) vs {_describe(wanted.get(key))} (now)"
            for key in sorted(set(wanted) if partial else set(recorded) | set(wanted))
            if recorded.get(key) != wanted.get(key)
        ]
        held = finished_work(folder) if differing else []
        if held:
            shown = ", ".join(held[:4]) + (f" and {len(held) - 4} more" if len(held) > 4 else "")
            raise UsageError(
                f"{folder} was made with other settings: {'; '.join(differing)}. It holds {shown}: rerun with the "
                f"recorded settings to continue it, or {restart_hint}"
            )
        if not differing:
            return True
        logger.info("%s holds no finished work: its earlier settings give way to these", folder)
    if not folder.exists():
        _make_folder(folder)
    if record and not partial:
        atomic_write_json(recorded_path, wanted)
    return False


def read_json_object(path: Path) -> dict[str, Any]:
    """A stage 1 JSON file, or a one-line UsageError naming the file and where it is damaged."""
    return read_object(path, "rerun stage 1 (localize) to rewrite it")


def clear_outputs(out: Path, names: tuple[str, ...]) -> None:
    """Remove what an earlier run with other settings wrote into ``out`` (only these names), for ``--overwrite``."""
    import shutil

    for name in names:
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
