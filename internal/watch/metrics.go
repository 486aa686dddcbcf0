package watch

import (
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Outcomes of one image's rebase, the "outcome" label of
// image_rebase_watch_rebases_total.
const (
	OutcomeRebased  = "rebased"
	OutcomeUpToDate = "up-to-date"
	// OutcomeRetried: the attempt failed and the image is tried again
	// after a backoff.
	OutcomeRetried = "retried"
	// OutcomeRefused: the rebase cannot be done as asked (not on the base,
	// an unsupported document, a layer that cannot be mounted); not
	// retried.
	OutcomeRefused = "refused"
	// OutcomeFailed: every attempt failed.
	OutcomeFailed = "failed"
	// OutcomeGone: the image is no longer in the registry, or no longer on
	// the base.
	OutcomeGone = "gone"
)

// metrics are the watcher's Prometheus metrics, in a registry of its own.
type metrics struct {
	reg       *prometheus.Registry
	rebases   *prometheus.CounterVec
	duration  *prometheus.HistogramVec
	rounds    *prometheus.HistogramVec
	stale     *prometheus.GaugeVec
	deps      *prometheus.GaugeVec
	lastCheck *prometheus.GaugeVec
	events    *prometheus.CounterVec
	polls     *prometheus.CounterVec
	indexes   *prometheus.CounterVec
	queued    prometheus.GaugeFunc
}

func newMetrics(queueLen func() float64) *metrics {
	const ns = "image_rebase_watch"
	m := &metrics{
		reg: prometheus.NewRegistry(),
		rebases: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "rebases_total",
			Help: "Rebase attempts of dependent images, by base and outcome (rebased, up-to-date, retried, refused, failed, gone)."}, []string{"base", "outcome"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: ns, Name: "rebase_duration_seconds",
			Help:    "Time of one image's rebase attempt.",
			Buckets: []float64{.05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300}}, []string{"base"}),
		rounds: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: ns, Name: "round_duration_seconds",
			Help:    "Time from the start of a round (a base moved) to the last of its dependents done.",
			Buckets: []float64{.25, .5, 1, 2, 3, 5, 10, 30, 60, 300, 1800}}, []string{"base"}),
		stale: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Name: "stale_images",
			Help: "Dependent images not on their base's current version."}, []string{"base"}),
		deps: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Name: "dependent_images",
			Help: "Images found on the base (any version of it)."}, []string{"base"}),
		lastCheck: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Name: "last_check_timestamp_seconds",
			Help: "Unix time of the last successful read of the base's tag (poll, event round or index)."}, []string{"base"}),
		events: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "events_total",
			Help: "Events received on /events, by source (distribution, harbor) and result (base, image, ignored, invalid, unauthorized)."}, []string{"source", "result"}),
		polls: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "polls_total",
			Help: "Polls of a base tag (one HEAD request), by result (unchanged, changed, error)."}, []string{"base", "result"}),
		indexes: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "index_builds_total",
			Help: "Builds of the dependents index of a registry, by result (ok, error)."}, []string{"registry", "result"}),
	}
	m.queued = prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: ns, Name: "queued_images",
		Help: "Images waiting for a worker."}, queueLen)
	m.reg.MustRegister(m.rebases, m.duration, m.rounds, m.stale, m.deps, m.lastCheck, m.events, m.polls, m.indexes, m.queued,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

func (m *metrics) handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Registry: m.reg})
}
