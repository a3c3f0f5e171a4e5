//go:build tools

// Package tools pins the KEDA commands that `e2e/monitoring/build keda` compiles: the
// operator (ScaledObjects into HPAs) and its metrics adapter (external.metrics.k8s.io).
package tools

import (
	_ "github.com/kedacore/keda/v2/cmd/adapter"
	_ "github.com/kedacore/keda/v2/cmd/operator"
)
