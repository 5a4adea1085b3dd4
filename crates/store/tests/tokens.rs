//! Credentials made with a login are kept only while that login lives:
//! the check is in the insert itself, so a login revoked between its
//! caller's check and the write leaves nothing behind.

mod common;

use tessera_store::{NewToken, NewUser, OAuthClientRecord, ProjectRecord, Store};

#[tokio::test]
async fn a_revoked_login_makes_nothing_on_sqlite() {
    let (store, _dir) = common::sqlite().await;
    revoked_login_makes_nothing(&store).await;
    store.close().await;
}

#[tokio::test]
async fn a_revoked_login_makes_nothing_on_postgres() {
    let (store, database) = common::postgres("tessera_login_made").await;
    revoked_login_makes_nothing(&store).await;
    store.close().await;
    database.drop().await;
}

fn token(id: &str, login: Option<&str>) -> NewToken {
    NewToken {
        id: id.into(),
        name: id.into(),
        token_hash: format!("hash-{id}"),
        user_id: "usr-1".into(),
        project_id: "prj-1".into(),
        scopes: None,
        expires_at: None,
        parent_id: None,
        compute_scopes: None,
        login_family: login.map(str::to_string),
        login_user: login.map(|_| "usr-1".to_string()),
    }
}

fn client(id: &str, login: Option<&str>) -> OAuthClientRecord {
    OAuthClientRecord {
        client_id: id.into(),
        secret_hash: format!("hash-{id}"),
        project_id: "prj-1".into(),
        role: "member".into(),
        description: String::new(),
        created_by: Some("usr-1".into()),
        created_at: tessera_store::now(),
        revoked_at: None,
        scopes: None,
        parent_token_id: None,
        acts_as: Some("usr-1".into()),
        expires_at: None,
        login_family: login.map(str::to_string),
    }
}

async fn revoked_login_makes_nothing(store: &Store) {
    let project = ProjectRecord {
        id: "prj-1".into(),
        name: "one".into(),
        path: "one".into(),
        created_at: tessera_store::now(),
    };
    assert!(store.insert_project(&project, None).await.expect("project"));
    let user = NewUser {
        id: "usr-1".into(),
        username: "alice".into(),
        password_hash: Some("x".into()),
        project_id: "prj-1".into(),
        role: "member".into(),
        install_role: None,
    };
    assert!(store.insert_user(&user).await.expect("user"));
    let later = "2100-01-01T00:00:00Z";
    for family in ["fam-live", "fam-stolen"] {
        store
            .insert_refresh_token(&format!("rt-{family}"), "usr-1", family, later)
            .await
            .expect("a login");
    }

    // Live logins, and none at all, make what they are asked to.
    assert!(
        store
            .insert_token(&token("t-live", Some("fam-live")))
            .await
            .expect("insert")
    );
    assert!(
        store
            .insert_token(&token("t-none", None))
            .await
            .expect("insert")
    );
    assert!(
        store
            .insert_oauth_client(&client("c-live", Some("fam-live")))
            .await
            .expect("insert")
    );

    // The stolen login's refresh token is presented twice: revoked.
    let rotated = store
        .rotate_refresh_token("rt-fam-stolen", "rt-next", later)
        .await
        .expect("rotate");
    assert!(matches!(rotated, tessera_store::RefreshUse::Rotated { .. }));
    let reused = store
        .rotate_refresh_token("rt-fam-stolen", "rt-again", later)
        .await
        .expect("reuse");
    assert_eq!(reused, tessera_store::RefreshUse::Reused);

    // What it would make now is not kept.
    assert!(
        !store
            .insert_token(&token("t-stolen", Some("fam-stolen")))
            .await
            .expect("insert")
    );
    assert!(
        !store
            .insert_oauth_client(&client("c-stolen", Some("fam-stolen")))
            .await
            .expect("insert")
    );
    assert!(store.token("t-stolen").await.expect("read").is_none());
    assert!(
        store
            .oauth_client("c-stolen")
            .await
            .expect("read")
            .is_none()
    );
    let live = store.token("t-live").await.expect("read").expect("kept");
    assert!(live.revoked_at.is_none(), "another login's token lives on");
}
