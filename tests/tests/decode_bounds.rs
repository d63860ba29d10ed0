//! Decode amplification (issue 14, class 3): a message of empty points is
//! a few MiB on the wire and hundreds of MiB decoded. Its points are
//! counted on the wire bytes and it is refused, naming the limit, before
//! prost allocates them; the broker's peak memory barely moves, and it
//! goes on serving. Alone in its test binary, so the process's peak
//! resident size (`VmHWM`) is this test's.

use broker_common::Service;
use broker_proto::v1::{BatchAck, MetricBatch};
use broker_tests::*;
use prost::Message;
use prost::bytes::{Buf, BufMut, Bytes};
use redis_process::RedisServer;
use tonic::Code;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

/// Sends pre-encoded messages as they are; decodes answers with prost.
struct Raw<U>(std::marker::PhantomData<U>);

impl<U: Message + Default + Send + 'static> Codec for Raw<U> {
    type Encode = Bytes;
    type Decode = U;
    type Encoder = RawEncoder;
    type Decoder = Answers<U>;

    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }

    fn decoder(&mut self) -> Answers<U> {
        Answers(std::marker::PhantomData)
    }
}

struct RawEncoder;

impl Encoder for RawEncoder {
    type Item = Bytes;
    type Error = tonic::Status;

    fn encode(&mut self, item: Bytes, buf: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        buf.put_slice(&item);
        Ok(())
    }
}

struct Answers<U>(std::marker::PhantomData<U>);

impl<U: Message + Default> Decoder for Answers<U> {
    type Item = U;
    type Error = tonic::Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, tonic::Status> {
        let msg = U::decode(buf.chunk()).map_err(|e| tonic::Status::internal(e.to_string()))?;
        buf.advance(buf.remaining());
        Ok(Some(msg))
    }
}

async fn channel(endpoint: &str) -> tonic::client::Grpc<tonic::transport::Channel> {
    let ch = tonic::transport::Endpoint::from_shared(endpoint.to_string())
        .unwrap()
        .connect()
        .await
        .unwrap();
    tonic::client::Grpc::new(ch).max_encoding_message_size(64 << 20)
}

/// `n` empty points (field 3, length 0): 2 bytes each.
fn empty_points(n: usize) -> Vec<u8> {
    [0x1a, 0x00].repeat(n)
}

/// Peak resident size of this process, bytes.
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/self/status");
    kb * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_of_empty_points_is_refused_before_it_is_decoded() {
    let redis = RedisServer::start().unwrap();
    let broker = Running::broker(config_for(&redis.url()), &Service::DEFAULT).await;
    let endpoint = broker.endpoint();
    // Warm up (connections, pools, first allocations), then measure.
    let ts = now() - 30;
    let acks = send_batches(
        &endpoint,
        vec![MetricBatch {
            seq: 1,
            metric_names: metric_names(4),
            points: vec![point("warm", ts, 4)],
        }],
    )
    .await;
    assert_eq!(acks[0].accepted, 1, "{:?}", acks[0]);
    let before = peak_rss();

    // The agent stream: 15 MiB of empty points (7.8 million), under
    // gateway.max_message_bytes (16 MiB).
    let mut grpc = channel(&endpoint).await;
    grpc.ready().await.unwrap();
    let msg = Bytes::from(empty_points(7_800_000));
    let answer = grpc
        .streaming(
            tonic::Request::new(tokio_stream::iter(vec![msg])),
            "/broker.v1.MonitorService/SendMetrics".parse().unwrap(),
            Raw::<BatchAck>(std::marker::PhantomData),
        )
        .await;
    let status = match answer {
        Err(s) => s,
        Ok(r) => match r.into_inner().message().await {
            Err(s) => s,
            Ok(ack) => tonic::Status::unknown(format!("{ack:?}")),
        },
    };
    println!(
        "peak RSS after the stream message: {} MiB",
        peak_rss() >> 20
    );
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status
            .message()
            .contains("more than 2 x 10000 points (2 x gateway.max_points_per_batch)"),
        "{}",
        status.message()
    );

    // WriterService.Write, straight: 60 MiB of empty points in one
    // request, under the internal 64 MiB message limit.
    let mut grpc = channel(&broker.internal_endpoint()).await;
    grpc.ready().await.unwrap();
    let batch = empty_points(30_000_000);
    let mut req = Vec::with_capacity(batch.len() + 8);
    req.put_u8(0x0a);
    prost::encoding::encode_varint(batch.len() as u64, &mut req);
    req.extend_from_slice(&batch);
    drop(batch);
    let status = grpc
        .unary(
            tonic::Request::new(Bytes::from(req)),
            "/broker.v1.WriterService/Write".parse().unwrap(),
            Raw::<broker_proto::v1::WriteResponse>(std::marker::PhantomData),
        )
        .await
        .map(|r| tonic::Status::unknown(format!("{:?}", r.into_inner())))
        .unwrap_or_else(|s| s);
    println!("peak RSS after the Write: {} MiB", peak_rss() >> 20);
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("gateway.max_points_per_batch"),
        "{}",
        status.message()
    );

    let after = peak_rss();
    let grew = after.saturating_sub(before);
    println!(
        "peak RSS {} MiB before, {} MiB after a 15 MiB stream message and a 60 MiB Write of empty points (+{} MiB)",
        before >> 20,
        after >> 20,
        grew >> 20
    );
    // The messages themselves are buffered (15 + 60 MiB on the wire, held
    // by both ends of the loopback); decoded they would be about 4.6 GB.
    assert!(
        grew < 400 << 20,
        "peak RSS grew by {} MiB: the empty points were decoded",
        grew >> 20
    );

    // The broker goes on serving.
    let acks = send_batches(
        &endpoint,
        vec![MetricBatch {
            seq: 2,
            metric_names: metric_names(4),
            points: vec![point("after", ts, 4)],
        }],
    )
    .await;
    assert_eq!(acks[0].accepted, 1, "{:?}", acks[0]);
    broker.stop().await;
}

/// Agent streams per process are bounded (`gateway.max_streams`): one more
/// is refused with RESOURCE_EXHAUSTED naming the limit, and a closed
/// stream makes room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_past_max_streams_are_refused() {
    use broker_proto::v1::monitor_service_client::MonitorServiceClient;
    let redis = RedisServer::start().unwrap();
    let mut config = config_for(&redis.url());
    config.gateway.max_streams = 2;
    let broker = Running::broker(config, &Service::DEFAULT).await;
    let open = |seq| {
        let endpoint = broker.endpoint();
        async move {
            let mut client = MonitorServiceClient::connect(endpoint).await.unwrap();
            let (tx, rx) = tokio::sync::mpsc::channel::<MetricBatch>(1);
            let answer = client
                .send_metrics(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await;
            // Served streams ack their first batch.
            let mut inbound = answer?.into_inner();
            tx.send(MetricBatch {
                seq,
                metric_names: metric_names(1),
                points: vec![point("streams", now() - 30, 1)],
            })
            .await
            .unwrap();
            let ack = inbound.message().await?.expect("an ack");
            assert_eq!(ack.accepted, 1, "{ack:?}");
            Ok::<_, tonic::Status>((tx, inbound))
        }
    };
    let first = open(1).await.expect("first stream");
    let _second = open(2).await.expect("second stream");
    let e = open(3).await.map(|_| ()).unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(
        e.message().contains("gateway.max_streams"),
        "{}",
        e.message()
    );
    // The agent closes its stream: the gateway drains it and makes room.
    let (tx, mut inbound) = first;
    drop(tx);
    while inbound.message().await.unwrap().is_some() {}
    let mut third = None;
    for _ in 0..50 {
        match open(4).await {
            Ok(s) => {
                third = Some(s);
                break;
            }
            Err(e) if e.code() == Code::ResourceExhausted => {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await
            }
            Err(e) => panic!("{e:?}"),
        }
    }
    assert!(third.is_some(), "no room after a stream closed");
    broker.stop().await;
}
