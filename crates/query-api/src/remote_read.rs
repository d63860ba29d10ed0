//! Prometheus remote read: `POST /api/v1/read`, a snappy-compressed
//! `prometheus.ReadRequest` answered with one snappy-compressed
//! `ReadResponse` of raw samples (the `SAMPLES` response type), so a
//! Prometheus can use the broker as long-term storage
//! (`remote_read: - url: http://<query-api>/api/v1/read`).
//!
//! Each query's matchers select series exactly as a PromQL selector with
//! the same matchers does ([`crate::promql::series`]: the same host list,
//! limits and timeout), and every sample in `[start, end]` comes back.
//! Series carry the labels the broker shows in PromQL, except `host` where
//! it only repeats the series' own `instance` (`instance="h:9100"`,
//! `host="h"`: a remote-written series), so a Prometheus reading back what
//! it wrote sees its own series, not a copy with one more label.

use crate::error::QueryError;
use crate::http::HttpState;
use crate::promql::{Labels, Series};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use broker_proto::prometheus::label_matcher::Type as MatchType;
use broker_proto::prometheus::read_request::ResponseType;
use broker_proto::prometheus::{
    Label, LabelMatcher, Query, QueryResult, ReadRequest, ReadResponse, Sample, TimeSeries,
};
use prost::Message;

pub const PATH: &str = "/api/v1/read";
/// Largest request body (compressed and not): a read request is a few
/// matchers per query.
const MAX_REQUEST_BYTES: usize = 1 << 20;

pub fn routes() -> Router<HttpState> {
    Router::new()
        .route(PATH, post(read))
        .layer(DefaultBodyLimit::max(MAX_REQUEST_BYTES))
}

/// A matcher as PromQL text, `name="value"` with the value escaped as a
/// PromQL string.
fn matcher_text(m: &LabelMatcher) -> Result<String, QueryError> {
    let op = match MatchType::try_from(m.r#type) {
        Ok(MatchType::Eq) => "=",
        Ok(MatchType::Neq) => "!=",
        Ok(MatchType::Re) => "=~",
        Ok(MatchType::Nre) => "!~",
        Err(_) => {
            return Err(QueryError::invalid(
                "matchers",
                format!("unknown matcher type {}", m.r#type),
            ));
        }
    };
    let name_ok = !m.name.is_empty()
        && m.name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && !m.name.starts_with(|c: char| c.is_ascii_digit());
    if !name_ok {
        return Err(QueryError::invalid(
            "matchers",
            format!("{:?} is not a label name", m.name),
        ));
    }
    let mut value = String::with_capacity(m.value.len() + 2);
    for c in m.value.chars() {
        match c {
            '\\' => value.push_str("\\\\"),
            '"' => value.push_str("\\\""),
            '\n' => value.push_str("\\n"),
            c => value.push(c),
        }
    }
    Ok(format!("{}{op}\"{value}\"", m.name))
}

/// The selector a query's matchers make, `{a="b",c=~"d"}`.
fn selector(q: &Query) -> Result<promql_parser::parser::VectorSelector, QueryError> {
    let parts = q
        .matchers
        .iter()
        .map(matcher_text)
        .collect::<Result<Vec<_>, _>>()?;
    let text = format!("{{{}}}", parts.join(","));
    match promql_parser::parser::parse(&text) {
        Ok(promql_parser::parser::Expr::VectorSelector(vs)) => Ok(vs),
        Ok(_) => Err(QueryError::invalid(
            "matchers",
            format!("{text} is not a selector"),
        )),
        Err(e) => Err(QueryError::invalid("matchers", format!("{text}: {e}"))),
    }
}

/// The labels remote read answers with: `host` left out where it only
/// repeats `instance`.
fn read_labels(mut l: Labels) -> Vec<Label> {
    if let (Some(host), Some(instance)) = (l.get("host"), l.get("instance"))
        && broker_common::host_id::from_instance(instance) == *host
    {
        l.remove("host");
    }
    l.into_iter()
        .map(|(name, value)| Label { name, value })
        .collect()
}

fn to_timeseries(s: Series) -> TimeSeries {
    TimeSeries {
        labels: read_labels(s.labels),
        samples: s
            .points
            .into_iter()
            .map(|(timestamp, value)| Sample { value, timestamp })
            .collect(),
    }
}

async fn answer(s: &HttpState, req: ReadRequest) -> Result<ReadResponse, QueryError> {
    if !req.accepted_response_types.is_empty()
        && !req
            .accepted_response_types
            .contains(&(ResponseType::Samples as i32))
    {
        return Err(QueryError::invalid(
            "accepted_response_types",
            "only SAMPLES responses are served (not STREAMED_XOR_CHUNKS)",
        ));
    }
    let engine = &s.engine;
    let timeout = engine.config().timeout;
    engine
        .run_within("prom_remote_read", timeout, async {
            let mut results = Vec::with_capacity(req.queries.len());
            for q in &req.queries {
                if q.end_timestamp_ms < q.start_timestamp_ms {
                    return Err(QueryError::invalid(
                        "end_timestamp_ms",
                        "is before start_timestamp_ms",
                    ));
                }
                let vs = selector(q)?;
                let series =
                    crate::promql::series(&**engine, &vs, q.start_timestamp_ms, q.end_timestamp_ms)
                        .await?;
                results.push(QueryResult {
                    timeseries: series.into_iter().map(to_timeseries).collect(),
                });
            }
            Ok(ReadResponse { results })
        })
        .await
}

async fn read(State(s): State<HttpState>, body: Bytes) -> Response {
    let raw = match snap::raw::decompress_len(&body) {
        Ok(n) if n > MAX_REQUEST_BYTES => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the request decompresses to {n} bytes, the limit is {MAX_REQUEST_BYTES}"),
            );
        }
        Ok(_) => match snap::raw::Decoder::new().decompress_vec(&body) {
            Ok(raw) => raw,
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("the body does not decompress: {e}"),
                );
            }
        },
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("the body is not snappy-compressed: {e}"),
            );
        }
    };
    let req = match ReadRequest::decode(raw.as_slice()) {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("the body is not a prometheus.ReadRequest: {e}"),
            );
        }
    };
    match answer(&s, req).await {
        Ok(resp) => {
            let body = snap::raw::Encoder::new()
                .compress_vec(&resp.encode_to_vec())
                .expect("snappy compresses any buffer");
            let mut r = (StatusCode::OK, body).into_response();
            let h = r.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/x-protobuf"),
            );
            h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("snappy"));
            r
        }
        Err(e) => error(
            StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            e.to_string(),
        ),
    }
}

/// Prometheus logs the body of an error answer.
fn error(code: StatusCode, message: String) -> Response {
    (code, message).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(t: MatchType, name: &str, value: &str) -> LabelMatcher {
        LabelMatcher {
            r#type: t as i32,
            name: name.into(),
            value: value.into(),
        }
    }

    #[test]
    fn matchers_become_a_selector() {
        let q = Query {
            matchers: vec![
                m(MatchType::Eq, "__name__", "node_load1"),
                m(MatchType::Re, "job", "no\\d+|x\"y"),
                m(MatchType::Nre, "mode", ""),
            ],
            ..Default::default()
        };
        let vs = selector(&q).unwrap();
        let got: Vec<String> = vs.matchers.matchers.iter().map(|m| m.to_string()).collect();
        assert_eq!(got.len(), 3, "{got:?}");
        let re = vs
            .matchers
            .matchers
            .iter()
            .find(|m| m.name == "job")
            .unwrap();
        assert!(re.is_match("no12") && re.is_match("x\"y") && !re.is_match("no"));
        let bad = Query {
            matchers: vec![m(MatchType::Eq, "a b", "x")],
            ..Default::default()
        };
        assert!(selector(&bad).unwrap_err().to_string().contains("\"a b\""));
    }

    #[test]
    fn host_is_left_out_only_where_it_repeats_instance() {
        let l = |pairs: &[(&str, &str)]| -> Labels {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let names = |ls: Vec<Label>| ls.into_iter().map(|l| l.name).collect::<Vec<_>>();
        assert_eq!(
            names(read_labels(l(&[
                ("__name__", "up"),
                ("host", "h"),
                ("instance", "h:9100")
            ]))),
            vec!["__name__", "instance"]
        );
        assert_eq!(
            names(read_labels(l(&[
                ("__name__", "up"),
                ("host", "web-1"),
                ("instance", "i-1")
            ]))),
            vec!["__name__", "host", "instance"]
        );
        assert_eq!(
            names(read_labels(l(&[("__name__", "cpu_user"), ("host", "h")]))),
            vec!["__name__", "host"]
        );
    }
}
