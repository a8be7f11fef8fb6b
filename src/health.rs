//! gRPC health checking (`grpc.health.v1.Health`) as its protocol defines
//! it: `Check` answers NOT_FOUND for a service it does not know; `Watch`
//! sends the current status at once and then every change, and for an
//! unknown service sends SERVICE_UNKNOWN and keeps the stream open (the
//! service may become known). At shutdown, once NOT_SERVING has been sent
//! and the grace is over, [`Health::close_watches`] ends the open `Watch`
//! streams with OK, so a load balancer's watch does not hold patd past its
//! drain.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;

use futures_util::Stream;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_server::{self, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

type Statuses = BTreeMap<String, ServingStatus>;

/// The statuses patd reports; cheap to clone.
#[derive(Clone, Debug)]
pub struct Health {
    statuses: Arc<watch::Sender<Statuses>>,
    closing: CancellationToken,
}

impl Health {
    /// A health service knowing `services` (`""` is the whole process),
    /// each starting at `status`.
    pub fn new(services: &[&str], status: ServingStatus) -> Self {
        let statuses = services.iter().map(|s| ((*s).to_owned(), status)).collect();
        Self {
            statuses: Arc::new(watch::Sender::new(statuses)),
            closing: CancellationToken::new(),
        }
    }

    /// The gRPC service over these statuses.
    pub fn service(&self) -> HealthServer<Self> {
        HealthServer::new(self.clone())
    }

    /// Sets a service's status; watchers hear of a change.
    pub fn set(&self, service: &str, status: ServingStatus) {
        self.statuses.send_if_modified(|statuses| {
            let previous = statuses.insert(service.to_owned(), status);
            previous != Some(status)
        });
    }

    /// Sets every known service's status.
    pub fn set_all(&self, status: ServingStatus) {
        self.statuses.send_if_modified(|statuses| {
            let mut changed = false;
            for current in statuses.values_mut() {
                changed |= *current != status;
                *current = status;
            }
            changed
        });
    }

    /// Ends every open `Watch` stream (and any opened later) after its
    /// current status.
    pub fn close_watches(&self) {
        self.closing.cancel();
    }
}

fn response(status: ServingStatus) -> HealthCheckResponse {
    HealthCheckResponse {
        status: status as i32,
    }
}

/// One `Watch` stream's state.
struct Watching {
    service: String,
    statuses: watch::Receiver<Statuses>,
    sent: Option<ServingStatus>,
    closing: CancellationToken,
}

#[tonic::async_trait]
impl health_server::Health for Health {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        let service = request.into_inner().service;
        match self.statuses.borrow().get(&service) {
            Some(status) => Ok(Response::new(response(*status))),
            None => Err(Status::not_found("unknown service")),
        }
    }

    type WatchStream = Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, Status>> + Send>>;

    async fn watch(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let start = Watching {
            service: request.into_inner().service,
            statuses: self.statuses.subscribe(),
            sent: None,
            closing: self.closing.clone(),
        };
        let stream = futures_util::stream::unfold(start, |mut w| async move {
            loop {
                let current = w
                    .statuses
                    .borrow_and_update()
                    .get(&w.service)
                    .copied()
                    .unwrap_or(ServingStatus::ServiceUnknown);
                if w.sent != Some(current) {
                    w.sent = Some(current);
                    return Some((Ok(response(current)), w));
                }
                tokio::select! {
                    _ = w.closing.cancelled() => return None,
                    changed = w.statuses.changed() => {
                        if changed.is_err() {
                            return None;
                        }
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(stream)))
    }
}
