//! The native API's identity: login and refresh, API tokens, users,
//! workspaces, the permission matrix and isolation between projects.

use crate::harness::{ADMIN_PASSWORD, Backend, KEY, TOKEN, TestServer, assert_error};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tessera_core::{Permission, Role};

crate::on_both_backends!(
    login_and_refresh_rotate,
    api_tokens_are_scoped_listed_and_revoked,
    admins_manage_users,
    workspaces_list_create_and_activate,
    every_role_gets_exactly_its_permissions,
    another_projects_objects_are_not_found,
    native_errors_use_the_documented_body
);

async fn login_and_refresh_rotate(backend: Backend) {
    let server = TestServer::start(backend).await;
    let post = |path: &'static str, body: Value| {
        let server = &server;
        async move {
            server
                .request(Method::POST, path, Some(&body.to_string()), None)
                .await
        }
    };
    let (status, body) = post(
        "/v1/auth/login",
        json!({"username": "admin", "password": "wrong password"}),
    )
    .await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED, "UNAUTHORIZED");
    let (status, body) = post(
        "/v1/auth/login",
        json!({"username": "nobody", "password": ADMIN_PASSWORD}),
    )
    .await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED, "UNAUTHORIZED");

    let (status, first) = post(
        "/v1/auth/login",
        json!({"username": "admin", "password": ADMIN_PASSWORD}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{first}");
    assert_eq!(first["expires_in"], 86400);
    let access = first["token"].as_str().expect("token");
    assert_eq!(access.split('.').count(), 3, "a JWT");
    let (status, _) = server.call(Method::GET, "/v1/servers", None, access).await;
    assert_eq!(status, StatusCode::OK);

    // A refresh token works once; its successor works; the used one then
    // revokes the whole family, successor included.
    let (status, second) = post(
        "/v1/auth/refresh",
        json!({"refresh_token": first["refresh_token"]}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{second}");
    assert_ne!(second["refresh_token"], first["refresh_token"]);
    let (status, third) = post(
        "/v1/auth/refresh",
        json!({"refresh_token": second["refresh_token"]}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{third}");
    let (status, body) = post(
        "/v1/auth/refresh",
        json!({"refresh_token": first["refresh_token"]}),
    )
    .await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED, "UNAUTHORIZED");
    let (status, body) = post(
        "/v1/auth/refresh",
        json!({"refresh_token": third["refresh_token"]}),
    )
    .await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED, "UNAUTHORIZED");
    // An access token is not a refresh token, nor is garbage.
    for bad in [first["token"].clone(), json!("eyJhbGciOiJIUzI1NiJ9.e30.x")] {
        let (status, body) = post("/v1/auth/refresh", json!({"refresh_token": bad})).await;
        assert_error(status, &body, StatusCode::UNAUTHORIZED, "UNAUTHORIZED");
    }
    // A tampered access token is refused.
    let tampered = format!("{}x", &access[..access.len() - 1]);
    let (status, body) = server
        .call(Method::GET, "/v1/servers", None, &tampered)
        .await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED, "UNAUTHORIZED");
    server.stop().await;
}

async fn api_tokens_are_scoped_listed_and_revoked(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (status, created) = server
        .call(
            Method::POST,
            "/v1/tokens",
            Some(&json!({"name": "ci", "scopes": ["instance_read", "operation_read"]})),
            TOKEN,
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let secret = created["token"].as_str().expect("secret shown once");
    assert!(secret.starts_with("tsr_"));
    assert_eq!(created["workspace"], "default");
    let (status, _) = server
        .call(Method::GET, "/v1/instances", None, secret)
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = server.call(Method::GET, "/v1/servers", None, secret).await;
    assert_error(status, &body, StatusCode::FORBIDDEN, "FORBIDDEN");

    // Listed without secrets.
    let (status, list) = server.call(Method::GET, "/v1/tokens", None, TOKEN).await;
    assert_eq!(status, StatusCode::OK);
    let listed = list
        .as_array()
        .expect("list")
        .iter()
        .find(|t| t["id"] == created["id"])
        .expect("listed")
        .clone();
    assert!(listed.get("token").is_none(), "{listed}");
    assert_eq!(listed["scopes"], json!(["instance_read", "operation_read"]));

    // Minting needs a permission of its own, which this token lacks.
    let (status, body) = server
        .call(
            Method::POST,
            "/v1/tokens",
            Some(&json!({"name": "child"})),
            secret,
        )
        .await;
    assert_error(status, &body, StatusCode::FORBIDDEN, "FORBIDDEN");
    // A scoped token cannot mint a wider one: without scopes it inherits
    // its own, and asking for more is refused.
    let (status, minter) = server
        .call(
            Method::POST,
            "/v1/tokens",
            Some(&json!({"name": "minter", "scopes": ["instance_read", "operation_read", "token_write"]})),
            TOKEN,
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{minter}");
    let minter_secret = minter["token"].as_str().expect("secret");
    let (status, child) = server
        .call(
            Method::POST,
            "/v1/tokens",
            Some(&json!({"name": "child"})),
            minter_secret,
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{child}");
    assert_eq!(
        child["scopes"],
        json!(["instance_read", "operation_read", "token_write"])
    );
    let (status, body) = server
        .call(
            Method::POST,
            "/v1/tokens",
            Some(&json!({"name": "wider", "scopes": ["instance_create"]})),
            minter_secret,
        )
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "INVALID_REQUEST");

    // A scope the role does not grant, or no such permission: 400.
    let member = server.user_in("tina", "viewer", "default").await;
    for scopes in [json!(["server_delete"]), json!(["fly"])] {
        let (status, body) = server
            .call(
                Method::POST,
                "/v1/tokens",
                Some(&json!({"name": "x", "scopes": scopes})),
                &member,
            )
            .await;
        assert_error(status, &body, StatusCode::BAD_REQUEST, "INVALID_REQUEST");
    }
    // A token acts in its own workspace: it cannot mint one for another
    // workspace of its user (only an unrestricted admin's can).
    let (_, users) = server.call(Method::GET, "/v1/users", None, TOKEN).await;
    let tina_id = users
        .as_array()
        .expect("users")
        .iter()
        .find(|u| u["username"] == "tina")
        .and_then(|u| u["id"].as_str())
        .expect("tina")
        .to_string();
    server
        .call(
            Method::POST,
            "/v1/workspaces/create",
            Some(&json!({"name": "other"})),
            TOKEN,
        )
        .await;
    let (status, _) = server
        .call(
            Method::PATCH,
            &format!("/v1/users/{tina_id}"),
            Some(&json!({"workspace": "other", "role": "viewer"})),
            TOKEN,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (_, tinas) = server
        .call(
            Method::POST,
            "/v1/tokens",
            Some(&json!({"name": "t"})),
            &member,
        )
        .await;
    let tinas = tinas["token"].as_str().expect("secret");
    let (status, body) = server
        .call(
            Method::POST,
            "/v1/tokens",
            Some(&json!({"name": "elsewhere", "workspace": "other"})),
            tinas,
        )
        .await;
    assert_error(status, &body, StatusCode::FORBIDDEN, "FORBIDDEN");

    // Another user's token is not found for a non-admin.
    let id = created["id"].as_str().expect("id");
    let (status, body) = server
        .call(Method::DELETE, &format!("/v1/tokens/{id}"), None, &member)
        .await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "NOT_FOUND");

    // The bootstrap token does not revoke itself.
    let (status, body) = server
        .call(Method::DELETE, "/v1/tokens/bootstrap-admin", None, TOKEN)
        .await;
    assert_error(status, &body, StatusCode::CONFLICT, "CONFLICT");
    let (status, _) = server
        .call(Method::DELETE, &format!("/v1/tokens/{id}"), None, TOKEN)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, body) = server
        .call(Method::GET, "/v1/instances", None, secret)
        .await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED, "UNAUTHORIZED");
    let (status, body) = server
        .call(Method::DELETE, &format!("/v1/tokens/{id}"), None, TOKEN)
        .await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "NOT_FOUND");
    server.stop().await;
}

async fn admins_manage_users(backend: Backend) {
    let server = TestServer::start(backend).await;
    let bob = server.user_in("bob", "member", "default").await;
    let (status, users) = server.call(Method::GET, "/v1/users", None, TOKEN).await;
    assert_eq!(status, StatusCode::OK);
    let names: Vec<&str> = users
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|u| u["username"].as_str())
        .collect();
    assert_eq!(names, ["admin", "bob"]);
    let bob_record = users[1].clone();
    assert_eq!(
        bob_record["workspaces"],
        json!([{"workspace": "default", "role": "member"}])
    );
    assert!(bob_record.get("password_hash").is_none());
    let bob_id = bob_record["id"].as_str().expect("id");
    let (status, got) = server
        .call(Method::GET, &format!("/v1/users/{bob_id}"), None, TOKEN)
        .await;
    assert_eq!((status, &got), (StatusCode::OK, &bob_record));
    assert_eq!(got["active_workspace"], "default");

    // Taken usernames, bad roles, short passwords, unknown workspaces.
    for (body, status, code) in [
        (
            json!({"username": "bob", "password": "long-enough", "workspace": "default", "role": "member"}),
            StatusCode::CONFLICT,
            "CONFLICT",
        ),
        // Another case of a taken name is taken: `Bob` would read as bob.
        (
            json!({"username": "Bob", "password": "long-enough", "workspace": "default", "role": "member"}),
            StatusCode::CONFLICT,
            "CONFLICT",
        ),
        (
            json!({"username": "ADMIN", "workspace": "default", "role": "member"}),
            StatusCode::CONFLICT,
            "CONFLICT",
        ),
        (
            json!({"username": "carl", "password": "long-enough", "workspace": "default", "role": "root"}),
            StatusCode::BAD_REQUEST,
            "INVALID_REQUEST",
        ),
        (
            json!({"username": "carl", "password": "short", "workspace": "default", "role": "member"}),
            StatusCode::BAD_REQUEST,
            "INVALID_REQUEST",
        ),
        (
            json!({"username": "carl", "password": "long-enough", "workspace": "nowhere", "role": "member"}),
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
        ),
        (
            json!({"username": "bad name", "workspace": "default", "role": "member"}),
            StatusCode::BAD_REQUEST,
            "INVALID_REQUEST",
        ),
    ] {
        let (got, reply) = server
            .call(Method::POST, "/v1/users", Some(&body), TOKEN)
            .await;
        assert_error(got, &reply, status, code);
        // A name taken in another case is not spelt out: it may be a user
        // of another workspace.
        let (wanted, message) = (
            body["username"].as_str().unwrap_or_default(),
            reply["message"].as_str().unwrap_or_default(),
        );
        if wanted != wanted.to_lowercase() {
            let existing = format!("user {}", wanted.to_lowercase());
            assert!(!message.contains(&existing), "{message}");
        }
    }
    // A role goes with a workspace.
    let (status, body) = server
        .call(
            Method::PATCH,
            &format!("/v1/users/{bob_id}"),
            Some(&json!({"role": "viewer"})),
            TOKEN,
        )
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "INVALID_REQUEST");
    // An admin cannot lock itself out.
    let (_, me) = server.call(Method::GET, "/v1/users", None, TOKEN).await;
    let admin_id = me[0]["id"].as_str().expect("admin id");
    let (status, body) = server
        .call(
            Method::PATCH,
            &format!("/v1/users/{admin_id}"),
            Some(&json!({"disabled": true})),
            TOKEN,
        )
        .await;
    assert_error(status, &body, StatusCode::CONFLICT, "CONFLICT");
    let (status, body) = server
        .call(
            Method::DELETE,
            &format!("/v1/users/{admin_id}"),
            None,
            TOKEN,
        )
        .await;
    assert_error(status, &body, StatusCode::CONFLICT, "CONFLICT");
    // A member cannot manage users.
    let (status, body) = server.call(Method::GET, "/v1/users", None, &bob).await;
    assert_error(status, &body, StatusCode::FORBIDDEN, "FORBIDDEN");

    // A changed password works at once; a disabled user is locked out,
    // sessions included.
    let (status, _) = server
        .call(
            Method::PATCH,
            &format!("/v1/users/{bob_id}"),
            Some(&json!({"password": "a-new-password"})),
            TOKEN,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let bob = server.login("bob", "a-new-password").await;
    let (status, body) = server
        .call(
            Method::PATCH,
            &format!("/v1/users/{bob_id}"),
            Some(&json!({"disabled": true})),
            TOKEN,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["disabled"], true);
    let (status, body) = server.call(Method::GET, "/v1/instances", None, &bob).await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED, "UNAUTHORIZED");
    let login = json!({"username": "bob", "password": "a-new-password"}).to_string();
    let (status, _) = server
        .request(Method::POST, "/v1/auth/login", Some(&login), None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let (status, _) = server
        .call(Method::DELETE, &format!("/v1/users/{bob_id}"), None, TOKEN)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, body) = server
        .call(Method::GET, &format!("/v1/users/{bob_id}"), None, TOKEN)
        .await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "NOT_FOUND");
    server.stop().await;
}

async fn workspaces_list_create_and_activate(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (status, list) = server
        .call(Method::GET, "/v1/workspaces", None, TOKEN)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list[0]["name"], "default");
    assert_eq!(list[0]["active"], true);
    // The active workspace has been used, from the user's creation on.
    assert!(list[0]["last_used"].is_string(), "{list}");
    let newcomer = server.user_in("newcomer", "member", "sandbox").await;
    let (_, theirs) = server
        .call(Method::GET, "/v1/workspaces", None, &newcomer)
        .await;
    assert_eq!(theirs[0]["name"], "sandbox", "{theirs}");
    assert!(theirs[0]["last_used"].is_string(), "{theirs}");
    let (status, created) = server
        .call(
            Method::POST,
            "/v1/workspaces/create",
            Some(&json!({"name": "staging", "path": "/opt/workspaces/staging", "activate": false})),
            TOKEN,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{created}");
    assert_eq!(
        (
            &created["name"],
            &created["path"],
            &created["active"],
            &created["last_used"]
        ),
        (
            &json!("staging"),
            &json!("/opt/workspaces/staging"),
            &json!(false),
            &json!(null)
        )
    );
    let (status, body) = server
        .call(
            Method::POST,
            "/v1/workspaces/create",
            Some(&json!({"name": "staging"})),
            TOKEN,
        )
        .await;
    assert_error(status, &body, StatusCode::CONFLICT, "CONFLICT");

    // An API token acts in its own workspace: activating another moves
    // the user's logins, and the answer says the token is not there.
    let (status, body) = server
        .call(Method::POST, "/v1/workspaces/staging/activate", None, TOKEN)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["active"], false, "{body}");
    let (_, list) = server
        .call(Method::GET, "/v1/workspaces", None, TOKEN)
        .await;
    assert_eq!(list[0]["name"], "default", "{list}");
    assert_eq!(list[0]["active"], true, "{list}");
    // A login acts in the active workspace; activating another moves it.
    let admin = server.login("admin", ADMIN_PASSWORD).await;
    let (status, body) = server
        .call(
            Method::POST,
            "/v1/workspaces/staging/activate",
            None,
            &admin,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, key) = server
        .call(
            Method::POST,
            "/v1/ssh-keys",
            Some(&json!({"name": "k", "public_key": KEY})),
            &admin,
        )
        .await;
    let (_, staging_keys) = server.call(Method::GET, "/v1/ssh-keys", None, &admin).await;
    assert_eq!(staging_keys.as_array().map(Vec::len), Some(1));
    // The bootstrap token stays bound to `default`.
    let (_, default_keys) = server.call(Method::GET, "/v1/ssh-keys", None, TOKEN).await;
    assert_eq!(default_keys, json!([]));
    let (_, list) = server
        .call(Method::GET, "/v1/workspaces", None, &admin)
        .await;
    let active: Vec<&str> = list
        .as_array()
        .expect("list")
        .iter()
        .filter(|w| w["active"] == true)
        .filter_map(|w| w["name"].as_str())
        .collect();
    assert_eq!(active, ["staging"]);
    assert!(key["id"].is_string());
    let (status, body) = server
        .call(
            Method::POST,
            "/v1/workspaces/nowhere/activate",
            None,
            &admin,
        )
        .await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "NOT_FOUND");
    server.stop().await;
}

/// A request that needs exactly `permission` and changes nothing whether
/// allowed or not: allowed, it answers something other than 403. `None`
/// for a permission that widens what a caller sees rather than refusing.
fn probe(permission: Permission) -> Option<(Method, &'static str, Option<Value>)> {
    use Permission::*;
    Some(match permission {
        ServerRead => (Method::GET, "/v1/servers", None),
        ServerCreate => (
            Method::POST,
            "/v1/servers/create",
            Some(
                json!({"hostname": "probe", "ip_address": "192.0.2.1", "zone": "z", "cpus": "0-1", "check_mode": true}),
            ),
        ),
        ServerDelete => (Method::DELETE, "/v1/servers/no-such-server", None),
        InstanceRead => (Method::GET, "/v1/instances", None),
        InstanceCreate => (
            Method::POST,
            "/v1/instances",
            Some(
                json!({"metadata": {"name": "probe"}, "spec": {"type": "no-such-type", "image": "ubuntu-22.04"}}),
            ),
        ),
        InstanceDelete => (Method::DELETE, "/v1/instances/inst-none", None),
        SshKeyRead => (Method::GET, "/v1/ssh-keys", None),
        SshKeyWrite => (
            Method::POST,
            "/v1/ssh-keys",
            Some(json!({"name": "probe", "public_key": "not a key"})),
        ),
        NetworkRead => (Method::GET, "/v1/vpcs", None),
        NetworkWrite => (Method::POST, "/v1/vpcs", Some(json!({"name": ""}))),
        OperationRead => (Method::GET, "/v1/operations", None),
        OperationCancel => (Method::POST, "/v1/operations/none/cancel", None),
        WorkspaceRead => (Method::GET, "/v1/workspaces", None),
        WorkspaceCreate => (
            Method::POST,
            "/v1/workspaces/create",
            Some(json!({"name": "not a valid name"})),
        ),
        SystemMetrics => (Method::GET, "/v1/metrics", None),
        UserAdmin => (Method::GET, "/v1/users", None),
        WorkflowSubmit => (
            Method::POST,
            "/v1/workflows/submit",
            Some(json!({"workflow_type": "no-such-workflow", "parameters": {}})),
        ),
        WorkflowRead => (Method::GET, "/v1/workflows/none", None),
        WorkflowCancel => (Method::POST, "/v1/workflows/none/cancel", None),
        TaskservRead => (Method::GET, "/v1/taskservs", None),
        TaskservCreate => (
            Method::POST,
            "/v1/taskservs/create",
            Some(json!({"name": "no-such-taskserv", "servers": ["x"]})),
        ),
        TaskservDelete => (Method::DELETE, "/v1/taskservs/tsk-none", None),
        BalanceRead => (Method::GET, "/v1/workspaces/default/balance", None),
        BalanceAdmin => (
            Method::POST,
            "/v1/workspaces/default/balance/top-ups",
            Some(json!({"amount": 0})),
        ),
        CredentialWrite => (Method::GET, "/v1/credentials", None),
        // Only the Verda face uses these: see `verda_probe`.
        VolumeRead => (Method::GET, "/verda/v1/volumes", None),
        VolumeWrite => (
            Method::POST,
            "/verda/v1/volumes",
            Some(json!({"type": "TAPE", "location_code": "FIN-01", "size": 1, "name": "probe"})),
        ),
        ScriptRead => (Method::GET, "/verda/v1/scripts", None),
        ScriptWrite => (
            Method::POST,
            "/verda/v1/scripts",
            Some(json!({"name": "", "script": "echo"})),
        ),
        SecretRead => (Method::GET, "/verda/v1/secrets", None),
        SecretWrite => (
            Method::POST,
            "/verda/v1/secrets",
            Some(json!({"name": "", "value": "x"})),
        ),
        TokenWrite => (Method::POST, "/v1/tokens", Some(json!({"name": ""}))),
        QuotaAdmin => (
            Method::PUT,
            "/v1/workspaces/default/quota",
            Some(json!({"instances": -5})),
        ),
        // Widens which tokens and credentials are listed.
        CredentialAdmin => return None,
    })
}

async fn every_role_gets_exactly_its_permissions(backend: Backend) {
    let server = TestServer::start(backend).await;
    for role in Role::ALL {
        let token = server
            .user_in(&format!("u-{role}"), role.as_str(), "default")
            .await;
        // The Verda face's callers are OAuth clients with a role.
        let (_, client) = server
            .call(
                Method::POST,
                "/v1/credentials",
                Some(&json!({"project": "default", "role": role.as_str()})),
                TOKEN,
            )
            .await;
        let (_, tokens) = server
            .request(
                Method::POST,
                "/verda/v1/oauth2/token",
                Some(&json!({"grant_type": "client_credentials", "client_id": client["client_id"], "client_secret": client["client_secret"]}).to_string()),
                None,
            )
            .await;
        let oauth = tokens["access_token"]
            .as_str()
            .expect("access token")
            .to_string();
        for permission in Permission::ALL {
            let Some((method, path, body)) = probe(*permission) else {
                continue;
            };
            let (status, reply) = match path.starts_with("/verda/") {
                true => server.call(method, path, body.as_ref(), &oauth).await,
                false => server.call(method, path, body.as_ref(), &token).await,
            };
            if path.starts_with("/verda/") {
                match role.grants(*permission) {
                    true => assert!(
                        status != StatusCode::FORBIDDEN && status.as_u16() < 500,
                        "{role} should have {permission}: {path} answered {status} {reply}"
                    ),
                    false => {
                        assert_eq!(
                            status,
                            StatusCode::FORBIDDEN,
                            "{role} {permission}: {reply}"
                        );
                        assert_eq!(reply["code"], "forbidden_action", "{reply}");
                    }
                }
                continue;
            }
            if role.grants(*permission) {
                assert!(
                    status != StatusCode::FORBIDDEN
                        && status != StatusCode::UNAUTHORIZED
                        && status.as_u16() < 500,
                    "{role} should have {permission}: {path} answered {status} {reply}"
                );
            } else {
                assert_error(status, &reply, StatusCode::FORBIDDEN, "FORBIDDEN");
            }
        }
    }
    // Nothing the probes sent was created.
    let (_, servers) = server.call(Method::GET, "/v1/servers", None, TOKEN).await;
    assert_eq!(servers, json!([]));
    let (_, instances) = server.call(Method::GET, "/v1/instances", None, TOKEN).await;
    assert_eq!(instances["items"], json!([]));
    server.stop().await;
}

async fn another_projects_objects_are_not_found(backend: Backend) {
    let server = TestServer::start(backend).await;
    server.add_server("iso-1", "0-7", "z1").await;
    let alice = server.user_in("alice", "member", "team-a").await;
    let eve = server.user_in("eve", "admin", "team-b").await;
    let instance = server.run_instance(&alice, "a-web", "cx11").await;
    assert_eq!(instance["status"]["state"], "running", "{instance}");
    let (_, key) = server
        .call(
            Method::POST,
            "/v1/ssh-keys",
            Some(&json!({"name": "alice", "public_key": KEY})),
            &alice,
        )
        .await;
    let instance_id = instance["id"].as_str().expect("id");
    let op_id = instance["operation_id"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_default();
    let (_, ops) = server
        .call(Method::GET, "/v1/operations", None, &alice)
        .await;
    let op_id = if op_id.is_empty() {
        ops[0]["id"].as_str().expect("op").to_string()
    } else {
        op_id
    };
    let key_id = key["id"].as_str().expect("key id");
    // Even an admin of another project sees none of it.
    for path in [
        format!("/v1/instances/{instance_id}"),
        format!("/v1/ssh-keys/{key_id}"),
        format!("/v1/operations/{op_id}"),
        format!("/v1/operations/{op_id}/wait?timeout=0"),
    ] {
        let (status, body) = server.call(Method::GET, &path, None, &eve).await;
        assert_error(status, &body, StatusCode::NOT_FOUND, "NOT_FOUND");
    }
    for (method, path) in [
        (Method::DELETE, format!("/v1/instances/{instance_id}")),
        (Method::POST, format!("/v1/instances/{instance_id}/stop")),
        (Method::POST, format!("/v1/instances/{instance_id}/start")),
        (Method::DELETE, format!("/v1/ssh-keys/{key_id}")),
        (Method::POST, format!("/v1/operations/{op_id}/cancel")),
    ] {
        let (status, body) = server.call(method, &path, None, &eve).await;
        assert_error(status, &body, StatusCode::NOT_FOUND, "NOT_FOUND");
    }
    // And none of it touched alice's instance.
    let (_, still) = server
        .call(
            Method::GET,
            &format!("/v1/instances/{instance_id}"),
            None,
            &alice,
        )
        .await;
    assert_eq!(still["status"]["state"], "running", "{still}");
    assert_eq!(still["operation_id"], json!(null), "{still}");
    let (_, listed) = server.call(Method::GET, "/v1/instances", None, &eve).await;
    assert_eq!(listed["items"], json!([]));
    let (_, listed) = server.call(Method::GET, "/v1/operations", None, &eve).await;
    assert_eq!(listed, json!([]));
    // Another project's key cannot be put on an instance either.
    let body = json!({"metadata": {"name": "e"}, "spec": {"type": "cx11", "image": "ubuntu-22.04", "ssh_key_ids": [key_id]}});
    let (status, reply) = server
        .call(Method::POST, "/v1/instances", Some(&body), &eve)
        .await;
    assert_error(status, &reply, StatusCode::BAD_REQUEST, "INVALID_REQUEST");
    // Kloigos units too: a tenant sees and deallocates only its own.
    server.init_host("k-1", &["0-3"]).await;
    let allocate = json!({"ssh_public_key": KEY, "tags": null}).to_string();
    let (status, unit) = server
        .request(
            Method::POST,
            "/api/compute_units/allocate",
            Some(&allocate),
            Some(&alice),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{unit}");
    let (_, hers) = server
        .request(Method::GET, "/api/compute_units/", None, Some(&alice))
        .await;
    assert_eq!(hers.as_array().map(Vec::len), Some(1), "{hers}");
    let outsider = server.user_in("mallory", "member", "team-b").await;
    let (_, seen) = server
        .request(Method::GET, "/api/compute_units/", None, Some(&outsider))
        .await;
    assert_eq!(seen, json!([]));
    let compute_id = unit["compute_id"].as_str().expect("compute_id");
    let (status, _) = server
        .request(
            Method::DELETE,
            &format!("/api/compute_units/deallocate/{compute_id}"),
            None,
            Some(&outsider),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, all) = server.get("/api/compute_units/?status=allocated").await;
    assert_eq!(
        all.as_array().map(Vec::len),
        Some(1),
        "the fleet's admin sees it"
    );
    // And Alice's instance is untouched.
    let (_, still) = server
        .call(
            Method::GET,
            &format!("/v1/instances/{instance_id}"),
            None,
            &alice,
        )
        .await;
    assert_eq!(still["status"]["state"], "running");
    server.stop().await;
}

async fn native_errors_use_the_documented_body(backend: Backend) {
    let server = TestServer::start(backend).await;
    for token in [None, Some("wrong-token-0123456789"), Some("")] {
        for (method, path) in [
            (Method::GET, "/v1/servers"),
            (Method::GET, "/v1/instances"),
            (Method::POST, "/v1/instances"),
            (Method::GET, "/v1/operations"),
            (Method::GET, "/v1/workspaces"),
            (Method::GET, "/v1/metrics"),
            (Method::GET, "/v1/users"),
            (Method::GET, "/v1/tokens"),
            (Method::GET, "/v1/ssh-keys"),
        ] {
            let (status, body) = server.request(method, path, Some("{}"), token).await;
            assert_error(status, &body, StatusCode::UNAUTHORIZED, "UNAUTHORIZED");
        }
    }
    let (status, body) = server.get("/v1/nothing/here").await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "NOT_FOUND");
    let (status, body) = server.post_raw("/v1/instances", "{not json").await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "INVALID_REQUEST");
    let (status, body) = server
        .post("/v1/instances", &json!({"metadata": {"name": "x"}, "spec": {"type": "cx11", "image": "ubuntu-22.04"}, "extra": 1}))
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "INVALID_REQUEST");
    let (status, body) = server.get("/v1/instances?limit=0").await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "INVALID_REQUEST");
    let (status, body) = server.get("/v1/instances?page_token=%00%01").await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "INVALID_REQUEST");
    let (status, body) = server.get("/v1/instances/inst%00x").await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "NOT_FOUND");
    let (status, body) = server
        .request(Method::PUT, "/v1/instances", None, Some(TOKEN))
        .await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{body}");
    server.stop().await;
}
