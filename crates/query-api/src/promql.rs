//! The Prometheus-compatible read API, so Prometheus's own tools (promtool,
//! Grafana's Prometheus data source) can query the broker:
//! `/api/v1/query`, `/api/v1/query_range`, `/api/v1/series`,
//! `/api/v1/labels`, `/api/v1/label/{name}/values`, by GET or POST (form).
//!
//! # Data model
//! Each (metric, host) is a series `metric{host="<id>", <host labels>}`;
//! its samples are the host's snapshots that hold the metric. A metric
//! name that carries labels (`node_cpu_seconds_total{cpu="0",job="node"}`,
//! as the gateway stores Prometheus remote write) is the series
//! `node_cpu_seconds_total` with those labels too. A selector picks hosts
//! by their labels (`host` and the labels agents sent) and series by name
//! and labels among each host's series set (every series it reported
//! within the ttl, so one that has gone is found for the time it existed);
//! `/api/v1/series` and the label APIs with `start`/`end` keep those whose
//! time range (first and newest second seen) meets the range. Samples
//! carry milliseconds (agents' points whole seconds), and evaluation is to
//! the millisecond.
//!
//! # What is evaluated
//! PromQL is parsed with `promql-parser`; this module evaluates a subset:
//! instant vector selectors (`cpu_user{host="h1"}`, `{host=~"web-.*"}`,
//! `{__name__=~"cpu_.*"}`, `offset`) with the `query.lookback` window, the
//! range functions `rate`, `irate`, `increase`, `delta`, `idelta`, `deriv`
//! and `*_over_time`, the aggregations `sum`, `avg`, `min`, `max`, `count`,
//! `stddev`, `stdvar`, `quantile`, `topk`, `bottomk` with `by (...)` /
//! `without (...)`, the functions `abs`, `ceil`, `floor`, `round`, `sgn`,
//! `sqrt`, `exp`, `ln`, `log2`, `log10`, `clamp*`, number literals, unary
//! minus, parentheses, and binary operators ([`binop`]: arithmetic
//! and comparison between scalars and vectors, vectors matched one-to-one
//! with `on` / `ignoring` or many-to-one with `group_left` / `group_right`,
//! `and` / `or` / `unless`), `changes`, `resets`, `vector`, `absent`,
//! `absent_over_time`,
//! `label_replace`, subqueries and `@`. An instant query whose expression
//! is a range vector (`node_load1[30s]`, a subquery) answers its samples as
//! a `matrix`, and a string literal as a `string`, as Prometheus does.
//! Anything else (other functions) is a 400 `bad_data` naming it. Beside
//! the query API:
//! `/api/v1/status/buildinfo`, `/api/v1/metadata` (names, type `unknown`)
//! and `/api/v1/query_exemplars` (none), which Grafana's Prometheus data
//! source calls.

pub mod binop;
pub mod histogram;

use crate::engine::Engine;
use crate::error::QueryError;
use crate::http::{HttpState, Params, error_response};
use crate::store::{Frame, HostInfo};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use broker_common::config::QueryConfig;
use broker_common::value;
use futures::future::BoxFuture;
use promql_parser::label::{MatchOp, Matcher};
use promql_parser::parser::{self, AtModifier, Expr, LabelModifier, VectorSelector};
use serde_json::{Value as Json, json};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, UNIX_EPOCH};

pub(crate) const NAME: &str = "__name__";
const HOST: &str = "host";

pub(crate) type Labels = BTreeMap<String, String>;

/// One series: its labels and samples `(milliseconds, value)`, oldest first.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub labels: Labels,
    pub points: Vec<(i64, f64)>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Evaluated {
    Scalar(Scalar),
    Vector(Vec<Series>),
}

/// A scalar result: one value at every step (a literal, arithmetic on
/// literals) or one per step (`time()`, `scalar(v)`).
#[derive(Debug, Clone, PartialEq)]
pub enum Scalar {
    Const(f64),
    /// `(step time ms, value)` for every step, ascending.
    Steps(Vec<(i64, f64)>),
}

impl Scalar {
    /// The value at step `t` (NaN at a time that is not a step).
    pub fn at(&self, t: i64) -> f64 {
        match self {
            Scalar::Const(v) => *v,
            Scalar::Steps(s) => s
                .binary_search_by_key(&t, |p| p.0)
                .map_or(f64::NAN, |i| s[i].1),
        }
    }
}

/// What one selector picks before any data is read: each host with the
/// metrics wanted from it (stored name, series labels).
struct Selection {
    hosts: Vec<(String, Vec<(String, Labels)>)>,
}

/// What the evaluator reads: the host list and hosts' snapshots, under
/// the query limits. [`Engine`] reads Redis through its cache;
/// [`MemorySource`] holds frames in memory (tests, fuzzing).
pub trait Source: Send + Sync {
    fn config(&self) -> &QueryConfig;
    fn host_list(&self) -> BoxFuture<'_, Result<Arc<Vec<HostInfo>>, QueryError>>;
    /// The snapshots of each of `hosts` in `[start_ms, end_ms]`
    /// (milliseconds, as the frames' timestamps), only `metrics`; fails
    /// past `query.max_points_scanned` before reading.
    fn frames<'a>(
        &'a self,
        hosts: &'a [String],
        start_ms: i64,
        end_ms: i64,
        metrics: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<Frame>, QueryError>>;
}

impl Source for Engine {
    fn config(&self) -> &QueryConfig {
        Engine::config(self)
    }

    fn host_list(&self) -> BoxFuture<'_, Result<Arc<Vec<HostInfo>>, QueryError>> {
        Box::pin(Engine::host_list(self))
    }

    fn frames<'a>(
        &'a self,
        hosts: &'a [String],
        start_ms: i64,
        end_ms: i64,
        metrics: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<Frame>, QueryError>> {
        Box::pin(Engine::frames_ms(self, hosts, start_ms, end_ms, metrics))
    }
}

/// Hosts and their snapshots in memory: a [`Source`] for tests and the
/// PromQL fuzz target, with the same limits as the engine.
pub struct MemorySource {
    pub config: QueryConfig,
    pub hosts: Arc<Vec<HostInfo>>,
    /// Host id → its snapshots, timestamps (milliseconds) ascending.
    pub frames: BTreeMap<String, Frame>,
}

impl Source for MemorySource {
    fn config(&self) -> &QueryConfig {
        &self.config
    }

    fn host_list(&self) -> BoxFuture<'_, Result<Arc<Vec<HostInfo>>, QueryError>> {
        Box::pin(async move { Ok(self.hosts.clone()) })
    }

    fn frames<'a>(
        &'a self,
        hosts: &'a [String],
        start: i64,
        end: i64,
        metrics: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<Frame>, QueryError>> {
        // Milliseconds, as the frames hold them.
        Box::pin(async move {
            let empty = Frame::default();
            let out: Vec<Frame> = hosts
                .iter()
                .map(|h| {
                    let f = self.frames.get(h).unwrap_or(&empty);
                    let lo = f.timestamps.partition_point(|&t| t < start);
                    let hi = f.timestamps.partition_point(|&t| t <= end).max(lo);
                    Frame {
                        timestamps: f.timestamps[lo..hi].to_vec(),
                        metrics: f
                            .metrics
                            .iter()
                            .filter(|(m, _)| metrics.is_empty() || metrics.contains(m))
                            .map(|(m, col)| (m.clone(), col[lo..hi].to_vec()))
                            .collect(),
                    }
                })
                .collect();
            crate::engine::check_scanned(
                &self.config,
                out.iter().map(|f| f.timestamps.len()).sum(),
            )?;
            Ok(out)
        })
    }
}

/// The deadline of one evaluation, checked by its loops: a query's
/// timeout stops it between awaits (`Engine::run_within`), but the
/// evaluator's loops over steps and windows run without awaiting.
pub struct Budget {
    deadline: Instant,
    timeout: Duration,
    spent: AtomicU64,
}

/// Work units (samples visited) between two looks at the clock.
const BUDGET_CHECK_EVERY: u64 = 1 << 16;

impl Budget {
    pub fn new(timeout: Duration) -> Self {
        Self {
            deadline: Instant::now() + timeout,
            timeout,
            spent: AtomicU64::new(0),
        }
    }

    /// Counts `n` units of work; past the deadline, the query's timeout.
    fn spend(&self, n: usize) -> Result<(), QueryError> {
        let n = n as u64 + 1;
        let before = self.spent.fetch_add(n, Ordering::Relaxed);
        if before / BUDGET_CHECK_EVERY != (before + n) / BUDGET_CHECK_EVERY
            && Instant::now() >= self.deadline
        {
            return Err(QueryError::Timeout(self.timeout));
        }
        Ok(())
    }
}

fn unsupported(what: impl Into<String>) -> QueryError {
    QueryError::Unsupported(what.into())
}

fn host_labels(h: &HostInfo) -> Labels {
    let mut l: Labels = h
        .labels
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    l.insert(HOST.into(), h.id.clone());
    l
}

fn matches(m: &Matcher, value: Option<&str>) -> bool {
    m.is_match(value.unwrap_or(""))
}

/// The labels of a host's series `metric`: the host's labels, the labels
/// the metric name carries (`node_cpu_seconds_total{cpu="0"}`, as remote
/// write stores them; the host's win a clash) and `__name__`, the name
/// without its labels.
fn series_labels(host: &Labels, metric: &str) -> Labels {
    let mut l = host.clone();
    match broker_common::series_name::parse(metric) {
        Ok(p) => {
            for (k, v) in p.labels {
                l.entry(k.to_string()).or_insert(v);
            }
            l.insert(NAME.into(), p.base.to_string());
        }
        // Not written by the gateway's validation; shown as it is.
        Err(_) => {
            l.insert(NAME.into(), metric.to_string());
        }
    }
    l
}

/// Hosts and metric names a vector selector picks (no data read).
async fn select(engine: &dyn Source, vs: &VectorSelector) -> Result<Selection, QueryError> {
    if !vs.matchers.or_matchers.is_empty() {
        return Err(unsupported("`or` between label matchers"));
    }
    let mut matchers: Vec<Matcher> = vs.matchers.matchers.clone();
    if let Some(n) = &vs.name {
        matchers.push(Matcher::new(MatchOp::Equal, NAME, n));
    }
    let list = engine.host_list().await?;
    let mut hosts = Vec::new();
    for h in list.iter() {
        let labels = host_labels(h);
        // Matchers on the host's own labels decide for all its series.
        let (on_host, on_series): (Vec<&Matcher>, Vec<&Matcher>) = matchers
            .iter()
            .partition(|m| m.name != NAME && labels.contains_key(&m.name));
        if !on_host
            .iter()
            .all(|m| matches(m, labels.get(&m.name).map(String::as_str)))
        {
            continue;
        }
        let metrics: Vec<(String, Labels)> = h
            .metrics
            .iter()
            .filter_map(|name| {
                let l = series_labels(&labels, name);
                on_series
                    .iter()
                    .all(|m| matches(m, l.get(&m.name).map(String::as_str)))
                    .then(|| (name.clone(), l))
            })
            .collect();
        if !metrics.is_empty() {
            hosts.push((h.id.clone(), metrics));
        }
    }
    let max = engine.config().max_hosts;
    if hosts.len() > max {
        return Err(QueryError::limit(
            "query",
            format!(
                "the selector {vs} covers {} hosts, more than query.max_hosts ({max}); narrow it with host or label matchers",
                hosts.len()
            ),
        ));
    }
    Ok(Selection { hosts })
}

/// The labels `absent(v)` answers with: of a selector, those its
/// equality matchers name once (not the metric name); else none.
fn absent_labels(e: &Expr) -> Labels {
    let vs = match e {
        Expr::VectorSelector(vs) => vs,
        Expr::MatrixSelector(ms) => &ms.vs,
        _ => return Labels::new(),
    };
    let mut out = Labels::new();
    let mut seen = BTreeSet::new();
    for m in &vs.matchers.matchers {
        if m.name == NAME {
            continue;
        }
        if !seen.insert(m.name.clone()) {
            out.remove(&m.name);
        } else if m.op == MatchOp::Equal {
            out.insert(m.name.clone(), m.value.clone());
        }
    }
    out
}

/// An `offset` in milliseconds (negative for `offset -5m`).
fn offset_ms(o: Option<&parser::Offset>) -> i64 {
    match o {
        Some(parser::Offset::Pos(d)) => d.as_millis() as i64,
        Some(parser::Offset::Neg(d)) => -(d.as_millis() as i64),
        None => 0,
    }
}

/// A subquery's resolution when it names none: Prometheus's default
/// global evaluation interval.
const DEFAULT_SUBQUERY_STEP_MS: i64 = 60_000;

/// The series of a selector with their samples in `[from_ms, to_ms]`.
pub(crate) async fn series(
    engine: &dyn Source,
    vs: &VectorSelector,
    from_ms: i64,
    to_ms: i64,
) -> Result<Vec<Series>, QueryError> {
    let sel = select(engine, vs).await?;
    // `offset d` reads the data from d earlier and shows it as of now.
    let off = offset_ms(vs.offset.as_ref());
    let (from_ms, to_ms) = (from_ms - off, to_ms - off);
    let (start, end) = (from_ms.max(0), to_ms);
    crate::engine::check_range(
        engine.config(),
        start.div_euclid(1000),
        end.div_euclid(1000).max(start.div_euclid(1000)),
    )?;
    let wanted: BTreeSet<&String> = sel
        .hosts
        .iter()
        .flat_map(|(_, m)| m.iter().map(|(name, _)| name))
        .collect();
    let wanted: Vec<String> = wanted.into_iter().cloned().collect();
    if sel.hosts.is_empty() || end < start {
        return Ok(Vec::new());
    }
    let ids: Vec<String> = sel.hosts.iter().map(|(h, _)| h.clone()).collect();
    let frames = engine.frames(&ids, start, end, &wanted).await?;
    let mut out = Vec::new();
    for ((_, metrics), frame) in sel.hosts.into_iter().zip(frames) {
        for (m, labels) in metrics {
            let Some(col) = frame.metrics.get(&m) else {
                continue;
            };
            let points: Vec<(i64, f64)> = frame
                .timestamps
                .iter()
                .zip(col)
                .filter(|(t, v)| !value::is_absent(**v) && **t >= from_ms && **t <= to_ms)
                .map(|(t, v)| (t + off, *v))
                .collect();
            if points.is_empty() {
                continue;
            }
            out.push(Series { labels, points });
        }
    }
    Ok(out)
}

/// The range functions that need the samples' times, as Prometheus 2.x
/// computes them: `Some(result)` for those (`Some(None)`: no value at
/// this step), `None` for other functions. `w` is the window `(t - range,
/// t]`, oldest first; times are milliseconds.
fn sampled(name: &str, w: &[(i64, f64)], t: i64, range: i64, p: &[f64]) -> Option<Option<f64>> {
    Some(match name {
        "rate" => extrapolated(w, t, range, true, true),
        "increase" => extrapolated(w, t, range, true, false),
        "delta" => extrapolated(w, t, range, false, false),
        "irate" => instant_delta(w, true),
        "idelta" => instant_delta(w, false),
        "deriv" => (w.len() >= 2).then(|| linear_regression(w, w[0].0).0),
        "predict_linear" => (w.len() >= 2).then(|| {
            let (slope, intercept) = linear_regression(w, t);
            slope * p[0] + intercept
        }),
        "changes" => {
            (!w.is_empty()).then(|| w.windows(2).filter(|p| p[1].1 != p[0].1).count() as f64)
        }
        "resets" => {
            (!w.is_empty()).then(|| w.windows(2).filter(|p| p[1].1 < p[0].1).count() as f64)
        }
        _ => return None,
    })
}

/// Prometheus's `extrapolatedRate`: the change over the window (with
/// counter resets undone for counters), extrapolated to the window's edges
/// when the first and last samples are near them (within 1.1 average
/// intervals; else by half an interval), not below zero for counters; per
/// second for `rate`.
fn extrapolated(w: &[(i64, f64)], t: i64, range: i64, counter: bool, rate: bool) -> Option<f64> {
    if w.len() < 2 {
        return None;
    }
    let (first, last) = (w[0], w[w.len() - 1]);
    let mut result = last.1 - first.1;
    if counter {
        let mut prev = 0.0;
        for &(_, v) in w {
            if v < prev {
                result += prev;
            }
            prev = v;
        }
    }
    let mut to_start = (first.0 - (t - range)) as f64 / 1000.0;
    let to_end = (t - last.0) as f64 / 1000.0;
    let sampled = (last.0 - first.0) as f64 / 1000.0;
    let average = sampled / (w.len() - 1) as f64;
    if counter && result > 0.0 && first.1 >= 0.0 {
        let to_zero = sampled * (first.1 / result);
        if to_zero < to_start {
            to_start = to_zero;
        }
    }
    let threshold = average * 1.1;
    let mut interval = sampled;
    interval += if to_start < threshold {
        to_start
    } else {
        average / 2.0
    };
    interval += if to_end < threshold {
        to_end
    } else {
        average / 2.0
    };
    result *= interval / sampled;
    if rate {
        result /= range as f64 / 1000.0;
    }
    Some(result)
}

/// `irate` / `idelta`: from the last two samples (`irate` per second, a
/// drop taken as a counter reset).
fn instant_delta(w: &[(i64, f64)], rate: bool) -> Option<f64> {
    let [.., (t0, v0), (t1, v1)] = w else {
        return None;
    };
    let interval = t1 - t0;
    if interval == 0 {
        return None;
    }
    let delta = if rate && v1 < v0 { *v1 } else { v1 - v0 };
    Some(if rate {
        delta / (interval as f64 / 1000.0)
    } else {
        delta
    })
}

/// The least-squares line through the window, per second, with its
/// intercept at `t0` ms (Prometheus's `linearRegression`): `deriv` takes
/// the slope with `t0` the first sample's time, `predict_linear` the
/// value `slope * d + intercept` with `t0` the evaluation time.
fn linear_regression(w: &[(i64, f64)], t0: i64) -> (f64, f64) {
    if w.iter().all(|p| p.1 == w[0].1) {
        return if w[0].1.is_infinite() {
            (f64::NAN, f64::NAN)
        } else {
            (0.0, w[0].1)
        };
    }
    let n = w.len() as f64;
    let (mut sx, mut sy, mut sxy, mut sx2) = (0.0, 0.0, 0.0, 0.0);
    for &(t, v) in w {
        let x = (t - t0) as f64 / 1000.0;
        sx += x;
        sy += v;
        sxy += x * v;
        sx2 += x * x;
    }
    let slope = (sxy - sx * sy / n) / (sx2 - sx * sx / n);
    (slope, sy / n - slope * sx / n)
}

/// `holt_winters`: double exponential smoothing with smoothing factor
/// `sf` and trend factor `tf`, as Prometheus 2.x computes it; needs two
/// samples.
fn holt_winters(v: &[f64], sf: f64, tf: f64) -> Option<f64> {
    if v.len() < 2 {
        return None;
    }
    let (mut s0, mut s1, mut b) = (0.0, v[0], v[1] - v[0]);
    for (i, &x) in v.iter().enumerate().skip(1) {
        if i > 1 {
            b = tf * (s1 - s0) + (1.0 - tf) * b;
        }
        let next = sf * x + (1.0 - sf) * (s1 + b);
        s0 = s1;
        s1 = next;
    }
    Some(s1)
}

/// The labels of `l` that `by (...)` / `on (...)` keep, or that
/// `without (...)` / `ignoring (...)` leave (the metric name too).
pub(crate) fn grouping_labels(l: &Labels, m: &LabelModifier) -> Labels {
    match m {
        LabelModifier::Include(keep) => keep
            .labels
            .iter()
            .filter_map(|n| l.get(n).map(|v| (n.clone(), v.clone())))
            .collect(),
        LabelModifier::Exclude(drop) => l
            .iter()
            .filter(|(k, _)| *k != NAME && !drop.labels.contains(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    }
}

/// A binary operator between two scalars, as Prometheus computes it
/// (comparisons between scalars need `bool` and give 1 or 0).
pub(crate) fn scalar_op(op: &str, l: f64, r: f64) -> Option<f64> {
    let b = |c: bool| f64::from(u8::from(c));
    Some(match op {
        "+" => l + r,
        "-" => l - r,
        "*" => l * r,
        "/" => l / r,
        // Go's math.Mod, like Rust's `%` on floats: the sign of `l`.
        "%" => l % r,
        "^" => l.powf(r),
        "atan2" => l.atan2(r),
        "==" => b(l == r),
        "!=" => b(l != r),
        ">" => b(l > r),
        "<" => b(l < r),
        ">=" => b(l >= r),
        "<=" => b(l <= r),
        _ => return None,
    })
}

/// Samples of `points` in `(t - window, t]`.
fn window(points: &[(i64, f64)], t: i64, window: i64) -> &[(i64, f64)] {
    let lo = points.partition_point(|(pt, _)| *pt <= t - window);
    let hi = points.partition_point(|(pt, _)| *pt <= t);
    &points[lo..hi.max(lo)]
}

/// Evaluates `expr` at every time of `steps` (milliseconds, ascending).
pub struct Evaluator<'a> {
    pub source: &'a dyn Source,
    pub steps: Vec<i64>,
    pub lookback_ms: i64,
    pub budget: &'a Budget,
}

impl Evaluator<'_> {
    fn first(&self) -> i64 {
        self.steps.first().copied().unwrap_or(0)
    }

    fn last(&self) -> i64 {
        self.steps.last().copied().unwrap_or(0)
    }

    pub fn eval<'s>(
        &'s self,
        expr: &'s Expr,
    ) -> futures::future::BoxFuture<'s, Result<Evaluated, QueryError>> {
        Box::pin(async move {
            match expr {
                Expr::NumberLiteral(n) => Ok(Evaluated::Scalar(Scalar::Const(n.val))),
                Expr::Paren(p) => self.eval(&p.expr).await,
                Expr::Unary(u) => Ok(match self.eval(&u.expr).await? {
                    Evaluated::Scalar(Scalar::Const(v)) => Evaluated::Scalar(Scalar::Const(-v)),
                    Evaluated::Scalar(Scalar::Steps(mut s)) => {
                        s.iter_mut().for_each(|p| p.1 = -p.1);
                        Evaluated::Scalar(Scalar::Steps(s))
                    }
                    Evaluated::Vector(mut s) => {
                        for series in &mut s {
                            series.labels.remove(NAME);
                            for p in &mut series.points {
                                p.1 = -p.1;
                            }
                        }
                        Evaluated::Vector(s)
                    }
                }),
                Expr::VectorSelector(vs) => {
                    Ok(Evaluated::Vector(self.instant_selector(vs, false).await?))
                }
                Expr::Call(call) => self.call(call).await,
                Expr::Aggregate(a) => self.aggregate(a).await,
                Expr::MatrixSelector(_) => Err(unsupported(
                    "a range vector as the result; wrap it in a *_over_time function",
                )),
                Expr::Binary(b) => {
                    let op = b.op.to_string().to_ascii_lowercase();
                    if b.modifier.as_ref().is_some_and(|m| {
                        m.fill_values != promql_parser::parser::VectorMatchFillValues::default()
                    }) {
                        return Err(unsupported("fill modifiers"));
                    }
                    let return_bool = b.return_bool();
                    let (l, r) = (self.eval(&b.lhs).await?, self.eval(&b.rhs).await?);
                    Ok(match (l, r) {
                        (Evaluated::Scalar(l), Evaluated::Scalar(r)) => {
                            let f = |l: f64, r: f64| {
                                scalar_op(&op, l, r)
                                    .ok_or_else(|| unsupported(format!("operator {op}")))
                            };
                            Evaluated::Scalar(match (l, r) {
                                (Scalar::Const(l), Scalar::Const(r)) => Scalar::Const(f(l, r)?),
                                (l, r) => Scalar::Steps(
                                    self.steps
                                        .iter()
                                        .map(|&t| Ok((t, f(l.at(t), r.at(t))?)))
                                        .collect::<Result<_, QueryError>>()?,
                                ),
                            })
                        }
                        (Evaluated::Vector(v), Evaluated::Scalar(s)) => {
                            Evaluated::Vector(binop::vector_scalar(v, &s, &op, false, return_bool)?)
                        }
                        (Evaluated::Scalar(s), Evaluated::Vector(v)) => {
                            Evaluated::Vector(binop::vector_scalar(v, &s, &op, true, return_bool)?)
                        }
                        (Evaluated::Vector(l), Evaluated::Vector(r)) => {
                            Evaluated::Vector(binop::vector_vector(l, r, &op, b.modifier.as_ref())?)
                        }
                    })
                }
                Expr::Subquery(_) => Err(unsupported(
                    "a subquery as the result; wrap it in a *_over_time function",
                )),
                Expr::StringLiteral(_) => Err(unsupported("string results")),
                Expr::Extension(_) => Err(unsupported("extensions")),
            }
        })
    }

    async fn call(&self, call: &parser::Call) -> Result<Evaluated, QueryError> {
        let name = call.func.name;
        let args = &call.args.args;
        if MATH_FUNCTIONS.contains(&name) {
            return self.math(name, args).await;
        }
        let text = |e: &Expr| match e {
            Expr::StringLiteral(s) => Ok(s.val.clone()),
            _ => Err(QueryError::invalid(
                "query",
                format!("{name} expects string literals after the vector"),
            )),
        };
        match (name, args.as_slice()) {
            ("time", []) => {
                return Ok(Evaluated::Scalar(Scalar::Steps(
                    self.steps.iter().map(|&t| (t, t as f64 / 1000.0)).collect(),
                )));
            }
            ("scalar", [v]) => {
                let v = self.vector_arg(v, name).await?;
                // The single sample's value at each step, else NaN.
                let mut at: BTreeMap<i64, (usize, f64)> = BTreeMap::new();
                for s in &v {
                    for &(t, x) in &s.points {
                        let e = at.entry(t).or_insert((0, x));
                        e.0 += 1;
                    }
                }
                return Ok(Evaluated::Scalar(Scalar::Steps(
                    self.steps
                        .iter()
                        .map(|&t| match at.get(&t) {
                            Some(&(1, x)) => (t, x),
                            _ => (t, f64::NAN),
                        })
                        .collect(),
                )));
            }
            ("timestamp", [v]) => {
                // Of a selector, the samples' own times; of anything else,
                // the evaluation times.
                let mut out = match v.as_ref() {
                    Expr::VectorSelector(vs) => self.instant_selector(vs, true).await?,
                    e => {
                        let mut v = self.vector_arg(e, name).await?;
                        for s in &mut v {
                            s.points.iter_mut().for_each(|p| p.1 = p.0 as f64 / 1000.0);
                        }
                        v
                    }
                };
                out.iter_mut().for_each(|s| {
                    s.labels.remove(NAME);
                });
                return Ok(Evaluated::Vector(out));
            }
            ("absent" | "absent_over_time", [v]) => {
                let inner = if name == "absent" {
                    self.vector_arg(v, name).await?
                } else {
                    match self.range_function("present_over_time", args).await? {
                        Evaluated::Vector(v) => v,
                        Evaluated::Scalar(_) => Vec::new(),
                    }
                };
                let present: BTreeSet<i64> = inner
                    .iter()
                    .flat_map(|s| s.points.iter().map(|p| p.0))
                    .collect();
                let points: Vec<(i64, f64)> = self
                    .steps
                    .iter()
                    .filter(|t| !present.contains(t))
                    .map(|&t| (t, 1.0))
                    .collect();
                if points.is_empty() {
                    return Ok(Evaluated::Vector(Vec::new()));
                }
                return Ok(Evaluated::Vector(vec![Series {
                    labels: absent_labels(v),
                    points,
                }]));
            }
            // The order is applied to an instant query's answer
            // (`instant`); a range query's has none.
            ("sort" | "sort_desc", [v]) => {
                return Ok(Evaluated::Vector(self.vector_arg(v, name).await?));
            }
            ("label_join", [v, dst, sep, srcs @ ..]) => {
                let (dst, sep) = (text(dst)?, text(sep)?);
                let srcs = srcs
                    .iter()
                    .map(|e| text(e))
                    .collect::<Result<Vec<_>, _>>()?;
                let mut v = self.vector_arg(v, name).await?;
                for s in &mut v {
                    let joined = srcs
                        .iter()
                        .map(|l| s.labels.get(l).map_or("", String::as_str))
                        .collect::<Vec<_>>()
                        .join(&sep);
                    if joined.is_empty() {
                        s.labels.remove(&dst);
                    } else {
                        s.labels.insert(dst.clone(), joined);
                    }
                }
                return Ok(Evaluated::Vector(v));
            }
            ("histogram_quantile", [q, v]) => {
                let Evaluated::Scalar(q) = self.eval(q).await? else {
                    return Err(QueryError::invalid(
                        "query",
                        "histogram_quantile expects a scalar quantile",
                    ));
                };
                let v = self.vector_arg(v, name).await?;
                return Ok(Evaluated::Vector(histogram::quantiles(&q, v)));
            }
            ("vector", [x]) => {
                let Evaluated::Scalar(x) = self.eval(x).await? else {
                    return Err(QueryError::invalid("query", "vector expects a scalar"));
                };
                return Ok(Evaluated::Vector(vec![Series {
                    labels: Labels::new(),
                    points: self.steps.iter().map(|&t| (t, x.at(t))).collect(),
                }]));
            }
            ("label_replace", [v, dst, replacement, src, regex]) => {
                let (dst, replacement, src, regex) =
                    (text(dst)?, text(replacement)?, text(src)?, text(regex)?);
                let re = regex::Regex::new(&format!("^(?:{regex})$")).map_err(|e| {
                    QueryError::invalid("query", format!("label_replace regex {regex:?}: {e}"))
                })?;
                let Evaluated::Vector(v) = self.eval(v).await? else {
                    return Err(QueryError::invalid(
                        "query",
                        "label_replace expects a vector",
                    ));
                };
                return Ok(Evaluated::Vector(
                    v.into_iter()
                        .map(|mut s| {
                            let value = s.labels.get(&src).cloned().unwrap_or_default();
                            if let Some(c) = re.captures(&value) {
                                let mut out = String::new();
                                c.expand(&replacement, &mut out);
                                if out.is_empty() {
                                    s.labels.remove(&dst);
                                } else {
                                    s.labels.insert(dst.clone(), out);
                                }
                            }
                            s
                        })
                        .collect(),
                ));
            }
            _ => {}
        }
        self.range_function(name, args).await
    }

    /// A function of a range vector (`rate(m[5m])`, `*_over_time`), its
    /// range vector first (the quantile first for quantile_over_time),
    /// then scalar parameters.
    async fn range_function(
        &self,
        name: &str,
        args: &[Box<Expr>],
    ) -> Result<Evaluated, QueryError> {
        let (m, param_exprs): (&Expr, Vec<&Expr>) = match (name, args) {
            ("quantile_over_time", [q, m]) => (m, vec![q.as_ref()]),
            ("predict_linear", [m, t]) => (m, vec![t.as_ref()]),
            ("double_exponential_smoothing", [m, sf, tf]) => (m, vec![sf.as_ref(), tf.as_ref()]),
            (_, [m]) => (m, Vec::new()),
            _ => return Err(unsupported(format!("function {name}"))),
        };
        let f: fn(&[f64], &[f64]) -> Option<f64> = match name {
            // Computed from the samples' times by `sampled`, below.
            "rate" | "increase" | "delta" | "irate" | "idelta" | "deriv" | "changes" | "resets"
            | "predict_linear" => |_, _| unreachable!("computed by sampled()"),
            "avg_over_time" => |v, _| Some(v.iter().sum::<f64>() / v.len() as f64),
            "min_over_time" => |v, _| Some(v.iter().copied().fold(f64::INFINITY, f64::min)),
            "max_over_time" => |v, _| Some(v.iter().copied().fold(f64::NEG_INFINITY, f64::max)),
            "sum_over_time" => |v, _| Some(v.iter().sum()),
            "count_over_time" => |v, _| Some(v.len() as f64),
            "last_over_time" => |v, _| Some(v[v.len() - 1]),
            "stddev_over_time" => |v, _| Some(variance(v).sqrt()),
            "stdvar_over_time" => |v, _| Some(variance(v)),
            "present_over_time" => |_, _| Some(1.0),
            "quantile_over_time" => |v, p| {
                let q = p[0];
                Some(if q.is_nan() {
                    f64::NAN
                } else if q < 0.0 {
                    f64::NEG_INFINITY
                } else if q > 1.0 {
                    f64::INFINITY
                } else {
                    crate::agg::percentile(&mut v.to_vec(), q)
                })
            },
            "double_exponential_smoothing" => |v, p| holt_winters(v, p[0], p[1]),
            _ => return Err(unsupported(format!("function {name}"))),
        };
        let mut params = Vec::with_capacity(param_exprs.len());
        for e in param_exprs {
            match self.eval(e).await? {
                Evaluated::Scalar(x) => params.push(x),
                Evaluated::Vector(_) => {
                    return Err(QueryError::invalid(
                        "query",
                        format!("{name} expects scalar parameters"),
                    ));
                }
            }
        }
        if name == "double_exponential_smoothing" {
            for (what, p) in ["smoothing", "trend"].iter().zip(&params) {
                let v = p.at(self.first());
                if !(v > 0.0 && v < 1.0) {
                    return Err(QueryError::invalid(
                        "query",
                        format!("invalid {what} factor. Expected: 0 < {what} factor < 1, got: {v}"),
                    ));
                }
            }
        }
        let (raw, range, at) = self.range_vector(name, m).await?;
        let mut out = Vec::new();
        for mut s in raw {
            let mut points: Vec<(i64, f64)> = Vec::new();
            for &t in &self.steps {
                let e = self.at_time(at.as_ref(), t);
                let p: Vec<f64> = params.iter().map(|p| p.at(t)).collect();
                let w = window(&s.points, e, range);
                // A long window at many steps is the costly loop.
                self.budget.spend(w.len())?;
                if let Some(v) = sampled(name, w, e, range, &p) {
                    points.extend(v.map(|v| (t, v)));
                    continue;
                }
                let w: Vec<f64> = w.iter().map(|p| p.1).collect();
                if w.is_empty() {
                    continue;
                }
                points.extend(f(&w, &p).map(|v| (t, v)));
            }
            // As in Prometheus, last_over_time keeps the metric name.
            if name != "last_over_time" {
                s.labels.remove(NAME);
            }
            if !points.is_empty() {
                out.push(Series {
                    labels: s.labels,
                    points,
                });
            }
        }
        Ok(Evaluated::Vector(out))
    }

    /// The evaluation time of step `t` under an `@` modifier.
    fn at_time(&self, at: Option<&AtModifier>, t: i64) -> i64 {
        match at {
            None => t,
            Some(AtModifier::Start) => self.first(),
            Some(AtModifier::End) => self.last(),
            Some(AtModifier::At(time)) => match time.duration_since(UNIX_EPOCH) {
                Ok(d) => d.as_millis() as i64,
                Err(e) => -(e.duration().as_millis() as i64),
            },
        }
    }

    /// The earliest and latest evaluation time over the steps.
    fn at_span(&self, at: Option<&AtModifier>) -> (i64, i64) {
        (
            self.at_time(at, self.first()),
            self.at_time(at, self.last()),
        )
    }

    /// A range function's argument: the series with every sample its
    /// windows need, the window length and the `@` modifier. A matrix
    /// selector reads them; a subquery evaluates its expression at steps
    /// aligned to its resolution, as Prometheus does.
    async fn range_vector(
        &self,
        name: &str,
        m: &Expr,
    ) -> Result<(Vec<Series>, i64, Option<AtModifier>), QueryError> {
        let positive = |range: i64| {
            if range <= 0 {
                return Err(QueryError::invalid(
                    "query",
                    "the range of a selector must be positive",
                ));
            }
            Ok(range)
        };
        match m {
            Expr::MatrixSelector(ms) => {
                let range = positive(ms.range.as_millis() as i64)?;
                let (lo, hi) = self.at_span(ms.vs.at.as_ref());
                let mut raw = series(self.source, &ms.vs, lo - range + 1, hi).await?;
                // Range vectors hold no staleness markers (Prometheus drops
                // them from every window).
                for s in &mut raw {
                    s.points.retain(|(_, v)| !value::is_stale(*v));
                }
                raw.retain(|s| !s.points.is_empty());
                Ok((raw, range, ms.vs.at.clone()))
            }
            Expr::Subquery(sq) => {
                let range = positive(sq.range.as_millis() as i64)?;
                let step = sq
                    .step
                    .map_or(DEFAULT_SUBQUERY_STEP_MS, |d| d.as_millis() as i64)
                    .max(1);
                let off = offset_ms(sq.offset.as_ref());
                let (lo, hi) = self.at_span(sq.at.as_ref());
                let first = lo - off - range;
                let mut start = step * first.div_euclid(step);
                if start < first {
                    start += step;
                }
                let end = hi - off;
                let n = (end - start).div_euclid(step) + 1;
                let max = self.source.config().max_points as i64;
                if n > max {
                    return Err(QueryError::limit(
                        "query",
                        format!(
                            "the subquery of {name} has {n} steps, more than query.max_points ({max}); use a coarser resolution"
                        ),
                    ));
                }
                let inner = Evaluator {
                    source: self.source,
                    steps: (0..n.max(0)).map(|i| start + i * step).collect(),
                    lookback_ms: self.lookback_ms,
                    budget: self.budget,
                };
                let mut raw = match inner.eval(&sq.expr).await? {
                    Evaluated::Vector(v) => v,
                    Evaluated::Scalar(x) => vec![Series {
                        labels: Labels::new(),
                        points: inner.steps.iter().map(|&t| (t, x.at(t))).collect(),
                    }],
                };
                for s in &mut raw {
                    s.points.iter_mut().for_each(|p| p.0 += off);
                }
                Ok((raw, range, sq.at.clone()))
            }
            _ => Err(QueryError::invalid(
                "query",
                format!("{name} expects a range vector such as metric[5m] or a subquery"),
            )),
        }
    }

    /// An instant selector at each step: the last sample within the
    /// lookback before the step's evaluation time, its value (or, with
    /// `sample_time`, its time in seconds: `timestamp()`).
    async fn instant_selector(
        &self,
        vs: &VectorSelector,
        sample_time: bool,
    ) -> Result<Vec<Series>, QueryError> {
        let at = vs.at.as_ref();
        let (lo, hi) = self.at_span(at);
        let raw = series(self.source, vs, lo - self.lookback_ms + 1, hi).await?;
        self.budget
            .spend(raw.len().saturating_mul(self.steps.len()))?;
        Ok(raw
            .into_iter()
            .filter_map(|s| {
                let points: Vec<(i64, f64)> = self
                    .steps
                    .iter()
                    .filter_map(|&t| {
                        // A staleness marker as the newest sample of the
                        // lookback ends the series there, as in Prometheus.
                        window(&s.points, self.at_time(at, t), self.lookback_ms)
                            .last()
                            .filter(|(_, v)| !value::is_stale(*v))
                            .map(|&(pt, v)| (t, if sample_time { pt as f64 / 1000.0 } else { v }))
                    })
                    .collect();
                (!points.is_empty()).then_some(Series {
                    labels: s.labels,
                    points,
                })
            })
            .collect())
    }

    /// Evaluates `e`, which must be an instant vector (for `what`).
    async fn vector_arg(&self, e: &Expr, what: &str) -> Result<Vec<Series>, QueryError> {
        match self.eval(e).await? {
            Evaluated::Vector(v) => Ok(v),
            Evaluated::Scalar(_) => Err(QueryError::invalid(
                "query",
                format!("{what} expects an instant vector"),
            )),
        }
    }

    /// Functions of an instant vector and scalar parameters, applied
    /// sample by sample; the metric name is dropped, as in Prometheus.
    async fn math(&self, name: &str, args: &[Box<Expr>]) -> Result<Evaluated, QueryError> {
        let Some((first, rest)) = args.split_first() else {
            return Err(QueryError::invalid(
                "query",
                format!("{name} expects an argument"),
            ));
        };
        let mut params: Vec<Scalar> = Vec::with_capacity(rest.len());
        for p in rest {
            match self.eval(p).await? {
                Evaluated::Scalar(x) => params.push(x),
                Evaluated::Vector(_) => {
                    return Err(QueryError::invalid(
                        "query",
                        format!("{name} expects scalars after its first argument"),
                    ));
                }
            }
        }
        let Evaluated::Vector(v) = self.eval(first).await? else {
            return Err(QueryError::invalid(
                "query",
                format!("{name} expects an instant vector"),
            ));
        };
        Ok(Evaluated::Vector(
            v.into_iter()
                .filter_map(|mut s| {
                    s.labels.remove(NAME);
                    s.points = s
                        .points
                        .into_iter()
                        .filter_map(|(t, x)| {
                            let p =
                                |i: usize, default: f64| params.get(i).map_or(default, |p| p.at(t));
                            math(name, x, p).map(|y| (t, y))
                        })
                        .collect();
                    (!s.points.is_empty()).then_some(s)
                })
                .collect(),
        ))
    }

    async fn aggregate(&self, a: &parser::AggregateExpr) -> Result<Evaluated, QueryError> {
        let op = a.op.to_string().to_ascii_lowercase();
        if op == "count_values" {
            return self.count_values(a).await;
        }
        let param = match &a.param {
            None => None,
            // A per-step parameter is taken at the first step.
            Some(p) => match self.eval(p).await? {
                Evaluated::Scalar(x) => Some(x.at(self.first())),
                Evaluated::Vector(_) => {
                    return Err(QueryError::invalid(
                        "query",
                        format!("the parameter of {op} must be a number"),
                    ));
                }
            },
        };
        let f = match op.as_str() {
            "sum" => Reduce::Agg(crate::agg::AggFn::Sum),
            "avg" => Reduce::Agg(crate::agg::AggFn::Avg),
            "min" => Reduce::Agg(crate::agg::AggFn::Min),
            "max" => Reduce::Agg(crate::agg::AggFn::Max),
            "count" => Reduce::Agg(crate::agg::AggFn::Count),
            "stddev" => Reduce::StdDev,
            "stdvar" => Reduce::StdVar,
            "quantile" => Reduce::Quantile(param.unwrap_or(f64::NAN)),
            "topk" | "bottomk" => return self.top(a, &op, param.unwrap_or(0.0)).await,
            other => return Err(unsupported(format!("aggregation {other}"))),
        };
        let Evaluated::Vector(inner) = self.eval(&a.expr).await? else {
            return Err(QueryError::invalid(
                "query",
                format!("{op} expects an instant vector"),
            ));
        };
        let key = |l: &Labels| -> Labels {
            a.modifier
                .as_ref()
                .map_or_else(Labels::new, |m| grouping_labels(l, m))
        };
        let mut groups: BTreeMap<Labels, BTreeMap<i64, Vec<f64>>> = BTreeMap::new();
        for s in inner {
            self.budget.spend(s.points.len())?;
            let g = groups.entry(key(&s.labels)).or_default();
            for (t, v) in s.points {
                g.entry(t).or_default().push(v);
            }
        }
        Ok(Evaluated::Vector(
            groups
                .into_iter()
                .map(|(labels, by_t)| Series {
                    labels,
                    points: by_t
                        .into_iter()
                        .filter_map(|(t, mut v)| f.apply(&mut v).map(|x| (t, x)))
                        .collect(),
                })
                .collect(),
        ))
    }

    /// `count_values("label", v)`: per group and step, how many series
    /// have each value; the value (as Prometheus formats it) in `label`.
    async fn count_values(&self, a: &parser::AggregateExpr) -> Result<Evaluated, QueryError> {
        let label = match a.param.as_deref() {
            Some(Expr::StringLiteral(s)) => s.val.clone(),
            _ => {
                return Err(QueryError::invalid(
                    "query",
                    "count_values expects a label name string first",
                ));
            }
        };
        let inner = self.vector_arg(&a.expr, "count_values").await?;
        let mut groups: BTreeMap<Labels, BTreeMap<i64, f64>> = BTreeMap::new();
        for s in inner {
            let mut key = a
                .modifier
                .as_ref()
                .map_or_else(Labels::new, |m| grouping_labels(&s.labels, m));
            for (t, v) in s.points {
                key.insert(label.clone(), fmt_value(v));
                *groups.entry(key.clone()).or_default().entry(t).or_default() += 1.0;
            }
        }
        Ok(Evaluated::Vector(
            groups
                .into_iter()
                .map(|(labels, by_t)| Series {
                    labels,
                    points: by_t.into_iter().collect(),
                })
                .collect(),
        ))
    }

    /// `topk` / `bottomk`: per group and step, the `k` series with the
    /// largest (smallest) values, with their own labels.
    async fn top(
        &self,
        a: &parser::AggregateExpr,
        op: &str,
        k: f64,
    ) -> Result<Evaluated, QueryError> {
        let Evaluated::Vector(inner) = self.eval(&a.expr).await? else {
            return Err(QueryError::invalid(
                "query",
                format!("{op} expects an instant vector"),
            ));
        };
        let k = if k.is_nan() || k < 1.0 { 0 } else { k as usize };
        let key = |l: &Labels| -> Labels {
            a.modifier
                .as_ref()
                .map_or_else(Labels::new, |m| grouping_labels(l, m))
        };
        // group -> step -> (value, series index)
        let mut groups: BTreeMap<Labels, BTreeMap<i64, Vec<(f64, usize)>>> = BTreeMap::new();
        for (i, s) in inner.iter().enumerate() {
            let g = groups.entry(key(&s.labels)).or_default();
            for &(t, v) in &s.points {
                g.entry(t).or_default().push((v, i));
            }
        }
        let mut kept: Vec<Vec<(i64, f64)>> = vec![Vec::new(); inner.len()];
        for by_t in groups.into_values() {
            for (t, mut vs) in by_t {
                // NaN last either way, as Prometheus ranks it.
                vs.sort_by(|x, y| {
                    let o = x.0.total_cmp(&y.0);
                    match (x.0.is_nan(), y.0.is_nan()) {
                        (true, false) => std::cmp::Ordering::Greater,
                        (false, true) => std::cmp::Ordering::Less,
                        _ if op == "topk" => o.reverse(),
                        _ => o,
                    }
                });
                for &(v, i) in vs.iter().take(k) {
                    kept[i].push((t, v));
                }
            }
        }
        Ok(Evaluated::Vector(
            inner
                .into_iter()
                .zip(kept)
                .filter(|(_, points)| !points.is_empty())
                .map(|(s, mut points)| {
                    points.sort_by_key(|p| p.0);
                    Series {
                        labels: s.labels,
                        points,
                    }
                })
                .collect(),
        ))
    }
}

/// One sample of a [`MATH_FUNCTIONS`] function, with its scalar
/// parameters at the sample's step; `None` drops the sample (`clamp` with
/// max below min).
fn math(name: &str, x: f64, p: impl Fn(usize, f64) -> f64) -> Option<f64> {
    Some(match name {
        "abs" => x.abs(),
        "ceil" => x.ceil(),
        "floor" => x.floor(),
        "exp" => x.exp(),
        "sqrt" => x.sqrt(),
        "ln" => x.ln(),
        "log2" => x.log2(),
        "log10" => x.log10(),
        "sgn" => {
            if x == 0.0 || x.is_nan() {
                x
            } else {
                x.signum()
            }
        }
        // Go's math.Floor(v*inverse+0.5) / inverse.
        "round" => {
            let inverse = 1.0 / p(0, 1.0);
            (x * inverse + 0.5).floor() / inverse
        }
        "clamp" => {
            let (lo, hi) = (p(0, f64::NAN), p(1, f64::NAN));
            if hi < lo {
                return None;
            }
            x.min(hi).max(lo)
        }
        "clamp_min" => x.max(p(0, f64::NAN)),
        "clamp_max" => x.min(p(0, f64::NAN)),
        _ => unreachable!("MATH_FUNCTIONS lists {name}"),
    })
}

/// Instant-vector functions evaluated sample by sample ([`Evaluator::math`]).
const MATH_FUNCTIONS: [&str; 13] = [
    "abs",
    "ceil",
    "floor",
    "exp",
    "sqrt",
    "ln",
    "log2",
    "log10",
    "sgn",
    "round",
    "clamp",
    "clamp_min",
    "clamp_max",
];

/// What an aggregation computes from a group's values at one step.
enum Reduce {
    Agg(crate::agg::AggFn),
    StdDev,
    StdVar,
    Quantile(f64),
}

impl Reduce {
    fn apply(&self, v: &mut [f64]) -> Option<f64> {
        if v.is_empty() {
            return None;
        }
        Some(match self {
            Reduce::Agg(f) => return f.apply(v),
            Reduce::StdDev => variance(v).sqrt(),
            Reduce::StdVar => variance(v),
            Reduce::Quantile(q) if q.is_nan() => f64::NAN,
            Reduce::Quantile(q) if *q < 0.0 => f64::NEG_INFINITY,
            Reduce::Quantile(q) if *q > 1.0 => f64::INFINITY,
            Reduce::Quantile(q) => crate::agg::percentile(v, *q),
        })
    }
}

/// The population variance, accumulated as Prometheus does (Welford).
fn variance(v: &[f64]) -> f64 {
    let (mut mean, mut m2, mut n) = (v[0], 0.0, 1.0);
    for &x in &v[1..] {
        n += 1.0;
        let delta = x - mean;
        mean += delta / n;
        m2 += delta * (x - mean);
    }
    m2 / n
}

/// Prometheus's sample value formatting (`strconv.FormatFloat(v, 'f', -1,
/// 64)`).
fn fmt_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        format!("{v}")
    }
}

fn fmt_time(ms: i64) -> Json {
    if ms % 1000 == 0 {
        json!(ms / 1000)
    } else {
        json!(ms as f64 / 1000.0)
    }
}

/// Prometheus time parameter to milliseconds: Unix seconds (float) or
/// RFC 3339.
fn parse_ms(param: &str, v: &str) -> Result<i64, QueryError> {
    if let Ok(t) = v.parse::<f64>()
        && t.is_finite()
        && t.abs() < 1e12
    {
        return Ok((t * 1000.0).round() as i64);
    }
    if let Ok(t) = humantime::parse_rfc3339_weak(v) {
        return Ok(t
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0));
    }
    Err(QueryError::invalid(
        param,
        format!("cannot parse {v:?} to a valid timestamp"),
    ))
}

/// Prometheus duration parameter: float seconds or a PromQL duration.
fn parse_duration_ms(param: &str, v: &str) -> Result<i64, QueryError> {
    if let Ok(s) = v.parse::<f64>()
        && s.is_finite()
    {
        return Ok((s * 1000.0).round() as i64);
    }
    promql_parser::util::parse_duration(v)
        .map_err(|_| QueryError::invalid(param, format!("cannot parse {v:?} to a valid duration")))
        .and_then(|d| {
            within(&d, param).map_err(|e| QueryError::invalid(param, e))?;
            Ok(d.as_millis() as i64)
        })
}

/// Longest query text.
pub const MAX_QUERY_BYTES: usize = 64 * 1024;
/// Deepest nesting of expressions (each level is a recursion of the
/// evaluator).
pub const MAX_QUERY_DEPTH: usize = 128;
/// Longest duration a query may name (ranges, subquery steps, offsets) and
/// farthest `@` time from 1970: Prometheus's own bound (durations are
/// int64 nanoseconds there); past it the millisecond arithmetic overflows.
pub const MAX_QUERY_DURATION: std::time::Duration =
    std::time::Duration::from_secs(292 * 365 * 86_400);

pub fn parse_expr(q: &str) -> Result<Expr, QueryError> {
    if q.len() > MAX_QUERY_BYTES {
        return Err(QueryError::invalid(
            "query",
            format!("is {} bytes long, the limit is {MAX_QUERY_BYTES}", q.len()),
        ));
    }
    let text = renamed_functions(q);
    // promql-parser 0.11 panics on some input instead of refusing it (a
    // number too large for a duration: `x offset 1e300`, found by the
    // promql_eval fuzz target): a 400, not a dropped connection.
    let parsed = std::panic::catch_unwind(|| parser::parse(&text)).unwrap_or_else(|_| {
        Err("the query could not be parsed (a number out of range for a duration?)".into())
    });
    let expr = parsed.map_err(|e| QueryError::invalid("query", e))?;
    let mut bounds = Bounds { depth: 0 };
    promql_parser::util::walk_expr(&mut bounds, &expr)
        .map_err(|e| QueryError::invalid("query", e))?;
    Ok(expr)
}

/// Refuses, before anything is read, a query nested deeper than
/// [`MAX_QUERY_DEPTH`] or naming a duration or `@` time past
/// [`MAX_QUERY_DURATION`].
struct Bounds {
    depth: usize,
}

fn within(d: &std::time::Duration, what: &str) -> Result<(), String> {
    if *d > MAX_QUERY_DURATION {
        return Err(format!(
            "the {what} {} is longer than {} (the longest a query may name)",
            humantime::format_duration(*d),
            humantime::format_duration(MAX_QUERY_DURATION)
        ));
    }
    Ok(())
}

fn offset_within(o: Option<&parser::Offset>) -> Result<(), String> {
    match o {
        Some(parser::Offset::Pos(d) | parser::Offset::Neg(d)) => within(d, "offset"),
        None => Ok(()),
    }
}

fn at_within(at: Option<&AtModifier>) -> Result<(), String> {
    if let Some(AtModifier::At(t)) = at {
        let from_epoch = match t.duration_since(UNIX_EPOCH) {
            Ok(d) => d,
            Err(e) => e.duration(),
        };
        within(&from_epoch, "@ time's distance from 1970")?;
    }
    Ok(())
}

impl promql_parser::util::ExprVisitor for Bounds {
    type Error = String;

    fn pre_visit(&mut self, e: &Expr) -> Result<bool, String> {
        self.depth += 1;
        if self.depth > MAX_QUERY_DEPTH {
            return Err(format!("nests deeper than {MAX_QUERY_DEPTH} expressions"));
        }
        match e {
            Expr::VectorSelector(vs) => {
                offset_within(vs.offset.as_ref())?;
                at_within(vs.at.as_ref())?;
            }
            Expr::MatrixSelector(ms) => {
                within(&ms.range, "range")?;
                offset_within(ms.vs.offset.as_ref())?;
                at_within(ms.vs.at.as_ref())?;
            }
            Expr::Subquery(sq) => {
                within(&sq.range, "subquery range")?;
                if let Some(step) = &sq.step {
                    within(step, "subquery step")?;
                }
                offset_within(sq.offset.as_ref())?;
                at_within(sq.at.as_ref())?;
            }
            _ => {}
        }
        Ok(true)
    }

    fn post_visit(&mut self, _: &Expr) -> Result<bool, String> {
        self.depth -= 1;
        Ok(true)
    }
}

/// Prometheus 2.x's `holt_winters` is Prometheus 3's (and the parser's)
/// `double_exponential_smoothing`: dashboards written for 2.x use the old
/// name. Renamed where it is a function name, outside string literals.
fn renamed_functions(q: &str) -> std::borrow::Cow<'_, str> {
    const OLD: &str = "holt_winters";
    const NEW: &str = "double_exponential_smoothing";
    if !q.contains(OLD) {
        return q.into();
    }
    let b = q.as_bytes();
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b':';
    let mut out = String::with_capacity(q.len() + 16);
    let (mut i, mut quote, mut copied) = (0, None::<u8>, 0);
    while i < b.len() {
        let c = b[i];
        match quote {
            Some(_) if c == b'\\' => i += 1,
            Some(open) if c == open => quote = None,
            Some(_) => {}
            None if matches!(c, b'"' | b'\'' | b'`') => quote = Some(c),
            // Bytes, not `q[i..]`: `i` may be inside a multi-byte
            // character (found by the promql_eval fuzz target). A match
            // starts with an ASCII byte, so it is on a boundary.
            None if b[i..].starts_with(OLD.as_bytes())
                && (i == 0 || !ident(b[i - 1]))
                && q[i + OLD.len()..].trim_start().starts_with('(') =>
            {
                out.push_str(&q[copied..i]);
                out.push_str(NEW);
                i += OLD.len();
                copied = i;
                continue;
            }
            None => {}
        }
        i += 1;
    }
    out.push_str(&q[copied..]);
    out.into()
}

fn success(data: Json) -> Response {
    axum::Json(json!({"status": "success", "data": data})).into_response()
}

/// A list answer (label names, label values, series): at most `limit`
/// entries (0: no limit of its own) and never more than
/// `query.max_series`; when cut, the warning says so, as Prometheus's
/// does.
fn capped(
    items: impl ExactSizeIterator<Item = Json>,
    p: &Params,
    cfg: &QueryConfig,
) -> Result<(Json, Option<String>), QueryError> {
    let asked = match p.get("limit") {
        None => 0,
        Some(v) => v.parse::<usize>().map_err(|_| {
            QueryError::invalid("limit", format!("{v:?} is not a non-negative integer"))
        })?,
    };
    let max = cfg.max_series;
    let limit = if asked == 0 { max } else { asked.min(max) };
    let n = items.len();
    let out: Vec<Json> = items.take(limit).collect();
    let warning = (n > limit).then(|| {
        if limit == asked {
            "results truncated due to limit".to_string()
        } else {
            format!("results truncated due to limit: {n} entries, query.max_series is {max}")
        }
    });
    Ok((Json::Array(out), warning))
}

fn reply_capped(r: Result<(Json, Option<String>), QueryError>) -> Response {
    match r {
        Ok((d, None)) => success(d),
        Ok((d, Some(w))) => {
            axum::Json(json!({"status": "success", "data": d, "warnings": [w]})).into_response()
        }
        Err(e) => prom_error(&e),
    }
}

fn prom_error(e: &QueryError) -> Response {
    let mut r = error_response(e);
    *r.body_mut() = axum::body::Body::from(
        json!({"status": "error", "errorType": e.prom_error_type(), "error": e.to_string()})
            .to_string(),
    );
    r
}

fn reply(r: Result<Json, QueryError>) -> Response {
    match r {
        Ok(d) => success(d),
        Err(e) => prom_error(&e),
    }
}

fn timeout_of(engine: &Engine, p: &Params) -> Result<Duration, QueryError> {
    match p.get("timeout") {
        Some(v) => {
            let ms = parse_duration_ms("timeout", v)?;
            if ms <= 0 {
                return Err(QueryError::invalid("timeout", "must be positive"));
            }
            Ok(Duration::from_millis(ms as u64))
        }
        None => Ok(engine.config().timeout),
    }
}

fn labels_json(l: &Labels) -> Json {
    Json::Object(l.iter().map(|(k, v)| (k.clone(), json!(v))).collect())
}

/// `Some(descending)` when `e` is `sort(...)` / `sort_desc(...)`.
fn sort_order(e: &Expr) -> Option<bool> {
    match e {
        Expr::Paren(p) => sort_order(&p.expr),
        Expr::Call(c) if c.func.name == "sort" => Some(false),
        Expr::Call(c) if c.func.name == "sort_desc" => Some(true),
        _ => None,
    }
}

/// Evaluates `expr` at each of `steps` (milliseconds, ascending) against
/// `source`, within `timeout`.
pub async fn evaluate(
    source: &dyn Source,
    expr: &Expr,
    steps: Vec<i64>,
    timeout: Duration,
) -> Result<Evaluated, QueryError> {
    let budget = Budget::new(timeout);
    let ev = Evaluator {
        source,
        steps,
        lookback_ms: source.config().lookback.as_millis() as i64,
        budget: &budget,
    };
    ev.eval(expr).await
}

/// `e` without the parentheses around it.
fn unparen(e: &Expr) -> &Expr {
    match e {
        Expr::Paren(p) => unparen(&p.expr),
        e => e,
    }
}

/// The samples of a range vector (a matrix selector or a subquery) as of
/// `t`: what an instant query of `node_load1[30s]` answers (Grafana's
/// Explore and the Prometheus UI's table ask it), each series with every
/// sample of its window, the metric name kept.
async fn range_vector_at(
    source: &dyn Source,
    expr: &Expr,
    t: i64,
    timeout: Duration,
) -> Result<Vec<Series>, QueryError> {
    let budget = Budget::new(timeout);
    let ev = Evaluator {
        source,
        steps: vec![t],
        lookback_ms: source.config().lookback.as_millis() as i64,
        budget: &budget,
    };
    let (mut series, range, at) = ev.range_vector("query", expr).await?;
    let t = ev.at_time(at.as_ref(), t);
    // The window is as of `t`; the samples are shown at the times they
    // were taken, `offset` undone (as Prometheus shows them).
    let off = match expr {
        Expr::MatrixSelector(ms) => offset_ms(ms.vs.offset.as_ref()),
        Expr::Subquery(sq) => offset_ms(sq.offset.as_ref()),
        _ => 0,
    };
    for s in &mut series {
        s.points.retain(|(pt, _)| *pt > t - range && *pt <= t);
        s.points.iter_mut().for_each(|p| p.0 -= off);
    }
    series.retain(|s| !s.points.is_empty());
    Ok(series)
}

async fn instant(engine: &dyn Source, p: &Params, timeout: Duration) -> Result<Json, QueryError> {
    let expr = parse_expr(p.required("query")?)?;
    let t = match p.get("time") {
        Some(v) => parse_ms("time", v)?,
        None => broker_common::unix_now() * 1000,
    };
    match unparen(&expr) {
        Expr::MatrixSelector(_) | Expr::Subquery(_) => {
            let series = range_vector_at(engine, unparen(&expr), t, timeout).await?;
            return Ok(json!({"resultType": "matrix", "result": matrix_json(&series)}));
        }
        Expr::StringLiteral(s) => {
            return Ok(json!({"resultType": "string", "result": [fmt_time(t), s.val]}));
        }
        _ => {}
    }
    Ok(match evaluate(engine, &expr, vec![t], timeout).await? {
        Evaluated::Scalar(v) => {
            json!({"resultType": "scalar", "result": [fmt_time(t), fmt_value(v.at(t))]})
        }
        Evaluated::Vector(mut s) => {
            if let Some(desc) = sort_order(&expr) {
                let last = |s: &Series| s.points.last().map_or(f64::NAN, |p| p.1);
                s.sort_by(|a, b| {
                    let o = last(a).total_cmp(&last(b));
                    if desc { o.reverse() } else { o }
                });
            }
            let result: Vec<Json> = s
                .iter()
                .filter_map(|s| {
                    let (pt, v) = s.points.last()?;
                    Some(json!({"metric": labels_json(&s.labels), "value": [fmt_time(*pt), fmt_value(*v)]}))
                })
                .collect();
            json!({"resultType": "vector", "result": result})
        }
    })
}

async fn range(engine: &dyn Source, p: &Params, timeout: Duration) -> Result<Json, QueryError> {
    let expr = parse_expr(p.required("query")?)?;
    let start = parse_ms("start", p.required("start")?)?;
    let end = parse_ms("end", p.required("end")?)?;
    let step = parse_duration_ms("step", p.required("step")?)?;
    if end < start {
        return Err(QueryError::invalid("end", "is before start"));
    }
    if step <= 0 {
        return Err(QueryError::invalid(
            "step",
            "zero or negative query resolution step widths are not accepted; try a positive integer",
        ));
    }
    let n = (end - start) / step + 1;
    let max = engine.config().max_points as i64;
    if n > max {
        return Err(QueryError::limit(
            "step",
            format!(
                "exceeded maximum resolution of {max} points per timeseries (query.max_points); try decreasing the query resolution (?step=XX)"
            ),
        ));
    }
    let steps: Vec<i64> = (0..n).map(|i| start + i * step).collect();
    let series = match evaluate(engine, &expr, steps.clone(), timeout).await? {
        Evaluated::Scalar(v) => vec![Series {
            labels: Labels::new(),
            points: steps.iter().map(|&t| (t, v.at(t))).collect(),
        }],
        Evaluated::Vector(s) => s,
    };
    Ok(json!({"resultType": "matrix", "result": matrix_json(&series)}))
}

/// Series as a `matrix` result: labels and `values`, empty series left out.
fn matrix_json(series: &[Series]) -> Vec<Json> {
    series
        .iter()
        .filter(|s| !s.points.is_empty())
        .map(|s| {
            json!({
                "metric": labels_json(&s.labels),
                "values": s.points.iter().map(|(t, v)| json!([fmt_time(*t), fmt_value(*v)])).collect::<Vec<_>>(),
            })
        })
        .collect()
}

/// Label sets of the series `match[]` selects (every series when absent),
/// each given to `each`, so that callers keep only what they answer
/// (label names or values), not every series of every host.
async fn matched_each(
    engine: &Engine,
    p: &Params,
    mut each: impl FnMut(Labels),
) -> Result<(), QueryError> {
    for (_, metrics) in selected(engine, p, false).await? {
        metrics.into_iter().for_each(|(_, l)| each(l));
    }
    Ok(())
}

/// Label sets of the series `match[]` selects (required).
async fn matched(engine: &Engine, p: &Params) -> Result<Vec<Labels>, QueryError> {
    let mut out = BTreeSet::new();
    for (_, metrics) in selected(engine, p, true).await? {
        out.extend(metrics.into_iter().map(|(_, labels)| labels));
    }
    Ok(out.into_iter().collect())
}

/// The series `match[]` selects (every series without one, unless
/// `required`), per host, as stored name and labels. With `start` or
/// `end`, only those whose time range meets it (as Prometheus answers:
/// series that had samples then, gone since or not); without, every
/// series of the retention.
async fn selected(
    engine: &Engine,
    p: &Params,
    required: bool,
) -> Result<Vec<(String, Vec<(String, Labels)>)>, QueryError> {
    let selectors = p.all("match[]");
    let mut hosts: BTreeMap<String, BTreeMap<String, Labels>> = BTreeMap::new();
    if selectors.is_empty() {
        if required {
            return Err(QueryError::invalid(
                "match[]",
                "no match[] parameter provided",
            ));
        }
        for h in engine.host_list().await?.iter() {
            let l = host_labels(h);
            let metrics = hosts.entry(h.id.clone()).or_default();
            for m in &h.metrics {
                metrics.insert(m.clone(), series_labels(&l, m));
            }
        }
    }
    for s in selectors {
        let Expr::VectorSelector(vs) = parse_expr(s)? else {
            return Err(QueryError::invalid(
                "match[]",
                format!("{s:?} is not a series selector"),
            ));
        };
        for (host, metrics) in select(engine, &vs).await?.hosts {
            hosts.entry(host).or_default().extend(metrics);
        }
    }
    let (start, end) = (p.get("start"), p.get("end"));
    if start.is_none() && end.is_none() {
        return Ok(hosts
            .into_iter()
            .map(|(h, m)| (h, m.into_iter().collect()))
            .collect());
    }
    let start = start.map_or(Ok(i64::MIN), |v| parse_ms("start", v))?;
    let end = end.map_or(Ok(i64::MAX), |v| parse_ms("end", v))?;
    if end < start {
        return Err(QueryError::invalid("end", "is before start"));
    }
    let ids: Vec<String> = hosts.keys().cloned().collect();
    let during = engine.series_between(&ids, start, end).await?;
    Ok(hosts
        .into_iter()
        .zip(during)
        .map(|((h, metrics), during)| {
            let during: BTreeSet<String> = during.into_iter().collect();
            let metrics = metrics
                .into_iter()
                .filter(|(m, _)| during.contains(m))
                .collect();
            (h, metrics)
        })
        .collect())
}

async fn handle(s: &HttpState, op: &'static str, q: Option<String>, body: Bytes) -> Response {
    let e = &s.engine;
    let p = match Params::parse(q.as_deref(), &body) {
        Ok(p) => p,
        Err(err) => return prom_error(&err),
    };
    let timeout = match timeout_of(e, &p) {
        Ok(t) => t,
        Err(err) => return prom_error(&err),
    };
    reply_capped(
        e.run_within(op, timeout, async {
            match op {
                "prom_query" => Ok((instant(&**e, &p, timeout).await?, None)),
                "prom_query_range" => Ok((range(&**e, &p, timeout).await?, None)),
                "prom_series" => {
                    let series = matched(e, &p).await?;
                    capped(series.iter().map(labels_json), &p, e.config())
                }
                "prom_labels" => {
                    let mut names: BTreeSet<String> = BTreeSet::new();
                    matched_each(e, &p, |l| names.extend(l.into_keys())).await?;
                    capped(names.into_iter().map(Json::String), &p, e.config())
                }
                _ => unreachable!("known op"),
            }
        })
        .await,
    )
}

async fn query(State(s): State<HttpState>, RawQuery(q): RawQuery, body: Bytes) -> Response {
    handle(&s, "prom_query", q, body).await
}

async fn query_range(State(s): State<HttpState>, RawQuery(q): RawQuery, body: Bytes) -> Response {
    handle(&s, "prom_query_range", q, body).await
}

async fn series_api(State(s): State<HttpState>, RawQuery(q): RawQuery, body: Bytes) -> Response {
    handle(&s, "prom_series", q, body).await
}

async fn labels(State(s): State<HttpState>, RawQuery(q): RawQuery, body: Bytes) -> Response {
    handle(&s, "prom_labels", q, body).await
}

async fn label_values(
    State(s): State<HttpState>,
    Path(name): Path<String>,
    RawQuery(q): RawQuery,
) -> Response {
    let e = &s.engine;
    reply_capped(
        e.run("prom_label_values", async {
            let p = Params::parse(q.as_deref(), b"")?;
            let mut values: BTreeSet<String> = BTreeSet::new();
            matched_each(e, &p, |mut l| {
                if let Some(v) = l.remove(&name) {
                    values.insert(v);
                }
            })
            .await?;
            capped(values.into_iter().map(Json::String), &p, e.config())
        })
        .await,
    )
}

/// The Prometheus HTTP API version Grafana's data source should assume
/// (it reads `version` to pick features); `broker` says what answers.
const PROMETHEUS_API_VERSION: &str = "2.40.0";

async fn buildinfo() -> Response {
    success(json!({
        "version": PROMETHEUS_API_VERSION,
        "revision": "",
        "branch": "",
        "buildUser": "",
        "buildDate": "",
        "goVersion": "",
        "broker": env!("CARGO_PKG_VERSION"),
    }))
}

/// `/api/v1/metadata`: every metric name (without the labels it may carry)
/// with type `unknown`: the broker keeps no type or help text.
async fn metadata(State(s): State<HttpState>, RawQuery(q): RawQuery) -> Response {
    let e = &s.engine;
    reply(
        e.run("prom_metadata", async {
            let p = Params::parse(q.as_deref(), b"")?;
            let only = p.get("metric");
            let limit =
                match p.get("limit") {
                    Some(v) => Some(v.parse::<usize>().map_err(|_| {
                        QueryError::invalid("limit", format!("{v:?} is not a count"))
                    })?),
                    None => None,
                };
            let mut names: BTreeSet<String> = BTreeSet::new();
            matched_each(e, &p, |mut l| {
                if let Some(n) = l.remove(NAME)
                    && only.is_none_or(|m| m == n)
                {
                    names.insert(n);
                }
            })
            .await?;
            let max = e.config().max_series;
            let entries = names
                .into_iter()
                .take(limit.filter(|&l| l > 0).unwrap_or(max).min(max))
                .map(|n| (n, json!([{"type": "unknown", "help": "", "unit": ""}])));
            Ok(Json::Object(entries.collect()))
        })
        .await,
    )
}

/// `/api/v1/query_exemplars`: the broker stores no exemplars.
async fn exemplars() -> Response {
    success(json!([]))
}

pub fn routes() -> Router<HttpState> {
    Router::new()
        .route("/api/v1/status/buildinfo", get(buildinfo))
        .route("/api/v1/metadata", get(metadata))
        .route("/api/v1/query_exemplars", get(exemplars).post(exemplars))
        .route("/api/v1/query", get(query).post(query))
        .route("/api/v1/query_range", get(query_range).post(query_range))
        .route("/api/v1/series", get(series_api).post(series_api))
        .route("/api/v1/labels", get(labels).post(labels))
        .route("/api/v1/label/{name}/values", get(label_values))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_past_the_bounds_are_refused_before_evaluation() {
        let e = |q: &str| parse_expr(q).unwrap_err().to_string();
        // Each would overflow the millisecond arithmetic (or, in release,
        // wrap to a wrong range) before.
        assert!(
            e("rate(up[292470000y])").contains("longer than"),
            "{}",
            e("rate(up[292470000y])")
        );
        assert!(e("up offset 300y").contains("offset"));
        assert!(e("max_over_time(up[5m:1000y])").contains("subquery step"));
        assert!(e("up @ 99999999999999").contains("@ time"));
        let deep = format!("{}up{}", "-(".repeat(200), ")".repeat(200));
        assert!(e(&deep).contains("nests deeper than 128"), "{}", e(&deep));
        let long = format!("up{{job=\"{}\"}}", "x".repeat(70_000));
        assert!(e(&long).contains("bytes long"));
        assert!(parse_duration_ms("step", "300y").is_err());
        // promql-parser panics on this one; caught.
        assert!(
            e("max_over_time(up[5m:30s] offset 277772e777777777)").contains("could not be parsed")
        );
        // Within the bounds: fine.
        assert!(parse_expr("rate(up[5m] offset 1h)").is_ok());
        assert!(parse_expr(&format!("{}up{}", "-(".repeat(50), ")".repeat(50))).is_ok());
    }

    /// One host `h1` with `n` snapshots of metric `m`, one a second from 0.
    fn memory(n: i64) -> MemorySource {
        let host = HostInfo {
            id: "h1".into(),
            last_seen: n - 1,
            labels: BTreeMap::new(),
            points: n as u64,
            series: 1,
            metrics: vec!["m".into()],
        };
        let frame = Frame {
            timestamps: (0..n).map(|i| i * 1000).collect(),
            metrics: [("m".to_string(), (0..n).map(|i| i as f64).collect())].into(),
        };
        MemorySource {
            config: QueryConfig::default(),
            hosts: Arc::new(vec![host]),
            frames: [("h1".to_string(), frame)].into(),
        }
    }

    #[tokio::test]
    async fn a_long_evaluation_loop_stops_at_the_deadline() {
        let src = memory(86_400);
        let steps: Vec<i64> = (0..10_000).map(|i| 86_399_000 - i * 1000).rev().collect();
        // A day's window at 10,000 steps: some 860 million samples visited.
        let expr = parse_expr("max_over_time(m[1d])").unwrap();
        // Nothing awaits inside that loop: only the budget can stop it.
        let err = evaluate(&src, &expr, steps, Duration::from_millis(50))
            .await
            .unwrap_err();
        assert!(matches!(err, QueryError::Timeout(_)), "{err}");
        // The same query over a short range answers.
        let steps: Vec<i64> = (0..10).map(|i| 86_390_000 + i * 1000).collect();
        let Evaluated::Vector(v) = evaluate(&src, &expr, steps, Duration::from_secs(10))
            .await
            .unwrap()
        else {
            panic!("a vector")
        };
        assert_eq!(v[0].points.last(), Some(&(86_399_000, 86_399.0)));
    }

    #[tokio::test]
    async fn memory_frames_are_bounded_by_max_points_scanned() {
        let mut src = memory(1_000);
        src.config.max_points_scanned = 100;
        let expr = parse_expr("m").unwrap();
        let err = evaluate(&src, &expr, vec![999_000], Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("max_points_scanned"), "{err}");
    }

    #[test]
    fn renaming_holt_winters_survives_multibyte_text() {
        // Crashed the handler: a slice inside 'ؓ' (found by fuzzing).
        let q = "histoholt_wintersl3mP(a(bsder\u{613}iv(cpu_user[3m])), 0, 1) u ";
        assert_eq!(renamed_functions(q), q);
        assert_eq!(
            renamed_functions("é + holt_winters(x[5m], 0.5, 0.5)"),
            "é + double_exponential_smoothing(x[5m], 0.5, 0.5)"
        );
    }

    #[test]
    fn windows_are_left_open() {
        let pts = [(1000, 1.0), (2000, 2.0), (3000, 3.0)];
        assert_eq!(window(&pts, 3000, 2000), &pts[1..]);
        assert_eq!(window(&pts, 2500, 1000), &pts[1..2]);
        assert!(window(&pts, 500, 1000).is_empty());
    }

    #[test]
    fn formats_like_prometheus() {
        assert_eq!(fmt_value(1.5), "1.5");
        assert_eq!(fmt_value(2.0), "2");
        assert_eq!(fmt_value(f64::INFINITY), "+Inf");
        assert_eq!(fmt_time(1_700_000_000_000), json!(1_700_000_000));
        assert_eq!(fmt_time(1_700_000_000_500), json!(1_700_000_000.5));
        assert_eq!(parse_ms("time", "1700000000.5").unwrap(), 1_700_000_000_500);
        assert_eq!(parse_duration_ms("step", "1m").unwrap(), 60_000);
        assert_eq!(parse_duration_ms("step", "15").unwrap(), 15_000);
    }

    #[test]
    fn holt_winters_is_the_parsers_double_exponential_smoothing() {
        assert_eq!(
            renamed_functions(
                r#"holt_winters(g{a="holt_winters(x)"}[5m], 0.5, 0.5) + my_holt_winters"#
            ),
            r#"double_exponential_smoothing(g{a="holt_winters(x)"}[5m], 0.5, 0.5) + my_holt_winters"#
        );
        assert_eq!(
            renamed_functions("holt_winters (g[1m],0.1,0.2)"),
            "double_exponential_smoothing (g[1m],0.1,0.2)"
        );
        assert!(parse_expr("holt_winters(g[5m], 0.5, 0.5)").is_ok());
    }

    #[test]
    fn parser_shapes_we_rely_on() {
        let Expr::VectorSelector(vs) = parse_expr(r#"cpu_user{host="h1"}"#).unwrap() else {
            panic!()
        };
        assert_eq!(vs.name.as_deref(), Some("cpu_user"));
        let Expr::Aggregate(a) = parse_expr(r#"sum by (host) (avg_over_time(m[5m]))"#).unwrap()
        else {
            panic!()
        };
        assert_eq!(a.op.to_string(), "sum");
        assert!(matches!(a.modifier, Some(LabelModifier::Include(_))));
        assert!(parse_expr("sum(").is_err());
    }
}
