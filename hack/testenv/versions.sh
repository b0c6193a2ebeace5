# shellcheck shell=bash disable=SC2034
# Pinned versions of the test environment (sourced by build, up, down, smoke).
# They must agree with go.mod, etcd/go.mod, helm/go.mod and kueue/go.mod (build checks this).
K8S_VERSION=v1.36.3
K8S_MAJOR=1
K8S_MINOR=36
ETCD_VERSION=v3.6.16
HELM_VERSION=v3.22.0
KUEUE_VERSION=v0.17.0

testenv_cache_dir() { echo "${KOMPRESS_TESTENV_CACHE:-$HOME/.cache/kompress-testenv}"; }
testenv_bin_dir() { echo "$(testenv_cache_dir)/$K8S_VERSION/bin"; }
