# Two entry points, both from a fresh clone with nothing installed:
#   make demo   the main job on the embedded default
#   make test   lint + the test suite (transformers 4.x with the s3prl extra, and the core on transformers 5.x)
# torch is installed first and pinned by TORCH_SPEC: any other spec may pull a multi-GB CUDA build.

PYTHON     ?= python3
TORCH_SPEC ?= torch==2.13.0
VENV       ?= .venv
CORE_VENV  ?= .venv-core
DEMO_OUT   ?= runs/demo
PIP_FLAGS  ?= -q --disable-pip-version-check

.PHONY: demo test lint clean

%/bin/python:
	$(PYTHON) -m venv $*
	$*/bin/pip install $(PIP_FLAGS) "$(TORCH_SPEC)"

demo: $(VENV)/bin/python
	$(VENV)/bin/pip install $(PIP_FLAGS) -e ".[eval]"
	$(VENV)/bin/daisy demo --out $(DEMO_OUT)

test: $(VENV)/bin/python $(CORE_VENV)/bin/python
	$(VENV)/bin/pip install $(PIP_FLAGS) -e ".[dev,eval,s3prl,hf,tts]"
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/python -m pytest -q
	$(CORE_VENV)/bin/pip install $(PIP_FLAGS) -e ".[dev]"
	$(CORE_VENV)/bin/python -m pytest -q tests/test_backbone.py tests/test_checkpoints.py

clean:
	rm -rf $(VENV) $(CORE_VENV) runs
