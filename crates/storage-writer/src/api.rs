//! The dead-letter queue's HTTP API, mounted on the admin port beside
//! `/health`, `/ready` and `/metrics`:
//!
//! | method and path | answer |
//! |---|---|
//! | `GET /api/dlq?after=ID&limit=N` | [`EntryList`]: oldest first, `limit` default 100 |
//! | `GET /api/dlq/{id}` | [`EntryDetail`]: the entry and its points |
//! | `POST /api/dlq/{id}/replay` | 200 [`EntryDone`]; 409 Redis still refuses (entry keeps those points); 503 Redis unreachable (entry kept) |
//! | `POST /api/dlq/replay` | 200 [`ReplayAll`]; 503 with the same body when Redis could not be reached |
//! | `DELETE /api/dlq/{id}` | 200 [`EntryDone`]: discarded, logged at warn |
//!
//! Errors are `{"error": "..."}` with the status of [`DlqError::http_status`]
//! (404 names an unknown id, or says the writer has no DLQ).
//!
//! [`EntryList`]: crate::dlq::EntryList
//! [`EntryDetail`]: crate::dlq::EntryDetail
//! [`EntryDone`]: crate::dlq::EntryDone
//! [`ReplayAll`]: crate::dlq::ReplayAll

use crate::dlq::{DEFAULT_LIST_LIMIT, DeadLetterQueue};
use crate::error::DlqError;
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use internal_clients::dlq::ErrorBody;
use serde::Deserialize;

impl IntoResponse for DlqError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (
            status,
            Json(ErrorBody {
                error: self.to_string(),
            }),
        )
            .into_response()
    }
}

#[derive(Clone)]
struct Api {
    dlq: Option<DeadLetterQueue>,
    writer: String,
}

impl Api {
    fn dlq(&self) -> Result<&DeadLetterQueue, DlqError> {
        self.dlq.as_ref().ok_or_else(|| DlqError::Disabled {
            writer: self.writer.clone(),
        })
    }
}

#[derive(Deserialize)]
struct ListParams {
    after: Option<u64>,
    limit: Option<usize>,
}

fn parse_id(id: &str) -> Result<u64, DlqError> {
    id.parse().map_err(|_| DlqError::BadId(id.to_string()))
}

/// The `/api/dlq` routes of the writer named `writer`; `dlq` is `None` when
/// it has no spool, and every route then says so.
pub fn routes(dlq: Option<DeadLetterQueue>, writer: &str) -> axum::Router {
    let api = Api {
        dlq,
        writer: writer.to_string(),
    };
    axum::Router::new()
        .route("/api/dlq", get(list))
        .route("/api/dlq/replay", post(replay_all))
        .route("/api/dlq/{id}", get(show).delete(discard))
        .route("/api/dlq/{id}/replay", post(replay))
        .with_state(api)
}

async fn list(
    State(api): State<Api>,
    params: Result<Query<ListParams>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Query(params) = match params {
        Ok(p) => p,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                Json(ErrorBody {
                    error: format!("query parameters: {e} (expected after=ID&limit=N)"),
                }),
            )
                .into_response();
        }
    };
    let result = match api.dlq() {
        Ok(dlq) => {
            dlq.list(params.after, params.limit.unwrap_or(DEFAULT_LIST_LIMIT))
                .await
        }
        Err(e) => Err(e),
    };
    result.map(Json).into_response()
}

async fn show(State(api): State<Api>, Path(id): Path<String>) -> Response {
    let result = async { api.dlq()?.show(parse_id(&id)?).await }.await;
    result.map(Json).into_response()
}

async fn replay(State(api): State<Api>, Path(id): Path<String>) -> Response {
    let result = async { api.dlq()?.replay(parse_id(&id)?).await }.await;
    result.map(Json).into_response()
}

async fn discard(State(api): State<Api>, Path(id): Path<String>) -> Response {
    let result = async { api.dlq()?.discard(parse_id(&id)?).await }.await;
    result.map(Json).into_response()
}

async fn replay_all(State(api): State<Api>) -> Response {
    match async { api.dlq()?.replay_all().await }.await {
        Ok(report) if report.error.is_some() => {
            (StatusCode::SERVICE_UNAVAILABLE, Json(report)).into_response()
        }
        Ok(report) => Json(report).into_response(),
        Err(e) => e.into_response(),
    }
}
