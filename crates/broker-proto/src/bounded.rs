//! Bounds on what a [`MetricBatch`](crate::v1::MetricBatch) may decode to,
//! checked on its wire bytes before prost allocates anything.
//!
//! An element costs more decoded than encoded: an empty point is 2 bytes on
//! the wire and over 100 in memory, an empty name-table entry 2 and 24, so
//! a 16 MiB message of empty points decodes to about 1 GB before any
//! count check on the decoded batch could run. [`Codec`], the codec of
//! every generated service, walks the fields of a `MetricBatch` (also inside
//! `RouteRequest` / `WriteRequest`) and refuses one with more than
//! [`DECODE_MARGIN`] times the points, name table entries, values or labels
//! the [`BatchBounds`] in scope allow, naming the limit. Within that margin
//! the batch is decoded and the validation gives it its own errors (a batch
//! error, per-point errors) while the stream goes on. The bounds are
//! runtime configuration, and a tonic codec is built with `Default`: so
//! they travel in a task-local, set by
//! [`scope`] around the decode (the gateway's stream reader,
//! [`Bounded`] around the unary internal services). Out of any scope, no
//! bound applies beyond the message size.
//!
//! This is a count over the wire format with prost's own primitives, not a
//! second decoder: malformed input is left for prost to refuse.

use crate::v1::{MetricBatch, RouteRequest, WriteRequest};
use prost::bytes::Buf;
use prost::encoding::{DecodeContext, WireType, decode_key, decode_varint, skip_field};
use std::any::TypeId;
use std::marker::PhantomData;
use tonic::Status;
use tonic::codec::{DecodeBuf, Decoder};
use tonic_prost::{ProstDecoder, ProstEncoder};

/// The most a batch may hold, from `gateway.*` (the limits the validation
/// applies after decoding).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchBounds {
    pub max_points: usize,
    pub max_metrics_per_point: usize,
    pub max_labels_per_point: usize,
}

/// How far past the limits a batch is still decoded. Up to there a batch
/// over a limit gets its own error (a batch error, or a per-point one) and
/// its stream goes on, as the delivery contract says; past it the message
/// is refused before decoding and the stream ends. What a batch decodes to
/// is then bounded by the configured limits, not by its size on the wire.
pub const DECODE_MARGIN: usize = 2;

/// What one batch holds, counted on its wire bytes.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Counts {
    points: usize,
    names: usize,
    values: usize,
    indexes: usize,
    labels: usize,
}

impl Counts {
    /// The first count past `DECODE_MARGIN` times its limit, named.
    fn over(&self, b: &BatchBounds) -> Option<String> {
        let m = DECODE_MARGIN;
        let per_metric = b.max_points.saturating_mul(b.max_metrics_per_point);
        let checks = [
            (
                self.points,
                b.max_points,
                "points",
                "gateway.max_points_per_batch",
            ),
            (
                self.names,
                per_metric,
                "metric_names entries",
                "gateway.max_points_per_batch x gateway.max_metrics_per_point",
            ),
            (
                self.values.max(self.indexes),
                per_metric,
                "values",
                "gateway.max_points_per_batch x gateway.max_metrics_per_point",
            ),
            (
                self.labels,
                b.max_points.saturating_mul(b.max_labels_per_point),
                "labels",
                "gateway.max_points_per_batch x gateway.max_labels_per_point",
            ),
        ];
        checks.into_iter().find_map(|(n, limit, what, key)| {
            (n > limit.saturating_mul(m)).then(|| {
                format!(
                    "the batch has more than {m} x {limit} {what} ({m} x {key}); refused before decoding, split it"
                )
            })
        })
    }
}

tokio::task_local! {
    static BOUNDS: BatchBounds;
}

/// Runs `fut` with `bounds` applying to every batch it decodes.
pub async fn scope<F: Future>(bounds: BatchBounds, fut: F) -> F::Output {
    BOUNDS.scope(bounds, fut).await
}

/// Checks the wire bytes of a `MetricBatch` against `b` (with
/// [`DECODE_MARGIN`]); the error names the limit. Malformed bytes pass
/// (prost's decode refuses them).
pub fn check_batch(buf: &[u8], b: &BatchBounds) -> Result<(), String> {
    let mut counts = Counts::default();
    count_batch(buf, &mut counts, b)?;
    counts.over(b).map_or(Ok(()), Err)
}

/// Adds what the batch at `buf` holds to `c`, stopping as soon as a count
/// is past its bound.
fn count_batch(mut buf: &[u8], c: &mut Counts, b: &BatchBounds) -> Result<(), String> {
    while buf.has_remaining() {
        let Ok((tag, wire)) = decode_key(&mut buf) else {
            return Ok(());
        };
        match (tag, wire) {
            (2, WireType::LengthDelimited) => c.names += 1,
            (3, WireType::LengthDelimited) => {
                c.points += 1;
                let Some(point) = delimited(&mut buf) else {
                    return Ok(());
                };
                count_point(point, c);
                if let Some(e) = c.over(b) {
                    return Err(e);
                }
                continue;
            }
            _ => {}
        }
        if skip_field(wire, tag, &mut buf, DecodeContext::default()).is_err() {
            return Ok(());
        }
    }
    Ok(())
}

/// The length-delimited field at `buf`, which is advanced past it.
fn delimited<'a>(buf: &mut &'a [u8]) -> Option<&'a [u8]> {
    let len = usize::try_from(decode_varint(buf).ok()?).ok()?;
    if len > buf.len() {
        return None;
    }
    let (field, rest) = buf.split_at(len);
    *buf = rest;
    Some(field)
}

fn count_point(mut buf: &[u8], c: &mut Counts) {
    while buf.has_remaining() {
        let Ok((tag, wire)) = decode_key(&mut buf) else {
            return;
        };
        match (tag, wire) {
            // Packed doubles: 8 bytes each.
            (3, WireType::LengthDelimited) => {
                let Some(f) = delimited(&mut buf) else {
                    return;
                };
                c.values += f.len() / 8;
                continue;
            }
            // Packed varints: one ends at each byte below 0x80.
            (4, WireType::LengthDelimited) => {
                let Some(f) = delimited(&mut buf) else {
                    return;
                };
                c.indexes += f.iter().filter(|&&x| x < 0x80).count();
                continue;
            }
            (3, _) => c.values += 1,
            (4, _) => c.indexes += 1,
            (5, _) => c.labels += 1,
            _ => {}
        }
        if skip_field(wire, tag, &mut buf, DecodeContext::default()).is_err() {
            return;
        }
    }
}

/// Checks the `MetricBatch` in a message of type `U`, if it holds one:
/// the message itself, or field 1 of `RouteRequest` / `WriteRequest`.
fn check<U: 'static>(mut buf: &[u8], b: &BatchBounds) -> Result<(), String> {
    let t = TypeId::of::<U>();
    if t == TypeId::of::<MetricBatch>() {
        return check_batch(buf, b);
    }
    if t != TypeId::of::<RouteRequest>() && t != TypeId::of::<WriteRequest>() {
        return Ok(());
    }
    // Protobuf merges every occurrence of a message field into one, so
    // their points count together.
    let mut seen = Counts::default();
    while buf.has_remaining() {
        let Ok((tag, wire)) = decode_key(&mut buf) else {
            return Ok(());
        };
        if (tag, wire) == (1, WireType::LengthDelimited) {
            let Some(batch) = delimited(&mut buf) else {
                return Ok(());
            };
            count_batch(batch, &mut seen, b)?;
        } else if skip_field(wire, tag, &mut buf, DecodeContext::default()).is_err() {
            return Ok(());
        }
    }
    seen.over(b).map_or(Ok(()), Err)
}

/// tonic-prost's codec, with the batch bounds checked before decoding.
#[derive(Debug, Clone, Copy)]
pub struct Codec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for Codec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> tonic::codec::Codec for Codec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = BoundedDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::default()
    }

    fn decoder(&mut self) -> Self::Decoder {
        BoundedDecoder(ProstDecoder::default())
    }
}

/// [`ProstDecoder`] after [`check_batch`].
#[derive(Debug, Clone)]
pub struct BoundedDecoder<U>(ProstDecoder<U>);

impl<U: prost::Message + Default + 'static> Decoder for BoundedDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        if let Ok(bounds) = BOUNDS.try_with(|b| *b) {
            check::<U>(buf.chunk(), &bounds).map_err(Status::invalid_argument)?;
        }
        self.0.decode(buf)
    }

    fn buffer_settings(&self) -> tonic::codec::BufferSettings {
        self.0.buffer_settings()
    }
}

/// A service whose requests are decoded under `bounds` (for unary
/// services, whose request is decoded before the handler runs).
#[derive(Debug, Clone)]
pub struct Bounded<S> {
    inner: S,
    bounds: BatchBounds,
}

impl<S> Bounded<S> {
    pub fn new(inner: S, bounds: BatchBounds) -> Self {
        Self { inner, bounds }
    }
}

impl<S: tonic::server::NamedService> tonic::server::NamedService for Bounded<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, R> tonic::codegen::Service<R> for Bounded<S>
where
    S: tonic::codegen::Service<R>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = std::pin::Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: R) -> Self::Future {
        Box::pin(BOUNDS.scope(self.bounds, self.inner.call(req)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::Point;
    use prost::Message;

    const B: BatchBounds = BatchBounds {
        max_points: 3,
        max_metrics_per_point: 4,
        max_labels_per_point: 2,
    };

    fn point(values: usize, labels: usize) -> Point {
        Point {
            millis: 0,
            host_id: "h".into(),
            timestamp: 1,
            values: vec![1.0; values],
            name_index: (0..values as u32).collect(),
            labels: (0..labels).map(|i| (format!("l{i}"), "v".into())).collect(),
        }
    }

    fn batch(points: Vec<Point>, names: usize) -> Vec<u8> {
        MetricBatch {
            seq: 1,
            metric_names: (0..names).map(|i| format!("m{i}")).collect(),
            points,
        }
        .encode_to_vec()
    }

    #[test]
    fn counts_past_twice_the_limits_are_refused() {
        // Up to twice the limits (6 points, 24 names or values, 12
        // labels): decoded, and validation gives each its own error.
        assert_eq!(check_batch(&batch(vec![point(4, 2); 6], 24), &B), Ok(()));
        assert_eq!(
            check_batch(&batch(vec![point(0, 0), point(5, 0)], 5), &B),
            Ok(())
        );
        let e = |b: Vec<u8>| check_batch(&b, &B).unwrap_err();
        assert!(
            e(batch(vec![point(1, 0); 7], 1))
                .contains("more than 2 x 3 points (2 x gateway.max_points_per_batch)")
        );
        assert!(e(batch(vec![point(1, 0)], 25)).contains("2 x 12 metric_names entries"));
        assert!(e(batch(vec![point(13, 0), point(13, 0)], 1)).contains("2 x 12 values"));
        assert!(
            e(batch(vec![point(1, 7), point(1, 6)], 1)).contains("gateway.max_labels_per_point")
        );
        // Empty points: two bytes each on the wire, counted all the same.
        let empty = batch(vec![Point::default(); 7], 0);
        assert_eq!(empty.len(), 2 + 7 * 2);
        assert!(check_batch(&empty, &B).is_err());
        // Inside the internal requests too.
        let route = |n| {
            RouteRequest {
                batch: Some(MetricBatch::decode(&*batch(vec![point(1, 0); n], 1)).unwrap()),
            }
            .encode_to_vec()
        };
        assert!(check::<RouteRequest>(&route(7), &B).is_err());
        assert_eq!(check::<Point>(&route(7), &B), Ok(()));
        // Two occurrences of the batch field merge: 4 + 4 points.
        let twice = [route(4), route(4)].concat();
        assert_eq!(
            RouteRequest::decode(&*twice)
                .unwrap()
                .batch
                .unwrap()
                .points
                .len(),
            8
        );
        assert!(check::<RouteRequest>(&twice, &B).is_err());
        assert_eq!(check::<RouteRequest>(&route(6), &B), Ok(()));
        // Garbage is left to prost.
        assert_eq!(check_batch(&[0xff, 0xff, 0xff], &B), Ok(()));
    }
}
