//! Output of a run: a fixed-width table for people and one JSON object
//! for scripts (`scripts/bench.sh` reads it: keep the field names).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::cli::RunArgs;
use crate::stats::{OpSummary, Summary};

/// The run's table: one row for the judged operation, one per step or
/// kind, then outcome counts.
pub fn table(args: &RunArgs, summary: &Summary, setup_secs: f64) -> String {
    let mut out = String::new();
    let target = if args.label.is_empty() {
        args.grpc_addr.clone()
    } else {
        args.label.clone()
    };
    let amount = match args.requests {
        Some(n) => format!("{n} requests"),
        None => format!("{}", args.duration),
    };
    let _ = writeln!(
        out,
        "{} against {target}: {} conns x {} in flight, {amount} measured ({:.2} s) after {} warm-up, seed {}, set-up {setup_secs:.2} s",
        args.scenario.name(),
        args.connections,
        args.in_flight,
        summary.seconds,
        args.warmup,
        args.seed,
    );
    let _ = writeln!(
        out,
        "{:<14} {:>10} {:>11} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}",
        "op", "count", "rps", "mean", "p50", "p90", "p99", "p99.9", "max"
    );
    for op in std::iter::once(&summary.primary).chain(&summary.steps) {
        let _ = writeln!(
            out,
            "{:<14} {:>10} {:>11.1} {:>8.0} {:>8} {:>8} {:>8} {:>8} {:>8}",
            op.name, op.count, op.rps, op.mean, op.p50, op.p90, op.p99, op.p999, op.max
        );
    }
    let _ = writeln!(
        out,
        "(latencies in microseconds; {} more operations in the warm-up)",
        summary.warmup_ops
    );
    let _ = writeln!(
        out,
        "outcomes: ok={}{}",
        summary.primary.ok,
        counts_text(&summary.primary.errors)
    );
    if !summary.warmup_errors.is_empty() {
        let _ = writeln!(
            out,
            "warm-up failures:{}",
            counts_text(&summary.warmup_errors)
        );
    }
    for sample in &summary.samples {
        let _ = writeln!(out, "  e.g. {sample}");
    }
    out
}

fn counts_text(counts: &BTreeMap<String, u64>) -> String {
    counts.iter().map(|(k, n)| format!(" {k}={n}")).collect()
}

/// The run as one JSON object. Latencies in microseconds.
///
/// Floats go through `serde_json`, which writes a NaN or an infinity as
/// `null`: the object stays valid JSON whatever the numbers are.
pub fn json(args: &RunArgs, summary: &Summary, setup_secs: f64) -> Result<String, String> {
    let report = RunReport {
        scenario: args.scenario.name(),
        label: &args.label,
        grpc_addr: &args.grpc_addr,
        connections: args.connections,
        in_flight: args.in_flight,
        seed: args.seed,
        warmup_s: rounded(args.warmup.as_secs_f64(), 3),
        seconds: rounded(summary.seconds, 3),
        setup_s: rounded(setup_secs, 3),
        requests: summary.primary.count,
        warmup_requests: summary.warmup_ops,
        rps: rounded(summary.primary.rps, 1),
        latency_us: Latency::of(&summary.primary),
        outcomes: outcomes(&summary.primary),
        unexpected: summary.unexpected(),
        warmup_failures: &summary.warmup_errors,
        steps: summary.steps.iter().map(OpReport::of).collect(),
        failure_samples: &summary.samples,
    };
    serde_json::to_string(&report).map_err(|e| format!("cannot encode the report: {e}"))
}

/// The JSON report of a run; fields in this order.
#[derive(Serialize)]
struct RunReport<'a> {
    scenario: &'static str,
    label: &'a str,
    grpc_addr: &'a str,
    connections: u32,
    in_flight: u32,
    seed: u64,
    warmup_s: f64,
    seconds: f64,
    setup_s: f64,
    /// Measured operations of the primary kind.
    requests: u64,
    warmup_requests: u64,
    rps: f64,
    latency_us: Latency,
    outcomes: BTreeMap<&'a str, u64>,
    unexpected: u64,
    /// By `op:outcome`.
    warmup_failures: &'a BTreeMap<String, u64>,
    steps: Vec<OpReport<'a>>,
    failure_samples: &'a [String],
}

/// One step or kind of operation.
#[derive(Serialize)]
struct OpReport<'a> {
    op: &'static str,
    requests: u64,
    rps: f64,
    latency_us: Latency,
    outcomes: BTreeMap<&'a str, u64>,
}

impl<'a> OpReport<'a> {
    fn of(op: &'a OpSummary) -> Self {
        Self {
            op: op.name,
            requests: op.count,
            rps: rounded(op.rps, 1),
            latency_us: Latency::of(op),
            outcomes: outcomes(op),
        }
    }
}

/// Latencies in microseconds.
#[derive(Serialize)]
struct Latency {
    mean: f64,
    p50: u64,
    p90: u64,
    p99: u64,
    p999: u64,
    max: u64,
}

impl Latency {
    fn of(op: &OpSummary) -> Self {
        Self {
            mean: rounded(op.mean, 1),
            p50: op.p50,
            p90: op.p90,
            p99: op.p99,
            p999: op.p999,
            max: op.max,
        }
    }
}

/// The error counts plus `ok`, by name.
fn outcomes(op: &OpSummary) -> BTreeMap<&str, u64> {
    let mut counts: BTreeMap<&str, u64> = op.errors.iter().map(|(k, n)| (k.as_str(), *n)).collect();
    counts.insert("ok", op.ok);
    counts
}

/// `x` to `decimals` places, as precise as the report has always been.
/// A NaN stays NaN (and is written as `null`).
fn rounded(x: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (x * scale).round() / scale
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;
    use crate::cli::{Cli, Command};

    fn op(name: &'static str, mean: f64) -> OpSummary {
        OpSummary {
            name,
            count: 3,
            rps: 1.25,
            mean,
            p50: 10,
            p90: 20,
            p99: 30,
            p999: 40,
            max: 50,
            ok: 2,
            errors: BTreeMap::from([("http_500".to_owned(), 1)]),
        }
    }

    #[test]
    fn the_json_report_has_the_fields_bench_sh_reads_and_stays_valid_with_nan() {
        let cli = Cli::parse_from(["patd-bench", "run", "mixed", "--label", "a\"b\n"]);
        let Command::Run(args) = cli.command else {
            panic!("not a run");
        };
        let summary = Summary {
            seconds: 2.0004,
            warmup_ops: 7,
            primary: op("mixed", f64::NAN),
            steps: vec![op("list", 1.26)],
            warmup_errors: BTreeMap::new(),
            samples: vec!["list: HTTP 500".to_owned()],
        };
        let text = json(&args, &summary, 0.5).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["scenario"], "mixed");
        assert_eq!(v["label"], "a\"b\n");
        assert_eq!(v["requests"], 3);
        assert_eq!(v["warmup_requests"], 7);
        assert_eq!(v["rps"], 1.3);
        assert_eq!(v["seconds"], 2.0);
        assert_eq!(v["latency_us"]["p50"], 10);
        assert_eq!(v["latency_us"]["p99"], 30);
        assert!(v["latency_us"]["mean"].is_null());
        assert_eq!(v["outcomes"], serde_json::json!({"http_500": 1, "ok": 2}));
        assert_eq!(v["unexpected"], 1);
        assert_eq!(v["steps"][0]["op"], "list");
        assert_eq!(v["steps"][0]["latency_us"]["mean"], 1.3);
        assert_eq!(v["failure_samples"][0], "list: HTTP 500");
        let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort_unstable();
        let mut expected = [
            "scenario",
            "label",
            "grpc_addr",
            "connections",
            "in_flight",
            "seed",
            "warmup_s",
            "seconds",
            "setup_s",
            "requests",
            "warmup_requests",
            "rps",
            "latency_us",
            "outcomes",
            "unexpected",
            "warmup_failures",
            "steps",
            "failure_samples",
        ];
        expected.sort_unstable();
        assert_eq!(keys, expected);
    }
}
