//! PromQL binary operators with a vector operand, as Prometheus 2.x
//! evaluates them: arithmetic and comparison between a vector and a
//! scalar or between two vectors matched one-to-one (`on` / `ignoring`) or
//! many-to-one (`group_left` / `group_right`), and the set operators
//! `and`, `or`, `unless`. Series hold one point per
//! evaluation step; matching happens step by step.

use super::{Labels, NAME, Scalar, Series, grouping_labels, scalar_op};
use crate::error::QueryError;
use promql_parser::parser::{BinModifier, LabelModifier, VectorMatchCardinality};
use std::collections::{BTreeMap, HashMap, HashSet};

fn is_comparison(op: &str) -> bool {
    matches!(op, "==" | "!=" | ">" | "<" | ">=" | "<=")
}

/// Arithmetic drops the metric name; so does a comparison with `bool`.
fn drops_name(op: &str, return_bool: bool) -> bool {
    return_bool || !is_comparison(op)
}

/// `vector op scalar` (or `scalar op vector` when `scalar_left`).
pub fn vector_scalar(
    v: Vec<Series>,
    s: &Scalar,
    op: &str,
    scalar_left: bool,
    return_bool: bool,
) -> Result<Vec<Series>, QueryError> {
    let unsupported = || QueryError::Unsupported(format!("operator {op}"));
    let mut out = Vec::with_capacity(v.len());
    for mut series in v {
        let mut points = Vec::with_capacity(series.points.len());
        for (t, x) in series.points {
            let s = s.at(t);
            let (l, r) = if scalar_left { (s, x) } else { (x, s) };
            let p = point(op, l, r, return_bool, x).ok_or_else(unsupported)?;
            if let Some(value) = p {
                points.push((t, value));
            }
        }
        if points.is_empty() {
            continue;
        }
        if drops_name(op, return_bool) {
            series.labels.remove(NAME);
        }
        series.points = points;
        out.push(series);
    }
    Ok(out)
}

/// One element: `Some(Some(v))` kept with value `v`, `Some(None)` filtered
/// out by a comparison, `None` for an unknown operator. A comparison
/// without `bool` keeps `vector_value` (the vector's, on whichever side).
fn point(op: &str, l: f64, r: f64, return_bool: bool, vector_value: f64) -> Option<Option<f64>> {
    let v = scalar_op(op, l, r)?;
    if !is_comparison(op) {
        return Some(Some(v));
    }
    let keep = v == 1.0;
    Some(if return_bool {
        Some(f64::from(u8::from(keep)))
    } else {
        keep.then_some(vector_value)
    })
}

/// The labels two series are matched on: those `on` / `ignoring` say, by
/// default all but the metric name.
fn signature(l: &Labels, matching: Option<&LabelModifier>) -> Labels {
    match matching {
        Some(m) => grouping_labels(l, m),
        None => l
            .iter()
            .filter(|(k, _)| *k != NAME)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    }
}

/// Prometheus's error for a match group found twice on one side.
fn many_to_many(signature: &Labels, side: &str) -> QueryError {
    QueryError::invalid(
        "query",
        format!(
            "found duplicate series for the match group {signature:?} on the {side} hand-side of the operation: many-to-many matching not allowed: matching labels must be unique on one side"
        ),
    )
}

/// Collects (labels, t, v) into series, ordered by labels.
fn collect(out: BTreeMap<Labels, Vec<(i64, f64)>>) -> Vec<Series> {
    out.into_iter()
        .map(|(labels, mut points)| {
            points.sort_by_key(|p| p.0);
            Series { labels, points }
        })
        .collect()
}

/// Per step, the series (index) that have a point there, with its value.
fn by_step(v: &[Series]) -> BTreeMap<i64, Vec<(usize, f64)>> {
    let mut steps: BTreeMap<i64, Vec<(usize, f64)>> = BTreeMap::new();
    for (i, s) in v.iter().enumerate() {
        for &(t, x) in &s.points {
            steps.entry(t).or_default().push((i, x));
        }
    }
    steps
}

/// `lhs op rhs` for two vectors.
pub fn vector_vector(
    lhs: Vec<Series>,
    rhs: Vec<Series>,
    op: &str,
    modifier: Option<&BinModifier>,
) -> Result<Vec<Series>, QueryError> {
    let matching = modifier.and_then(|m| m.matching.as_ref());
    let return_bool = modifier.is_some_and(|m| m.return_bool);
    let card = modifier.map(|m| &m.card);
    // group_left / group_right: the labels copied from the "one" side.
    let (include, one_to_many) = match card {
        Some(VectorMatchCardinality::ManyToOne(l)) => (Some(l), false),
        Some(VectorMatchCardinality::OneToMany(l)) => (Some(l), true),
        _ => (None, false),
    };
    let lsig: Vec<Labels> = lhs.iter().map(|s| signature(&s.labels, matching)).collect();
    let rsig: Vec<Labels> = rhs.iter().map(|s| signature(&s.labels, matching)).collect();
    let (lsteps, rsteps) = (by_step(&lhs), by_step(&rhs));
    let mut out: BTreeMap<Labels, Vec<(i64, f64)>> = BTreeMap::new();
    let mut push =
        |labels: &Labels, t: i64, v: f64| out.entry(labels.clone()).or_default().push((t, v));
    let empty = Vec::new();
    match op {
        "and" | "unless" => {
            for (t, ls) in &lsteps {
                let present: HashSet<&Labels> = rsteps
                    .get(t)
                    .unwrap_or(&empty)
                    .iter()
                    .map(|(i, _)| &rsig[*i])
                    .collect();
                for &(i, x) in ls {
                    if present.contains(&lsig[i]) == (op == "and") {
                        push(&lhs[i].labels, *t, x);
                    }
                }
            }
        }
        "or" => {
            for (t, ls) in &lsteps {
                for &(i, x) in ls {
                    push(&lhs[i].labels, *t, x);
                }
            }
            for (t, rs) in &rsteps {
                let present: HashSet<&Labels> = lsteps
                    .get(t)
                    .unwrap_or(&empty)
                    .iter()
                    .map(|(i, _)| &lsig[*i])
                    .collect();
                for &(i, x) in rs {
                    if !present.contains(&rsig[i]) {
                        push(&rhs[i].labels, *t, x);
                    }
                }
            }
        }
        _ => {
            // As Prometheus does: `one` is the side matched at most once
            // (the right one, but the left one for group_right); `many`
            // the side each of whose series takes its match.
            let (many, one, msig, osig, msteps, osteps) = if one_to_many {
                (&rhs, &lhs, &rsig, &lsig, &rsteps, &lsteps)
            } else {
                (&lhs, &rhs, &lsig, &rsig, &lsteps, &rsteps)
            };
            let side = |many_side: bool| {
                if many_side == one_to_many {
                    "right"
                } else {
                    "left"
                }
            };
            for (t, ms) in msteps {
                let mut matches: HashMap<&Labels, (usize, f64)> = HashMap::new();
                for &(i, x) in osteps.get(t).unwrap_or(&empty) {
                    if matches.insert(&osig[i], (i, x)).is_some() {
                        return Err(many_to_many(&osig[i], side(false)));
                    }
                }
                let mut inserted: HashSet<Labels> = HashSet::new();
                let mut matched: HashSet<&Labels> = HashSet::new();
                for &(i, x) in ms {
                    let Some(&(j, y)) = matches.get(&msig[i]) else {
                        continue;
                    };
                    // One-to-one: each match group at most once on both sides.
                    if include.is_none() && !matched.insert(&msig[i]) {
                        return Err(many_to_many(&msig[i], side(true)));
                    }
                    let (l, r) = if one_to_many { (y, x) } else { (x, y) };
                    let Some(p) = point(op, l, r, return_bool, l) else {
                        return Err(QueryError::Unsupported(format!("operator {op}")));
                    };
                    let Some(v) = p else { continue };
                    let mut labels = many[i].labels.clone();
                    if drops_name(op, return_bool) {
                        labels.remove(NAME);
                    }
                    match (include, matching) {
                        (Some(include), _) => {
                            for name in &include.labels {
                                match one[j].labels.get(name) {
                                    Some(value) if !value.is_empty() => {
                                        labels.insert(name.clone(), value.clone());
                                    }
                                    _ => {
                                        labels.remove(name);
                                    }
                                }
                            }
                        }
                        (None, Some(LabelModifier::Include(on))) => {
                            labels.retain(|k, _| on.labels.contains(k));
                        }
                        (None, Some(LabelModifier::Exclude(ignoring))) => {
                            labels.retain(|k, _| !ignoring.labels.contains(k));
                        }
                        (None, None) => {}
                    }
                    if !inserted.insert(labels.clone()) {
                        return Err(if include.is_some() {
                            QueryError::invalid(
                                "query",
                                format!(
                                    "multiple matches for labels {labels:?}: grouping labels must ensure unique matches"
                                ),
                            )
                        } else {
                            many_to_many(&msig[i], side(true))
                        });
                    }
                    push(&labels, *t, v);
                }
            }
        }
    }
    Ok(collect(out))
}
