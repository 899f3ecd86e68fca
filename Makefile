# Two commands do all the set-up: `make demo` and `make test` (each installs first).
# CPU installs are pinned by constraints/cpu.txt so pip never pulls CUDA wheels;
# GPU clusters: `make install EXTRAS=gpu CONSTRAINTS=` (see README).

PYTHON ?= python3
VENV ?= .venv
EXTRAS ?= cpu,test
CONSTRAINTS ?= -c constraints/cpu.txt
CORES ?= 2
BIN := $(VENV)/bin

.PHONY: install demo test lint dry-run bench bench-pretrain bench-finetune bench-openqa bench-rerank bench-mrtydi bench-gpu clean-demo

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints/cpu.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(CONSTRAINTS) -e '.[$(EXTRAS)]'
	touch $@

demo: install
	$(BIN)/snakemake --configfile config/demo.yaml --cores $(CORES)

test: install
	$(BIN)/python -m pytest -q --durations=25

lint: install
	$(BIN)/ruff check lib scripts tests bench
	$(BIN)/ruff format --check lib scripts tests bench
	$(BIN)/snakefmt --check Snakefile workflow/rules
	# Exits 1 on the "conda/container for each rule" lint alone (one Python environment).
	-$(BIN)/snakemake --lint

dry-run: install
	$(BIN)/snakemake -n --profile slurm results/table2.csv

bench: install
	$(BIN)/python bench/bench_scifact.py --out bench/out

bench-pretrain: install
	$(BIN)/python bench/bench_pretrain.py --out bench/out

bench-finetune: install
	$(BIN)/python bench/bench_finetune.py --out bench/out

bench-openqa: install
	$(BIN)/python bench/bench_openqa.py --sizes 100000,1000000 --queries 1000 --out bench/out

bench-rerank: install
	$(BIN)/python bench/bench_rerank.py --out bench/out

bench-mrtydi: install
	$(BIN)/python bench/bench_mrtydi.py --out bench/out

# On a GPU (cuda if visible, else a long CPU run: add ARGS=--quick for a smoke run).
# On a lent GPU machine: bench/stage_gpu_data.sh here, then bench/run_gpu.sh there.
bench-gpu: install
	$(BIN)/python bench/bench_gpu.py --out bench/out $(ARGS)

# Removes only what `make demo` writes: config/demo.yaml's work_dir and results_dir.
clean-demo:
	rm -rf work/demo results/demo
