//! Why the gateway refused or could not finish a request, on any of its
//! protocols (agent streams, OTLP over gRPC and HTTP, remote write), and
//! the one place each reason becomes a gRPC code and an HTTP status.
//!
//! Per-point problems are not errors: they travel in the ack (agents), as
//! a partial success (OTLP) or in a 400 body listing them (remote write).

use axum::http::StatusCode;
use tonic::{Code, Status};

/// A decode failure's cause, kept as the error's source.
type Cause = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("ingest-gateway is shutting down")]
    ShuttingDown,
    #[error(
        "ingest-gateway has {limit} agent streams open (gateway.max_streams); retry later or on another gateway"
    )]
    TooManyStreams { limit: usize },
    /// The agent's stream broke: an undecodable or oversized message, or
    /// the agent went away. Keeps the transport's code.
    #[error("reading the agent stream: {}", .0.message())]
    AgentStream(#[source] Status),
    #[error("Content-Type {content_type:?}: {expected}")]
    ContentType {
        content_type: String,
        /// What the endpoint takes, and how to send it.
        expected: &'static str,
    },
    #[error("Content-Encoding {encoding:?}: {expected}")]
    ContentEncoding {
        encoding: String,
        expected: &'static str,
    },
    /// The body decompresses past `gateway.max_message_bytes`.
    #[error("the request decompresses to {}{limit} bytes (gateway.max_message_bytes); {hint}", size.map(|n| format!("{n} bytes, the limit is ")).unwrap_or_else(|| "more than ".into()))]
    TooLarge {
        /// The decompressed size, when the format says it up front.
        size: Option<usize>,
        limit: usize,
        hint: &'static str,
    },
    /// The body is not what the endpoint decodes.
    #[error("the body {what}: {source}")]
    Undecodable {
        /// "is not snappy-compressed", "is not a prometheus.WriteRequest", ...
        what: &'static str,
        #[source]
        source: Cause,
    },
    /// Some samples are not durable yet (no router answered, or one asked
    /// to slow down): the whole request is to be sent again.
    #[error("not stored yet, send again: {0}")]
    NotStored(String),
    /// Remote write: some samples were invalid (the rest are stored); the
    /// text lists the problems.
    #[error("{0}")]
    InvalidSamples(String),
}

impl GatewayError {
    /// A decode failure of the body.
    pub fn undecodable(what: &'static str, source: impl Into<Cause>) -> Self {
        GatewayError::Undecodable {
            what,
            source: source.into(),
        }
    }

    /// The gRPC code of this error.
    pub fn code(&self) -> Code {
        match self {
            GatewayError::ShuttingDown | GatewayError::NotStored(_) => Code::Unavailable,
            GatewayError::TooManyStreams { .. } | GatewayError::TooLarge { .. } => {
                Code::ResourceExhausted
            }
            GatewayError::AgentStream(s) => s.code(),
            GatewayError::ContentType { .. }
            | GatewayError::ContentEncoding { .. }
            | GatewayError::Undecodable { .. }
            | GatewayError::InvalidSamples(_) => Code::InvalidArgument,
        }
    }

    /// The HTTP status of this error. 503s carry a Retry-After (see
    /// [`GatewayError::retry_after`]).
    pub fn http_status(&self) -> StatusCode {
        match self {
            GatewayError::ShuttingDown | GatewayError::NotStored(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            GatewayError::TooManyStreams { .. } => StatusCode::TOO_MANY_REQUESTS,
            GatewayError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            GatewayError::ContentType { .. } | GatewayError::ContentEncoding { .. } => {
                StatusCode::UNSUPPORTED_MEDIA_TYPE
            }
            GatewayError::AgentStream(_)
            | GatewayError::Undecodable { .. }
            | GatewayError::InvalidSamples(_) => StatusCode::BAD_REQUEST,
        }
    }

    /// Seconds a sender should wait before sending again, for answers that
    /// ask it to.
    pub fn retry_after(&self) -> Option<&'static str> {
        (self.http_status() == StatusCode::SERVICE_UNAVAILABLE).then_some(RETRY_AFTER_SECS)
    }
}

/// Retry-After of a 503: a second, about one ack's time.
pub const RETRY_AFTER_SECS: &str = "1";

impl From<GatewayError> for Status {
    fn from(e: GatewayError) -> Self {
        Status::new(e.code(), e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_error_has_its_codes_and_keeps_its_cause() {
        let e = GatewayError::undecodable(
            "is not snappy-compressed",
            std::io::Error::other("bad header"),
        );
        assert_eq!(
            e.to_string(),
            "the body is not snappy-compressed: bad header"
        );
        assert_eq!(
            std::error::Error::source(&e).map(|s| s.to_string()),
            Some("bad header".into())
        );
        assert_eq!(
            (e.code(), e.http_status()),
            (Code::InvalidArgument, StatusCode::BAD_REQUEST)
        );
        assert_eq!(e.retry_after(), None);

        let e = GatewayError::NotStored("no router answered".into());
        assert_eq!(e.http_status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(e.retry_after(), Some("1"));
        assert_eq!(Status::from(e).code(), Code::Unavailable);

        let e = GatewayError::TooLarge {
            size: Some(10),
            limit: 5,
            hint: "send less",
        };
        assert_eq!(
            e.to_string(),
            "the request decompresses to 10 bytes, the limit is 5 bytes (gateway.max_message_bytes); send less"
        );
        let e = GatewayError::TooLarge {
            size: None,
            limit: 5,
            hint: "send less",
        };
        assert_eq!(
            e.to_string(),
            "the request decompresses to more than 5 bytes (gateway.max_message_bytes); send less"
        );
        assert_eq!(e.http_status(), StatusCode::PAYLOAD_TOO_LARGE);

        let broken = GatewayError::AgentStream(Status::out_of_range("too big"));
        assert_eq!(broken.code(), Code::OutOfRange);
        assert_eq!(broken.to_string(), "reading the agent stream: too big");
    }
}
