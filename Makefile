# lineqc: `make setup` then `make test` (see README.md).
SHELL := /bin/bash
VENV ?= .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
PYTHON ?= python3
DATA ?= data
RUNS ?= runs
MT_SRC ?=
REVIEW_PORT ?= 8080
FOLDS ?= 3
STAGES := datasets train export edge review retrain
EXTRAS := edge,train,export,review,dev

.PHONY: setup system-deps test lint typecheck-tree demo demo-data demo-run demo-inspect demo-retrain bench bench-quality bench-train bench-export bench-edge bench-service bench-rollout clean

## setup: .venv with every extra for development (torch pinned by constraints.txt), Mosquitto
setup: $(VENV)/.installed system-deps $(VENV)/.gige

# Reinstalled only when the package metadata or the pins change: a second run takes seconds.
# pip -qq: errors only. A machine whose pip config names index folders it lacks gets one
# warning per package at -q, a page that hides what matters.
PIP := $(PY) -m pip install -qq
$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip setuptools wheel
	$(PIP) -c constraints.txt -e '.[$(EXTRAS)]'
	touch $@

# Debian packages the tests use: Mosquitto (the MQTT tests start their own brokers),
# Chromium with its driver (the review app's browser test), and for the GigE Vision source
# Aravis (its GObject introspection data, and aravis-tools' fake camera for the tests) with
# what PyGObject builds against. Installed as root when missing (PACKAGE:a file it installs).
APT_DEPS := mosquitto:/usr/sbin/mosquitto mosquitto-clients:/usr/bin/mosquitto_sub \
            chromium:/usr/bin/chromium chromium-driver:/usr/bin/chromedriver \
            gir1.2-aravis-0.8:/usr/lib/*/girepository-1.0/Aravis-0.8.typelib \
            aravis-tools:/usr/bin/arv-fake-gv-camera-0.8 pkg-config:/usr/bin/pkg-config \
            libgirepository1.0-dev:/usr/include/gobject-introspection-1.0/girepository.h \
            libcairo2-dev:/usr/include/cairo/cairo.h

system-deps:
	@missing=""; for dep in $(APT_DEPS); do \
	  compgen -G "$${dep#*:}" >/dev/null || missing="$$missing $${dep%%:*}"; \
	done; \
	if [ -z "$$missing" ]; then \
	  echo "system packages: present (mosquitto, chromium, chromedriver, aravis)"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "system packages: installing$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq$$missing; \
	else \
	  echo "system packages missing:$$missing. Install them with: sudo apt-get install$$missing"; \
	  echo "           (the MQTT, browser and GigE Vision tests skip without them)"; \
	fi

# PyGObject, through which the GigE Vision source reaches Aravis (the `gige` extra): built
# from source against the -dev packages above (Debian's python3-gi is not visible in a venv).
# Without them it is left out, and the GigE Vision tests skip saying so.
$(VENV)/.gige: $(VENV)/.installed | system-deps
	@if pkg-config --exists gobject-introspection-1.0 cairo 2>/dev/null; then \
	  $(PIP) -c constraints.txt -e '.[gige]' && touch $@ || \
	    echo "PyGObject did not build: the GigE Vision source and its tests are unavailable"; \
	else \
	  echo "PyGObject not installed (needs libgirepository1.0-dev, libcairo2-dev, pkg-config)"; \
	fi

## test: lint (ruff, mypy) and the whole test suite
test: lint
	$(BIN)/pytest

lint: typecheck-tree
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	MYPYPATH=build/typecheck $(BIN)/mypy -p lineqc
	$(if $(wildcard bench/*.py),MYPYPATH=build/typecheck $(BIN)/mypy $(wildcard bench/*.py))

# mypy cannot follow the editable install's import hook, so it reads the package through a
# tree of links laid out as installed: build/typecheck/lineqc/<stage> -> <stage>/.
typecheck-tree:
	@rm -rf build/typecheck && mkdir -p build/typecheck/lineqc
	@for f in lineqc/*.py; do ln -s ../../../$$f build/typecheck/lineqc/; done
	@for s in $(STAGES); do ln -s ../../../$$s build/typecheck/lineqc/$$s; done

## demo: the main job end to end, on the real magnetic-tile images when they can be had
# The real images: MT_SRC, else a local copy (data/source/magnetic-tile, then
# ../shared/datasets/magnetic-tile), else cloned from the public repository when online
# (`lineqc data find-magnetic-tile`). Without them (offline, no copy) it says how to get them
# and the demo runs on synthetic parts in data/synthetic, so it always runs.
REAL_DS := $(DATA)/magnetic-tile
SYNTH_DS := $(DATA)/synthetic
SYNTH_N ?= 600
# The demo's dataset: the real one once imported, else the synthetic one once made.
DS ?= $(if $(wildcard $(REAL_DS)/manifest.json),$(REAL_DS),$(if $(wildcard $(SYNTH_DS)/manifest.json),$(SYNTH_DS),$(REAL_DS)))
DEVICE_CONFIG := firmware_config/replay-$(if $(filter $(SYNTH_DS),$(DS)),synthetic,demo).yaml
# MT_COPIES (local copies to look in, the first one the clone's destination) and MT_URL
# (the repository) change the defaults of `lineqc data find-magnetic-tile`.
FIND_MT = $(BIN)/lineqc data find-magnetic-tile $(if $(MT_SRC),--src '$(MT_SRC)') \
  $(addprefix --copy ,$(MT_COPIES)) $(if $(MT_COPIES),--fetch-to $(firstword $(MT_COPIES))) \
  $(if $(MT_URL),--url '$(MT_URL)')
RUN := $(RUNS)/default
BUNDLE := $(RUNS)/bundle
KEY := $(RUNS)/keys/signing
REVIEW_DB := $(RUNS)/review/review.db
# The share of tiles held out as the line's new production (the frames the demo replays);
# the share of the scripted inspectors' answers that are wrong on purpose (demo-inspect);
# the model in service and a new folder for its retrain (demo-retrain).
PRODUCTION ?= 0.1
WRONG ?= 0.1
CHAMPION ?= $(RUN)
RETRAIN ?= $(RUNS)/retrain-1

demo: setup demo-data
	@$(MAKE) --no-print-directory -o setup demo-run  # a new make: DS is what demo-data made

demo-run: $(BUNDLE)/manifest.json
	$(BIN)/lineqc data stats $(DS)
	$(BIN)/lineqc bundle verify $(BUNDLE) --pubkey $(KEY).pub
	rm -rf $(RUNS)/review $(RUNS)/edge
	$(BIN)/lineqc review demo --device-config $(DEVICE_CONFIG) \
	  --db $(REVIEW_DB) --port $(REVIEW_PORT) --dataset $(DS)

# The real images when they can be had (exit 3: none, offline), else the synthetic parts;
# any other failure (an MT_SRC that is not the dataset) stops the demo.
demo-data: | setup
	@if [ ! -f $(REAL_DS)/manifest.json ]; then \
	  $(FIND_MT) >/dev/null; rc=$$?; \
	  if [ $$rc = 0 ]; then $(MAKE) --no-print-directory -o setup $(REAL_DS)/manifest.json; \
	  elif [ $$rc = 3 ]; then \
	    echo "make demo: the demo runs on synthetic parts ($(SYNTH_DS)) instead"; \
	    $(MAKE) --no-print-directory -o setup $(SYNTH_DS)/manifest.json; \
	  else exit $$rc; fi; \
	fi

## demo-inspect: with `make demo` serving, scripted inspectors (an oracle) label its queue
demo-inspect:
	$(BIN)/lineqc review demo-inspect --url http://127.0.0.1:$(REVIEW_PORT)/ --db $(REVIEW_DB) \
	  --dataset $(DS) --wrong-share $(WRONG)

## demo-retrain: the reviewed labels into the dataset, a challenger against the champion
demo-retrain:
	$(BIN)/lineqc retrain --dataset $(DS) --champion $(CHAMPION) --out $(RETRAIN) \
	  --db $(REVIEW_DB) --key $(KEY).key

# Each step runs once; delete its output (or `make clean`) to run it again.
$(REAL_DS)/manifest.json: | setup
	src=$$($(FIND_MT)) && \
	  $(BIN)/lineqc data import "$$src" --format magnetic-tile --dataset $(REAL_DS) && \
	  $(BIN)/lineqc data split $(REAL_DS) --production $(PRODUCTION)

$(SYNTH_DS)/manifest.json: | setup
	$(BIN)/lineqc data synth $(SYNTH_DS) --n $(SYNTH_N) --seed 0
	$(BIN)/lineqc data split $(SYNTH_DS) --production $(PRODUCTION)

$(RUN)/metrics.json: $(DS)/manifest.json train/configs/default.yaml
	rm -rf $(RUN)
	$(BIN)/lineqc train --config train/configs/default.yaml --dataset $(DS) --out $(RUN)

$(KEY).key: | setup
	$(BIN)/lineqc keys generate --out $(KEY)

$(BUNDLE)/manifest.json: $(RUN)/metrics.json $(KEY).key
	$(BIN)/lineqc export $(RUN) --dataset $(DS) --out $(BUNDLE) --key $(KEY).key --overwrite

## bench: every benchmark (figures beside a baseline measured in the same run)
bench: bench-quality bench-train bench-export bench-edge bench-service bench-rollout

# Detection quality on parts no model saw: the recommended recipe against the baseline on
# FOLDS part-grouped folds of the real data (about 2 hours on a 2-core CPU for 3 folds;
# FOLDS=1 for a quick look). Written to runs/bench-quality/quality.{json,md}.
bench-quality: $(REAL_DS)/manifest.json
	$(PY) bench/bench_quality.py --dataset $(REAL_DS) --folds $(FOLDS) --out $(RUNS)/bench-quality

bench-train: $(DS)/manifest.json
	$(PY) bench/bench_train.py --dataset $(DS)

bench-export: setup
	$(PY) bench/bench_export.py $$([ -f $(RUN)/best.pt ] && echo --run $(RUN) --dataset $(DS))

bench-edge: $(BUNDLE)/manifest.json
	src=$$($(FIND_MT)) && $(PY) bench/bench_edge.py --bundle $(BUNDLE) --source "$$src/MT_*/Imgs/*.jpg"

# Running as a service: the watchdog's cost per frame, SIGTERM with a waiting outbox, SIGHUP
bench-service: $(BUNDLE)/manifest.json
	$(PY) bench/bench_service.py --bundle $(BUNDLE) --pubkey $(KEY).pub --source "$(DS)/images/**/*"

# Fleet rollout: live latency before and during a shadow, the switch gap, deploy to new model
bench-rollout: $(BUNDLE)/manifest.json
	src=$$($(FIND_MT)) && $(PY) bench/bench_rollout.py --bundle $(BUNDLE) --key $(KEY).key --source "$$src/MT_*/Imgs/*.jpg"

clean:
	rm -rf build $(DATA) $(RUNS) .pytest_cache .mypy_cache .ruff_cache .hypothesis
