//! The response body streamed from a vendor to a client.
//!
//! Frames pass through one at a time (nothing is buffered). At the end of the stream the vendor
//! connection goes back to its pool and the exchange is complete; if the vendor fails mid-body
//! the failure is recorded; if the client goes away first, the vendor connection is closed (its
//! unread bytes are still counted, see `counting_io`).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use pt_config::VendorIndex;

use crate::exchange::Exchange;
use crate::failure::classify_hyper;
use crate::pool::{PoolKey, VendorConn};
use crate::shared::Shared;

/// See the module documentation.
#[derive(Debug)]
pub struct ForwardedBody {
    inner: Incoming,
    /// Present until the body ends (or fails).
    state: Option<Finish>,
}

#[derive(Debug)]
struct Finish {
    exchange: Exchange,
    shared: Arc<Shared>,
    vendor: VendorIndex,
    key: PoolKey,
    conn: VendorConn,
}

impl ForwardedBody {
    pub fn new(
        inner: Incoming,
        exchange: Exchange,
        shared: Arc<Shared>,
        vendor: VendorIndex,
        key: PoolKey,
        conn: VendorConn,
    ) -> ForwardedBody {
        let body = ForwardedBody {
            inner,
            state: Some(Finish {
                exchange,
                shared,
                vendor,
                key,
                conn,
            }),
        };
        if body.inner.is_end_stream() {
            // No body at all (HEAD, 204, 304): complete at once.
            let mut body = body;
            body.complete();
            return body;
        }
        body
    }

    fn complete(&mut self) {
        if let Some(finish) = self.state.take() {
            let Finish {
                exchange,
                shared,
                vendor,
                key,
                conn,
            } = finish;
            shared.vendors[vendor].pool.checkin(key, conn);
            drop(exchange);
        }
    }
}

impl Body for ForwardedBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        match &polled {
            None => self.complete(),
            Some(Err(error)) => {
                if let Some(mut finish) = self.state.take() {
                    finish.exchange.failed(classify_hyper(error));
                    finish.conn.abort();
                }
            }
            Some(Ok(_)) if self.inner.is_end_stream() => self.complete(),
            Some(Ok(_)) => {}
        }
        Poll::Ready(polled)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for ForwardedBody {
    fn drop(&mut self) {
        if let Some(mut finish) = self.state.take() {
            // The client stopped reading before the end: the vendor connection cannot be reused.
            finish.exchange.set_outcome("client_aborted");
            finish.conn.abort();
        }
    }
}
