//! An agent's desired state and its reports, as the control plane writes
//! them and a long-poll reads them, on both stores: each change of a host
//! under a generation of its own, many at once included; a long-poll's one
//! read of the agent's generation and what changed since; a report kept
//! only for the generation it answers, once.

mod common;

use std::collections::BTreeSet;
use tessera_store::{AgentOffer, Store};

on_both_stores!(
    changes_and_reports,
    changes_and_reports,
    "tessera_agent_work"
);

async fn changes_and_reports(store: &Store) {
    let offer = AgentOffer::default();
    let registered = store.register_agent("h", "hash", "sim", "{}", &offer, None);
    assert!(registered.await.expect("register"));
    // A host without an agent takes no change, and has nothing to read.
    assert_eq!(
        store.set_desired("nobody", "k", "x").await.expect("set"),
        None
    );
    assert!(store.work("nobody", "k").await.expect("read").is_none());
    assert!(
        store
            .desired_since("nobody", 0)
            .await
            .expect("read")
            .is_none()
    );
    // Nothing asked yet: the agent's generation, nothing changed.
    let (start, nothing) = store
        .desired_since("h", 0)
        .await
        .expect("read")
        .expect("agent");
    assert!(nothing.is_empty());

    // Many changes at once, each under a generation of its own.
    let writes = (0..24).map(|n| {
        let store = store.clone();
        async move {
            let key = format!("instance:i{}", n % 12);
            store.set_desired("h", &key, &format!("v{n}")).await
        }
    });
    let answers = futures::future::join_all(writes).await;
    let mut generations = BTreeSet::new();
    for answer in answers {
        let (generation, reachable) = answer.expect("set").expect("the host has an agent");
        assert!(reachable);
        assert!(generations.insert(generation), "{generation} given twice");
    }
    let expected: BTreeSet<i64> = (start + 1..=start + 24).collect();
    assert_eq!(generations, expected);

    // A long-poll from the start sees each key once, at its last change,
    // oldest first, and the agent's generation now.
    let (now, work) = store
        .desired_since("h", start)
        .await
        .expect("read")
        .expect("agent");
    assert_eq!(now, start + 24);
    assert_eq!(work.len(), 12);
    assert!(work.windows(2).all(|w| w[0].generation < w[1].generation));
    assert!(work.iter().all(|w| w.observed_generation == 0));
    for row in &work {
        let stored = store.work("h", &row.key).await.expect("read").expect("row");
        assert_eq!(
            (stored.generation, &stored.desired),
            (row.generation, &row.desired)
        );
    }
    // From the middle: only what changed after it.
    let middle = work[5].generation;
    let (_, later) = store
        .desired_since("h", middle)
        .await
        .expect("read")
        .expect("agent");
    assert_eq!(later.len(), 6);
    assert!(later.iter().all(|w| w.generation > middle));
    // Up to date: nothing.
    let (same, none) = store
        .desired_since("h", now)
        .await
        .expect("read")
        .expect("agent");
    assert_eq!(same, now);
    assert!(none.is_empty());
    // A generation ahead of the agent's (the store was reset since):
    // everything, from scratch.
    let (reset, all) = store
        .desired_since("h", now + 100)
        .await
        .expect("read")
        .expect("agent");
    assert_eq!(reset, now);
    assert_eq!(all.len(), 12);

    // A report counts for the generation it answers, once.
    let row = &work[0];
    let stale = store.set_observed("h", &row.key, row.generation - 1, "old");
    assert!(!stale.await.expect("report"));
    let kept = store.set_observed("h", &row.key, row.generation, "done");
    assert!(kept.await.expect("report"));
    let again = store.set_observed("h", &row.key, row.generation, "again");
    assert!(!again.await.expect("report"));
    let stored = store.work("h", &row.key).await.expect("read").expect("row");
    assert_eq!(stored.observed_generation, row.generation);
    assert_eq!(stored.observed.as_deref(), Some("done"));
    // A report on a key another change has since moved on from is stale.
    let next = store
        .set_desired("h", &row.key, "newer")
        .await
        .expect("set");
    let (newer, _) = next.expect("agent");
    let late = store.set_observed("h", &row.key, row.generation, "late");
    assert!(!late.await.expect("report"));
    let stored = store.work("h", &row.key).await.expect("read").expect("row");
    assert_eq!(
        (stored.generation, stored.observed_generation),
        (newer, row.generation)
    );
    assert_eq!(stored.desired, "newer");

    // Forgotten once answered, unless changed again since.
    store
        .forget_work("h", &row.key, newer - 1)
        .await
        .expect("forget");
    assert!(store.work("h", &row.key).await.expect("read").is_some());
    store
        .forget_work("h", &row.key, newer)
        .await
        .expect("forget");
    assert!(store.work("h", &row.key).await.expect("read").is_none());
}

/// PostgreSQL only: every replica's listener hears a new desired state and
/// a report once they committed (what it then reads holds them), a stale
/// report not at all, and a new credential by the trigger that stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_hear_changes_once_committed() {
    use tessera_store::AgentChange;
    let (store, database) = common::postgres("tessera_agent_notices").await;
    let offer = AgentOffer::default();
    let registered = store.register_agent("h", "hash", "sim", "{}", &offer, None);
    assert!(registered.await.expect("register"));
    let mut changes = store.agent_changes().await.expect("listen");

    // What a replica reads once it heard of a change holds the change:
    // heard, and read, while its writer may still be waiting.
    let writing = tokio::spawn({
        let store = store.clone();
        async move { store.set_desired("h", "instance:i", "running").await }
    });
    assert!(matches!(heard(&mut changes).await, AgentChange::Desired(h) if h == "h"));
    let row = store
        .work("h", "instance:i")
        .await
        .expect("read")
        .expect("written");
    assert_eq!(row.desired, "running");
    let written = writing.await.expect("the writer").expect("set");
    let (generation, _) = written.expect("agent");
    assert_eq!(row.generation, generation);

    // A stale report changes nothing and tells nobody (the next change
    // heard is the next one made); a report that counts does.
    assert!(
        !store
            .set_observed("h", "instance:i", generation + 1, "x")
            .await
            .expect("report")
    );
    store
        .set_desired("h", "instance:j", "running")
        .await
        .expect("set");
    assert!(matches!(heard(&mut changes).await, AgentChange::Desired(h) if h == "h"));
    assert!(
        store
            .set_observed("h", "instance:i", generation, "ok")
            .await
            .expect("report")
    );
    assert!(matches!(heard(&mut changes).await, AgentChange::Reported(h) if h == "h"));
    let row = store
        .work("h", "instance:i")
        .await
        .expect("read")
        .expect("written");
    assert_eq!(row.observed.as_deref(), Some("ok"));

    // A failed change undone is a new desired state too.
    store
        .set_desired("h", "instance:i", "stopped")
        .await
        .expect("set");
    assert!(matches!(heard(&mut changes).await, AgentChange::Desired(h) if h == "h"));
    let undone = store.restore_desired("h", "instance:i", "stopped", "running");
    assert!(undone.await.expect("restore"));
    assert!(matches!(heard(&mut changes).await, AgentChange::Desired(h) if h == "h"));

    // Many changes at once, on many hosts: each host heard, whichever
    // notices went out together.
    let hosts: Vec<String> = (0..24).map(|n| format!("h{n}")).collect();
    for host in &hosts {
        let registered = store.register_agent(host, host, "sim", "{}", &offer, None);
        assert!(registered.await.expect("register"));
    }
    let writes = hosts
        .iter()
        .map(|host| store.set_desired(host, "instance:i", "running"));
    for written in futures::future::join_all(writes).await {
        assert!(written.expect("set").is_some());
    }
    let mut unheard: BTreeSet<String> = hosts.iter().cloned().collect();
    while !unheard.is_empty() {
        match heard(&mut changes).await {
            AgentChange::Desired(host) => assert!(unheard.remove(&host), "{host} heard twice"),
            other => panic!("heard {}", describe(&other)),
        }
    }

    // A new credential: the bare host name, as before.
    let replaced = store.register_agent("h", "other", "sim", "{}", &offer, Some("hash"));
    assert!(replaced.await.expect("replace"));
    assert!(matches!(heard(&mut changes).await, AgentChange::Host(h) if h == "h"));
    store.close().await;
    database.drop().await;
}

/// SQLite: a process's listener hears the store's own word of each of its
/// changes to agents (a new credential, a desired state, a report, an
/// agent gone with its retired host) and its echoes; its commits and
/// their checkpoints are not taken for another process's; another
/// process's commit to the file is `Unheard`, once however many follow,
/// and `Heard` once none has come for a while.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlite_listener_hears_its_process_and_notices_another() {
    use std::time::Duration;
    use tessera_core::status::HostStatus;
    use tessera_store::AgentChange;
    let (store, dir) = common::sqlite().await;
    // Far longer than the other process's pauses between its commits below.
    let quiet = Duration::from_secs(2);
    let mut changes = store
        .agent_changes()
        .await
        .expect("listen")
        .looking(Duration::from_millis(20), quiet);
    let id = common::ready_host(&store, "h", 4, 8192, Vec::new()).await;
    let offer = AgentOffer::default();
    let register = |credential: &'static str, replacing: Option<&'static str>| {
        store.register_agent("h", credential, "sim", "{}", &offer, replacing)
    };
    assert!(register("first", None).await.expect("register"));
    assert_eq!(heard(&mut changes).await, AgentChange::Host("h".into()));
    // One in place of the first is told; one that lost (the credential it
    // replaces is no longer the host's) changed nothing, and is not.
    assert!(register("second", Some("first")).await.expect("register"));
    assert!(!register("third", Some("first")).await.expect("register"));
    assert_eq!(heard(&mut changes).await, AgentChange::Host("h".into()));
    // One whose caller stopped waiting (a request's timeout) is still
    // written, and told.
    let dropped = futures::FutureExt::now_or_never(register("fourth", Some("second")));
    assert!(dropped.is_none(), "answered before its commit: {dropped:?}");
    assert_eq!(heard(&mut changes).await, AgentChange::Host("h".into()));
    let agent = store.agent("h").await.expect("read").expect("the agent");
    assert_eq!(agent.credential_hash, "fourth");

    // This process's desired states and reports, each a commit, with the
    // checkpoints they bring: each is told, a stale report not, and the
    // looks between them see no other process. Then the echo comes back.
    let mut generation = 0;
    for i in 0..300 {
        let key = format!("instance:i{i}");
        let set = store.set_desired("h", &key, "running").await.expect("set");
        generation = set.expect("an agent").0;
    }
    let observed = store.set_observed("h", "instance:i299", generation, "{}");
    assert!(observed.await.expect("report"));
    let stale = store.set_observed("h", "instance:i299", generation - 1, "{}");
    assert!(!stale.await.expect("report"));
    tokio::time::sleep(Duration::from_millis(200)).await;
    store.echo_agent_changes("e1").await.expect("echo");
    let mut told = Vec::new();
    loop {
        match heard(&mut changes).await {
            AgentChange::Echo(token) if token == "e1" => break,
            change => told.push(describe(&change)),
        }
    }
    // (Each is told from the task that wrote it: not necessarily in order.)
    told.sort();
    let mut expected = vec!["desired h".to_string(); 300];
    expected.push("report h".into());
    assert_eq!(told, expected);

    // The host retired: its agent is gone.
    for (from, to) in [
        (HostStatus::Ready, HostStatus::Decommissioning),
        (HostStatus::Decommissioning, HostStatus::Decommissioned),
    ] {
        let moved = store.transition_host(&id, &[from], to, None).await;
        assert!(moved.expect("the transition runs"));
    }
    assert_eq!(heard(&mut changes).await, AgentChange::Host("h".into()));
    assert!(store.agent("h").await.expect("read").is_none());

    // Another process on the same file: its first commit is heard as
    // such; those while it goes on writing are not heard again; once it
    // has stopped for `quiet`, every change is heard again.
    let url = Store::sqlite_url(&dir.path().join("tessera.db"));
    let other = Store::open(&url).await.expect("a second process's store");
    let writing = tokio::spawn(async move {
        let offer = AgentOffer::default();
        for i in 0..40 {
            let hostname = format!("g{i}");
            let made = other.register_agent(&hostname, &hostname, "sim", "{}", &offer, None);
            assert!(made.await.expect("register"));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    assert_eq!(heard(&mut changes).await, AgentChange::Unheard);
    let meanwhile = tokio::time::timeout(Duration::from_millis(1500), changes.next()).await;
    assert!(
        meanwhile.is_err(),
        "heard while the other process writes: {:?}",
        meanwhile.map(|c| c.map(|c| describe(&c)))
    );
    writing.await.expect("the other process's writes");
    assert_eq!(heard(&mut changes).await, AgentChange::Heard);
    store.echo_agent_changes("e2").await.expect("echo");
    assert_eq!(heard(&mut changes).await, AgentChange::Echo("e2".into()));
}

/// The next change heard, skipping none (a test that hangs here lost one).
async fn heard(changes: &mut tessera_store::AgentChanges) -> tessera_store::AgentChange {
    tokio::time::timeout(std::time::Duration::from_secs(60), changes.next())
        .await
        .expect("a change heard within a minute")
        .expect("listening")
}

fn describe(change: &tessera_store::AgentChange) -> String {
    use tessera_store::AgentChange;
    match change {
        AgentChange::Desired(host) => format!("desired {host}"),
        AgentChange::Reported(host) => format!("report {host}"),
        AgentChange::Host(host) => format!("host {host}"),
        AgentChange::Missed => "missed".into(),
        AgentChange::Echo(token) => format!("echo {token}"),
        AgentChange::Unheard => "unheard".into(),
        AgentChange::Heard => "heard".into(),
    }
}
