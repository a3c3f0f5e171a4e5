//go:build tools

// Package tools pins the command that e2e/cluster/netpol/build compiles.
package tools

import _ "sigs.k8s.io/kube-network-policies/cmd"
