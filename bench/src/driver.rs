//! Load driving: the shared clock (warm-up, then a duration or a request
//! budget), one HTTP/2 connection per `--connections`, and joining the
//! per-task recorders into one.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use patd::pb::token_service_client::TokenServiceClient;
use tokio::task::JoinSet;
use tonic::transport::{Channel, Endpoint};

use crate::stats::{Phase, Recorder};

/// A TokenService client on one shared connection.
pub type Client = TokenServiceClient<Channel>;

/// When the run's tasks start, switch to measuring and stop.
#[derive(Debug)]
pub struct Clock {
    measure_start: Instant,
    deadline: Option<Instant>,
    budget: Option<u64>,
    taken: AtomicU64,
}

impl Clock {
    /// Starts now: `warmup` unmeasured, then `requests` operations if given,
    /// else `duration`.
    pub fn start(warmup: Duration, duration: Duration, requests: Option<u64>) -> Arc<Self> {
        let measure_start = Instant::now() + warmup;
        Arc::new(Self {
            measure_start,
            deadline: requests.is_none().then(|| measure_start + duration),
            budget: requests,
            taken: AtomicU64::new(0),
        })
    }

    pub fn measure_start(&self) -> Instant {
        self.measure_start
    }

    /// The phase of the next operation, or `None` when the task must stop.
    pub fn next(&self) -> Option<Phase> {
        let now = Instant::now();
        if now < self.measure_start {
            return Some(Phase::Warmup);
        }
        if self.deadline.is_some_and(|d| now >= d) {
            return None;
        }
        if let Some(budget) = self.budget
            && self.taken.fetch_add(1, Ordering::Relaxed) >= budget
        {
            return None;
        }
        Some(Phase::Measure)
    }
}

/// `host:port` or a full URI, as an endpoint URI.
pub fn grpc_uri(addr: &str) -> String {
    if addr.contains("://") {
        addr.to_owned()
    } else {
        format!("http://{addr}")
    }
}

/// `n` distinct HTTP/2 connections to `addr` (each `connect()` is its own
/// TCP connection; clones of one `Channel` share it).
pub async fn connect_grpc(addr: &str, n: u32) -> Result<Vec<Channel>, String> {
    let endpoint = Endpoint::from_shared(grpc_uri(addr))
        .map_err(|e| format!("bad gRPC address {addr}: {e}"))?
        .connect_timeout(Duration::from_secs(5));
    let mut channels = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
        channels.push(channel);
    }
    Ok(channels)
}

/// Runs every task to its end and merges what they recorded.
pub async fn join<F>(tasks: Vec<F>) -> Result<Recorder, String>
where
    F: Future<Output = Recorder> + Send + 'static,
{
    let mut set = JoinSet::new();
    for task in tasks {
        set.spawn(task);
    }
    let mut merged = Recorder::default();
    while let Some(done) = set.join_next().await {
        merged.merge(done.map_err(|e| format!("a load task failed: {e}"))?);
    }
    Ok(merged)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_budget_ends_the_run() {
        let clock = Clock::start(Duration::ZERO, Duration::from_secs(3600), Some(3));
        let phases: Vec<_> = (0..5).map(|_| clock.next()).collect();
        assert_eq!(phases.iter().filter(|p| p.is_some()).count(), 3);
        let clock = Clock::start(Duration::from_secs(3600), Duration::ZERO, None);
        assert_eq!(clock.next(), Some(Phase::Warmup));
    }
}
