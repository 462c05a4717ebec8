package main

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/mobile-token-broker/broker/sessions"
)

// cacheCollector shows the session cache's figures as Prometheus metrics,
// read from the store at each scrape.
type cacheCollector struct {
	stats func() sessions.CacheStats
}

var (
	cacheLiveDesc = prometheus.NewDesc("broker_session_cache_live",
		"1 while the session cache is in use (its invalidation channel to every Redis master is up), 0 while every request reads Redis.", nil, nil)
	cacheEntriesDesc = prometheus.NewDesc("broker_session_cache_entries",
		"Sessions held in the session cache.", nil, nil)
	cacheBytesDesc = prometheus.NewDesc("broker_session_cache_bytes",
		"Estimated memory held by the session cache.", nil, nil)
	cacheLookupsDesc = prometheus.NewDesc("broker_session_cache_lookups_total",
		"Session lookups on the request path made while the cache was in use, by result (hit or miss).", []string{"result"}, nil)
	cacheInvalidationsDesc = prometheus.NewDesc("broker_session_cache_invalidations_total",
		"Invalidations of session keys received from Redis or made by this replica's own writes.", nil, nil)
	cacheFlushesDesc = prometheus.NewDesc("broker_session_cache_flushes_total",
		"Times the session cache was emptied: its invalidation channel went down or came back, or Redis was flushed.", nil, nil)
	cacheEvictionsDesc = prometheus.NewDesc("broker_session_cache_evictions_total",
		"Sessions dropped from the session cache for room.", nil, nil)
)

func (c cacheCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{cacheLiveDesc, cacheEntriesDesc, cacheBytesDesc, cacheLookupsDesc,
		cacheInvalidationsDesc, cacheFlushesDesc, cacheEvictionsDesc} {
		ch <- d
	}
}

func (c cacheCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.stats()
	live := 0.0
	if st.Live {
		live = 1
	}
	ch <- prometheus.MustNewConstMetric(cacheLiveDesc, prometheus.GaugeValue, live)
	ch <- prometheus.MustNewConstMetric(cacheEntriesDesc, prometheus.GaugeValue, float64(st.Entries))
	ch <- prometheus.MustNewConstMetric(cacheBytesDesc, prometheus.GaugeValue, float64(st.Bytes))
	ch <- prometheus.MustNewConstMetric(cacheLookupsDesc, prometheus.CounterValue, float64(st.Hits), "hit")
	ch <- prometheus.MustNewConstMetric(cacheLookupsDesc, prometheus.CounterValue, float64(st.Misses), "miss")
	ch <- prometheus.MustNewConstMetric(cacheInvalidationsDesc, prometheus.CounterValue, float64(st.Invalidations))
	ch <- prometheus.MustNewConstMetric(cacheFlushesDesc, prometheus.CounterValue, float64(st.Flushes))
	ch <- prometheus.MustNewConstMetric(cacheEvictionsDesc, prometheus.CounterValue, float64(st.Evictions))
}
