//! Bounds on what a [`MetricBatch`](crate::v1::MetricBatch) may decode to,
//! checked on its wire bytes before prost allocates anything.
//!
//! An element costs more decoded than encoded: an empty point is 2 bytes on
//! the wire and over 100 in memory, an empty name-table entry 2 and 24, so
//! a 16 MiB message of empty points decodes to about 1 GB before any
//! count check on the decoded batch could run. [`Codec`], the codec of
//! every generated service, walks the fields of a `MetricBatch` (also inside
//! `RouteRequest` / `WriteRequest`) and refuses one with more points, name
//! table entries, values or labels than the [`BatchBounds`] in scope,
//! naming the limit. The bounds are runtime configuration, and a tonic codec
//! is built with `Default`: so they travel in a task-local, set by
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

/// The most a batch may hold, from `gateway.*` (the same limits the
/// validation applies after decoding).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchBounds {
    pub max_points: usize,
    pub max_metrics_per_point: usize,
    pub max_labels_per_point: usize,
}

impl BatchBounds {
    /// Entries a name table may hold: every point naming different metrics.
    fn max_names(&self) -> usize {
        self.max_points.saturating_mul(self.max_metrics_per_point)
    }
}

tokio::task_local! {
    static BOUNDS: BatchBounds;
}

/// Runs `fut` with `bounds` applying to every batch it decodes.
pub async fn scope<F: Future>(bounds: BatchBounds, fut: F) -> F::Output {
    BOUNDS.scope(bounds, fut).await
}

/// Checks the wire bytes of a `MetricBatch` against `b`; the error names
/// the limit. Malformed bytes pass (prost's decode refuses them).
pub fn check_batch(buf: &[u8], b: &BatchBounds) -> Result<(), String> {
    check_batch_counting(buf, b, &mut (0, 0))
}

/// As [`check_batch`], counting on from `(points, names)` seen before.
fn check_batch_counting(
    mut buf: &[u8],
    b: &BatchBounds,
    (points, names): &mut (usize, usize),
) -> Result<(), String> {
    while buf.has_remaining() {
        let Ok((tag, wire)) = decode_key(&mut buf) else {
            return Ok(());
        };
        match (tag, wire) {
            (2, WireType::LengthDelimited) => {
                *names += 1;
                if *names > b.max_names() {
                    return Err(format!(
                        "metric_names has more than {} entries (gateway.max_points_per_batch x gateway.max_metrics_per_point)",
                        b.max_names()
                    ));
                }
                if skip_field(wire, tag, &mut buf, DecodeContext::default()).is_err() {
                    return Ok(());
                }
            }
            (3, WireType::LengthDelimited) => {
                *points += 1;
                if *points > b.max_points {
                    return Err(format!(
                        "the batch has more than {} points (gateway.max_points_per_batch); split it",
                        b.max_points
                    ));
                }
                let Some(point) = delimited(&mut buf) else {
                    return Ok(());
                };
                check_point(point, b).map_err(|e| format!("point {}: {e}", *points - 1))?;
            }
            _ => {
                if skip_field(wire, tag, &mut buf, DecodeContext::default()).is_err() {
                    return Ok(());
                }
            }
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

fn check_point(mut buf: &[u8], b: &BatchBounds) -> Result<(), String> {
    let (mut values, mut indexes, mut labels) = (0usize, 0usize, 0usize);
    while buf.has_remaining() {
        let Ok((tag, wire)) = decode_key(&mut buf) else {
            return Ok(());
        };
        match (tag, wire) {
            // Packed doubles: 8 bytes each.
            (3, WireType::LengthDelimited) => {
                let Some(f) = delimited(&mut buf) else {
                    return Ok(());
                };
                values += f.len() / 8;
            }
            // Packed varints: one ends at each byte below 0x80.
            (4, WireType::LengthDelimited) => {
                let Some(f) = delimited(&mut buf) else {
                    return Ok(());
                };
                indexes += f.iter().filter(|&&x| x < 0x80).count();
            }
            (3, _) => {
                values += 1;
                if skip_field(wire, tag, &mut buf, DecodeContext::default()).is_err() {
                    return Ok(());
                }
            }
            (4, _) => {
                indexes += 1;
                if skip_field(wire, tag, &mut buf, DecodeContext::default()).is_err() {
                    return Ok(());
                }
            }
            (5, _) => {
                labels += 1;
                if skip_field(wire, tag, &mut buf, DecodeContext::default()).is_err() {
                    return Ok(());
                }
            }
            _ => {
                if skip_field(wire, tag, &mut buf, DecodeContext::default()).is_err() {
                    return Ok(());
                }
            }
        }
        if values.max(indexes) > b.max_metrics_per_point {
            return Err(format!(
                "more than {} metrics (gateway.max_metrics_per_point)",
                b.max_metrics_per_point
            ));
        }
        if labels > b.max_labels_per_point {
            return Err(format!(
                "more than {} labels (gateway.max_labels_per_point)",
                b.max_labels_per_point
            ));
        }
    }
    Ok(())
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
    let mut seen = (0, 0);
    while buf.has_remaining() {
        let Ok((tag, wire)) = decode_key(&mut buf) else {
            return Ok(());
        };
        if (tag, wire) == (1, WireType::LengthDelimited) {
            let Some(batch) = delimited(&mut buf) else {
                return Ok(());
            };
            check_batch_counting(batch, b, &mut seen)?;
        } else if skip_field(wire, tag, &mut buf, DecodeContext::default()).is_err() {
            return Ok(());
        }
    }
    Ok(())
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
    fn counts_match_the_decoded_batch() {
        assert_eq!(check_batch(&batch(vec![point(4, 2); 3], 12), &B), Ok(()));
        let e = |b: Vec<u8>| check_batch(&b, &B).unwrap_err();
        assert!(e(batch(vec![point(1, 0); 4], 1)).contains("gateway.max_points_per_batch"));
        assert!(e(batch(vec![point(1, 0)], 13)).contains("metric_names has more than 12"));
        assert!(
            e(batch(vec![point(0, 0), point(5, 0)], 5)).starts_with("point 1: more than 4 metrics")
        );
        assert!(e(batch(vec![point(1, 3)], 1)).contains("gateway.max_labels_per_point"));
        // Empty points: two bytes each on the wire, counted all the same.
        let empty = batch(vec![Point::default(); 4], 0);
        assert_eq!(empty.len(), 2 + 4 * 2);
        assert!(check_batch(&empty, &B).is_err());
        // Inside the internal requests too.
        let route = |n| {
            RouteRequest {
                batch: Some(MetricBatch::decode(&*batch(vec![point(1, 0); n], 1)).unwrap()),
            }
            .encode_to_vec()
        };
        assert!(check::<RouteRequest>(&route(4), &B).is_err());
        assert_eq!(check::<Point>(&route(4), &B), Ok(()));
        // Two occurrences of the batch field merge: 2 + 2 points.
        let twice = [route(2), route(2)].concat();
        assert_eq!(
            RouteRequest::decode(&*twice)
                .unwrap()
                .batch
                .unwrap()
                .points
                .len(),
            4
        );
        assert!(check::<RouteRequest>(&twice, &B).is_err());
        assert_eq!(check::<RouteRequest>(&route(3), &B), Ok(()));
        // Garbage is left to prost.
        assert_eq!(check_batch(&[0xff, 0xff, 0xff], &B), Ok(()));
    }
}
