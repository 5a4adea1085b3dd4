//! A store made by an earlier version is upgraded by opening it: what the
//! later migrations do to rows an earlier version wrote.

mod common;

use sqlx::Connection;
use tessera_store::{NewUser, Store};

/// The migrations before 0050 (usernames unique whatever their case).
const BEFORE_FOLDED_NAMES: usize = 49;

/// A store's migrations up to those before 0050.
fn before_folded_names(mut all: sqlx::migrate::Migrator) -> sqlx::migrate::Migrator {
    all.migrations = all.migrations[..BEFORE_FOLDED_NAMES].to_vec().into();
    all
}

/// Users an earlier version let in: two names that differ only in case,
/// and one alone.
const EARLIER_USERS: &str = "\
    INSERT INTO projects (id, name, path, created_at) VALUES ('prj-1', 'default', '/default', '2026-01-01T00:00:00Z');
    INSERT INTO users (id, username, active_project_id, created_at, updated_at) VALUES
        ('usr-1', 'Admin', 'prj-1', '2026-01-01T00:00:00Z', '2026-01-01T00:00:00Z'),
        ('usr-2', 'ADMIN', 'prj-1', '2026-01-01T00:00:00Z', '2026-01-01T00:00:00Z'),
        ('usr-3', 'carol', 'prj-1', '2026-01-01T00:00:00Z', '2026-01-01T00:00:00Z');";

/// The earlier users keep their names and sign in by them; a new name
/// that folds onto any of theirs is found (and refused), by the key the
/// migration gave or by the fold.
async fn earlier_users_keep_their_names(store: &Store) {
    for name in ["Admin", "ADMIN", "carol"] {
        assert!(
            store.user_by_name(name).await.expect("read").is_some(),
            "{name}"
        );
    }
    for (wanted, found) in [("admin", "Admin"), ("Admin", "Admin"), ("CAROL", "carol")] {
        let user = store.user_by_folded_name(wanted).await.expect("read");
        assert_eq!(user.map(|u| u.username).as_deref(), Some(found), "{wanted}");
    }
    assert!(
        store
            .user_by_folded_name("dave")
            .await
            .expect("read")
            .is_none()
    );
    // The key holds it without the look: a fold of carol is refused.
    let user = |username: &str| NewUser {
        id: format!("usr-{username}"),
        username: username.into(),
        password_hash: None,
        project_id: "prj-1".into(),
        role: "member".into(),
        install_role: None,
    };
    assert!(!store.insert_user(&user("Carol")).await.expect("insert"));
    assert!(store.insert_user(&user("dave")).await.expect("insert"));
    assert!(!store.insert_user(&user("DAVE")).await.expect("insert"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usernames_differing_in_case_survive_the_upgrade_on_sqlite() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = Store::sqlite_url(&dir.path().join("tessera.db"));
    let mut conn = sqlx::SqliteConnection::connect(&url)
        .await
        .expect("connect");
    let earlier = before_folded_names(sqlx::migrate!("./migrations/sqlite"));
    earlier
        .run(&mut conn)
        .await
        .expect("the earlier migrations");
    sqlx::raw_sql(EARLIER_USERS)
        .execute(&mut conn)
        .await
        .expect("earlier users");
    conn.close().await.expect("close");
    let store = Store::open(&url).await.expect("the upgrade");
    earlier_users_keep_their_names(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usernames_differing_in_case_survive_the_upgrade_on_postgres() {
    let database = common::empty_postgres("tessera_upgrades").await;
    let mut conn = common::connect(&database.url).await;
    let earlier = before_folded_names(sqlx::migrate!("./migrations/postgres"));
    earlier
        .run(&mut conn)
        .await
        .expect("the earlier migrations");
    sqlx::raw_sql(EARLIER_USERS)
        .execute(&mut conn)
        .await
        .expect("earlier users");
    conn.close().await.expect("close");
    let store = Store::open(&database.url).await.expect("the upgrade");
    earlier_users_keep_their_names(&store).await;
    store.close().await;
    database.drop().await;
}
