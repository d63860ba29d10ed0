//! One budget of undecoded gRPC message bytes for the whole process.
//!
//! tonic buffers each message whole before decoding it, up to the
//! service's `max_decoding_message_size` (16 MiB on the agents' port): a
//! client that announces a 16 MiB message and trickles it holds 16 MiB, and
//! N such streams N times that (24 streams held about 350 MB before). The
//! [`BudgetLayer`] reads the gRPC framing of every request body as it
//! passes: when a message is not complete at the end of a chunk, the
//! message's whole announced length is reserved from the process's budget
//! (`max_request_bytes_in_flight`) before the body is read any further, and
//! given back once its last byte has passed (the decoder then decodes it at
//! once). A message that does not fit waits for room (the stream's HTTP/2
//! flow control holds its sender) for at most [`WAIT`], then its call ends
//! with `RESOURCE_EXHAUSTED`. Reserving a message's whole length up front
//! means a stream that holds a reservation can always finish its message:
//! streams never wait on each other's halves. Messages that arrive whole in
//! one chunk (an agent's batches, a few KiB) reserve nothing.

use bytes::{Buf, Bytes};
use http_body::{Body, Frame};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// How long a message waits for room in the budget.
pub const WAIT: Duration = Duration::from_secs(5);
/// Bytes per semaphore permit (a permit count is a u32).
const UNIT: usize = 1024;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The process's budget; cheap to clone.
#[derive(Clone)]
pub struct Budget {
    permits: Arc<Semaphore>,
    bytes: usize,
}

impl Budget {
    pub fn new(bytes: usize) -> Self {
        let units = bytes.div_ceil(UNIT).clamp(1, Semaphore::MAX_PERMITS);
        Self {
            permits: Arc::new(Semaphore::new(units)),
            bytes,
        }
    }

    /// Bytes reserved now.
    pub fn in_use(&self) -> usize {
        let total = self.bytes.div_ceil(UNIT).clamp(1, Semaphore::MAX_PERMITS);
        (total - self.permits.available_permits()) * UNIT
    }
}

/// The tower layer that puts every gRPC request body under the budget.
#[derive(Clone)]
pub struct BudgetLayer(pub Budget);

impl<S> tower::Layer<S> for BudgetLayer {
    type Service = BudgetService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        BudgetService {
            inner,
            budget: self.0.clone(),
        }
    }
}

#[derive(Clone)]
pub struct BudgetService<S> {
    inner: S,
    budget: Budget,
}

impl<S, B> tower::Service<http::Request<B>> for BudgetService<S>
where
    S: tower::Service<http::Request<tonic::body::Body>>,
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let budget = self.budget.clone();
        self.inner.call(req.map(|body| {
            tonic::body::Body::new(BudgetBody {
                inner: body,
                budget,
                header: [0; 5],
                header_len: 0,
                remaining: 0,
                held: None,
                waiting: None,
            })
        }))
    }
}

type Reserve = Pin<Box<dyn Future<Output = Result<OwnedSemaphorePermit, tonic::Status>> + Send>>;

/// A request body whose incomplete messages hold budget.
struct BudgetBody<B> {
    inner: B,
    budget: Budget,
    /// The current message's 5-byte header (flag, big-endian length), as
    /// far as it has come.
    header: [u8; 5],
    header_len: usize,
    /// Bytes of the current message's body still to come.
    remaining: usize,
    /// The reservation of the current message, while it is incomplete.
    held: Option<OwnedSemaphorePermit>,
    /// A chunk that started a message which does not fit yet, and the
    /// wait for its room.
    waiting: Option<(Frame<Bytes>, Reserve)>,
}

impl<B> BudgetBody<B> {
    /// Follows the framing through `data`; returns the length of the
    /// message left incomplete at its end, when that message started in
    /// `data` (it needs a reservation), and whether the message held
    /// before it completed (its reservation can go).
    fn track(&mut self, data: &Bytes) -> (Option<usize>, bool) {
        let mut buf = data.clone();
        let mut started: Option<usize> = None;
        let mut finished_held = false;
        while buf.has_remaining() {
            if self.remaining > 0 {
                let n = self.remaining.min(buf.remaining());
                buf.advance(n);
                self.remaining -= n;
                if self.remaining == 0 && started.take().is_none() {
                    finished_held = true;
                }
                continue;
            }
            let n = (5 - self.header_len).min(buf.remaining());
            buf.copy_to_slice(&mut self.header[self.header_len..self.header_len + n]);
            self.header_len += n;
            if self.header_len == 5 {
                self.header_len = 0;
                let len = u32::from_be_bytes([
                    self.header[1],
                    self.header[2],
                    self.header[3],
                    self.header[4],
                ]) as usize;
                self.remaining = len;
                if len > 0 {
                    started = Some(len);
                }
            }
        }
        (started.filter(|_| self.remaining > 0), finished_held)
    }
}

impl<B> Body for BudgetBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if let Some((_, reserve)) = &mut this.waiting {
            return match reserve.as_mut().poll(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(Err(status)) => {
                    this.waiting = None;
                    Poll::Ready(Some(Err(Box::new(status))))
                }
                Poll::Ready(Ok(permit)) => {
                    let (frame, _) = this.waiting.take().expect("waiting");
                    this.held = Some(permit);
                    Poll::Ready(Some(Ok(frame)))
                }
            };
        }
        let frame = match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(Some(Ok(f))) => f,
        };
        let Some(data) = frame.data_ref() else {
            return Poll::Ready(Some(Ok(frame)));
        };
        let (started, finished_held) = this.track(data);
        if finished_held {
            this.held = None;
        }
        let Some(len) = started else {
            return Poll::Ready(Some(Ok(frame)));
        };
        // A new message is incomplete: reserve its whole length before
        // reading on.
        let units = len.div_ceil(UNIT);
        let budget = this.budget.clone();
        if units > budget.bytes.div_ceil(UNIT) {
            return Poll::Ready(Some(Err(Box::new(tonic::Status::resource_exhausted(
                format!(
                    "a {len}-byte message is more than the process's max_request_bytes_in_flight ({})",
                    budget.bytes
                ),
            )))));
        }
        let units = units as u32;
        if let Ok(p) = budget.permits.clone().try_acquire_many_owned(units) {
            this.held = Some(p);
            return Poll::Ready(Some(Ok(frame)));
        }
        let reserve: Reserve = Box::pin(async move {
            match tokio::time::timeout(WAIT, budget.permits.clone().acquire_many_owned(units)).await
            {
                Ok(Ok(p)) => Ok(p),
                _ => Err(tonic::Status::resource_exhausted(format!(
                    "the process holds max_request_bytes_in_flight ({} bytes) of incomplete messages; \
                     a {len}-byte message found no room within {WAIT:?}: retry",
                    budget.bytes
                ))),
            }
        });
        this.waiting = Some((frame, reserve));
        // Poll the wait once so it registers for a wakeup.
        self.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.waiting.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The admin port's share of the budget: an HTTP request body (remote
/// write, OTLP over HTTP, a PromQL POST) holds its bytes from the moment
/// they are read until its response is made. A body with a
/// `Content-Length` reserves that length before a byte is read (so it can
/// always finish, as a gRPC message can); a chunked body reserves each
/// chunk as it comes. A body that does not fit waits for room for at most
/// [`WAIT`] and is then answered 503 with `Retry-After`; one longer than
/// the whole budget is answered 413 at once. Handlers buffer and decode
/// bodies whole, so without this N slow uploads hold N route limits.
pub async fn http_budget(
    axum::extract::State(budget): axum::extract::State<Budget>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let refuse = |status: http::StatusCode, msg: String| {
        let mut r = (status, msg).into_response();
        if status == http::StatusCode::SERVICE_UNAVAILABLE {
            r.headers_mut().insert(
                http::header::RETRY_AFTER,
                http::HeaderValue::from_static("1"),
            );
        }
        r
    };
    let length = req
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    let chunked = req.headers().contains_key(http::header::TRANSFER_ENCODING);
    let held = Arc::new(std::sync::Mutex::new(Vec::new()));
    let req = match (length, chunked) {
        (Some(0) | None, false) => req,
        (Some(len), false) => {
            if len > budget.bytes {
                return refuse(
                    http::StatusCode::PAYLOAD_TOO_LARGE,
                    format!(
                        "a {len}-byte body is more than the process's max_request_bytes_in_flight ({})\n",
                        budget.bytes
                    ),
                );
            }
            match budget.reserve(len).await {
                Ok(p) => held.lock().unwrap_or_else(|e| e.into_inner()).push(p),
                Err(e) => return refuse(http::StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")),
            }
            req
        }
        (_, true) => req.map(|body| {
            axum::body::Body::new(ChunkBudget {
                inner: body,
                budget: budget.clone(),
                held: held.clone(),
                waiting: None,
            })
        }),
    };
    let response = next.run(req).await;
    drop(held);
    response
}

impl Budget {
    /// Reserves `len` bytes, waiting at most [`WAIT`] for room.
    async fn reserve(&self, len: usize) -> Result<OwnedSemaphorePermit, String> {
        let units = len.div_ceil(UNIT).clamp(1, Semaphore::MAX_PERMITS) as u32;
        match tokio::time::timeout(WAIT, self.permits.clone().acquire_many_owned(units)).await {
            Ok(Ok(p)) => Ok(p),
            _ => Err(format!(
                "the process holds max_request_bytes_in_flight ({} bytes) of request bodies; \
                 a {len}-byte body found no room within {WAIT:?}: retry",
                self.bytes
            )),
        }
    }
}

type ChunkReserve = Pin<Box<dyn Future<Output = Result<OwnedSemaphorePermit, String>> + Send>>;

/// A chunked HTTP body whose chunks hold budget until the response.
struct ChunkBudget {
    inner: axum::body::Body,
    budget: Budget,
    held: Arc<std::sync::Mutex<Vec<OwnedSemaphorePermit>>>,
    waiting: Option<(Frame<Bytes>, ChunkReserve)>,
}

impl Body for ChunkBudget {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if let Some((_, reserve)) = &mut this.waiting {
            return match reserve.as_mut().poll(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(Err(e)) => {
                    this.waiting = None;
                    Poll::Ready(Some(Err(e.into())))
                }
                Poll::Ready(Ok(permit)) => {
                    let (frame, _) = this.waiting.take().expect("waiting");
                    this.held
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(permit);
                    Poll::Ready(Some(Ok(frame)))
                }
            };
        }
        let frame = match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(f))) => f,
            Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e.into()))),
            other => return other.map(|o| o.map(|r| r.map_err(Into::into))),
        };
        let len = frame.data_ref().map_or(0, |d| d.len());
        if len == 0 {
            return Poll::Ready(Some(Ok(frame)));
        }
        let budget = this.budget.clone();
        this.waiting = Some((frame, Box::pin(async move { budget.reserve(len).await })));
        self.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.waiting.is_none() && self.inner.is_end_stream()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body() -> BudgetBody<http_body_util::Empty<Bytes>> {
        BudgetBody {
            inner: http_body_util::Empty::new(),
            budget: Budget::new(1 << 20),
            header: [0; 5],
            header_len: 0,
            remaining: 0,
            held: None,
            waiting: None,
        }
    }

    fn message(len: usize) -> Vec<u8> {
        let mut m = vec![0u8];
        m.extend((len as u32).to_be_bytes());
        m.extend(std::iter::repeat_n(7u8, len));
        m
    }

    #[test]
    fn the_framing_is_followed_across_chunks() {
        let mut b = body();
        // Two whole messages in one chunk: nothing to reserve.
        let mut two = message(10);
        two.extend(message(3));
        assert_eq!(b.track(&Bytes::from(two)), (None, false));
        // A 100-byte message split over three chunks, its header too.
        let m = message(100);
        assert_eq!(b.track(&Bytes::copy_from_slice(&m[..3])), (None, false));
        assert_eq!(
            b.track(&Bytes::copy_from_slice(&m[3..50])),
            (Some(100), false)
        );
        assert_eq!(b.track(&Bytes::copy_from_slice(&m[50..])), (None, true));
        // One that ends and the next that starts in the same chunk.
        let (a, c) = (message(20), message(30));
        assert_eq!(
            b.track(&Bytes::copy_from_slice(&a[..10])),
            (Some(20), false)
        );
        let mut rest = a[10..].to_vec();
        rest.extend(&c[..8]);
        assert_eq!(b.track(&Bytes::from(rest)), (Some(30), true));
        assert_eq!(b.track(&Bytes::copy_from_slice(&c[8..])), (None, true));
    }
}
