//! The HTTP side: the JSON API under `/api/query/` (same semantics as the
//! gRPC `QueryService`), the dashboard under `/dashboard/`, and request
//! parameter parsing shared with the Prometheus API.
//!
//! | request | answer |
//! |---|---|
//! | `GET /api/query/point?host=&ts=[&metrics=a,b]` | one snapshot; 404 if none |
//! | `GET /api/query/range?host=&start=&end=[&metrics=][&limit=][&max_points=]` | columnar series; with `max_points`, at most that many rows (avg in `metrics`, plus `min`, `max` and `bucket_secs` when downsampled) |
//! | `GET /api/query/aggregate?function=&metric=&start=&end=[&step=][&hosts=][&label=k=v][&prefix=][&per_host=true]` | buckets |
//! | `GET /api/query/hosts[?label=k=v][&prefix=][&limit=][&after=][&metrics=true]` | host list (last seen, labels, points, `series`: how many; their names in `metrics` with `metrics=true`), a page of at most `query.max_series`; `next_after` continues it |
//! | `GET /api/query/hosts/{id}` | one host, with its series names |
//! | `GET /api/query/cluster` | members, states, ring shares, epoch |
//!
//! Times are Unix seconds, RFC 3339, `now` or `now-<duration>` (`now-1h`);
//! `step` is seconds or a duration (`1m`). Errors are
//! `{"error": "<param>: <reason>", "kind": "..."}` with the status of
//! [`QueryError::http_status`].

use crate::agg::AggFn;
use crate::cluster::ClusterView;
use crate::engine::{AggQuery, Engine, HostSelector, RangeQuery};
use crate::error::QueryError;
use axum::Router;
use axum::extract::{Path, RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use std::collections::BTreeMap;
use std::sync::Arc;

#[derive(Clone)]
pub struct HttpState {
    pub engine: Arc<Engine>,
    pub cluster: ClusterView,
}

/// Request parameters from the query string (and, for the Prometheus API,
/// a form body), repeated keys kept.
#[derive(Debug, Default)]
pub struct Params(pub Vec<(String, String)>);

impl Params {
    pub fn parse(query: Option<&str>, body: &[u8]) -> Result<Self, QueryError> {
        let mut out: Vec<(String, String)> = match query {
            Some(q) => serde_urlencoded::from_str(q)
                .map_err(|e| QueryError::invalid("query string", e.to_string()))?,
            None => Vec::new(),
        };
        if !body.is_empty() {
            let form: Vec<(String, String)> = serde_urlencoded::from_bytes(body)
                .map_err(|e| QueryError::invalid("form body", e.to_string()))?;
            out.extend(form);
        }
        Ok(Self(out))
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    }

    pub fn all(&self, key: &str) -> Vec<&str> {
        self.0
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    pub fn required(&self, key: &str) -> Result<&str, QueryError> {
        self.get(key)
            .ok_or_else(|| QueryError::invalid(key, "is required"))
    }

    /// Comma-separated and/or repeated values.
    pub fn list(&self, key: &str) -> Vec<String> {
        self.all(key)
            .iter()
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect()
    }

    pub fn time(&self, key: &str) -> Result<i64, QueryError> {
        parse_time(key, self.required(key)?)
    }

    pub fn time_or(&self, key: &str, default: i64) -> Result<i64, QueryError> {
        self.get(key).map_or(Ok(default), |v| parse_time(key, v))
    }

    pub fn usize_or(&self, key: &str, default: usize) -> Result<usize, QueryError> {
        self.get(key).map_or(Ok(default), |v| {
            v.parse().map_err(|_| {
                QueryError::invalid(key, format!("{v:?} is not a non-negative integer"))
            })
        })
    }

    pub fn bool(&self, key: &str) -> Result<bool, QueryError> {
        match self.get(key) {
            None | Some("false") | Some("0") => Ok(false),
            Some("true") | Some("1") => Ok(true),
            Some(v) => Err(QueryError::invalid(
                key,
                format!("{v:?} is not true or false"),
            )),
        }
    }

    /// `label=k=v` (repeatable): every label must match.
    pub fn labels(&self, key: &str) -> Result<BTreeMap<String, String>, QueryError> {
        let mut out = BTreeMap::new();
        for l in self.all(key) {
            let (k, v) = l
                .split_once('=')
                .filter(|(k, _)| !k.is_empty())
                .ok_or_else(|| QueryError::invalid(key, format!("{l:?} is not name=value")))?;
            out.insert(k.to_string(), v.to_string());
        }
        Ok(out)
    }
}

/// Unix seconds (an integer, or a float as Prometheus sends, truncated),
/// RFC 3339, `now` or `now-<duration>`.
pub fn parse_time(param: &str, v: &str) -> Result<i64, QueryError> {
    if let Ok(t) = v.parse::<i64>() {
        return Ok(t);
    }
    if let Ok(t) = v.parse::<f64>()
        && t.is_finite()
        && t.abs() < 1e15
    {
        return Ok(t.floor() as i64);
    }
    if v == "now" {
        return Ok(broker_common::unix_now());
    }
    if let Some(d) = v.strip_prefix("now-") {
        let d = humantime::parse_duration(d)
            .map_err(|e| QueryError::invalid(param, format!("{v:?}: {e}")))?;
        return i64::try_from(d.as_secs())
            .ok()
            .and_then(|s| broker_common::unix_now().checked_sub(s))
            .ok_or_else(|| QueryError::invalid(param, format!("{v:?} is too far back")));
    }
    if let Ok(t) = humantime::parse_rfc3339_weak(v) {
        return Ok(t
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0));
    }
    Err(QueryError::invalid(
        param,
        format!("{v:?} is not a time: use Unix seconds, RFC 3339, now or now-<duration>"),
    ))
}

/// Seconds (integer or float) or a duration such as `1m`, `90s`.
pub fn parse_step(param: &str, v: &str) -> Result<i64, QueryError> {
    if let Ok(s) = v.parse::<i64>() {
        return Ok(s);
    }
    if let Ok(s) = v.parse::<f64>()
        && s.is_finite()
    {
        return Ok(s.ceil() as i64);
    }
    humantime::parse_duration(v)
        .map(|d| d.as_secs() as i64)
        .map_err(|_| {
            QueryError::invalid(
                param,
                format!("{v:?} is not a step: use seconds or a duration such as 1m"),
            )
        })
}

pub fn error_response(e: &QueryError) -> Response {
    let status = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (
        status,
        axum::Json(serde_json::json!({"error": e.to_string(), "kind": e.kind()})),
    )
        .into_response()
}

fn json<T: serde::Serialize>(r: Result<T, QueryError>) -> Response {
    match r {
        Ok(v) => axum::Json(v).into_response(),
        Err(e) => error_response(&e),
    }
}

fn json_arc<T: serde::Serialize>(r: Result<Arc<T>, QueryError>) -> Response {
    match r {
        Ok(v) => axum::Json(&*v).into_response(),
        Err(e) => error_response(&e),
    }
}

async fn point(State(s): State<HttpState>, RawQuery(q): RawQuery) -> Response {
    let e = &s.engine;
    json(
        e.run("point", async {
            let p = Params::parse(q.as_deref(), b"")?;
            let host = p.required("host")?;
            let ts = match p.get("ts") {
                Some(v) => parse_time("ts", v)?,
                None => p
                    .time("timestamp")
                    .map_err(|_| QueryError::invalid("ts", "is required"))?,
            };
            e.point(host, ts, &p.list("metrics")).await
        })
        .await,
    )
}

async fn range(State(s): State<HttpState>, RawQuery(q): RawQuery) -> Response {
    let e = &s.engine;
    json_arc(
        e.run("range", async {
            let p = Params::parse(q.as_deref(), b"")?;
            let q = RangeQuery {
                host: p.required("host")?.to_string(),
                start: p.time("start")?,
                end: p.time_or("end", broker_common::unix_now())?,
                metrics: p.list("metrics"),
                limit: p.usize_or("limit", 0)?,
                max_points: p.usize_or("max_points", 0)?,
            };
            e.range(&q).await
        })
        .await,
    )
}

async fn aggregate(State(s): State<HttpState>, RawQuery(q): RawQuery) -> Response {
    let e = &s.engine;
    json_arc(
        e.run("aggregate", async {
            let p = Params::parse(q.as_deref(), b"")?;
            let q = AggQuery {
                selector: HostSelector {
                    hosts: p.list("hosts"),
                    labels: p.labels("label")?,
                    prefix: p.get("prefix").unwrap_or("").to_string(),
                },
                metric: p.required("metric")?.to_string(),
                function: p.required("function")?.parse::<AggFn>()?,
                start: p.time("start")?,
                end: p.time_or("end", broker_common::unix_now())?,
                step: p.get("step").map_or(Ok(0), |v| parse_step("step", v))?,
                per_host: p.bool("per_host")?,
            };
            e.aggregate(&q).await
        })
        .await,
    )
}

async fn hosts(State(s): State<HttpState>, RawQuery(q): RawQuery) -> Response {
    let e = &s.engine;
    json(
        e.run("hosts", async {
            let p = Params::parse(q.as_deref(), b"")?;
            let names = p.bool("metrics")?;
            let (hosts, next) = e
                .hosts(
                    &p.labels("label")?,
                    p.get("prefix").unwrap_or(""),
                    p.get("after").unwrap_or(""),
                    p.usize_or("limit", 0)?,
                    names,
                )
                .await?;
            let hosts: Vec<serde_json::Value> = hosts
                .iter()
                .map(|h| {
                    let mut v = serde_json::json!(h);
                    if !names && let Some(o) = v.as_object_mut() {
                        o.remove("metrics");
                    }
                    v
                })
                .collect();
            Ok(serde_json::json!({ "hosts": hosts, "next_after": next }))
        })
        .await,
    )
}

async fn host(State(s): State<HttpState>, Path(id): Path<String>) -> Response {
    let e = &s.engine;
    json(e.run("host", e.host(&id)).await)
}

async fn cluster(State(s): State<HttpState>) -> Response {
    let e = &s.engine;
    json(
        e.run("cluster", async {
            Ok(crate::cluster::to_json(&s.cluster.status().await?))
        })
        .await,
    )
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// The dashboard: static files compiled into the binary, no build step.
fn dashboard() -> Router<HttpState> {
    const INDEX: &str = include_str!("../assets/index.html");
    const APP_JS: &str = include_str!("../assets/app.js");
    const APP_CSS: &str = include_str!("../assets/app.css");
    const UPLOT_JS: &str = include_str!("../assets/uPlot.iife.min.js");
    const UPLOT_CSS: &str = include_str!("../assets/uPlot.min.css");
    let html = || async { asset("text/html; charset=utf-8", INDEX) };
    Router::new()
        .route("/dashboard", get(html))
        .route("/dashboard/", get(html))
        .route(
            "/dashboard/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }),
        )
        .route(
            "/dashboard/app.css",
            get(|| async { asset("text/css; charset=utf-8", APP_CSS) }),
        )
        .route(
            "/dashboard/uPlot.iife.min.js",
            get(|| async { asset("text/javascript; charset=utf-8", UPLOT_JS) }),
        )
        .route(
            "/dashboard/uPlot.min.css",
            get(|| async { asset("text/css; charset=utf-8", UPLOT_CSS) }),
        )
}

/// The JSON API (`/api/query/*`) and the dashboard; the Prometheus API
/// (`promql`, `remote_read`) is merged beside them by the crate root.
pub fn routes() -> Router<HttpState> {
    Router::new()
        .route("/api/query/point", get(point))
        .route("/api/query/range", get(range))
        .route("/api/query/aggregate", get(aggregate))
        .route("/api/query/hosts", get(hosts))
        .route("/api/query/hosts/{id}", get(host))
        .route("/api/query/cluster", get(cluster))
        .merge(dashboard())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_steps() {
        assert_eq!(parse_time("start", "1700000000").unwrap(), 1_700_000_000);
        assert_eq!(parse_time("start", "1700000000.9").unwrap(), 1_700_000_000);
        assert_eq!(
            parse_time("start", "2023-11-14T22:13:20Z").unwrap(),
            1_700_000_000
        );
        let e = parse_time("start", "now-9223372036854775808s").unwrap_err();
        assert!(e.to_string().contains("too far back"), "{e}");
        let t = parse_time("start", "now-1h").unwrap();
        assert!((broker_common::unix_now() - 3600 - t).abs() <= 1);
        let e = parse_time("start", "yesterday").unwrap_err().to_string();
        assert!(e.starts_with("start: \"yesterday\" is not a time"), "{e}");
        assert_eq!(parse_step("step", "60").unwrap(), 60);
        assert_eq!(parse_step("step", "1m").unwrap(), 60);
        assert_eq!(parse_step("step", "14.5").unwrap(), 15);
        assert!(parse_step("step", "often").is_err());
    }

    #[test]
    fn params() {
        let p = Params::parse(
            Some("metrics=a,b&metrics=c&label=role%3Dweb&label=dc=x&per_host=true"),
            b"match%5B%5D=up",
        )
        .unwrap();
        assert_eq!(p.list("metrics"), vec!["a", "b", "c"]);
        assert_eq!(p.labels("label").unwrap()["role"], "web");
        assert!(p.bool("per_host").unwrap());
        assert_eq!(p.all("match[]"), vec!["up"]);
        assert!(
            Params(vec![("label".into(), "x".into())])
                .labels("label")
                .is_err()
        );
    }
}
