//! [`AgentClient`]: one `SendMetrics` stream with a bounded window of
//! outstanding batches, acks matched to sends by sequence number, and
//! [`AgentClient::reconnect`]: a new stream after a broken one, with
//! exponential backoff and jitter (`backon`) and failover round the endpoint
//! list.

use std::collections::HashMap;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use broker_common::security::{ClientError, ClientSecurity};
use broker_proto::v1::monitor_service_client::MonitorServiceClient;
use broker_proto::v1::{BatchAck, MetricBatch};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tracing::{debug, info, warn};

use crate::error::AgentError;

/// Largest message the client encodes or decodes (64 MiB).
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;
/// Default number of batches sent and not yet acknowledged on one stream.
pub const DEFAULT_WINDOW: usize = 8;
/// Default TCP connect timeout per endpoint.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default wait for the gateway to answer the stream open.
pub const DEFAULT_OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// HTTP/2 PING interval, so a dead gateway is noticed on an idle stream.
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Reconnect backoff: the first delay, doubled per failed attempt up to the
/// cap, each with up to as much again of random jitter.
pub const RECONNECT_BACKOFF_FIRST: Duration = Duration::from_millis(100);
pub const RECONNECT_BACKOFF_CAP: Duration = Duration::from_secs(5);
/// Failed connect attempts (one endpoint each) before
/// [`AgentClient::reconnect`] gives up.
pub const DEFAULT_RECONNECT_ATTEMPTS: usize = 20;

/// The default reconnect policy: [`RECONNECT_BACKOFF_FIRST`] doubling to
/// [`RECONNECT_BACKOFF_CAP`] with jitter, at most
/// [`DEFAULT_RECONNECT_ATTEMPTS`] retries after the first attempt.
///
/// The jitter is seeded from the process's random hasher keys: the workspace
/// builds `backon` without its `std` feature, which would otherwise give every
/// backoff the same fixed seed and so the same "random" delays.
pub fn reconnect_backoff() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(RECONNECT_BACKOFF_FIRST)
        .with_max_delay(RECONNECT_BACKOFF_CAP)
        .with_max_times(DEFAULT_RECONNECT_ATTEMPTS)
        .with_jitter()
        .with_jitter_seed(jitter_seed())
}

/// A fresh random seed for backoff jitter.
pub(crate) fn jitter_seed() -> u64 {
    std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish()
}

/// How an [`AgentClient`] connects.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Gateway endpoints (`http://127.0.0.1:9093`), tried in order on
    /// connect failure.
    pub endpoints: Vec<String>,
    /// Index of the endpoint to try first; the list is walked round from
    /// there. Lets several clients spread across the same list.
    pub first_endpoint: usize,
    /// Batches outstanding (sent, not acked) at once; `send` waits for a
    /// slot past this, which is the client's backpressure.
    pub window: usize,
    pub connect_timeout: Duration,
    pub open_timeout: Duration,
    /// TLS (the gateway's CA) and the ingest token.
    pub security: ClientSecurity,
}

impl ClientConfig {
    /// Defaults for everything but the endpoints.
    pub fn new(endpoints: Vec<String>) -> Self {
        Self {
            endpoints,
            first_endpoint: 0,
            window: DEFAULT_WINDOW,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            open_timeout: DEFAULT_OPEN_TIMEOUT,
            security: ClientSecurity::default(),
        }
    }
}

/// An open `SendMetrics` stream to one gateway.
///
/// Cheap to share by reference: [`send`](Self::send) takes `&self` and its
/// future owns what it needs, so many sends can be in flight at once (up to
/// the window) and the futures can be spawned.
///
/// The client does not resend. When the stream breaks, every outstanding
/// send resolves with [`AgentError::StreamClosed`] (retryable) and the client
/// stays closed; the caller keeps whatever it needs to resend (the load
/// generator keeps every un-acked batch in its outbox) and gets a new stream
/// from [`AgentClient::reconnect`].
#[derive(Debug)]
pub struct AgentClient {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    endpoint: Arc<str>,
    /// Position of `endpoint` in [`ClientConfig::endpoints`].
    endpoint_index: usize,
    window: Arc<Semaphore>,
    state: Arc<Mutex<StreamState>>,
    /// The task reading acks; aborted when the last user goes away.
    reader: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(reader) = lock(&self.reader).take() {
            reader.abort();
        }
    }
}

/// Everything the send side and the ack reader share, behind one lock so that
/// "register the seq, put the batch on the stream" and "the stream broke, fail
/// everything outstanding" cannot interleave.
#[derive(Debug)]
struct StreamState {
    acks: AckTable<OwnedSemaphorePermit>,
    /// Feeds the request stream. `None` once closed by us or by the stream.
    tx: Option<mpsc::UnboundedSender<MetricBatch>>,
    /// Set when the stream has ended; later sends fail at once.
    broken: Option<Option<Arc<tonic::Status>>>,
}

impl AgentClient {
    /// Connects to the first endpoint (starting at
    /// [`ClientConfig::first_endpoint`]) that accepts a `SendMetrics` stream.
    pub async fn connect(config: &ClientConfig) -> Result<Self, AgentError> {
        if config.endpoints.is_empty() {
            return Err(AgentError::NoEndpoints);
        }
        let n = config.endpoints.len();
        let mut last = None;
        for i in 0..n {
            let index = (config.first_endpoint + i) % n;
            match Self::connect_endpoint(config, index).await {
                Ok(client) => return Ok(client),
                Err(e) => {
                    let endpoint = &config.endpoints[index];
                    warn!(endpoint = %endpoint, error = %DisplayChain(&e), "gateway endpoint failed");
                    last = Some(e);
                }
            }
        }
        Err(AgentError::Unreachable {
            endpoints: config.endpoints.clone(),
            last: Box::new(last.expect("at least one endpoint was tried")),
        })
    }

    /// Opens a new stream after the one on endpoint `after` (an index into
    /// [`ClientConfig::endpoints`]) broke.
    ///
    /// Each attempt tries one endpoint, walking the list round from the one
    /// after `after`, so every failed connect fails over to the next gateway;
    /// between attempts it waits as `backoff` says (see
    /// [`reconnect_backoff`]). Gives up when `backoff` runs out, with
    /// [`AgentError::Unreachable`] holding the last failure. Bound it with a
    /// deadline as well when the caller has one.
    pub async fn reconnect(
        config: &ClientConfig,
        after: usize,
        backoff: ExponentialBuilder,
    ) -> Result<Self, AgentError> {
        if config.endpoints.is_empty() {
            return Err(AgentError::NoEndpoints);
        }
        let n = config.endpoints.len();
        let mut attempt = 0usize;
        let result = (|| {
            let index = (after + 1 + attempt) % n;
            attempt += 1;
            Self::connect_endpoint(config, index)
        })
        .retry(backoff)
        // A config problem does not heal with time; anything else (refused,
        // timed out, refused by the gateway) may, there or at the next one.
        .when(|e: &AgentError| {
            !matches!(
                e,
                AgentError::NoEndpoints
                    | AgentError::InvalidEndpoint { .. }
                    | AgentError::InvalidConfig { .. }
            )
        })
        .notify(|e: &AgentError, retry_in: Duration| {
            warn!(error = %DisplayChain(e), retry_in = ?retry_in, "gateway reconnect failed, trying the next endpoint");
        })
        .await;
        result.map_err(|last| AgentError::Unreachable {
            endpoints: config.endpoints.clone(),
            last: Box::new(last),
        })
    }

    /// Connects to exactly one endpoint, `config.endpoints[index % len]`.
    pub async fn connect_endpoint(config: &ClientConfig, index: usize) -> Result<Self, AgentError> {
        if config.endpoints.is_empty() {
            return Err(AgentError::NoEndpoints);
        }
        let index = index % config.endpoints.len();
        Self::connect_one(&config.endpoints[index], index, config).await
    }

    async fn connect_one(
        endpoint: &str,
        endpoint_index: usize,
        config: &ClientConfig,
    ) -> Result<Self, AgentError> {
        let channel = config
            .security
            .connect(endpoint, |ep| {
                ep.connect_timeout(config.connect_timeout)
                    .tcp_nodelay(true)
                    .http2_keep_alive_interval(KEEP_ALIVE_INTERVAL)
                    .keep_alive_timeout(KEEP_ALIVE_TIMEOUT)
                    .keep_alive_while_idle(true)
            })
            .await
            .map_err(|e| match e {
                ClientError::Connect { source, .. } => AgentError::Connect {
                    endpoint: endpoint.to_string(),
                    source,
                },
                e => AgentError::InvalidEndpoint {
                    endpoint: endpoint.to_string(),
                    reason: e.to_string(),
                },
            })?;
        let mut grpc = MonitorServiceClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);

        let (tx, rx) = mpsc::unbounded_channel();
        let response = tokio::time::timeout(
            config.open_timeout,
            grpc.send_metrics(UnboundedReceiverStream::new(rx)),
        )
        .await
        .map_err(|_| AgentError::OpenTimeout {
            endpoint: endpoint.to_string(),
        })?
        .map_err(|source| AgentError::Open {
            endpoint: endpoint.to_string(),
            source,
        })?;
        let acks = response.into_inner();

        let window = config.window.max(1);
        let endpoint: Arc<str> = Arc::from(endpoint);
        let state = Arc::new(Mutex::new(StreamState {
            acks: AckTable::default(),
            tx: Some(tx),
            broken: None,
        }));
        let reader = tokio::spawn(read_acks(acks, state.clone(), endpoint.clone()));
        info!(endpoint = %endpoint, window, "metrics stream open");
        Ok(Self {
            inner: Arc::new(Inner {
                endpoint,
                endpoint_index,
                window: Arc::new(Semaphore::new(window)),
                state,
                reader: Mutex::new(Some(reader)),
            }),
        })
    }

    /// Sends one batch and resolves with its ack.
    ///
    /// Waits for a window slot first (backpressure), then assigns the next
    /// sequence number (overwriting `batch.seq`) and puts the batch on the
    /// stream. The ack may carry per-point or batch-level rejections; the
    /// `Err` side is only for transport problems. The returned future owns
    /// everything it needs and can be spawned; dropping it before the ack
    /// arrives keeps the window slot taken until the ack (or the stream's
    /// end) frees it.
    pub fn send(
        &self,
        batch: MetricBatch,
    ) -> impl Future<Output = Result<BatchAck, AgentError>> + Send + 'static {
        let inner = self.inner.clone();
        async move { inner.send(batch).await }
    }

    /// The endpoint this stream is connected to.
    pub fn endpoint(&self) -> &str {
        &self.inner.endpoint
    }

    /// The position of [`endpoint`](Self::endpoint) in
    /// [`ClientConfig::endpoints`], for [`reconnect`](Self::reconnect).
    pub fn endpoint_index(&self) -> usize {
        self.inner.endpoint_index
    }

    /// Batches sent and not yet acknowledged.
    pub fn outstanding(&self) -> usize {
        lock(&self.inner.state).acks.len()
    }

    /// True once the stream has ended (broken, or closed by [`close`](Self::close)).
    pub fn is_closed(&self) -> bool {
        let state = lock(&self.inner.state);
        state.broken.is_some() || state.tx.is_none()
    }

    /// Ends the request stream and waits until the gateway has acknowledged
    /// every outstanding batch and ended its side. Sends issued after this
    /// fail with [`AgentError::Closed`]. Bound it with a timeout: a gateway
    /// that never answers makes this wait forever.
    pub async fn close(self) {
        lock(&self.inner.state).tx = None;
        let reader = lock(&self.inner.reader).take();
        if let Some(reader) = reader {
            let mut guard = AbortOnDrop(reader);
            let _ = (&mut guard.0).await;
        }
    }
}

/// Aborts the reader if `close` is cancelled part way.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Inner {
    async fn send(&self, mut batch: MetricBatch) -> Result<BatchAck, AgentError> {
        let permit = self
            .window
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| AgentError::Closed)?;
        let (seq, rx) = {
            let mut state = lock(&self.state);
            if let Some(status) = &state.broken {
                return Err(AgentError::StreamClosed {
                    endpoint: self.endpoint.to_string(),
                    seq: state.acks.next_seq(),
                    source: status.clone(),
                });
            }
            let state = &mut *state;
            let Some(tx) = &state.tx else {
                return Err(AgentError::Closed);
            };
            let (seq, rx) = state.acks.register(permit);
            batch.seq = seq;
            // Unbounded, but never holds more than `window` batches: each
            // batch on the channel holds a permit in the ack table.
            if tx.send(batch).is_err() {
                state.acks.remove(seq);
                return Err(AgentError::StreamClosed {
                    endpoint: self.endpoint.to_string(),
                    seq,
                    source: state.broken.clone().flatten(),
                });
            }
            (seq, rx)
        };
        match rx.await {
            Ok(result) => result.map_err(|status| AgentError::StreamClosed {
                endpoint: self.endpoint.to_string(),
                seq,
                source: status,
            }),
            // The table was dropped with the entry in it: the reader is gone.
            Err(_) => Err(AgentError::StreamClosed {
                endpoint: self.endpoint.to_string(),
                seq,
                source: None,
            }),
        }
    }
}

async fn read_acks(
    mut acks: tonic::Streaming<BatchAck>,
    state: Arc<Mutex<StreamState>>,
    endpoint: Arc<str>,
) {
    let status = loop {
        match acks.message().await {
            Ok(Some(ack)) => {
                let seq = ack.seq;
                if !lock(&state).acks.complete(ack) {
                    warn!(endpoint = %endpoint, seq, "ack for a batch that is not outstanding");
                }
            }
            Ok(None) => break None,
            Err(status) => break Some(Arc::new(status)),
        }
    };
    let mut state = lock(&state);
    let failed = state.acks.fail_all(&status);
    match &status {
        Some(s) => warn!(
            endpoint = %endpoint,
            code = ?s.code(),
            message = s.message(),
            unacked = failed,
            "metrics stream failed"
        ),
        None if failed > 0 => {
            warn!(endpoint = %endpoint, unacked = failed, "gateway ended the metrics stream with batches unacknowledged")
        }
        None => debug!(endpoint = %endpoint, "metrics stream ended"),
    }
    state.broken = Some(status);
    state.tx = None;
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves plain data behind; keep going.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What a waiting send receives: the ack, or the status the stream ended with.
type AckResult = Result<BatchAck, Option<Arc<tonic::Status>>>;

/// Outstanding batches by sequence number. Pure bookkeeping, no I/O: each
/// entry holds the waiter's oneshot and a token (the window permit) that is
/// released when the entry leaves the table.
#[derive(Debug)]
struct AckTable<T> {
    next_seq: u64,
    pending: HashMap<u64, (oneshot::Sender<AckResult>, T)>,
}

impl<T> Default for AckTable<T> {
    fn default() -> Self {
        Self {
            // Start at 1 so that seq 0 (the proto default) never matches.
            next_seq: 1,
            pending: HashMap::new(),
        }
    }
}

impl<T> AckTable<T> {
    fn next_seq(&self) -> u64 {
        self.next_seq
    }

    fn len(&self) -> usize {
        self.pending.len()
    }

    /// Takes the next sequence number and returns the receiver its ack will
    /// be delivered to.
    fn register(&mut self, token: T) -> (u64, oneshot::Receiver<AckResult>) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let (tx, rx) = oneshot::channel();
        self.pending.insert(seq, (tx, token));
        (seq, rx)
    }

    fn remove(&mut self, seq: u64) {
        self.pending.remove(&seq);
    }

    /// Delivers an ack to its waiter. False when no batch with that seq is
    /// outstanding (duplicate or unknown ack).
    fn complete(&mut self, ack: BatchAck) -> bool {
        match self.pending.remove(&ack.seq) {
            Some((tx, _token)) => {
                // The waiter may have given up; the slot is freed either way.
                let _ = tx.send(Ok(ack));
                true
            }
            None => false,
        }
    }

    /// Fails every outstanding batch with the stream's final status and
    /// returns how many there were.
    fn fail_all(&mut self, status: &Option<Arc<tonic::Status>>) -> usize {
        let n = self.pending.len();
        for (_, (tx, _token)) in self.pending.drain() {
            let _ = tx.send(Err(status.clone()));
        }
        n
    }
}

/// Formats an error with its sources, `a: b: c`, for one-line logs.
pub struct DisplayChain<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for DisplayChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(s) = source {
            write!(f, ": {s}")?;
            source = s.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(seq: u64, accepted: u32) -> BatchAck {
        BatchAck {
            seq,
            accepted,
            ..Default::default()
        }
    }

    #[test]
    fn seqs_are_monotonic_from_one() {
        let mut t = AckTable::<()>::default();
        let seqs: Vec<u64> = (0..5).map(|_| t.register(()).0).collect();
        assert_eq!(seqs, vec![1, 2, 3, 4, 5]);
        assert_eq!(t.len(), 5);
    }

    #[test]
    fn out_of_order_acks_reach_their_own_waiter() {
        let mut t = AckTable::<()>::default();
        let (s1, mut r1) = t.register(());
        let (s2, mut r2) = t.register(());
        let (s3, mut r3) = t.register(());
        assert!(t.complete(ack(s3, 30)));
        assert!(t.complete(ack(s1, 10)));
        assert_eq!(r3.try_recv().unwrap().unwrap().accepted, 30);
        assert_eq!(r1.try_recv().unwrap().unwrap().accepted, 10);
        assert!(r2.try_recv().is_err(), "seq {s2} not acked yet");
        assert!(t.complete(ack(s2, 20)));
        assert_eq!(r2.try_recv().unwrap().unwrap().accepted, 20);
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn unknown_and_duplicate_acks_are_refused() {
        let mut t = AckTable::<()>::default();
        let (s1, _r1) = t.register(());
        assert!(!t.complete(ack(99, 1)));
        assert!(t.complete(ack(s1, 1)));
        assert!(!t.complete(ack(s1, 1)), "second ack for the same seq");
    }

    #[test]
    fn fail_all_reaches_every_waiter_with_the_status() {
        let mut t = AckTable::<()>::default();
        let (_, mut r1) = t.register(());
        let (s2, _r2) = t.register(());
        let (_, mut r3) = t.register(());
        assert!(t.complete(ack(s2, 1)));
        let status = Some(Arc::new(tonic::Status::unavailable("gateway restarting")));
        assert_eq!(t.fail_all(&status), 2);
        for r in [&mut r1, &mut r3] {
            let err = r.try_recv().unwrap().unwrap_err().unwrap();
            assert_eq!(err.code(), tonic::Code::Unavailable);
        }
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn window_permits_are_released_when_the_entry_leaves() {
        let window = Arc::new(Semaphore::new(2));
        let mut t = AckTable::default();
        let (s1, _r1) = t.register(window.clone().try_acquire_owned().unwrap());
        let (_s2, _r2) = t.register(window.clone().try_acquire_owned().unwrap());
        assert!(window.clone().try_acquire_owned().is_err(), "window full");
        t.complete(ack(s1, 1));
        assert_eq!(window.available_permits(), 1);
        t.fail_all(&None);
        assert_eq!(window.available_permits(), 2);
    }

    #[tokio::test]
    async fn connect_with_no_endpoints_fails() {
        let err = AgentClient::connect(&ClientConfig::new(vec![]))
            .await
            .unwrap_err();
        assert!(matches!(err, AgentError::NoEndpoints));
    }

    #[tokio::test]
    async fn invalid_endpoint_is_named() {
        let err = AgentClient::connect(&ClientConfig::new(vec!["not a uri".into()]))
            .await
            .unwrap_err();
        let AgentError::Unreachable { endpoints, last } = &err else {
            panic!("unexpected {err:?}");
        };
        assert_eq!(endpoints, &["not a uri".to_string()]);
        assert!(matches!(**last, AgentError::InvalidEndpoint { .. }));
        assert!(err.to_string().contains("not a uri"));
    }

    #[tokio::test]
    async fn reconnect_walks_the_endpoints_from_the_next_one_and_gives_up() {
        let endpoints: Vec<String> = (0..3)
            .map(|_| {
                let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                format!("http://{}", l.local_addr().unwrap())
            })
            .collect();
        let config = ClientConfig::new(endpoints.clone());
        // Broke on endpoint 0: tries 1, 2, then 0 again, backing off between.
        let backoff = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(1))
            .with_max_times(2);
        let started = std::time::Instant::now();
        let err = AgentClient::reconnect(&config, 0, backoff)
            .await
            .unwrap_err();
        assert!(started.elapsed() >= Duration::from_millis(3), "backed off");
        let AgentError::Unreachable { last, .. } = &err else {
            panic!("unexpected {err:?}");
        };
        let AgentError::Connect { endpoint, .. } = &**last else {
            panic!("unexpected {last:?}");
        };
        assert_eq!(endpoint, &endpoints[0], "third attempt wrapped round");
        // One attempt only: the endpoint after `after`.
        let once = ExponentialBuilder::default().with_max_times(0);
        let err = AgentClient::reconnect(&config, 1, once).await.unwrap_err();
        let AgentError::Unreachable { last, .. } = &err else {
            panic!("unexpected {err:?}");
        };
        assert!(
            matches!(&**last, AgentError::Connect { endpoint, .. } if endpoint == &endpoints[2])
        );
        // A config problem is not retried.
        let bad = ClientConfig::new(vec!["not a uri".into()]);
        let err = AgentClient::reconnect(&bad, 0, reconnect_backoff())
            .await
            .unwrap_err();
        let AgentError::Unreachable { last, .. } = &err else {
            panic!("unexpected {err:?}");
        };
        assert!(matches!(**last, AgentError::InvalidEndpoint { .. }));
    }

    #[tokio::test]
    async fn fails_over_across_endpoints_and_names_them_all() {
        // Two loopback ports with nothing listening (bound, then released).
        let mut endpoints = Vec::new();
        for _ in 0..2 {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            endpoints.push(format!("http://{}", l.local_addr().unwrap()));
        }
        let mut config = ClientConfig::new(endpoints.clone());
        config.first_endpoint = 1;
        config.connect_timeout = Duration::from_secs(2);
        let err = AgentClient::connect(&config).await.unwrap_err();
        assert!(err.is_retryable());
        let msg = err.to_string();
        assert!(
            msg.contains(&endpoints[0]) && msg.contains(&endpoints[1]),
            "{msg}"
        );
        let AgentError::Unreachable { last, .. } = &err else {
            panic!("unexpected {err:?}");
        };
        // Started at index 1, so the last endpoint tried is index 0.
        let AgentError::Connect { endpoint, .. } = &**last else {
            panic!("unexpected {last:?}");
        };
        assert_eq!(endpoint, &endpoints[0]);
    }
}
