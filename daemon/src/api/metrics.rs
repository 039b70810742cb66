//! Prometheus text exposition (format 0.0.4), hand-rolled: a few counters and two
//! histograms do not earn a metrics crate. Engine gauges (queue depth, active sequences, KV
//! use, engine-side cancellations) are read from [`SchedulerStats`] at scrape time.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use crate::engine::SchedulerStats;
use crate::util::lock;

/// Bucket bounds (seconds) of the time-to-first-token histogram.
const TTFT_BUCKETS: &[f64] = &[0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];
/// Bucket bounds (seconds) of the inter-token latency histogram.
const ITL_BUCKETS: &[f64] = &[0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.5];

pub struct Histogram {
    bounds: &'static [f64],
    /// One per bound, plus +Inf.
    counts: Vec<AtomicU64>,
    sum_micros: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        let i = self
            .bounds
            .iter()
            .position(|&b| s <= b)
            .unwrap_or(self.bounds.len());
        if let Some(c) = self.counts.get(i) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        self.sum_micros
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} histogram");
        let mut cumulative = 0u64;
        for (i, c) in self.counts.iter().enumerate() {
            cumulative += c.load(Ordering::Relaxed);
            let le = self
                .bounds
                .get(i)
                .map_or_else(|| "+Inf".to_string(), |b| b.to_string());
            let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
        }
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}");
        let _ = writeln!(out, "{name}_count {cumulative}");
    }
}

pub struct Metrics {
    /// (route, status) → count. Routes are the fixed route table's paths (or `other`), so
    /// the label set stays bounded whatever clients send.
    requests: Mutex<BTreeMap<(&'static str, u16), u64>>,
    pub ttft: Histogram,
    pub itl: Histogram,
    pub prompt_tokens: AtomicU64,
    pub completion_tokens: AtomicU64,
    /// Responses whose client went away before the end (the engine then cancels them).
    pub client_disconnects: AtomicU64,
    /// Remote model name → (requests sent upstream, of them failed).
    remote: Mutex<BTreeMap<String, (u64, u64)>>,
    /// (local model, remote model) → requests that overflowed.
    overflow: Mutex<BTreeMap<(String, String), u64>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            requests: Mutex::new(BTreeMap::new()),
            ttft: Histogram::new(TTFT_BUCKETS),
            itl: Histogram::new(ITL_BUCKETS),
            prompt_tokens: AtomicU64::new(0),
            completion_tokens: AtomicU64::new(0),
            client_disconnects: AtomicU64::new(0),
            remote: Mutex::default(),
            overflow: Mutex::default(),
        }
    }
}

impl Metrics {
    pub fn request(&self, route: &'static str, status: u16) {
        let mut m = lock(&self.requests);
        *m.entry((route, status)).or_insert(0) += 1;
    }

    /// A request sent to the remote model `name`.
    pub fn remote_request(&self, name: &str) {
        lock(&self.remote).entry(name.to_string()).or_default().0 += 1;
    }

    /// A request to the remote model `name` that failed (it was counted as sent).
    pub fn remote_error(&self, name: &str) {
        lock(&self.remote).entry(name.to_string()).or_default().1 += 1;
    }

    /// A request for the local model `local` answered by the remote model `remote`.
    pub fn overflowed(&self, local: &str, remote: &str) {
        *lock(&self.overflow)
            .entry((local.to_string(), remote.to_string()))
            .or_default() += 1;
    }

    /// The remote models' families: whether each is up (`remotes`: name, up), the requests
    /// sent to it and failed, and the overflow per local model. Label values are configured
    /// names, so the label set stays bounded.
    pub fn render_remotes(&self, remotes: &[(String, bool)]) -> String {
        let mut out = String::new();
        if remotes.is_empty() {
            return out;
        }
        let head = |out: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
        };
        head(
            &mut out,
            "edgeseek_remote_up",
            "gauge",
            "1 while the remote model's upstream answers its health checks.",
        );
        for (n, up) in remotes {
            let _ = writeln!(
                out,
                "edgeseek_remote_up{{remote=\"{n}\"}} {}",
                u8::from(*up)
            );
        }
        let counts = lock(&self.remote).clone();
        head(
            &mut out,
            "edgeseek_remote_requests_total",
            "counter",
            "Requests sent to the remote model's upstream.",
        );
        for (n, _) in remotes {
            let (sent, _) = counts.get(n).copied().unwrap_or_default();
            let _ = writeln!(
                out,
                "edgeseek_remote_requests_total{{remote=\"{n}\"}} {sent}"
            );
        }
        head(
            &mut out,
            "edgeseek_remote_errors_total",
            "counter",
            "Requests to the remote model that failed (refused, timed out, broken).",
        );
        for (n, _) in remotes {
            let (_, failed) = counts.get(n).copied().unwrap_or_default();
            let _ = writeln!(
                out,
                "edgeseek_remote_errors_total{{remote=\"{n}\"}} {failed}"
            );
        }
        head(
            &mut out,
            "edgeseek_overflow_total",
            "counter",
            "Requests for a busy local model answered by a remote model.",
        );
        for ((local, remote), n) in lock(&self.overflow).iter() {
            let _ = writeln!(
                out,
                "edgeseek_overflow_total{{model=\"{local}\",remote=\"{remote}\"}} {n}"
            );
        }
        out
    }

    /// The exposition text. `engine` is `None` while the model loads.
    pub fn render(&self, engine: Option<&SchedulerStats>, ready: bool) -> String {
        let mut out = String::with_capacity(4096);
        let _ = writeln!(
            out,
            "# HELP edgeseek_requests_total HTTP requests by route and status."
        );
        let _ = writeln!(out, "# TYPE edgeseek_requests_total counter");
        {
            let m = lock(&self.requests);
            for ((route, status), n) in m.iter() {
                let _ = writeln!(
                    out,
                    "edgeseek_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
                );
            }
        }
        let s = engine.copied().unwrap_or_default();
        let gauge = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} gauge");
            let _ = writeln!(out, "{name} {v}");
        };
        let counter = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} counter");
            let _ = writeln!(out, "{name} {v}");
        };
        gauge(
            &mut out,
            "edgeseek_model_ready",
            "1 when the model is loaded and serving.",
            u64::from(ready),
        );
        gauge(
            &mut out,
            "edgeseek_queue_depth",
            "Requests waiting for a batch slot or KV budget.",
            s.queued as u64,
        );
        gauge(
            &mut out,
            "edgeseek_active_sequences",
            "Sequences prefilling or decoding.",
            s.active as u64,
        );
        gauge(
            &mut out,
            "edgeseek_kv_used_bytes",
            "KV cache held by the running batch and prefilling sequences.",
            s.kv_used_bytes,
        );
        gauge(
            &mut out,
            "edgeseek_kv_reserved_bytes",
            "KV cache reserved by active sequences (admission budget).",
            s.kv_reserved_bytes,
        );
        counter(
            &mut out,
            "edgeseek_prompt_tokens_total",
            "Prompt tokens of completed requests.",
            self.prompt_tokens.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "edgeseek_completion_tokens_total",
            "Tokens generated for completed requests.",
            self.completion_tokens.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "edgeseek_generated_tokens_total",
            "Tokens generated by the engine (including cancelled requests).",
            s.tokens_generated,
        );
        counter(
            &mut out,
            "edgeseek_cancellations_total",
            "Requests the engine stopped because their client went away.",
            s.cancellations,
        );
        counter(
            &mut out,
            "edgeseek_client_disconnects_total",
            "Responses whose client disconnected before the end.",
            self.client_disconnects.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "edgeseek_engine_errors_total",
            "Requests that failed inside the engine.",
            s.errors,
        );
        counter(
            &mut out,
            "edgeseek_decode_steps_total",
            "Batched decode steps run.",
            s.decode_steps,
        );
        self.ttft.render(
            &mut out,
            "edgeseek_time_to_first_token_seconds",
            "From request accepted to its first generated text.",
        );
        self.itl.render(
            &mut out,
            "edgeseek_inter_token_latency_seconds",
            "Between successive pieces of generated text of one choice.",
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = Histogram::new(&[0.1, 1.0]);
        h.observe(Duration::from_millis(50));
        h.observe(Duration::from_millis(500));
        h.observe(Duration::from_secs(5));
        let mut s = String::new();
        h.render(&mut s, "x", "help");
        assert!(s.contains("x_bucket{le=\"0.1\"} 1\n"), "{s}");
        assert!(s.contains("x_bucket{le=\"1\"} 2\n"), "{s}");
        assert!(s.contains("x_bucket{le=\"+Inf\"} 3\n"), "{s}");
        assert!(s.contains("x_count 3\n"), "{s}");
        assert!(s.contains("x_sum 5.55\n"), "{s}");
    }

    #[test]
    fn render_has_every_family() {
        let m = Metrics::default();
        m.request("/v1/chat/completions", 200);
        m.request("/v1/chat/completions", 200);
        let stats = SchedulerStats {
            queued: 3,
            cancellations: 2,
            ..SchedulerStats::default()
        };
        let s = m.render(Some(&stats), true);
        assert!(s.contains(
            "edgeseek_requests_total{route=\"/v1/chat/completions\",status=\"200\"} 2\n"
        ));
        assert!(s.contains("edgeseek_queue_depth 3\n"));
        assert!(s.contains("edgeseek_cancellations_total 2\n"));
        assert!(s.contains("edgeseek_model_ready 1\n"));
        assert_eq!(m.render_remotes(&[]), "");
        m.remote_request("hq");
        m.remote_request("hq");
        m.remote_error("hq");
        m.overflowed("qwen", "hq");
        let r = m.render_remotes(&[("hq".into(), false), ("idle".into(), true)]);
        for line in [
            "edgeseek_remote_up{remote=\"hq\"} 0\n",
            "edgeseek_remote_up{remote=\"idle\"} 1\n",
            "edgeseek_remote_requests_total{remote=\"hq\"} 2\n",
            "edgeseek_remote_requests_total{remote=\"idle\"} 0\n",
            "edgeseek_remote_errors_total{remote=\"hq\"} 1\n",
            "edgeseek_overflow_total{model=\"qwen\",remote=\"hq\"} 1\n",
        ] {
            assert!(r.contains(line), "{line} in {r}");
        }
        for family in [
            "edgeseek_active_sequences",
            "edgeseek_kv_used_bytes",
            "edgeseek_prompt_tokens_total",
            "edgeseek_completion_tokens_total",
            "edgeseek_time_to_first_token_seconds_bucket",
            "edgeseek_inter_token_latency_seconds_bucket",
        ] {
            assert!(s.contains(family), "{family}");
        }
    }
}
