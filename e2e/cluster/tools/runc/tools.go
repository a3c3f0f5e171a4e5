//go:build tools

// Package tools pins the command that e2e/cluster/build compiles.
package tools

import _ "github.com/opencontainers/runc"
