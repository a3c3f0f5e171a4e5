// Command coredns is CoreDNS with only the plugins the e2e cluster's Corefile uses,
// compiled the documented way: set dnsserver.Directives (order matters: it is the
// order plugins run in, taken from upstream's plugin.cfg) and import just those plugins.
// Other plugins that these import (debug, dnstap, metadata, transfer) register too,
// but a Corefile cannot use them without a directive here.
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/forward"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/hosts"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/loadbalance"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/loop"
	_ "github.com/coredns/coredns/plugin/metrics"
	_ "github.com/coredns/coredns/plugin/ready"
	_ "github.com/coredns/coredns/plugin/reload"
)

func init() {
	dnsserver.Directives = []string{
		"reload",
		"ready",
		"health",
		"prometheus", // plugin/metrics; linked in by the others anyway
		"errors",
		"log",
		"loadbalance",
		"cache",
		"hosts",
		"kubernetes",
		"loop",
		"forward",
	}
}

func main() {
	coremain.Run()
}
