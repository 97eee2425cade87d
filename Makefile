# Two commands do all set-up on a fresh machine (Python 3.11+ and apt):
#   make run    install what is missing into .venv, then start backend + UI
#   make test   install what is missing (test tools and chromium too), then run every test
.PHONY: install install-dev run test test-gpu lint

install:
	scripts/bootstrap.sh

install-dev:
	scripts/bootstrap.sh --dev

run: install
	.venv/bin/python start_ray_serve_app.py $(ARGS)

test: install-dev
	.venv/bin/python -m pytest -q $(ARGS)

test-gpu: install-dev
	.venv/bin/python -m pytest -q -m gpu $(ARGS)

lint: install-dev
	.venv/bin/ruff check .
