# shuiwu — the two commands a newcomer needs are `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
LOCK := requirements.lock
STAMP := $(VENV)/.installed

.PHONY: install receipt-font resident-font demo serve test lint typecheck pytest bench lock schema clean

install: $(STAMP) receipt-font

# Receipt PDFs embed a CJK TrueType font (backend.payments.receipts; reportlab cannot embed
# the CFF outlines of Noto Sans CJK): Debian's WenQuanYi Micro Hei, installed when missing
# (no prompt: CI has no stdin; through sudo when not root). SHUIWU_PAYMENTS_RECEIPT_FONT
# names another font.
RECEIPT_FONT := /usr/share/fonts/truetype/wqy/wqy-microhei.ttc
SUDO := $(shell if [ "$$(id -u)" != 0 ] && command -v sudo >/dev/null; then echo sudo; fi)
receipt-font:
	@test -f "$${SHUIWU_PAYMENTS_RECEIPT_FONT:-$(RECEIPT_FONT)}" || { \
		echo "== installing the receipt font (Debian fonts-wqy-microhei)"; \
		$(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fonts-wqy-microhei >/dev/null; }

# The resident app's CJK font (resident_app/assets/fonts/NotoSansSC-GB2312.woff2, committed):
# Flet's web renderer bundles no CJK glyphs, so the app ships Noto Sans CJK SC cut down to
# GB2312 + ASCII + punctuation as WOFF2 (~2.5 MB). Rebuild it from Debian's fonts-noto-cjk
# with fontTools (the `fonts` extra); about two minutes.
NOTO_CJK := /usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc
resident-font: $(STAMP)
	@test -f $(NOTO_CJK) || { $(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fonts-noto-cjk >/dev/null; }
	@$(BIN)/python -c "import fontTools, brotli" 2>/dev/null || $(BIN)/python -m pip install --quiet fonttools brotli
	$(BIN)/python resident_app/assets/fonts/build_font.py

# Installs exactly the pinned versions of the lock file; reinstalls when it changes.
$(STAMP): $(LOCK) pyproject.toml
	@echo "== installing into $(VENV): the pinned packages of $(LOCK) (first time: a few minutes)"
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install --quiet --upgrade pip
	@$(BIN)/python -m pip install --quiet --progress-bar off -c $(LOCK) -r $(LOCK)
	@$(BIN)/python -m pip install --quiet --no-deps -e .
	@touch $(STAMP)
	@echo "== installed: $$($(BIN)/shuiwu --version)"

demo: install
	@echo "== database (embedded PostgreSQL under $${SHUIWU_DATA_DIR:-.shuiwu}/) and demo data"
	@$(BIN)/shuiwu migrate
	@$(BIN)/shuiwu demo load --households 2000
	@$(BIN)/shuiwu demo run

serve: install
	$(BIN)/shuiwu serve

lint: install
	$(BIN)/ruff check backend acquisition resident_app staff_app tests bench migrations

typecheck: install
	$(BIN)/mypy backend acquisition resident_app

# The whole suite on the embedded PostgreSQL, then the smoke subset (migrations and a
# few end-to-end paths) on the external server when SHUIWU_TEST_EXTERNAL_URL is set.
pytest: install
	env -u SHUIWU_TEST_EXTERNAL_URL $(BIN)/pytest
	@if [ -n "$${SHUIWU_TEST_EXTERNAL_URL:-}" ]; then \
		echo "== smoke subset against $$SHUIWU_TEST_EXTERNAL_URL"; \
		$(BIN)/pytest -m smoke; \
	fi

test: lint typecheck pytest

bench: install
	@command -v wrk >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq wrk; }
	@set -e; for script in bench/[!_]*.py; do echo "== $$script"; $(BIN)/python $$script; done

# Refresh the pins from pyproject.toml (newest versions the index offers today).
lock:
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet pip-tools
	$(BIN)/pip-compile --quiet --strip-extras --extra dev --no-emit-index-url --no-emit-find-links --output-file $(LOCK) pyproject.toml

schema: install
	$(BIN)/shuiwu export-schema > schema.graphql

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
