# Two commands do all set-up on a fresh machine (Python 3.11+ and apt):
#   make run    install what is missing into .venv, then start backend + UI
#   make test   install what is missing (test tools and chromium too), then run every test
# `make download ARGS="--preset fastwan"` only fetches the Hub models those model flags
# (--preset, --tasks, --t2v_model_path, --i2v_model_path) serve into the Hugging Face cache
# (HF_HOME), e.g. on a connected machine before going offline.
.PHONY: install install-dev run download test test-gpu lint

install:
	scripts/bootstrap.sh

install-dev:
	scripts/bootstrap.sh --dev

run: install
	.venv/bin/python start_ray_serve_app.py $(ARGS)

download: install
	.venv/bin/python ray_serve_backend.py --download_only $(ARGS)

test: install-dev
	.venv/bin/python -m pytest -q $(ARGS)

test-gpu: install-dev
	.venv/bin/python -m pytest -q -m gpu $(ARGS)

lint: install-dev
	.venv/bin/ruff check .
