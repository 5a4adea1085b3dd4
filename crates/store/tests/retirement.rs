//! A host's retirement and its agent: the store forgets the agent (its
//! credential, its desired state) in the transaction that marks the host
//! DECOMMISSIONED, so an agent that comes back once it sees the host
//! retired (`tessera up` starting again) is never forgotten after it
//! registered again.

mod common;

use tessera_core::status::HostStatus;
use tessera_store::{AgentOffer, Store};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retired_hosts_agent_goes_with_the_retirement_on_sqlite() {
    let (store, _dir) = common::sqlite().await;
    let id = retiring_host(&store, "retiring-s").await;
    // A retirement from a status the host is not in changes nothing, its
    // agent included.
    let moved = store
        .transition_host(&id, &[HostStatus::Ready], HostStatus::Decommissioned, None)
        .await
        .expect("the transition runs");
    assert!(!moved);
    assert!(store.agent("retiring-s").await.expect("read").is_some());
    assert_eq!(
        store.work_after("retiring-s", 0).await.expect("read").len(),
        1
    );
    assert!(retire(&store, &id).await.expect("the transition runs"));
    assert_forgotten(&store, "retiring-s").await;
}

/// Only PostgreSQL has another transaction to see the retirement half
/// done: while the agent's row is locked, the host is still
/// DECOMMISSIONING to every reader, and both change at the one commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retired_hosts_agent_goes_with_the_retirement_on_postgres() {
    use sqlx::Executor;
    let (store, database) = common::postgres("tessera_retirement").await;
    let id = retiring_host(&store, "retiring-p").await;
    let mut locker = common::connect(&database.url).await;
    locker.execute("BEGIN").await.expect("a transaction");
    locker
        .execute("SELECT 1 FROM agents WHERE hostname = 'retiring-p' FOR UPDATE")
        .await
        .expect("the agent's row");
    let retiring = {
        let (store, id) = (store.clone(), id.clone());
        tokio::spawn(async move { retire(&store, &id).await })
    };
    let mut watch = common::connect(&database.url).await;
    let waiting = common::lock_waiter(&mut watch).await;
    assert!(waiting.contains("DELETE FROM agents"), "{waiting}");
    let host = store.host(&id).await.expect("read").expect("the host");
    assert_eq!(
        host.status,
        HostStatus::Decommissioning,
        "not retired before its agent is forgotten"
    );
    assert!(store.agent("retiring-p").await.expect("read").is_some());
    locker.execute("COMMIT").await.expect("a commit");
    let retired = retiring.await.expect("the retirement").expect("it runs");
    assert!(retired);
    assert_forgotten(&store, "retiring-p").await;
    store.close().await;
    database.drop().await;
}

/// A host `name` with an agent and some desired state, DECOMMISSIONING:
/// its id.
async fn retiring_host(store: &Store, name: &str) -> String {
    let id = common::ready_host(store, name, 4, 8192, Vec::new()).await;
    store
        .register_agent(
            name,
            "hash",
            "sim",
            "{}",
            &AgentOffer {
                cpus: "0-3".into(),
                images: None,
            },
            None,
        )
        .await
        .expect("an agent");
    store
        .set_desired(name, "instance:inst-1", "{}")
        .await
        .expect("desired state");
    let decommissioning = store
        .transition_host(&id, &[HostStatus::Ready], HostStatus::Decommissioning, None)
        .await
        .expect("the transition runs");
    assert!(decommissioning);
    assert!(store.agent(name).await.expect("read").is_some());
    assert_eq!(store.work_after(name, 0).await.expect("read").len(), 1);
    id
}

/// The retirement's end: DECOMMISSIONING to DECOMMISSIONED.
async fn retire(store: &Store, id: &str) -> tessera_store::Result<bool> {
    store
        .transition_host(
            id,
            &[HostStatus::Decommissioning],
            HostStatus::Decommissioned,
            None,
        )
        .await
}

async fn assert_forgotten(store: &Store, name: &str) {
    let host = store.host(&format!("id-{name}")).await.expect("read");
    assert_eq!(host.expect("the host").status, HostStatus::Decommissioned);
    assert!(
        store.agent(name).await.expect("read").is_none(),
        "its agent is forgotten"
    );
    assert!(
        store.work_after(name, 0).await.expect("read").is_empty(),
        "and its desired state"
    );
}
