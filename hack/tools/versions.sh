# shellcheck shell=bash disable=SC2034
# Pinned versions of the test tools (sourced by build, registry-up, registry-down, smoke).
# They must agree with the go.mod files (build checks this).
DISTRIBUTION_VERSION=v3.1.2   # distribution/go.mod: github.com/distribution/distribution/v3 (registry)
GGCR_VERSION=v0.22.1          # crane/go.mod: github.com/google/go-containerregistry (crane, ggcr-registry)
ORAS_VERSION=v1.3.6           # oras/go.mod: oras.land/oras (oras)
PROMETHEUS_VERSION=v0.316.0   # promtool/go.mod: github.com/prometheus/prometheus (promtool, Prometheus 3.16.0)
PROMETHEUS_RELEASE=3.16.0
CLI_UTILS_VERSION=v0.37.2     # go.mod: sigs.k8s.io/cli-utils (kstatus)
X_CRYPTO_VERSION=v0.59.0      # go.mod: golang.org/x/crypto (htpasswd)

TOOLS_PINS="distribution=$DISTRIBUTION_VERSION ggcr=$GGCR_VERSION oras=$ORAS_VERSION prometheus=$PROMETHEUS_VERSION cli-utils=$CLI_UTILS_VERSION x-crypto=$X_CRYPTO_VERSION"

tools_cache_dir() { echo "${KOMPRESS_TOOLS_CACHE:-$HOME/.cache/kompress-tools}"; }
# a short hash of the pins: a new pin set builds into a new directory, old ones stay usable
tools_pin_id() { printf '%s' "$TOOLS_PINS" | sha256sum | cut -c1-12; }
tools_bin_dir() { echo "${KOMPRESS_TOOLS_BIN:-$(tools_cache_dir)/$(tools_pin_id)/bin}"; }
