//! The HTTP management API (seed: port 9097): `/api/cluster` (raft role,
//! term, leader, commit index, voters), `/api/members`, `/api/ring` (owners
//! and each node's share of the hash space). `/health`, `/ready` and
//! `/metrics` come from the admin server these routes are mounted on.

use crate::node::Node;
use crate::service::raft_status;
use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::routing::get;
use cluster_client::views::{ClusterView, MembersView, RingView};

pub fn routes(node: Node) -> Router {
    Router::new()
        .route("/api/cluster", get(cluster))
        .route("/api/members", get(members))
        .route("/api/ring", get(ring))
        .with_state(node)
}

async fn cluster(State(node): State<Node>) -> Json<ClusterView> {
    Json(ClusterView::from(&raft_status(&node)))
}

async fn members(State(node): State<Node>) -> Json<MembersView> {
    Json(MembersView::from(&**node.state().borrow()))
}

async fn ring(State(node): State<Node>) -> Json<RingView> {
    Json(RingView::from(&**node.state().borrow()))
}
