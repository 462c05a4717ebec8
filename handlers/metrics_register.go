package handlers

import "github.com/prometheus/client_golang/prometheus"

// Register adds a collector of figures kept elsewhere (the session
// cache's) to the broker's registry, so that /metrics shows them.
func (m *Metrics) Register(c prometheus.Collector) error { return m.registry.Register(c) }
