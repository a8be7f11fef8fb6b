//! The command line: subcommands, run options and the `--mix` syntax.
//! Nothing here does I/O.

use std::net::SocketAddr;
use std::str::FromStr;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Load generator and baseline server for patd.
#[derive(Debug, Parser)]
#[command(name = "patd-bench", about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve patd.v1.TokenService with constant answers and no work: the
    /// limit of the same tonic stack on this machine. Prints
    /// `listening <addr>` on stdout once bound.
    BaselineServer {
        #[arg(long, default_value = "127.0.0.1:0")]
        addr: SocketAddr,
        /// Set TCP_NODELAY on accepted connections (tonic's `serve()`
        /// default). Off by default to match patd, which serves accepted
        /// sockets as they are (Nagle on).
        #[arg(long)]
        tcp_nodelay: bool,
        /// Read Redis once per Introspect (a `GET`): the limit for an
        /// uncached answer.
        #[arg(long)]
        redis_url: Option<String>,
    },
    /// Run one load scenario against a patd (or the baseline server) and
    /// check every answer. Exit code 1 on any unexpected outcome.
    Run(RunArgs),
    /// Measure how long a revocation on one patd takes to be seen by
    /// another (sharing one Redis): Issue on A, Introspect on B until
    /// cached, Revoke on A, then Introspect on B until inactive.
    Propagation(PropagationArgs),
    /// Issue one token and write a framed gRPC IntrospectRequest for it
    /// (the body h2load posts to `/patd.v1.TokenService/Introspect`).
    H2loadBody {
        /// patd's (or the baseline server's) gRPC address.
        #[arg(long)]
        grpc_addr: String,
        /// Where to write the body.
        #[arg(long)]
        out: std::path::PathBuf,
    },
    /// Measure the Redis round trip (sequential PINGs on one multiplexed
    /// connection, the client patd uses).
    RedisRtt(RedisRttArgs),
}

/// What a run sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// Introspect over pre-issued tokens, by `--mix`.
    Introspect,
    /// Issue for a fresh account, then Revoke it; one operation is the pair.
    Issue,
    /// HTTP/1.1 keep-alive `GET /v1/forward-auth` over pre-issued tokens.
    ForwardAuth,
    /// Introspect by `--mix`, plus `--management` percent of management
    /// calls (Issue+Revoke on a fresh account, or List).
    Mixed,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Introspect => "introspect",
            Scenario::Issue => "issue",
            Scenario::ForwardAuth => "forward-auth",
            Scenario::Mixed => "mixed",
        }
    }

    /// Whether the scenario needs pre-issued tokens.
    pub fn needs_fleet(self) -> bool {
        !matches!(self, Scenario::Issue)
    }
}

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    #[arg(value_enum)]
    pub scenario: Scenario,

    /// patd's gRPC address (`host:port` or `http://host:port`).
    #[arg(long, default_value = "127.0.0.1:50051")]
    pub grpc_addr: String,

    /// patd's HTTP address (forward-auth).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub http_addr: SocketAddr,

    /// gRPC: distinct HTTP/2 connections. forward-auth: groups of
    /// `--in-flight` HTTP/1.1 keep-alive connections (one per task).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub connections: u32,

    /// Concurrent requests per connection (tasks looping until the end).
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub in_flight: u32,

    /// Measured time, after the warm-up.
    #[arg(long, default_value = "10s")]
    pub duration: humantime::Duration,

    /// Measure this many operations instead of a duration.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub requests: Option<u64>,

    /// Unmeasured load before the measured part (answers still checked).
    #[arg(long, default_value = "2s")]
    pub warmup: humantime::Duration,

    /// Seed of every pseudo-random choice (token picks, fresh accounts).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,

    /// Tokens issued before the run (introspect, forward-auth, mixed).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub tokens: u32,

    /// Accounts the pre-issued tokens are spread over.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub accounts: u32,

    /// patd's live-token limit per account (PATD_MAX_TOKENS_PER_ACCOUNT):
    /// `--tokens` / `--accounts` must fit under it.
    #[arg(long, default_value_t = 50)]
    pub account_limit: u32,

    /// Share of presented values: valid, revoked, malformed (refused
    /// offline), forged (a real token id with a wrong secret).
    #[arg(long, default_value = "valid=90,revoked=5,malformed=5")]
    pub mix: Mix,

    /// mixed: percent of operations that are management calls.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(0..=100))]
    pub management: u32,

    /// The target is `patd-bench baseline-server`: accept its constant
    /// answers (every token active, a fixed issued token).
    #[arg(long)]
    pub expect_baseline: bool,

    /// Free-text name of the target, copied into the report.
    #[arg(long, default_value = "")]
    pub label: String,

    /// Print the report as one JSON object on stdout (the table goes to
    /// stderr).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Args)]
pub struct RedisRttArgs {
    /// Redis URL.
    #[arg(long)]
    pub url: String,
    /// Sequential PINGs measured (after 200 unmeasured).
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u32).range(1..))]
    pub count: u32,
    /// Print one JSON object instead of a line of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Args)]
pub struct PropagationArgs {
    /// Instance A's gRPC address (where tokens are issued and revoked).
    #[arg(long)]
    pub a: String,
    /// Instance B's gRPC address (where the revocation must arrive).
    #[arg(long)]
    pub b: String,
    /// Revocations measured.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    pub trials: u32,
    /// Before each trial's Revoke, kill every Pub/Sub connection of this
    /// Redis (`CLIENT KILL TYPE pubsub`): the invalidation channel is gone
    /// when the revocation is made.
    #[arg(long)]
    pub kill_channel_on: Option<String>,
    /// Print one JSON object instead of a line of text.
    #[arg(long)]
    pub json: bool,
}

/// Weights of the kinds of presented token values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mix {
    pub valid: u32,
    pub revoked: u32,
    pub malformed: u32,
    pub forged: u32,
}

impl Mix {
    pub fn total(&self) -> u32 {
        self.valid + self.revoked + self.malformed + self.forged
    }
}

impl FromStr for Mix {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut mix = Mix {
            valid: 0,
            revoked: 0,
            malformed: 0,
            forged: 0,
        };
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (kind, weight) = part
                .split_once('=')
                .ok_or_else(|| format!("`{part}`: expected kind=weight"))?;
            let weight: u32 = weight
                .trim()
                .parse()
                .map_err(|_| format!("`{part}`: the weight must be a whole number"))?;
            let slot = match kind.trim() {
                "valid" => &mut mix.valid,
                "revoked" => &mut mix.revoked,
                "malformed" => &mut mix.malformed,
                "forged" => &mut mix.forged,
                other => {
                    return Err(format!(
                        "unknown kind `{other}` (valid, revoked, malformed, forged)"
                    ));
                }
            };
            *slot = weight;
        }
        if mix.total() == 0 || mix.total() > 1_000_000 {
            return Err("the weights must add up to 1..=1000000".to_owned());
        }
        Ok(mix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mixes_parse_by_name() {
        let m: Mix = "valid=90, revoked=5,malformed=5".parse().unwrap();
        assert_eq!((m.valid, m.revoked, m.malformed, m.forged), (90, 5, 5, 0));
        assert!("valid=0".parse::<Mix>().is_err());
        assert!("bogus=1".parse::<Mix>().is_err());
        assert!("valid".parse::<Mix>().is_err());
    }
}
