# The two commands of the README. Each sets up .venv first (idempotent).
.PHONY: setup demo demo-full test lint bench

setup:
	bash scripts/setup.sh

# the main job: every CCA stage on the offline SmolLM2, under 12 minutes on 2 idle CPU cores
demo: setup
	.venv/bin/peft-cca demo --preset quick --out runs/demo

demo-full: setup
	.venv/bin/peft-cca demo --preset full --out runs/demo-full

# pytest exit code 5 ("no tests collected") counts as a failure, not as success
test: setup
	.venv/bin/ruff check peft_cca tests benchmarks recipes examples scripts peft_cca_autoload.py setup.py
	.venv/bin/python -m pytest -ra; rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests ran"; exit 1; fi; exit $$rc

lint: setup
	.venv/bin/ruff check peft_cca tests benchmarks recipes examples scripts peft_cca_autoload.py setup.py
	.venv/bin/ruff format --check peft_cca tests benchmarks recipes examples scripts peft_cca_autoload.py setup.py

bench: setup
	.venv/bin/python benchmarks/adapter.py
	.venv/bin/python benchmarks/branching.py
	.venv/bin/python benchmarks/dcm.py
	.venv/bin/python benchmarks/memory.py
