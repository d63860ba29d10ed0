//! Load of the storage-writers (seed 负载监控: CPU / memory / network every
//! 30 s → a score 0-100). Each writer's `/metrics` gives its process CPU
//! seconds and resident memory (sysinfo, `broker_common::process_metrics`)
//! and its queue (`broker_writer_queued_points`); the score of a writer is
//! the largest of its CPU use against `cpu_cores_per_writer`, its memory
//! against `memory_bytes_per_writer` and its queue against
//! `writer.max_queued_points`, and the cluster's score is the writers'
//! mean. Its ingest rate (`broker_writer_points_total`) is reported beside
//! it.

use crate::http_client::HttpClient;
use serde::Serialize;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// The figures read from one scrape.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Sample {
    pub cpu_seconds: f64,
    pub rss_bytes: f64,
    pub queued_points: f64,
    pub points_total: f64,
}

/// Reads the unlabelled samples of the metrics the score uses from
/// Prometheus text exposition.
pub fn parse(text: &str) -> Sample {
    let mut s = Sample::default();
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let mut it = line.split_whitespace();
        let (Some(name), Some(value)) = (it.next(), it.next()) else {
            continue;
        };
        let Ok(v) = value.parse::<f64>() else {
            continue;
        };
        match name {
            "process_cpu_seconds_total" => s.cpu_seconds = v,
            "process_resident_memory_bytes" => s.rss_bytes = v,
            "broker_writer_queued_points" => s.queued_points = v,
            "broker_writer_points_total" => s.points_total = v,
            _ => {}
        }
    }
    s
}

/// One writer's load, for `autoscale status`.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct WriterLoad {
    pub id: String,
    pub score: f64,
    pub cpu_pct: f64,
    pub memory_pct: f64,
    pub queue_pct: f64,
    pub points_per_sec: f64,
    /// Why no figure could be read, if so.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Limits that make 100 %.
#[derive(Debug, Clone, Copy)]
pub struct Capacity {
    pub cpu_cores: f64,
    pub memory_bytes: f64,
    pub queued_points: f64,
}

/// Score from two samples `dt` apart.
pub fn score(prev: &Sample, now: &Sample, dt: Duration, cap: &Capacity, id: &str) -> WriterLoad {
    let secs = dt.as_secs_f64().max(1e-3);
    let cpu_pct =
        ((now.cpu_seconds - prev.cpu_seconds).max(0.0) / secs / cap.cpu_cores * 100.0).min(100.0);
    let memory_pct = (now.rss_bytes / cap.memory_bytes * 100.0).min(100.0);
    let queue_pct = (now.queued_points / cap.queued_points * 100.0).min(100.0);
    WriterLoad {
        id: id.to_string(),
        score: cpu_pct.max(memory_pct).max(queue_pct),
        cpu_pct,
        memory_pct,
        queue_pct,
        points_per_sec: (now.points_total - prev.points_total).max(0.0) / secs,
        error: None,
    }
}

/// Scrapes writers and keeps each one's previous sample.
#[derive(Default)]
pub struct LoadReader {
    http: HttpClient,
    prev: HashMap<String, (Instant, Sample)>,
}

impl LoadReader {
    /// A reader that scrapes with `security`'s TLS.
    pub fn new(security: &broker_common::security::ClientSecurity) -> Self {
        Self {
            http: HttpClient::new(security),
            prev: HashMap::new(),
        }
    }

    /// The load of each `(id, admin_addr)`; a writer seen for the first
    /// time gets its rate from the next call.
    pub async fn read(&mut self, writers: &[(String, String)], cap: &Capacity) -> Vec<WriterLoad> {
        let futs = writers.iter().map(|(id, admin)| {
            let http = self.http.clone();
            let url = format!("{}/metrics", admin.trim_end_matches('/'));
            async move {
                (
                    id.clone(),
                    http.get_text(&url, Duration::from_secs(2))
                        .await
                        .map(|t| parse(&t)),
                )
            }
        });
        let results = futures::future::join_all(futs).await;
        let now = Instant::now();
        let mut out = Vec::new();
        for (id, r) in results {
            match r {
                Ok(sample) => {
                    let load = match self.prev.get(&id) {
                        Some((at, prev)) => score(prev, &sample, now - *at, cap, &id),
                        None => WriterLoad {
                            id: id.clone(),
                            error: Some("first sample: the rate needs two".into()),
                            ..Default::default()
                        },
                    };
                    self.prev.insert(id, (now, sample));
                    out.push(load);
                }
                Err(e) => out.push(WriterLoad {
                    id,
                    error: Some(e),
                    ..Default::default()
                }),
            }
        }
        self.prev
            .retain(|id, _| writers.iter().any(|(w, _)| w == id));
        out
    }
}

/// The cluster's score: the mean of the writers that could be read.
pub fn cluster_score(loads: &[WriterLoad]) -> Option<f64> {
    let read: Vec<f64> = loads
        .iter()
        .filter(|l| l.error.is_none())
        .map(|l| l.score)
        .collect();
    (!read.is_empty()).then(|| read.iter().sum::<f64>() / read.len() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_exposition_and_scores_the_largest_part() {
        let text = "# HELP process_cpu_seconds CPU\n# TYPE process_cpu_seconds counter\nprocess_cpu_seconds_total 12.5\nprocess_resident_memory_bytes 104857600\nbroker_writer_queued_points 500\nbroker_writer_points_total 1000\nbroker_writer_pipeline_errors_total{kind=\"x\"} 3\n";
        let s = parse(text);
        assert_eq!(s.cpu_seconds, 12.5);
        assert_eq!(s.rss_bytes, 104_857_600.0);
        let prev = Sample {
            cpu_seconds: 12.0,
            points_total: 0.0,
            ..s
        };
        let cap = Capacity {
            cpu_cores: 1.0,
            memory_bytes: 1024.0 * 1024.0 * 1024.0,
            queued_points: 100_000.0,
        };
        let l = score(&prev, &s, Duration::from_secs(1), &cap, "w1");
        assert!((l.cpu_pct - 50.0).abs() < 1e-9);
        assert!((l.memory_pct - 100.0 / 1024.0 * 100.0).abs() < 1e-9);
        assert!((l.queue_pct - 0.5).abs() < 1e-9);
        assert_eq!(l.score, l.cpu_pct);
        assert_eq!(l.points_per_sec, 1000.0);
        assert_eq!(
            cluster_score(&[l.clone(), WriterLoad { score: 10.0, ..l }]),
            Some(30.0)
        );
        assert_eq!(cluster_score(&[]), None);
    }
}
