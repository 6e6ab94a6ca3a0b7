//! Counters and histograms for `/metrics`, in the Prometheus text format.
//!
//! Plain relaxed atomics shared by every worker: an increment is a few
//! nanoseconds, and a scrape reads them without stopping anybody. Names follow
//! Prometheus conventions (`_total` counters, `_seconds` histograms).

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A latency histogram with fixed buckets.
#[derive(Debug, Default)]
pub struct Histogram {
    /// Observations at or under each bound (not cumulative; summed when rendered).
    buckets: [AtomicU64; BUCKETS.len()],
    sum_micros: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|&b| secs <= b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (bound, n) in BUCKETS.iter().zip(&self.buckets) {
            cumulative += n.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {cumulative}"
            );
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {count}");
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let braces = |s: &str| {
            if s.is_empty() {
                String::new()
            } else {
                format!("{{{s}}}")
            }
        };
        let _ = writeln!(out, "{name}_sum{} {sum}", braces(labels));
        let _ = writeln!(out, "{name}_count{} {count}", braces(labels));
    }
}

/// A session store operation, for per-operation latency and errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreOp {
    /// Reading a session.
    Load,
    /// Storing a new session.
    Create,
    /// Changing, moving or deleting a session.
    Update,
    /// Deleting every session of a subject.
    Revoke,
}

impl StoreOp {
    const ALL: [StoreOp; 4] = [
        StoreOp::Load,
        StoreOp::Create,
        StoreOp::Update,
        StoreOp::Revoke,
    ];

    fn name(self) -> &'static str {
        match self {
            StoreOp::Load => "load",
            StoreOp::Create => "create",
            StoreOp::Update => "update",
            StoreOp::Revoke => "revoke",
        }
    }
}

/// What happened to a session because of a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionEvent {
    /// A new session was stored.
    Created,
    /// A session was written in place.
    Updated,
    /// A session was deleted (flush, emptied, revoked).
    Deleted,
    /// A session moved to a new key (cycle, flush with data).
    Rotated,
}

/// Every metric sessionward exports.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Responses by status class, 1xx to 5xx.
    responses: [AtomicU64; 5],
    request_seconds: Histogram,
    upstream_seconds: Histogram,
    sessions: [AtomicU64; 4],
    store_seconds: [Histogram; 4],
    store_errors: [AtomicU64; 4],
    protocol_errors: AtomicU64,
    connections_total: AtomicU64,
    /// Each worker's open connections, summed when rendered.
    open: std::sync::Mutex<Vec<Arc<AtomicUsize>>>,
}

impl Metrics {
    /// A response with `status` went out `elapsed` after its request arrived.
    pub fn response(&self, status: u16, elapsed: Duration) {
        if let Some(n) = (status / 100)
            .checked_sub(1)
            .and_then(|i| self.responses.get(i as usize))
        {
            n.fetch_add(1, Ordering::Relaxed);
        }
        self.request_seconds.observe(elapsed);
    }

    /// The upstream answered (headers) `elapsed` after the request was sent.
    pub fn upstream(&self, elapsed: Duration) {
        self.upstream_seconds.observe(elapsed);
    }

    /// A store operation took `elapsed` and failed or not.
    pub fn store(&self, op: StoreOp, elapsed: Duration, failed: bool) {
        let i = op as usize;
        self.store_seconds[i].observe(elapsed);
        if failed {
            self.store_errors[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A session changed.
    pub fn session(&self, event: SessionEvent) {
        self.sessions[event as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// The upstream broke the update-header protocol.
    pub fn protocol_error(&self) {
        self.protocol_errors.fetch_add(1, Ordering::Relaxed);
    }

    /// A connection was accepted.
    pub fn connection(&self) {
        self.connections_total.fetch_add(1, Ordering::Relaxed);
    }

    /// Registers a worker's open-connection counter.
    pub fn track_open(&self, open: Arc<AtomicUsize>) {
        if let Ok(mut list) = self.open.lock() {
            list.push(open);
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(8192);
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);

        out.push_str(
            "# HELP sessionward_responses_total Responses sent downstream, by status class.\n",
        );
        out.push_str("# TYPE sessionward_responses_total counter\n");
        for (i, n) in self.responses.iter().enumerate() {
            let _ = writeln!(
                out,
                "sessionward_responses_total{{class=\"{}xx\"}} {}",
                i + 1,
                load(n)
            );
        }
        out.push_str("# HELP sessionward_request_duration_seconds Time from a request's arrival to its response headers.\n");
        out.push_str("# TYPE sessionward_request_duration_seconds histogram\n");
        self.request_seconds
            .render(&mut out, "sessionward_request_duration_seconds", "");
        out.push_str("# HELP sessionward_upstream_duration_seconds Time from sending a request upstream to its response headers.\n");
        out.push_str("# TYPE sessionward_upstream_duration_seconds histogram\n");
        self.upstream_seconds
            .render(&mut out, "sessionward_upstream_duration_seconds", "");

        out.push_str("# HELP sessionward_sessions_total Session changes, by kind.\n");
        out.push_str("# TYPE sessionward_sessions_total counter\n");
        for (name, n) in ["created", "updated", "deleted", "rotated"]
            .iter()
            .zip(&self.sessions)
        {
            let _ = writeln!(
                out,
                "sessionward_sessions_total{{event=\"{name}\"}} {}",
                load(n)
            );
        }

        out.push_str("# HELP sessionward_store_duration_seconds Session store operations.\n");
        out.push_str("# TYPE sessionward_store_duration_seconds histogram\n");
        for op in StoreOp::ALL {
            self.store_seconds[op as usize].render(
                &mut out,
                "sessionward_store_duration_seconds",
                &format!("op=\"{}\"", op.name()),
            );
        }
        out.push_str(
            "# HELP sessionward_store_errors_total Session store operations that failed.\n",
        );
        out.push_str("# TYPE sessionward_store_errors_total counter\n");
        for op in StoreOp::ALL {
            let _ = writeln!(
                out,
                "sessionward_store_errors_total{{op=\"{}\"}} {}",
                op.name(),
                load(&self.store_errors[op as usize])
            );
        }

        out.push_str("# HELP sessionward_protocol_errors_total Upstream responses whose session headers were refused.\n");
        out.push_str("# TYPE sessionward_protocol_errors_total counter\n");
        let _ = writeln!(
            out,
            "sessionward_protocol_errors_total {}",
            load(&self.protocol_errors)
        );

        let open: usize = self
            .open
            .lock()
            .map(|list| list.iter().map(|o| o.load(Ordering::Relaxed)).sum())
            .unwrap_or(0);
        out.push_str("# HELP sessionward_connections Downstream connections open now.\n");
        out.push_str("# TYPE sessionward_connections gauge\n");
        let _ = writeln!(out, "sessionward_connections {open}");
        out.push_str("# HELP sessionward_connections_total Downstream connections accepted.\n");
        out.push_str("# TYPE sessionward_connections_total counter\n");
        let _ = writeln!(
            out,
            "sessionward_connections_total {}",
            load(&self.connections_total)
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(text: &str, series: &str) -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("{series} missing from\n{text}"))
    }

    #[test]
    fn histograms_are_cumulative_with_sum_and_count() {
        let m = Metrics::default();
        m.response(200, Duration::from_micros(300));
        m.response(204, Duration::from_millis(3));
        m.response(503, Duration::from_secs(20));
        let t = m.render();
        let h = "sessionward_request_duration_seconds";
        assert_eq!(value(&t, &format!("{h}_bucket{{le=\"0.0005\"}}")), 1.0);
        assert_eq!(value(&t, &format!("{h}_bucket{{le=\"0.005\"}}")), 2.0);
        assert_eq!(value(&t, &format!("{h}_bucket{{le=\"10\"}}")), 2.0);
        assert_eq!(value(&t, &format!("{h}_bucket{{le=\"+Inf\"}}")), 3.0);
        assert_eq!(value(&t, &format!("{h}_count")), 3.0);
        assert!((value(&t, &format!("{h}_sum")) - 20.0033).abs() < 1e-9);
        assert_eq!(value(&t, "sessionward_responses_total{class=\"2xx\"}"), 2.0);
        assert_eq!(value(&t, "sessionward_responses_total{class=\"5xx\"}"), 1.0);
    }

    #[test]
    fn labelled_series_and_gauges_render() {
        let m = Metrics::default();
        m.store(StoreOp::Update, Duration::from_millis(1), true);
        m.session(SessionEvent::Rotated);
        m.protocol_error();
        let open = Arc::new(AtomicUsize::new(3));
        m.track_open(open.clone());
        m.track_open(Arc::new(AtomicUsize::new(2)));
        let t = m.render();
        assert_eq!(
            value(&t, "sessionward_store_errors_total{op=\"update\"}"),
            1.0
        );
        assert_eq!(
            value(&t, "sessionward_store_errors_total{op=\"load\"}"),
            0.0
        );
        assert_eq!(
            value(
                &t,
                "sessionward_store_duration_seconds_count{op=\"update\"}"
            ),
            1.0
        );
        assert_eq!(
            value(
                &t,
                "sessionward_store_duration_seconds_bucket{op=\"update\",le=\"0.001\"}"
            ),
            1.0
        );
        assert_eq!(
            value(&t, "sessionward_sessions_total{event=\"rotated\"}"),
            1.0
        );
        assert_eq!(value(&t, "sessionward_protocol_errors_total"), 1.0);
        assert_eq!(value(&t, "sessionward_connections"), 5.0);
        // Every sample line belongs to a declared metric family.
        for line in t.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap_or("");
            let family = name
                .trim_end_matches("_bucket")
                .trim_end_matches("_sum")
                .trim_end_matches("_count");
            assert!(
                t.contains(&format!("# TYPE {family} ")) || t.contains(&format!("# TYPE {name} ")),
                "{line}"
            );
        }
    }
}
