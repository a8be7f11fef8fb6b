//! The stream budgets both listeners share. Every request (an HTTP/2
//! stream, or an HTTP/1.1 request) holds a place from its headers until
//! its answer has been sent, or dropped: a request that waits for its body
//! or an answer that waits for a reader both hold memory (headers,
//! buffered body, the answer). Beyond a budget a request is refused at
//! once with a body-less answer, which needs no flow-control window and
//! so cannot stall. The open services (health, reflection, `/healthz`,
//! `/readyz`, `/metrics`, unknown paths), which anyone who reaches a port
//! may call, also hold a place in a small budget of their own, so an
//! anonymous peer can hold at most that much; long-lived streams among
//! them (health Watch, reflection) at most half of it, so they cannot
//! crowd out the probes.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The places requests may hold at once: `total` in all, `open` of them on
/// the open services, half of those (at least one) on their long-lived
/// streams. Cloning shares the budget.
#[derive(Debug, Clone)]
pub struct StreamBudget {
    total: Arc<Semaphore>,
    open: Arc<Semaphore>,
    long_lived: Arc<Semaphore>,
}

/// What a request is, for the budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// A call to the token service or a gateway door.
    Caller,
    /// A call to an open service that ends with its answer (a probe, a
    /// scrape, an unknown path).
    Open,
    /// An open service's stream that lasts as long as its client wants
    /// (health Watch, reflection).
    LongLived,
}

/// A request's place; given back when dropped.
#[derive(Debug)]
pub struct Place {
    _total: OwnedSemaphorePermit,
    _open: Option<OwnedSemaphorePermit>,
    _long_lived: Option<OwnedSemaphorePermit>,
}

/// Which budget was spent (the `budget` label of
/// `patd_streams_refused_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spent {
    /// `PATD_MAX_STREAMS`.
    Total,
    /// `PATD_MAX_OPEN_SERVICE_STREAMS` (or its long-lived half).
    Open,
}

impl Spent {
    /// The label value: `total` or `open`.
    pub fn as_str(self) -> &'static str {
        match self {
            Spent::Total => "total",
            Spent::Open => "open",
        }
    }
}

impl StreamBudget {
    /// `total` places in all; `open` of them (at most: each also takes a
    /// total place) for the open services, and half of `open` (at least
    /// one) for their long-lived streams.
    pub fn new(total: usize, open: usize) -> Self {
        Self {
            total: Arc::new(Semaphore::new(total)),
            open: Arc::new(Semaphore::new(open)),
            long_lived: Arc::new(Semaphore::new((open / 2).max(1))),
        }
    }

    /// A place for a request of `class`.
    ///
    /// # Errors
    /// The budget that is spent (never waits).
    pub fn admit(&self, class: Class) -> Result<Place, Spent> {
        let take = |semaphore: &Arc<Semaphore>, spent| {
            semaphore.clone().try_acquire_owned().map_err(|_| spent)
        };
        let long_lived = match class {
            Class::LongLived => Some(take(&self.long_lived, Spent::Open)?),
            _ => None,
        };
        let open = match class {
            Class::Open | Class::LongLived => Some(take(&self.open, Spent::Open)?),
            Class::Caller => None,
        };
        Ok(Place {
            _total: take(&self.total, Spent::Total)?,
            _open: open,
            _long_lived: long_lived,
        })
    }
}

/// An answer's body holding its request's place until its last frame has
/// been taken (or the body is dropped: a reset stream, a closed
/// connection).
#[derive(Debug)]
pub struct Held<B> {
    inner: B,
    place: Option<Place>,
}

impl<B> Held<B> {
    /// `inner`, holding `place` until its end.
    pub fn new(inner: B, place: Place) -> Self {
        Self {
            inner,
            place: Some(place),
        }
    }
}

impl<B> Body for Held<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None | Some(Err(_)))) {
            self.place = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt as _, Full};

    #[test]
    fn open_services_have_a_budget_within_the_total() {
        let budget = StreamBudget::new(3, 1);
        let open = budget.admit(Class::Open).expect("an open place");
        assert_eq!(budget.admit(Class::Open).unwrap_err(), Spent::Open);
        let a = budget.admit(Class::Caller).expect("a place");
        let b = budget.admit(Class::Caller).expect("the last place");
        assert_eq!(budget.admit(Class::Caller).unwrap_err(), Spent::Total);
        drop(open);
        let c = budget
            .admit(Class::Caller)
            .expect("the open place's total place");
        assert_eq!(
            budget.admit(Class::Open).unwrap_err(),
            Spent::Total,
            "an open place needs a total place too"
        );
        drop((a, b, c));
        assert!(budget.admit(Class::Open).is_ok());
    }

    #[test]
    fn long_lived_streams_leave_half_the_open_places_to_probes() {
        let budget = StreamBudget::new(100, 4);
        let watches = [
            budget.admit(Class::LongLived).expect("a watch"),
            budget.admit(Class::LongLived).expect("another"),
        ];
        assert_eq!(budget.admit(Class::LongLived).unwrap_err(), Spent::Open);
        let probes = [
            budget.admit(Class::Open).expect("a probe"),
            budget.admit(Class::Open).expect("another"),
        ];
        assert_eq!(budget.admit(Class::Open).unwrap_err(), Spent::Open);
        drop((watches, probes));
    }

    #[tokio::test]
    async fn a_place_is_held_until_the_answer_has_been_read() {
        let budget = StreamBudget::new(1, 1);
        let place = budget.admit(Class::Caller).expect("a place");
        let mut body = Held::new(Full::new(Bytes::from_static(b"answer")), place);
        assert!(budget.admit(Class::Caller).is_err(), "held while unsent");
        let frame = body.frame().await.expect("a frame").expect("data");
        assert_eq!(frame.into_data().expect("data"), "answer");
        assert!(
            budget.admit(Class::Caller).is_err(),
            "held until the end is seen"
        );
        assert!(body.frame().await.is_none());
        assert!(budget.admit(Class::Caller).is_ok(), "given back at the end");
        drop(body);
    }
}
