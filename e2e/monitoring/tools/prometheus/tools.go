//go:build tools

// Package tools pins the commands that e2e/monitoring/build compiles.
package tools

import (
	_ "github.com/prometheus/prometheus/cmd/prometheus"
	_ "github.com/prometheus/prometheus/cmd/promtool"
)
