//! `/health`, authentication, unknown routes.

use crate::harness::{Backend, TOKEN, TestServer};
use reqwest::{Method, StatusCode};
use serde_json::json;

crate::on_both_backends!(
    health_is_open,
    every_endpoint_requires_a_token,
    unknown_routes_answer_fastapi_errors
);

async fn health_is_open(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (status, body) = server.request(Method::GET, "/health", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "healthy");
    assert_eq!(body["version"], env!("CARGO_PKG_VERSION"));
    assert!(body["uptime_seconds"].is_u64(), "{body}");
    server.stop().await;
}

async fn every_endpoint_requires_a_token(backend: Backend) {
    let server = TestServer::start(backend).await;
    let endpoints = [
        (Method::POST, "/api/admin/init_server", Some("{}")),
        (Method::DELETE, "/api/admin/decommission_server/h1", None),
        (Method::POST, "/api/compute_units/allocate", Some("{}")),
        (
            Method::DELETE,
            "/api/compute_units/deallocate/h1_c0-3",
            None,
        ),
        (Method::GET, "/api/compute_units/", None),
        (Method::GET, "/api/compute_units", None),
    ];
    for (method, path, body) in endpoints {
        for token in [None, Some("wrong-token"), Some("")] {
            let (status, reply) = server.request(method.clone(), path, body, token).await;
            assert_eq!(
                status,
                StatusCode::UNAUTHORIZED,
                "{method} {path} with {token:?}"
            );
            assert!(reply["detail"].is_string(), "{reply}");
        }
    }
    // Nothing was created by the refused requests.
    let (status, units) = server
        .request(Method::GET, "/api/compute_units/", None, Some(TOKEN))
        .await;
    assert_eq!((status, units), (StatusCode::OK, json!([])));
    server.stop().await;
}

async fn unknown_routes_answer_fastapi_errors(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (status, body) = server.get("/api/nothing/here").await;
    assert_eq!(
        (status, body),
        (StatusCode::NOT_FOUND, json!({"detail": "Not Found"}))
    );
    let (status, body) = server
        .request(
            Method::PUT,
            "/api/compute_units/allocate",
            Some("{}"),
            Some(TOKEN),
        )
        .await;
    assert_eq!(
        (status, body),
        (
            StatusCode::METHOD_NOT_ALLOWED,
            json!({"detail": "Method Not Allowed"})
        )
    );
    server.stop().await;
}
