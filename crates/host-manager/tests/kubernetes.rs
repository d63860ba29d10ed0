//! The Kubernetes actuator against a real HTTP server on loopback that
//! serves the scale subresource of one StatefulSet the way the API server
//! does (`GET` and merge-`PATCH` of
//! `/apis/apps/v1/namespaces/{ns}/statefulsets/{name}/scale`). No API
//! server can run on this machine (no kube-apiserver package, no image
//! registry), so this is the closest real peer: what is tested is our use
//! of `kube` (paths, verbs, patch type, body, replicas read back and
//! errors), not Kubernetes.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use broker_common::config::KubernetesActuatorConfig;
use host_manager::actuator::{Actuator, KubernetesActuator};
use std::sync::{Arc, Mutex};

#[derive(Default)]
struct Fake {
    replicas: i64,
    patches: Vec<(String, serde_json::Value)>,
}

type Shared = Arc<Mutex<Fake>>;

fn scale(ns: &str, name: &str, replicas: i64) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "autoscaling/v1",
        "kind": "Scale",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"replicas": replicas},
        "status": {"replicas": replicas, "selector": "app=storage-writer"}
    })
}

fn not_found(name: &str) -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(serde_json::json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": format!("statefulsets.apps \"{name}\" not found"),
            "reason": "NotFound", "code": 404
        })),
    )
        .into_response()
}

async fn get_scale(State(s): State<Shared>, Path((ns, name)): Path<(String, String)>) -> Response {
    if name != "storage-writer" {
        return not_found(&name);
    }
    let r = s.lock().unwrap().replicas;
    Json(scale(&ns, &name, r)).into_response()
}

async fn patch_scale(
    State(s): State<Shared>,
    Path((ns, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if name != "storage-writer" {
        return not_found(&name);
    }
    let ct = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let mut f = s.lock().unwrap();
    if let Some(n) = v["spec"]["replicas"].as_i64() {
        f.replicas = n;
    }
    f.patches.push((ct, v));
    Json(scale(&ns, &name, f.replicas)).into_response()
}

async fn serve(state: Shared) -> String {
    let app = Router::new()
        .route(
            "/apis/apps/v1/namespaces/{ns}/statefulsets/{name}/scale",
            get(get_scale).patch(patch_scale),
        )
        .with_state(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

#[tokio::test]
async fn scales_the_statefulset_through_its_scale_subresource() {
    let state: Shared = Arc::new(Mutex::new(Fake {
        replicas: 3,
        ..Default::default()
    }));
    let url = serve(state.clone()).await;
    let a = KubernetesActuator::new(&KubernetesActuatorConfig {
        api_url: url.clone(),
        namespace: "monitoring-broker".into(),
        statefulset: "storage-writer".into(),
    });
    assert_eq!(a.replicas().await.unwrap(), 3);
    let up = a.scale_up().await.unwrap();
    assert!(up.contains("3 -> 4"), "{up}");
    assert_eq!(state.lock().unwrap().replicas, 4);
    let down = a.scale_down().await.unwrap().unwrap();
    assert!(down.contains("4 -> 3"), "{down}");
    assert!(down.contains("storage-writer-3 drains"), "{down}");
    {
        let f = state.lock().unwrap();
        assert_eq!(f.replicas, 3);
        assert_eq!(f.patches.len(), 2);
        for (ct, body) in &f.patches {
            assert_eq!(ct, "application/merge-patch+json");
            assert!(body["spec"]["replicas"].is_i64(), "{body}");
        }
    }

    // a StatefulSet that does not exist: the error names it and the cause
    let missing = KubernetesActuator::new(&KubernetesActuatorConfig {
        api_url: url,
        namespace: "monitoring-broker".into(),
        statefulset: "writers".into(),
    });
    let e = missing.scale_up().await.unwrap_err();
    assert!(e.contains("monitoring-broker/writers"), "{e}");
    assert!(e.contains("not found"), "{e}");
}
