# Engram: the two Quick-start commands are `make run` and `make test`.
DATA_DIR ?= data
BIND ?= 127.0.0.1:8080
CARGO ?= cargo
ENGRAM := target/release/engram
# The generation model `make run` serves (scripts/fetch-llm.sh lists the names; BENCHMARKS.md says why this one).
MODEL ?= qwen2.5-coder-0.5b

.PHONY: run test setup test-setup ui-setup build lint dist-cuda clean fuzz load schemathesis

## make run: set up, build, ingest the demo corpus (idempotent; LLM open-IE) and serve $(MODEL) on $(BIND).
run: setup build
	model="$$(bash scripts/fetch-model.sh $(MODEL) | tail -n 1)" && \
	$(ENGRAM) ingest --data-dir $(DATA_DIR) --model "$$model" corpora/demo/corpus.json && \
	$(ENGRAM) serve --data-dir $(DATA_DIR) --bind $(BIND) --model "$$model"

## make test: the whole test suite (SQLite and PostgreSQL, real SmolLM2 weights, and the web UI in chromium),
## then a bounded schemathesis pass against the debug server.
test: test-setup ui-setup
	bash scripts/ensure-postgres.sh
	$(CARGO) test --all-targets --locked
	$(CARGO) test --doc --locked
	bash scripts/schemathesis.sh --quick target/debug/engram

## make schemathesis: the full schemathesis run (300 cases per operation) against the debug server.
schemathesis:
	$(CARGO) build --locked --bin engram
	bash scripts/schemathesis.sh target/debug/engram

## make fuzz: every cargo-fuzz target for FUZZ_SECONDS (default 600) each; see fuzz/README.md.
FUZZ_SECONDS ?= 600
fuzz:
	bash scripts/fuzz.sh $(FUZZ_SECONDS)

## make load: the loopback load test against the release build (scripts/load.sh; about 8 minutes).
load: build
	bash scripts/load.sh

## make setup: the embedder (models/) and the generation model $(MODEL) (in ~/.cache/engram/models).
setup: test-setup
	bash scripts/fetch-model.sh $(MODEL)

## make test-setup: what the tests need: the embedder and SmolLM2 (98 MB) for the real-weights tests.
test-setup:
	@command -v $(CARGO) >/dev/null || { echo "cargo not found: install Rust with rustup (https://rustup.rs)"; exit 1; }
	bash scripts/fetch-model.sh
	bash scripts/fetch-model.sh smollm2

## make ui-setup: what the browser tests of the web UI need (chromium and node via apt-get when missing, npm ci).
ui-setup:
	bash scripts/ui-test-setup.sh

build:
	$(CARGO) build --release --locked

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets --locked -- -D warnings

## make dist-cuda: stripped release binaries for the GPU machine (engram, gzipped to fit the device tool's
## 64 MiB limit, and the CUDA parity tests) in dist/;
## run them there with `bash scripts/device_cuda.sh` (see BENCHMARKS.md).
dist-cuda:
	$(CARGO) build --release --locked --bin engram
	$(CARGO) test --release --locked --test cuda_parity --no-run
	mkdir -p dist
	strip -o dist/engram target/release/engram
	gzip -9 -f dist/engram
	strip -o dist/cuda_parity $$(ls -t target/release/deps/cuda_parity-* | grep -v '\.d$$' | head -1)
	du -sh dist

clean:
	rm -rf $(DATA_DIR)
