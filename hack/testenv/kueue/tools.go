//go:build tools

// Package tools pins Kueue's manager (sigs.k8s.io/kueue/cmd/kueue) in go.mod/go.sum so
// that `go build sigs.k8s.io/kueue/cmd/kueue` runs with -mod=readonly.
package tools

import _ "sigs.k8s.io/kueue/cmd/kueue"
