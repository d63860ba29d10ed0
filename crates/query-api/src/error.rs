//! [`QueryError`]: every way a query fails, and the one place each becomes a
//! gRPC code, an HTTP status and a Prometheus API `errorType`.

use std::time::Duration;
use tonic::Status;

#[derive(Debug, Clone, thiserror::Error)]
pub enum QueryError {
    /// A parameter is malformed or contradicts another one.
    #[error("{param}: {reason}")]
    InvalidParam { param: String, reason: String },
    /// The request asks for more than a configured limit allows (range
    /// length, buckets, hosts), known before reading anything.
    #[error("{param}: {reason}")]
    LimitExceeded { param: String, reason: String },
    /// The data behind the request is larger than an answer may be.
    #[error("{0}")]
    TooManyPoints(String),
    #[error("no snapshot of host {host:?} at {timestamp}")]
    PointNotFound { host: String, timestamp: i64 },
    #[error("no host {0:?}")]
    HostNotFound(String),
    #[error("query timed out after {0:?} (query.timeout)")]
    Timeout(Duration),
    #[error("redis: {0}")]
    Redis(String),
    #[error("cluster-ctl: {0}")]
    Cluster(String),
    /// PromQL that parses but that this server does not evaluate.
    #[error("unsupported PromQL: {0}")]
    Unsupported(String),
}

impl QueryError {
    pub fn invalid(param: impl Into<String>, reason: impl Into<String>) -> Self {
        QueryError::InvalidParam {
            param: param.into(),
            reason: reason.into(),
        }
    }

    pub fn limit(param: impl Into<String>, reason: impl Into<String>) -> Self {
        QueryError::LimitExceeded {
            param: param.into(),
            reason: reason.into(),
        }
    }

    /// The gRPC status of this error.
    pub fn to_status(&self) -> Status {
        let msg = self.to_string();
        match self {
            QueryError::InvalidParam { .. }
            | QueryError::LimitExceeded { .. }
            | QueryError::Unsupported(_) => Status::invalid_argument(msg),
            QueryError::TooManyPoints(_) => Status::resource_exhausted(msg),
            QueryError::PointNotFound { .. } | QueryError::HostNotFound(_) => {
                Status::not_found(msg)
            }
            QueryError::Timeout(_) => Status::deadline_exceeded(msg),
            QueryError::Redis(_) | QueryError::Cluster(_) => Status::unavailable(msg),
        }
    }

    /// The HTTP status of this error (JSON and Prometheus APIs alike).
    pub fn http_status(&self) -> u16 {
        match self {
            QueryError::InvalidParam { .. }
            | QueryError::LimitExceeded { .. }
            | QueryError::Unsupported(_) => 400,
            QueryError::PointNotFound { .. } | QueryError::HostNotFound(_) => 404,
            // As Prometheus answers "query processing would load too many
            // samples": the request is well formed, the data is too large.
            QueryError::TooManyPoints(_) => 422,
            QueryError::Cluster(_) => 502,
            QueryError::Timeout(_) | QueryError::Redis(_) => 503,
        }
    }

    /// The Prometheus HTTP API `errorType`.
    pub fn prom_error_type(&self) -> &'static str {
        match self {
            QueryError::InvalidParam { .. }
            | QueryError::LimitExceeded { .. }
            | QueryError::Unsupported(_) => "bad_data",
            QueryError::PointNotFound { .. } | QueryError::HostNotFound(_) => "not_found",
            QueryError::TooManyPoints(_) => "execution",
            QueryError::Timeout(_) => "timeout",
            QueryError::Redis(_) | QueryError::Cluster(_) => "unavailable",
        }
    }

    /// A short name for the `outcome` label of the query metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            QueryError::InvalidParam { .. } => "invalid",
            QueryError::LimitExceeded { .. } => "limit",
            QueryError::TooManyPoints(_) => "too_many_points",
            QueryError::PointNotFound { .. } | QueryError::HostNotFound(_) => "not_found",
            QueryError::Timeout(_) => "timeout",
            QueryError::Redis(_) => "redis",
            QueryError::Cluster(_) => "cluster",
            QueryError::Unsupported(_) => "unsupported",
        }
    }
}

impl From<QueryError> for Status {
    fn from(e: QueryError) -> Self {
        e.to_status()
    }
}

impl From<storage_layout::LayoutError> for QueryError {
    fn from(e: storage_layout::LayoutError) -> Self {
        QueryError::Redis(e.to_string())
    }
}

impl From<fred::error::Error> for QueryError {
    fn from(e: fred::error::Error) -> Self {
        QueryError::Redis(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_maps_consistently() {
        let cases = [
            (
                QueryError::invalid("start", "x"),
                400,
                tonic::Code::InvalidArgument,
            ),
            (
                QueryError::limit("hosts", "x"),
                400,
                tonic::Code::InvalidArgument,
            ),
            (
                QueryError::TooManyPoints("x".into()),
                422,
                tonic::Code::ResourceExhausted,
            ),
            (
                QueryError::PointNotFound {
                    host: "h".into(),
                    timestamp: 1,
                },
                404,
                tonic::Code::NotFound,
            ),
            (
                QueryError::Timeout(Duration::from_secs(1)),
                503,
                tonic::Code::DeadlineExceeded,
            ),
            (QueryError::Redis("x".into()), 503, tonic::Code::Unavailable),
        ];
        for (e, http, code) in cases {
            assert_eq!(e.http_status(), http, "{e}");
            assert_eq!(e.to_status().code(), code, "{e}");
        }
        assert_eq!(
            QueryError::invalid("start", "is after end").to_string(),
            "start: is after end"
        );
    }
}
