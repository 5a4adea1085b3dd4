//! The Verda face's secrets, file secrets and container registry
//! credentials: what is kept is sealed in the database, never answered,
//! checked by kind, and each project's own.

use crate::harness::{Backend, TestServer};
use crate::on_both_backends;
use crate::verda::Verda;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

on_both_backends!(
    secrets_are_sealed_listed_by_kind_and_never_answered,
    registry_credentials_of_every_kind,
    secrets_are_each_projects_own,
);

/// Asserts a Verda error answer.
fn refused(status: StatusCode, body: &Value, want: StatusCode, code: &str) {
    assert_eq!(status, want, "{body}");
    assert_eq!(body["code"], code, "{body}");
    assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
}

async fn project_id(server: &TestServer, name: &str) -> String {
    server
        .running
        .app
        .store()
        .project_by_name(name)
        .await
        .expect("store")
        .expect("project")
        .id
}

async fn secrets_are_sealed_listed_by_kind_and_never_answered(backend: Backend) {
    let server = TestServer::start(backend).await;
    server.user_in("alice", "member", "alpha").await;
    let alpha = Verda::login(&server, "alpha").await;
    let value = "tk_1234567890-very-secret";
    let (status, body) = alpha
        .json(
            Method::POST,
            "/secrets",
            Some(json!({"name": "api-token", "value": value})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let file_text = "user=admin\npassword=hunter2\n";
    let files = json!([
        {"file_name": "tokens.txt", "base64_content": STANDARD.encode(file_text)},
        {"file_name": "config.json", "base64_content": STANDARD.encode("{}")},
    ]);
    let (status, body) = alpha
        .json(
            Method::POST,
            "/file-secrets",
            Some(json!({"name": "secret-files", "files": files})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");

    // Lists: both kinds at /secrets, file secrets with their files'
    // names at /file-secrets; never a value.
    let all = alpha.get("/secrets").await;
    let listed: Vec<(&str, &str)> = all
        .as_array()
        .expect("list")
        .iter()
        .map(|s| {
            assert!(
                chrono::DateTime::parse_from_rfc3339(s["created_at"].as_str().expect("a value"))
                    .is_ok(),
                "{s}"
            );
            (
                s["name"].as_str().expect("a value"),
                s["secret_type"].as_str().expect("a value"),
            )
        })
        .collect();
    assert_eq!(
        listed,
        [("api-token", "generic"), ("secret-files", "file-secret")]
    );
    let file_secrets = alpha.get("/file-secrets").await;
    assert_eq!(
        file_secrets.as_array().expect("a value").len(),
        1,
        "{file_secrets}"
    );
    assert_eq!(file_secrets[0]["name"], "secret-files");
    assert_eq!(file_secrets[0]["secret_type"], "file-secret");
    assert_eq!(
        file_secrets[0]["file_names"],
        json!(["config.json", "tokens.txt"])
    );
    for answer in [&all, &file_secrets] {
        let text = answer.to_string();
        assert!(!text.contains(value) && !text.contains("hunter2"), "{text}");
    }

    // At rest: sealed, and bound to its row.
    let rows = server
        .running
        .app
        .store()
        .secrets(&project_id(&server, "alpha").await)
        .await
        .expect("store");
    assert_eq!(rows.len(), 2);
    for row in &rows {
        assert!(row.sealed.starts_with("v1."), "{}", row.sealed);
        for plain in [
            value.to_string(),
            file_text.to_string(),
            STANDARD.encode(file_text),
        ] {
            assert!(!row.sealed.contains(&plain), "{}", row.sealed);
        }
    }
    let key = std::fs::read_to_string(server.data_dir().join("secrets.key")).expect("key file");
    assert_eq!(key.trim().len(), 64);

    // Bad input: refused, nothing changes.
    let bad = [
        (
            "/secrets",
            json!({"name": "api-token", "value": "again"}),
            StatusCode::CONFLICT,
            "conflict",
        ),
        (
            "/secrets",
            json!({"name": "Bad_Name", "value": "v"}),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "/secrets",
            json!({"name": "-x", "value": "v"}),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "/secrets",
            json!({"name": "x".repeat(64), "value": "v"}),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "/secrets",
            json!({"name": "empty", "value": ""}),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "/secrets",
            json!({"name": "huge", "value": "x".repeat(65 * 1024)}),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "/secrets",
            json!({"name": "no-value"}),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "/secrets",
            json!({"name": "secret-files", "value": "v"}),
            StatusCode::CONFLICT,
            "conflict",
        ),
        (
            "/file-secrets",
            json!({"name": "f", "files": []}),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "/file-secrets",
            json!({"name": "f", "files": [{"file_name": "../escape", "base64_content": "eA=="}]}),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "/file-secrets",
            json!({"name": "f", "files": [{"file_name": "..", "base64_content": "eA=="}]}),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "/file-secrets",
            json!({"name": "f", "files": [{"file_name": "a", "base64_content": "not base64!"}]}),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "/file-secrets",
            json!({"name": "f", "files": [{"file_name": "a", "base64_content": "eA=="}, {"file_name": "a", "base64_content": "eQ=="}]}),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "/file-secrets",
            json!({"name": "f", "files": [{"file_name": "big", "base64_content": STANDARD.encode(vec![0u8; 1024 * 1024 + 1])}]}),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
    ];
    for (path, body, want, code) in bad {
        let (status, answer) = alpha.json(Method::POST, path, Some(body.clone())).await;
        refused(status, &answer, want, code);
    }
    assert_eq!(alpha.get("/secrets").await, all);

    // Deleting: by kind at /file-secrets, either kind at /secrets.
    let (status, body) = alpha
        .json(Method::DELETE, "/file-secrets/api-token", None)
        .await;
    refused(status, &body, StatusCode::NOT_FOUND, "not_found");
    // A variable takes a secret's value; a file secret it names is refused
    // saying what it is.
    let mut uses_files = crate::verda_deployments::deployment("uses-files", 0, 1);
    uses_files["containers"][0]["env"] =
        json!([{"name": "CONF", "value_or_reference_to_secret": "secret-files", "type": "secret"}]);
    let (status, body) = alpha
        .json(Method::POST, "/container-deployments", Some(uses_files))
        .await;
    refused(status, &body, StatusCode::BAD_REQUEST, "invalid_request");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("a file secret")),
        "{body}"
    );
    let (status, body) = alpha
        .json(Method::DELETE, "/secrets/api-token?force=maybe", None)
        .await;
    refused(status, &body, StatusCode::BAD_REQUEST, "invalid_request");
    let (status, body) = alpha
        .json(Method::DELETE, "/secrets/api-token?force=false", None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = alpha
        .json(
            Method::DELETE,
            "/file-secrets/secret-files?force=true",
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = alpha.json(Method::DELETE, "/secrets/api-token", None).await;
    refused(status, &body, StatusCode::NOT_FOUND, "not_found");
    assert_eq!(alpha.get("/secrets").await, json!([]));
    // The name is free again.
    let (status, body) = alpha
        .json(
            Method::POST,
            "/secrets",
            Some(json!({"name": "api-token", "value": "new"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    server.stop().await;
}

async fn registry_credentials_of_every_kind(backend: Backend) {
    let server = TestServer::start(backend).await;
    server.user_in("alice", "member", "alpha").await;
    let alpha = Verda::login(&server, "alpha").await;
    let gcr_key = json!({"type": "service_account", "project_id": "p", "private_key": "-----BEGIN PRIVATE KEY-----\nx\n-----END PRIVATE KEY-----\n", "client_email": "a@p.iam.gserviceaccount.com"}).to_string();
    let config =
        json!({"auths": {"127.0.0.1:5000": {"auth": STANDARD.encode("me:pw")}}}).to_string();
    let good = [
        json!({"name": "hub", "type": "dockerhub", "username": "me", "access_token": "dckr_pat_x"}),
        json!({"name": "gh", "type": "ghcr", "username": "me", "access_token": "ghp_x"}),
        json!({"name": "verda", "type": "verda", "username": "me", "access_token": "t"}),
        json!({"name": "google", "type": "gcr", "service_account_key": gcr_key}),
        json!({"name": "aws", "type": "aws-ecr", "access_key_id": "AKIAEXAMPLE", "secret_access_key": "wJalr", "region": "eu-north-1", "ecr_repo": "887841266746.dkr.ecr.eu-north-1.amazonaws.com"}),
        json!({"name": "scw", "type": "scaleway", "scaleway_domain": "rg.nl-ams.scw.cloud", "scaleway_uuid": "ea55b6d2-c789"}),
        // The Python SDK sends every field of its dataclass, nulls too.
        json!({"name": "mine", "type": "custom", "docker_config_json": config, "username": null}),
    ];
    for body in &good {
        let (status, answer) = alpha
            .json(
                Method::POST,
                "/container-registry-credentials",
                Some(body.clone()),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}: {answer}");
    }
    let listed = alpha.get("/container-registry-credentials").await;
    let names: Vec<&str> = listed
        .as_array()
        .expect("a value")
        .iter()
        .map(|c| {
            assert_eq!(
                c.as_object().expect("a value").keys().collect::<Vec<_>>(),
                ["created_at", "name"],
                "{c}"
            );
            c["name"].as_str().expect("a value")
        })
        .collect();
    assert_eq!(
        names,
        ["aws", "gh", "google", "hub", "mine", "scw", "verda"]
    );
    let rows = server
        .running
        .app
        .store()
        .registry_credentials(&project_id(&server, "alpha").await)
        .await
        .expect("store");
    for row in rows {
        for plain in [
            "dckr_pat_x",
            "ghp_x",
            "PRIVATE KEY",
            "wJalr",
            "ea55b6d2",
            "me:pw",
        ] {
            assert!(!row.sealed.contains(plain), "{}", row.sealed);
        }
    }

    let bad = [
        (json!({"name": "x", "type": "quay"}), "type"),
        (
            json!({"name": "x", "type": "dockerhub", "username": "me"}),
            "access_token",
        ),
        (
            json!({"name": "x", "type": "ghcr", "access_token": "t"}),
            "username",
        ),
        (
            json!({"name": "x", "type": "gcr", "service_account_key": "{}"}),
            "service_account_key",
        ),
        (
            json!({"name": "x", "type": "gcr", "service_account_key": "not json"}),
            "service_account_key",
        ),
        (
            json!({"name": "x", "type": "aws-ecr", "access_key_id": "a", "secret_access_key": "b", "region": "r"}),
            "ecr_repo",
        ),
        (
            json!({"name": "x", "type": "scaleway", "scaleway_domain": "a/b", "scaleway_uuid": "u"}),
            "scaleway_domain",
        ),
        (
            json!({"name": "x", "type": "custom", "docker_config_json": "{\"auths\": {}}"}),
            "docker_config_json",
        ),
        (
            json!({"name": "x", "type": "custom", "docker_config_json": "{\"auths\": {\"r.io\": {\"auth\": \"!!\"}}}"}),
            "docker_config_json",
        ),
        (
            json!({"name": "Not OK", "type": "dockerhub", "username": "me", "access_token": "t"}),
            "name",
        ),
    ];
    for (body, field) in bad {
        let (status, answer) = alpha
            .json(
                Method::POST,
                "/container-registry-credentials",
                Some(body.clone()),
            )
            .await;
        refused(status, &answer, StatusCode::BAD_REQUEST, "invalid_request");
        assert!(
            answer["message"].as_str().expect("a value").contains(field),
            "{body}: {answer}"
        );
    }
    let (status, answer) = alpha
        .json(
            Method::POST,
            "/container-registry-credentials",
            Some(good[0].clone()),
        )
        .await;
    refused(status, &answer, StatusCode::CONFLICT, "conflict");
    assert_eq!(alpha.get("/container-registry-credentials").await, listed);

    let (status, body) = alpha
        .json(Method::DELETE, "/container-registry-credentials/hub", None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = alpha
        .json(Method::DELETE, "/container-registry-credentials/hub", None)
        .await;
    refused(status, &body, StatusCode::NOT_FOUND, "not_found");
    assert_eq!(
        alpha
            .get("/container-registry-credentials")
            .await
            .as_array()
            .expect("a value")
            .len(),
        6
    );
    server.stop().await;
}

async fn secrets_are_each_projects_own(backend: Backend) {
    let server = TestServer::start(backend).await;
    server.user_in("alice", "member", "alpha").await;
    server.user_in("bob", "member", "beta").await;
    let alpha = Verda::login(&server, "alpha").await;
    let beta = Verda::login(&server, "beta").await;
    for (path, body) in [
        (
            "/secrets",
            json!({"name": "shared-name", "value": "alpha's"}),
        ),
        (
            "/file-secrets",
            json!({"name": "files", "files": [{"file_name": "a", "base64_content": "eA=="}]}),
        ),
        (
            "/container-registry-credentials",
            json!({"name": "hub", "type": "dockerhub", "username": "a", "access_token": "t"}),
        ),
    ] {
        let (status, answer) = alpha.json(Method::POST, path, Some(body)).await;
        assert_eq!(status, StatusCode::CREATED, "{answer}");
    }
    for path in [
        "/secrets",
        "/file-secrets",
        "/container-registry-credentials",
    ] {
        assert_eq!(beta.get(path).await, json!([]), "{path}");
    }
    for path in [
        "/secrets/shared-name?force=true",
        "/file-secrets/files?force=true",
        "/container-registry-credentials/hub?force=true",
    ] {
        let (status, body) = beta.json(Method::DELETE, path, None).await;
        refused(status, &body, StatusCode::NOT_FOUND, "not_found");
    }
    // One name in two projects is two secrets.
    let (status, body) = beta
        .json(
            Method::POST,
            "/secrets",
            Some(json!({"name": "shared-name", "value": "beta's"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(
        alpha
            .get("/secrets")
            .await
            .as_array()
            .expect("a value")
            .len(),
        2
    );
    assert_eq!(
        beta.get("/secrets")
            .await
            .as_array()
            .expect("a value")
            .len(),
        1
    );
    server.stop().await;
}
