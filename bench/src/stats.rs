//! Measurement: what one operation ended as (`Outcome`), per-task latency
//! histograms and outcome counts (`Recorder`), and their merge into the
//! run's `Summary`. Owns the rule that anything but `ok` is unexpected.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// Failure descriptions kept for the report.
const SAMPLES: usize = 5;
/// Highest latency tracked exactly (1 hour, in microseconds).
const MAX_MICROS: u64 = 3_600_000_000;

/// Which part of the run an operation belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Checked, not measured.
    Warmup,
    /// Checked and measured.
    Measure,
}

/// How one operation ended.
#[derive(Debug)]
pub enum Outcome {
    /// The right answer.
    Ok,
    /// An answer that is not the right one (why).
    Wrong(String),
    /// A gRPC status other than OK.
    Grpc(tonic::Status),
    /// An HTTP status other than the expected one.
    Http(u16),
    /// The connection failed.
    Transport(String),
}

impl Outcome {
    pub fn is_ok(&self) -> bool {
        matches!(self, Outcome::Ok)
    }

    /// The counter this outcome goes to.
    fn key(&self) -> String {
        match self {
            Outcome::Ok => "ok".to_owned(),
            Outcome::Wrong(_) => "wrong_answer".to_owned(),
            Outcome::Grpc(s) => format!("grpc_{:?}", s.code()),
            Outcome::Http(code) => format!("http_{code}"),
            Outcome::Transport(_) => "transport_error".to_owned(),
        }
    }

    fn describe(&self) -> String {
        match self {
            Outcome::Ok => "ok".to_owned(),
            Outcome::Wrong(why) => format!("wrong answer: {why}"),
            Outcome::Grpc(s) => format!("gRPC {:?}: {}", s.code(), s.message()),
            Outcome::Http(code) => format!("HTTP {code}"),
            Outcome::Transport(why) => format!("transport: {why}"),
        }
    }
}

/// One kind of operation's measurements.
struct OpStats {
    hist: Histogram<u64>,
    ok: u64,
    errors: BTreeMap<String, u64>,
}

impl OpStats {
    fn new() -> Self {
        Self {
            #[allow(clippy::expect_used)]
            hist: Histogram::new_with_bounds(1, MAX_MICROS, 3).expect("valid histogram bounds"),
            ok: 0,
            errors: BTreeMap::new(),
        }
    }

    fn merge(&mut self, other: OpStats) {
        // Same bounds on both sides: adding cannot fail.
        let _ = self.hist.add(&other.hist);
        self.ok += other.ok;
        for (k, n) in other.errors {
            *self.errors.entry(k).or_default() += n;
        }
    }
}

/// What one task saw; merged across tasks at the end.
#[derive(Default)]
pub struct Recorder {
    ops: BTreeMap<&'static str, OpStats>,
    warmup_ops: BTreeMap<&'static str, u64>,
    warmup_errors: BTreeMap<String, u64>,
    samples: Vec<String>,
    last_end: Option<Instant>,
}

impl Recorder {
    /// Records one operation named `op` that took `latency`.
    pub fn record(&mut self, phase: Phase, op: &'static str, latency: Duration, outcome: &Outcome) {
        if !outcome.is_ok() && self.samples.len() < SAMPLES {
            // A failed step also fails its operation: keep one of the two.
            let what = outcome.describe();
            if !self.samples.iter().any(|s| s.ends_with(&what)) {
                self.samples.push(format!("{op}: {what}"));
            }
        }
        if phase == Phase::Warmup {
            *self.warmup_ops.entry(op).or_default() += 1;
            if !outcome.is_ok() {
                *self
                    .warmup_errors
                    .entry(format!("{op}:{}", outcome.key()))
                    .or_default() += 1;
            }
            return;
        }
        let stats = self.ops.entry(op).or_insert_with(OpStats::new);
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        stats.hist.saturating_record(micros.max(1));
        if outcome.is_ok() {
            stats.ok += 1;
        } else {
            *stats.errors.entry(outcome.key()).or_default() += 1;
        }
        self.last_end = Some(Instant::now());
    }

    pub fn merge(&mut self, other: Recorder) {
        for (name, stats) in other.ops {
            match self.ops.get_mut(name) {
                Some(mine) => mine.merge(stats),
                None => {
                    self.ops.insert(name, stats);
                }
            }
        }
        for (op, n) in other.warmup_ops {
            *self.warmup_ops.entry(op).or_default() += n;
        }
        for (k, n) in other.warmup_errors {
            *self.warmup_errors.entry(k).or_default() += n;
        }
        for sample in other.samples {
            if self.samples.len() < SAMPLES && !self.samples.contains(&sample) {
                self.samples.push(sample);
            }
        }
        self.last_end = self.last_end.max(other.last_end);
    }

    /// The run's result: `primary` is the operation the run is judged by;
    /// the measured time runs from `measure_start` to the last measured
    /// operation's end.
    pub fn summarize(mut self, primary: &'static str, measure_start: Instant) -> Summary {
        let seconds = self
            .last_end
            .map_or(0.0, |end| end.duration_since(measure_start).as_secs_f64());
        let main = self.ops.remove(primary).unwrap_or_else(OpStats::new);
        let steps = self
            .ops
            .into_iter()
            .map(|(name, s)| OpSummary::of(name, &s, seconds))
            .collect();
        Summary {
            seconds,
            warmup_ops: self.warmup_ops.get(primary).copied().unwrap_or(0),
            primary: OpSummary::of(primary, &main, seconds),
            steps,
            warmup_errors: self.warmup_errors,
            samples: self.samples,
        }
    }
}

/// Counts and latency percentiles (microseconds) of one operation.
#[derive(Debug, Clone)]
pub struct OpSummary {
    pub name: &'static str,
    pub count: u64,
    pub rps: f64,
    pub mean: f64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
    pub ok: u64,
    pub errors: BTreeMap<String, u64>,
}

impl OpSummary {
    fn of(name: &'static str, s: &OpStats, seconds: f64) -> Self {
        let count = s.hist.len();
        let q = |quantile: f64| {
            if count == 0 {
                0
            } else {
                s.hist.value_at_quantile(quantile)
            }
        };
        Self {
            name,
            count,
            rps: if seconds > 0.0 {
                count as f64 / seconds
            } else {
                0.0
            },
            mean: if count == 0 { 0.0 } else { s.hist.mean() },
            p50: q(0.50),
            p90: q(0.90),
            p99: q(0.99),
            p999: q(0.999),
            max: if count == 0 { 0 } else { s.hist.max() },
            ok: s.ok,
            errors: s.errors.clone(),
        }
    }

    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }
}

/// The merged result of a run.
#[derive(Debug)]
pub struct Summary {
    pub seconds: f64,
    /// Operations of the primary kind during the warm-up (not measured; a
    /// script dividing a server's CPU time by operations needs them).
    pub warmup_ops: u64,
    /// The operation the run is judged by (its count and rps).
    pub primary: OpSummary,
    /// Parts or kinds of operations, for information.
    pub steps: Vec<OpSummary>,
    /// Unexpected outcomes during the warm-up, by `op:outcome`.
    pub warmup_errors: BTreeMap<String, u64>,
    /// The first few failures, described.
    pub samples: Vec<String>,
}

impl Summary {
    /// Every outcome that is not `ok`, measured or not.
    pub fn unexpected(&self) -> u64 {
        self.primary.error_count() + self.warmup_errors.values().sum::<u64>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorders_merge_and_only_measured_ops_count() {
        let mut a = Recorder::default();
        let ms = Duration::from_millis(1);
        a.record(Phase::Warmup, "x", ms, &Outcome::Ok);
        a.record(Phase::Measure, "x", ms, &Outcome::Ok);
        let mut b = Recorder::default();
        b.record(Phase::Measure, "x", ms * 3, &Outcome::Http(500));
        b.record(Phase::Warmup, "x", ms, &Outcome::Wrong("no".into()));
        a.merge(b);
        let s = a.summarize("x", Instant::now() - Duration::from_secs(1));
        assert_eq!(s.primary.count, 2);
        assert_eq!(s.warmup_ops, 2);
        assert_eq!(s.primary.ok, 1);
        assert_eq!(s.primary.errors.get("http_500"), Some(&1));
        assert_eq!(s.unexpected(), 2);
        assert_eq!(s.samples.len(), 2);
    }
}
