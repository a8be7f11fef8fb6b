//! Output of a run: a fixed-width table for people and one JSON object
//! for scripts (hand-written: the shape is small and fixed).

use std::collections::BTreeMap;
use std::fmt::Write as _;

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
pub fn json(args: &RunArgs, summary: &Summary, setup_secs: f64) -> String {
    let steps: Vec<String> = summary.steps.iter().map(op_json).collect();
    let samples: Vec<String> = summary.samples.iter().map(|s| string(s)).collect();
    format!(
        concat!(
            "{{\"scenario\":{},\"label\":{},\"grpc_addr\":{},\"connections\":{},\"in_flight\":{},",
            "\"seed\":{},\"warmup_s\":{:.3},\"seconds\":{:.3},\"setup_s\":{:.3},",
            "\"requests\":{},\"warmup_requests\":{},\"rps\":{:.1},\"latency_us\":{},\"outcomes\":{},",
            "\"unexpected\":{},\"warmup_failures\":{},\"steps\":[{}],\"failure_samples\":[{}]}}"
        ),
        string(args.scenario.name()),
        string(&args.label),
        string(&args.grpc_addr),
        args.connections,
        args.in_flight,
        args.seed,
        args.warmup.as_secs_f64(),
        summary.seconds,
        setup_secs,
        summary.primary.count,
        summary.warmup_ops,
        summary.primary.rps,
        latency_json(&summary.primary),
        outcomes_json(&summary.primary),
        summary.unexpected(),
        counts_json(&summary.warmup_errors),
        steps.join(","),
        samples.join(","),
    )
}

fn op_json(op: &OpSummary) -> String {
    format!(
        "{{\"op\":{},\"requests\":{},\"rps\":{:.1},\"latency_us\":{},\"outcomes\":{}}}",
        string(op.name),
        op.count,
        op.rps,
        latency_json(op),
        outcomes_json(op)
    )
}

fn latency_json(op: &OpSummary) -> String {
    format!(
        "{{\"mean\":{:.1},\"p50\":{},\"p90\":{},\"p99\":{},\"p999\":{},\"max\":{}}}",
        op.mean, op.p50, op.p90, op.p99, op.p999, op.max
    )
}

fn outcomes_json(op: &OpSummary) -> String {
    let mut counts = op.errors.clone();
    counts.insert("ok".to_owned(), op.ok);
    counts_json(&counts)
}

fn counts_json(counts: &BTreeMap<String, u64>) -> String {
    let fields: Vec<String> = counts
        .iter()
        .map(|(k, n)| format!("{}:{n}", string(k)))
        .collect();
    format!("{{{}}}", fields.join(","))
}

/// A JSON string literal.
fn string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_escaped() {
        assert_eq!(string("a\"b\\c\n"), r#""a\"b\\c\u000a""#);
    }
}
