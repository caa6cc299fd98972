# dreambooth-sweep — `make help` lists the targets.
# The two README commands: `make demo` (set up + run the demo) and `make test` (set up + run the tests).

SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
# torch is installed first and only when the venv has none: CPU-only machines take the CPU build,
# a GPU user who put a CUDA torch into the venv (or uses VENV_ARGS=--system-site-packages) keeps it.
TORCH ?= torch==2.13.0
VENV_ARGS ?=
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install -q --disable-pip-version-check
# The tested dependency set (every package but torch), compiled from pyproject.toml with uv
# (`uv pip compile`, see the file's header; `make upgrade-deps` moves it on purpose). `make install`
# installs through it as pip constraints, so a fresh clone gets exactly what CI tested.
# LOCK= installs without it (then export DBS_UNLOCKED=1: the lock-drift test skips).
LOCK ?= requirements/lock.txt
# Recipe knobs: MODEL=sd15|sd21|sdxl|sd35|flux|tiny|tiny_sdxl|tiny_sd3|tiny_flux, DATA=path/to/photos,
# CLASS=dog, SMOKE=1 shrinks a recipe to a CPU smoke run, ARGS="..." appends any Hydra overrides.
# MODEL=tiny* also swaps in tiny CLIP/DINO.
MODEL ?= sd15
DATA ?=
CLASS ?=
SMOKE ?=
NATURAL ?= my
ARGS ?=
RECIPE_ARGS = model=$(MODEL) \
	$(if $(filter tiny%,$(MODEL)),eval.clip_model=tiny eval.dino_model=tiny) \
	$(if $(SMOKE),smoke=cpu) \
	$(if $(DATA),data=subject data.instance_dir=$(DATA)) \
	$(if $(CLASS),data.class_noun=$(CLASS)) $(ARGS)
GRID = $(PY) -m dreambooth_sweep.train -m --config-dir sweeps --config-name
# Real models need real photos: only smoke runs fall back to the synthetic demo subject.
NEED_DATA = @$(if $(or $(DATA),$(SMOKE),$(filter tiny%,$(MODEL))),true,echo "error: DATA=path/to/photos is required (or MODEL=tiny SMOKE=1 for a smoke run)" >&2; exit 2)

.DEFAULT_GOAL := help
.PHONY: help install upgrade-deps dashboard demo sweep report test test-all bench bench-gpu lint format clean ui blog-objects blog-faces blog-schedulers blog-text-encoder blog-ema blog-identifier blog-ti-dreambooth lora-figurine

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN{FS=":.*?## "}{printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml $(LOCK)
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is needed, found " + sys.version.split()[0]'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV_ARGS) $(VENV)
	@$(PY) -c 'import torch' 2>/dev/null || { echo "installing $(TORCH)"; $(PIP) "$(TORCH)"; }
	@$(PY) -c 'import torch; print("torch", torch.__version__, "cuda" if torch.cuda.is_available() else "cpu")'
	@echo "installing dreambooth-sweep and its dependencies into $(VENV)$(if $(LOCK), (locked: $(LOCK)), (unlocked))"
	@$(PIP) $(if $(LOCK),-c $(LOCK)) -e ".[dev]"
	@touch $@

install: $(VENV)/.installed ## create .venv and install the project from the lock (CPU torch here; keeps an existing CUDA torch)

upgrade-deps: install ## recompile the lock against the newest releases, test it in a scratch venv, report what changed
	@$(PIP) "uv>=0.5"
	PYTHON=$(PYTHON) TORCH="$(TORCH)" UV="$(VENV)/bin/uv" bash requirements/upgrade-deps.sh $(LOCK)

demo: install ## README command 1: set up, then a small Optuna sweep with pruning on the tiny offline model
	$(GRID) demo $(ARGS)
	@echo
	@echo "Demo done. Runs: outputs/multiruns/ (each trial: model/, samples/, metrics.json);"
	@echo "  Optuna study: outputs/optuna.db;  MLflow: run 'make ui', then open http://127.0.0.1:5000"

test: install ## README command 2: set up, then run the default test suite
	$(PY) -m pytest $(ARGS)

test-all: install ## run every test, slow ones included
	$(PY) -m pytest -m "not gpu" $(ARGS)

WORKERS ?= 1
SWEEP_PORT ?= 5001
# make sweep MODEL=sdxl|flux (or tiny_sdxl|tiny_flux) runs sweeps/<family>_lr_steps.yaml, others lr_steps
SWEEP_NAME = $(if $(wildcard sweeps/$(patsubst tiny_%,%,$(MODEL))_lr_steps.yaml),$(patsubst tiny_%,%,$(MODEL))_lr_steps,lr_steps)

sweep: install ## the Optuna sweet-spot search (sweeps/lr_steps.yaml, MODEL=sdxl|flux: sweeps/<model>_lr_steps.yaml; DATA=, CLASS=, WORKERS=N)
	$(NEED_DATA)
	@if [ "$(WORKERS)" = "1" ]; then \
		$(GRID) $(SWEEP_NAME) $(RECIPE_ARGS); \
	else \
		echo "starting an MLflow server on 127.0.0.1:$(SWEEP_PORT) for $(WORKERS) workers (SQLite takes one writer)"; \
		MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false $(VENV)/bin/mlflow server --backend-store-uri $(MLFLOW_DB) \
			--default-artifact-root $(abspath outputs)/mlartifacts --host 127.0.0.1 --port $(SWEEP_PORT) > outputs/mlflow-server.log 2>&1 & \
		server=$$!; trap "kill $$server" EXIT; \
		$(VENV)/bin/dreambooth-sweep wait-for-url http://127.0.0.1:$(SWEEP_PORT)/health --timeout 120 || exit 1; \
		pids=""; for i in $$(seq 0 $$(($(WORKERS) - 1))); do \
			CUDA_VISIBLE_DEVICES=$$i $(GRID) $(SWEEP_NAME) $(RECIPE_ARGS) tracking.uri=http://127.0.0.1:$(SWEEP_PORT) \
				hydra.sweep.dir=outputs/multiruns/lr_steps-worker$$i > outputs/sweep-worker$$i.log 2>&1 & pids="$$pids $$!"; \
		done; \
		echo "$(WORKERS) workers started (logs: outputs/sweep-worker*.log)"; wait $$pids; \
	fi

blog-objects: install ## HF DreamBooth study, objects: lr 5e-6 vs 2e-6, 400 steps, batch 4, no prior (DATA=, CLASS=)
	$(NEED_DATA)
	$(GRID) blog_objects $(RECIPE_ARGS)

blog-faces: install ## HF DreamBooth study, faces: lr 5e-6 vs 2e-6 with prior, 800/1200 steps; prior on vs off at 2e-6
	$(NEED_DATA)
	$(GRID) blog_faces $(RECIPE_ARGS)
	$(GRID) blog_faces_prior $(RECIPE_ARGS)

comma := ,
SCHED_DIR = outputs/blog_schedulers

blog-schedulers: install ## HF DreamBooth study: PNDM vs LMS vs DDIM × 50/100 steps on a trained model (MODEL_DIR=, else trains one)
	$(NEED_DATA)
	$(if $(MODEL_DIR),,$(PY) -m dreambooth_sweep.train experiment=blog_faces train.lr=5e-6 paths.output_dir=$(SCHED_DIR)/train $(RECIPE_ARGS))
	$(PY) -m dreambooth_sweep.evaluate -m experiment=blog_schedulers weights.model_dir=$(or $(MODEL_DIR),$(SCHED_DIR)/train/model) \
		eval.scheduler=pndm,lms,ddim eval.num_inference_steps=$(if $(SMOKE),2$(comma)4,50$(comma)100) $(RECIPE_ARGS)

blog-text-encoder: install ## HF DreamBooth study: text encoder frozen vs fine-tuned (faces settings)
	$(NEED_DATA)
	$(GRID) blog_text_encoder $(RECIPE_ARGS)

blog-ema: install ## HF DreamBooth study: EMA on vs off (faces settings)
	$(NEED_DATA)
	$(GRID) blog_ema $(RECIPE_ARGS)

blog-identifier: install ## HF DreamBooth study: identifier sks vs a natural word (NATURAL=my) vs aawxbc
	$(NEED_DATA)
	$(GRID) blog_identifier $(RECIPE_ARGS) data.identifier=sks,$(NATURAL),aawxbc

# Same store as dreambooth_sweep.tracking.default_uri("<paths.log_dir>")
MLFLOW_DB ?= sqlite:///$(abspath $(or $(DREAMBOOTH_SWEEP_ROOT),.)/outputs)/mlflow.db
UI_PORT ?= 5000

ui: install ## MLflow UI over outputs/mlflow.db on http://127.0.0.1:5000 (UI_PORT=)
	@echo "MLflow UI on http://127.0.0.1:$(UI_PORT)/#/experiments?workflowType=machine_learning  (store: $(MLFLOW_DB); Ctrl-C to stop)"
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false $(VENV)/bin/mlflow ui --backend-store-uri $(MLFLOW_DB) --host 127.0.0.1 --port $(UI_PORT)

DASHBOARD_PORT ?= 8080
STUDY_DB ?= sqlite:///$(abspath $(or $(DREAMBOOTH_SWEEP_ROOT),.)/outputs)/optuna.db

dashboard: install ## Optuna dashboard over outputs/optuna.db on http://127.0.0.1:8080 (STUDY_DB=, DASHBOARD_PORT=)
	@echo "Optuna dashboard on http://127.0.0.1:$(DASHBOARD_PORT)  (storage: $(STUDY_DB); Ctrl-C to stop)"
	$(VENV)/bin/optuna-dashboard $(STUDY_DB) --host 127.0.0.1 --port $(DASHBOARD_PORT)

blog-ti-dreambooth: install ## HF DreamBooth study, epilogue: 2000 textual-inversion steps, then 500 DreamBooth steps at lr 1e-6
	$(NEED_DATA)
	$(PY) -m dreambooth_sweep.train experiment=blog_ti_dreambooth $(RECIPE_ARGS)

lora-figurine: install ## LoRA walk-through: LoRA DreamBooth recipe and its 5/15/25-image dataset-size study
	$(NEED_DATA)
	$(GRID) lora_figurine $(RECIPE_ARGS)

SWEEP ?= $(lastword $(sort $(wildcard outputs/multiruns/*)))

report: install ## HTML report of a sweep (SWEEP=outputs/multiruns/<date>; default: the newest)
	$(PY) -m dreambooth_sweep.report $(SWEEP) $(ARGS)

# A diffusers checkout (git clone https://github.com/huggingface/diffusers) to compare against; read only.
DIFFUSERS ?=
BENCH_ARGS ?=

bench: install ## whole-process benchmark on the tiny model vs diffusers' train_dreambooth.py (DIFFUSERS=checkout, BENCH_ARGS=)
	$(PY) benchmarks/bench.py $(if $(DIFFUSERS),--diffusers $(DIFFUSERS)) $(BENCH_ARGS)

bench-gpu: install ## SD-1.5, SDXL (1024 px) and FLUX.1 (512/1024 px) LoRA steps/s and peak VRAM on a CUDA GPU, random weights (BENCH_ARGS="--steps 100")
	$(PY) benchmarks/bench_gpu.py $(BENCH_ARGS)

lint: install ## ruff lint + format check
	$(PY) -m ruff check dreambooth_sweep hydra_plugins tests benchmarks
	$(PY) -m ruff format --check dreambooth_sweep hydra_plugins tests benchmarks

format: install ## ruff auto-fix + format
	$(PY) -m ruff check --fix dreambooth_sweep hydra_plugins tests benchmarks
	$(PY) -m ruff format dreambooth_sweep hydra_plugins tests benchmarks

clean: ## remove run outputs and tool caches (keeps .venv and .cache/: tiny models, class images; rm -rf .cache for those)
	rm -rf outputs multirun .pytest_cache .ruff_cache
