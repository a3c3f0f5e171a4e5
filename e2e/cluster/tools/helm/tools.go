//go:build tools

// Package tools pins the command that e2e/cluster/build compiles.
package tools

import _ "helm.sh/helm/v3/cmd/helm"
