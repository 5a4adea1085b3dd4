//! Instances recorded, placed and their creations ended by many callers at
//! once mean what each means alone. On PostgreSQL the store gathers such calls into
//! one statement (its `instance_batches` module); these tests make them
//! concurrently, so that most go in batches, including ones refused as a
//! whole (two placements on one CPU, a host's memory run out, an address
//! another replica took, a quota the batch would exceed) and run again
//! call by call. SQLite, which runs them one by one in its writer, must
//! answer the same.

mod common;

use futures::future::join_all;
use std::collections::{HashMap, HashSet};
use tessera_core::status::{InstanceState, OperationKind, OperationStatus};
use tessera_store::{
    Block, CpuClaim, InstanceFilter, InstanceUpdate, InstancesAdded, NetworkAdded, NewAttachment,
    NewInstance, NewOperation, NewVpc, OperationEnd, ProjectRecord, QuotaCheck,
    SecurityGroupRecord, Store, StoreError, SubnetRecord, Usage, VpcRecord,
};

/// What each instance costs an hour while it runs.
const PRICE: i64 = 3_600;

/// Each instance's memory, and how many of them the small host holds.
const MEMORY_MB: i64 = 1024;
const SMALL_HOLDS: usize = 10;

on_both_stores!(
    placements_and_settlements_at_once,
    at_once,
    "tessera_instance_batches"
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creations_at_once_on_sqlite() {
    let (store, dir) = common::sqlite().await;
    let path = dir.path().join("tessera.db");
    creations(&store, common::Raw::Sqlite(path.display().to_string())).await;
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creations_at_once_on_postgres() {
    let (store, database) = common::postgres("tessera_creation_batches").await;
    creations(&store, common::Raw::Postgres(database.url.clone())).await;
    store.close().await;
    database.drop().await;
}

on_both_stores!(
    closed_meters_fold_into_the_balance,
    closed_meters_fold,
    "tessera_folded_meters"
);

on_both_stores!(
    a_shared_cpu_is_whole_again_with_its_last_share,
    shared_cpu_freed,
    "tessera_shared_release"
);

/// Two instances share a CPU (half each). When one ends, its release
/// leaves the CPU shared by the other, so no instance may take it whole;
/// when the other ends too, the CPU is whole again and one may. What
/// decides is the ledger: no placement view stands in front of it here,
/// as none does for another replica's stale one.
async fn shared_cpu_freed(store: &Store) {
    let project = new_project(store, "p-share", "share").await;
    let host = ready_host(store, "share-1", 2, 64 * 1024).await;
    let halves = [
        created(store, &project.id, "half-a", true).await,
        created(store, &project.id, "half-b", true).await,
    ];
    for half in &halves {
        assert!(
            place_share(store, half, &host, 0, Some(500)).await,
            "{} shares CPU 0",
            half.0
        );
    }
    let whole = created(store, &project.id, "whole", true).await;
    assert!(terminated(store, &halves[0]).await);
    assert!(
        !place(store, &whole, &host, 0).await,
        "half-b still shares CPU 0: it is nobody's whole"
    );
    assert!(terminated(store, &halves[1]).await);
    assert!(
        place(store, &whole, &host, 0).await,
        "CPU 0's last share is gone: it is whole again"
    );
}

on_both_stores!(
    terminations_at_once,
    terminations_at_once,
    "tessera_terminations"
);

/// Instances on two hosts end at once, each twice (on PostgreSQL most of
/// them in batches), with one whose creation this store does not drive
/// (unchanged): each ends once, without its host, CPUs or meter; a
/// CPU shared by two of them is whole again, one shared with an instance
/// that lives on stays shared; each host's generation moves on once per
/// instance it let go (as the placement view counts); the project's usage
/// as kept agrees with its rows.
async fn terminations_at_once(store: &Store) {
    let project = new_project(store, "p-end", "end").await;
    let one = ready_host(store, "end-1", 8, 1 << 20).await;
    let two = ready_host(store, "end-2", 8, 1 << 20).await;
    // (name, host, CPU, share); "stays" lives on.
    let plan: [(&str, &String, u32, Option<u32>); 8] = [
        ("half-1", &one, 0, Some(500)),
        ("half-2", &one, 0, Some(500)),
        ("c1", &one, 1, None),
        ("c2", &one, 2, None),
        ("c3", &two, 0, None),
        ("c4", &two, 1, None),
        ("half-3", &two, 2, Some(400)),
        ("stays", &two, 2, Some(400)),
    ];
    let mut made = Vec::new();
    for (name, host, cpu, share) in plan {
        let creation = created(store, &project.id, name, true).await;
        assert!(
            place_share(store, &creation, host, cpu, share).await,
            "{name}"
        );
        made.push(creation);
    }
    let generations = (
        store
            .host(&one)
            .await
            .expect("read")
            .expect("there")
            .generation,
        store
            .host(&two)
            .await
            .expect("read")
            .expect("there")
            .generation,
    );
    // A creation this store does not drive (pending) ends with them in
    // a batch: changing nothing.
    let idle = created(store, &project.id, "idle", false).await;
    let ending = &made[..7];
    let ended = join_all(
        ending
            .iter()
            .chain(ending)
            .chain([&idle, &idle])
            .map(|c| terminated(store, c)),
    )
    .await;
    assert_eq!(
        &ended[ending.len() * 2..],
        [false, false],
        "not this store's"
    );
    let unchanged = store.instance(&idle.0).await.expect("read").expect("there");
    assert_eq!(unchanged.state, "provisioning");
    for (n, (id, op)) in ending.iter().enumerate() {
        let times = usize::from(ended[n]) + usize::from(ended[n + ending.len()]);
        assert_eq!(times, 1, "{id}: ended once");
        let instance = store.instance(id).await.expect("read").expect("there");
        assert_eq!(instance.state, "terminated", "{id}");
        assert_eq!(instance.state_detail.as_deref(), Some("ended for the test"));
        assert_eq!((instance.host_id, instance.cpu_list), (None, None), "{id}");
        assert_eq!(instance.operation_id, None, "{id}");
        let operation = store.operation(op).await.expect("read").expect("there");
        assert_eq!(operation.status, "failed", "{id}");
    }
    let mut claims = store.cpu_claims(None).await.expect("the ledger");
    claims.sort();
    assert_eq!(
        claims,
        vec![(two.clone(), 2)],
        "only the CPU \"stays\" shares is held"
    );
    let shares = store.cpu_shares(None).await.expect("shares");
    assert_eq!(shares, vec![(two.clone(), 2, 400)], "{shares:?}");
    assert_eq!(
        store
            .host(&one)
            .await
            .expect("read")
            .expect("there")
            .generation,
        generations.0 + 4
    );
    assert_eq!(
        store
            .host(&two)
            .await
            .expect("read")
            .expect("there")
            .generation,
        generations.1 + 3
    );
    let (kept, counted) = store.project_usage_audit(&project.id).await.expect("usage");
    assert_eq!(kept, counted);
    assert_eq!((kept.instances, kept.vcpus), (2, 2), "{kept:?}");
    let balance = store.balance(&project.id).await.expect("balance");
    assert_eq!(
        balance.committed_micros_per_hour,
        2 * PRICE,
        "only the two still being made are committed to"
    );
    // The CPUs are free again: whole ones for whole instances.
    for (n, cpu) in [(0, 0), (1, 1), (2, 2)] {
        let again = created(store, &project.id, &format!("again-{n}"), true).await;
        assert!(place(store, &again, &one, cpu).await, "CPU {cpu} of end-1");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beginnings_at_once_on_sqlite() {
    let (store, dir) = common::sqlite().await;
    let path = dir.path().join("tessera.db");
    let raw = common::Raw::Sqlite(path.display().to_string());
    beginnings_at_once(&store, &store, raw).await;
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beginnings_at_once_on_postgres() {
    let (store, database) = common::postgres("tessera_beginnings").await;
    // Another replica on the same database.
    let other = Store::open(&database.url).await.expect("open PostgreSQL");
    let raw = common::Raw::Postgres(database.url.clone());
    beginnings_at_once(&store, &other, raw).await;
    other.close().await;
    store.close().await;
    database.drop().await;
}

/// Deletes, a stop and a start begin at once (each delete asked twice, as
/// a client that retries asks, the second time through `other`, another
/// replica on PostgreSQL; there most go in batches), a stop and a delete of
/// one running instance race, and three cannot begin: a delete of an
/// instance whose creation is under way, one of a running instance with
/// another operation under way on it, and a stop of a stopped instance.
/// Each that begins does so once: the instance takes its operation and new
/// state, the operation is as the call answered it (running, taken), and a
/// delete's meter stops, booking what it ran for; those that cannot change
/// nothing.
async fn beginnings_at_once(store: &Store, other: &Store, raw: common::Raw) {
    use InstanceState::{Running, Stopped};
    let project = new_project(store, "p-begin", "begin").await;
    let host = ready_host(store, "begin-1", 8, 1 << 20).await;
    let plan = [
        ("d1", Running),
        ("d2", Running),
        ("d3", Running),
        ("d4", Running),
        ("s1", Running),
        ("st", Stopped),
        ("sd", Stopped),
        ("held", Running),
        ("sx", Running),
        ("s2", Running),
    ];
    let mut made = HashMap::new();
    for (cpu, (name, state)) in plan.into_iter().enumerate() {
        let creation = created(store, &project.id, name, true).await;
        assert!(place(store, &creation, &host, cpu as u32).await, "{name}");
        assert!(settle(store, &creation, state).await, "{name}");
        made.insert(name, creation.0);
    }
    let busy = created(store, &project.id, "busy", true).await;
    made.insert("busy", busy.0.clone());
    // Running, with an operation of another kind under way on it.
    raw.execute(&format!(
        "UPDATE instances SET operation_id = 'op-other' WHERE id = '{}'",
        made["held"]
    ))
    .await;
    const DELETE: (OperationKind, &[&str], &str) = (
        OperationKind::InstanceDelete,
        &["running", "stopped"],
        "stopping",
    );
    const STOP: (OperationKind, &[&str], &str) =
        (OperationKind::InstanceStop, &["running"], "stopping");
    const START: (OperationKind, &[&str], &str) =
        (OperationKind::InstanceStart, &["stopped"], "provisioning");
    // d1 has run an hour: its delete books that hour.
    raw.execute(&format!(
        "UPDATE meters SET running_since = running_since - 3600000 WHERE resource_id = '{}'",
        made["d1"]
    ))
    .await;
    let calls = [
        ("d1", DELETE, 1),
        ("d2", DELETE, 1),
        ("d3", DELETE, 1),
        ("d4", DELETE, 1),
        ("s1", STOP, 1),
        ("st", START, 1),
        ("sd", DELETE, 1),
        ("sd", STOP, 1),
        ("busy", DELETE, 1),
        ("held", DELETE, 1),
        ("sx", STOP, 1),
        ("sx", DELETE, 2),
        ("d1", DELETE, 2),
        ("d2", DELETE, 2),
        ("d3", DELETE, 2),
        ("d4", DELETE, 2),
    ];
    let began = join_all(calls.iter().map(|(name, (kind, from, to), n)| {
        let id = made[name].clone();
        let project = project.id.clone();
        async move {
            let op = NewOperation {
                id: format!("op-{}-{name}-{n}", kind.as_str()),
                project_id: project,
                kind: *kind,
                resource_id: Some(id.clone()),
                params: serde_json::json!({ "instance_id": id }),
                created_by: "alice".into(),
            };
            let via = if *n == 2 { other } else { store };
            let taken = via
                .begin_instance_operation(&id, from, to, &op, &LEASE, None)
                .await
                .expect("begin");
            (op.id, taken)
        }
    }))
    .await;
    let mut ops_of: HashMap<&str, Vec<&str>> = HashMap::new();
    for ((name, (_, _, to), _), (op, taken)) in calls.iter().zip(&began) {
        let stored = store.operation(op).await.expect("read");
        let Some(taken) = taken else {
            assert_eq!(stored, None, "{op} did not begin: no such operation");
            continue;
        };
        assert_eq!(stored.as_ref(), Some(taken), "{op}: as answered");
        assert_eq!(taken.status, "running");
        let instance = store
            .instance(&made[name])
            .await
            .expect("read")
            .expect("there");
        assert_eq!(instance.state, *to, "{op}");
        assert_eq!(instance.operation_id.as_deref(), Some(op.as_str()));
        ops_of.entry(name).or_default().push(op);
    }
    for name in ["d1", "d2", "d3", "d4", "s1", "st", "sd", "sx"] {
        assert_eq!(ops_of.get(name).map(Vec::len), Some(1), "{name} began once");
    }
    assert_eq!(ops_of.get("busy"), None, "its creation is under way");
    assert_eq!(ops_of.get("held"), None, "another operation is under way");
    let held = store
        .instance(&made["held"])
        .await
        .expect("read")
        .expect("there");
    assert_eq!(
        (held.state.as_str(), held.operation_id.as_deref()),
        ("running", Some("op-other"))
    );
    let busy_now = store.instance(&busy.0).await.expect("read").expect("there");
    assert_eq!(
        (busy_now.state.as_str(), busy_now.operation_id.as_deref()),
        ("provisioning", Some(busy.1.as_str()))
    );
    // Another project's operation does not begin on this one's instance.
    let stranger = new_project(store, "p-stranger", "stranger").await;
    let op = NewOperation {
        id: "op-stranger".into(),
        project_id: stranger.id.clone(),
        kind: OperationKind::InstanceStop,
        resource_id: Some(made["s2"].clone()),
        params: serde_json::json!({ "instance_id": made["s2"] }),
        created_by: "mallory".into(),
    };
    let (_, from, to) = STOP;
    let taken = store
        .begin_instance_operation(&made["s2"], from, to, &op, &LEASE, None)
        .await
        .expect("begin");
    assert_eq!(taken, None, "not the stranger's instance");
    let s2 = store
        .instance(&made["s2"])
        .await
        .expect("read")
        .expect("there");
    assert_eq!((s2.state.as_str(), s2.operation_id), ("running", None));
    // Committed to: the instance stopping (its meter runs until it has
    // stopped), s2, the one held, the one starting and the one being made;
    // not the deleted. sx is one or the other, as its race went.
    let sx_stopped = ops_of["sx"][0].starts_with("op-instance_stop-");
    let balance = store.balance(&project.id).await.expect("balance");
    assert_eq!(
        balance.committed_micros_per_hour,
        (5 + i64::from(sx_stopped)) * PRICE
    );
    // What was spent: d1's hour, booked once, and a few seconds' worth at
    // most of the meters that ran for the test.
    assert!(
        (PRICE..PRICE + 100).contains(&balance.spent_micros),
        "{balance:?}"
    );
}

/// A terminated instance's meter is folded into its project's balance and
/// deleted; a running one's and a stopped one's (it may start again)
/// stay meters. The balance reads the same before and after, and a
/// second fold finds nothing.
async fn closed_meters_fold(store: &Store) {
    let project = new_project(store, "p-fold", "fold").await;
    let host = ready_host(store, "fold-1", 4, 64 * 1024).await;
    let mut made = Vec::new();
    for (n, name) in ["fa", "fb", "fc"].into_iter().enumerate() {
        // A millionth of the currency a millisecond, so that a few of
        // them show.
        let (mut instance, op) = creation_of(&project.id, name);
        instance.micros_per_hour = FOLD_PRICE;
        let added = store
            .insert_instance(&instance, &op, None, Some(LEASE.as_str()))
            .await
            .expect("record the instance");
        assert!(matches!(added, InstancesAdded::Recorded { .. }));
        let creation = (instance.id, op.id);
        assert!(place(store, &creation, &host, n as u32).await, "{name}");
        made.push(creation);
    }
    assert!(settle(store, &made[0], InstanceState::Running).await);
    assert!(settle(store, &made[1], InstanceState::Stopped).await);
    assert!(settle(store, &made[2], InstanceState::Running).await);
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    // fc is deleted: its meter stops, for good.
    let (id, _) = &made[2];
    let delete = NewOperation {
        id: "op-fc-delete".into(),
        project_id: project.id.clone(),
        kind: OperationKind::InstanceDelete,
        resource_id: Some(id.clone()),
        params: serde_json::json!({ "instance_id": id }),
        created_by: "alice".into(),
    };
    store
        .begin_instance_operation(id, &["running"], "stopping", &delete, &LEASE, None)
        .await
        .expect("begin")
        .expect("begun");
    let end = OperationEnd {
        id: &delete.id,
        status: OperationStatus::Completed,
        result: None,
        error: None,
    };
    let gone = InstanceUpdate {
        state: InstanceState::Terminated,
        state_detail: None,
        cause: Some(tessera_core::status::TerminationCause::Deleted),
        private_ip: None,
        ssh_endpoint: None,
    };
    assert!(
        store
            .settle_instance_operation(&end, id, &gone, true)
            .await
            .expect("settle")
    );
    // fa stops too, so that nothing runs on while the balance is read.
    let stop = NewOperation {
        id: "op-fa-stop".into(),
        kind: OperationKind::InstanceStop,
        resource_id: Some(made[0].0.clone()),
        ..delete.clone()
    };
    store
        .begin_instance_operation(&made[0].0, &["running"], "stopping", &stop, &LEASE, None)
        .await
        .expect("begin")
        .expect("begun");
    assert!(
        settle(
            store,
            &(made[0].0.clone(), stop.id.clone()),
            InstanceState::Stopped
        )
        .await
    );
    let before = store.balance(&project.id).await.expect("balance");
    assert!(before.spent_micros > 0, "{before:?}");
    assert_eq!(store.fold_meters().await.expect("fold"), 1);
    assert_eq!(store.balance(&project.id).await.expect("balance"), before);
    assert_eq!(store.fold_meters().await.expect("fold"), 0);
    assert_eq!(store.balance(&project.id).await.expect("balance"), before);
    // The stopped ones keep their meters: each may start again.
    for (id, _) in &made[..2] {
        assert_eq!(
            store
                .stopped_instance_rate(&project.id, id)
                .await
                .expect("rate"),
            Some(FOLD_PRICE),
            "{id}"
        );
    }
}

/// What each instance of [`closed_meters_fold`] costs an hour.
const FOLD_PRICE: i64 = 3_600_000;

on_both_stores!(
    a_creation_a_delete_superseded_does_not_end_running,
    superseded,
    "tessera_superseded"
);

/// Creations ended running at once (so that, on PostgreSQL, they go in
/// one batch), two of which a delete superseded: those two do not end
/// (their drivers undo them), the others do.
async fn superseded(store: &Store) {
    let project = new_project(store, "p-sup", "sup").await;
    let host = ready_host(store, "sup-1", 8, 64 * 1024).await;
    let mut made = Vec::new();
    for n in 0..6u32 {
        let creation = created(store, &project.id, &format!("s{n}"), true).await;
        assert!(place(store, &creation, &host, n).await);
        made.push(creation);
    }
    for (_, op) in &made[..2] {
        assert!(
            store
                .request_operation_cancel_by_delete(op)
                .await
                .expect("cancel")
        );
    }
    let ended = join_all(
        made.iter()
            .map(|creation| settle(store, creation, InstanceState::Running)),
    )
    .await;
    assert_eq!(ended, [false, false, true, true, true, true]);
    for (n, (id, op)) in made.iter().enumerate() {
        let instance = store.instance(id).await.expect("read").expect("there");
        let operation = store.operation(op).await.expect("read").expect("there");
        match n < 2 {
            true => {
                assert_eq!(instance.state, "provisioning", "{id}");
                assert_eq!(operation.status, "running", "{id}");
                assert_eq!(
                    operation.cancel_requested,
                    tessera_store::CANCELLED_BY_DELETE
                );
            }
            false => assert_eq!(instance.state, "running", "{id}"),
        }
    }
}

/// A new project `id` at path `path`.
async fn new_project(store: &Store, id: &str, path: &str) -> ProjectRecord {
    let project = ProjectRecord {
        id: id.into(),
        name: path.into(),
        path: path.into(),
        created_at: tessera_store::now(),
    };
    assert!(store.insert_project(&project, None).await.expect("project"));
    project
}

/// A READY pooled host of `cpus` CPUs and `memory_mb`.
async fn ready_host(store: &Store, name: &str, cpus: u32, memory_mb: i64) -> String {
    common::ready_host(store, name, cpus, memory_mb, Vec::new()).await
}

/// Instance `name` of `project` and the operation creating it.
fn creation_of(project: &str, name: &str) -> (NewInstance, NewOperation) {
    let (id, op_id) = (format!("inst-{name}"), format!("op-{name}"));
    let instance = NewInstance {
        id: id.clone(),
        project_id: project.into(),
        name: name.into(),
        labels: serde_json::json!({}),
        spec: serde_json::json!({}),
        memory_mb: MEMORY_MB,
        vcpus: 1,
        micros_per_hour: PRICE,
        volumes: Vec::new(),
        attach: Vec::new(),
        container: None,
        network: None,
        replica: None,
        created_by: None,
    };
    let op = NewOperation {
        id: op_id,
        project_id: project.into(),
        kind: OperationKind::InstanceCreate,
        resource_id: Some(id.clone()),
        params: serde_json::json!({ "instance_id": id }),
        created_by: "alice".into(),
    };
    (instance, op)
}

/// A new instance `name` and its creation, taken by this store (`taken`)
/// or left pending for anyone: `(instance, operation)`.
async fn created(store: &Store, project: &str, name: &str, taken: bool) -> (String, String) {
    let (instance, op) = creation_of(project, name);
    let (id, op_id) = (instance.id.clone(), op.id.clone());
    let added = store
        .insert_instance(&instance, &op, None, taken.then_some(LEASE.as_str()))
        .await
        .expect("record the instance");
    assert!(matches!(added, InstancesAdded::Recorded { .. }));
    (id, op_id)
}

static LEASE: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    tessera_store::timestamp(chrono::Utc::now() + chrono::Duration::minutes(10))
});

fn steps_of(name: &str) -> String {
    serde_json::json!([{ "step": "placed", "of": name }]).to_string()
}

/// Ends a creation with its instance terminated and all it held given
/// back, as an undone creation or a deletion ends: whether this call
/// ended it.
async fn terminated(store: &Store, (id, op): &(String, String)) -> bool {
    let update = InstanceUpdate {
        state: InstanceState::Terminated,
        state_detail: Some("ended for the test".into()),
        cause: None,
        private_ip: None,
        ssh_endpoint: None,
    };
    let end = OperationEnd {
        id: op,
        status: OperationStatus::Failed,
        result: None,
        error: Some("ended for the test"),
    };
    store
        .settle_instance_operation(&end, id, &update, true)
        .await
        .expect("end it")
}

/// One placement of `share` of a CPU: `true` when the instance has it.
async fn place_share(
    store: &Store,
    (id, op): &(String, String),
    host: &str,
    cpu: u32,
    share: Option<u32>,
) -> bool {
    store
        .claim_instance_cpus(
            CpuClaim::Place,
            id,
            (host, None),
            (&[cpu], share),
            (op, &steps_of(id), &LEASE),
        )
        .await
        .expect("place")
}

/// One placement: `true` when the CPU is the instance's.
async fn place(store: &Store, (id, op): &(String, String), host: &str, cpu: u32) -> bool {
    store
        .claim_instance_cpus(
            CpuClaim::Place,
            id,
            (host, None),
            (&[cpu], None),
            (op, &steps_of(id), &LEASE),
        )
        .await
        .expect("place")
}

async fn settle(store: &Store, (id, op): &(String, String), state: InstanceState) -> bool {
    let update = InstanceUpdate {
        state,
        state_detail: None,
        cause: None,
        private_ip: Some(format!("10.0.0.{}", id.len())),
        ssh_endpoint: None,
    };
    let end = OperationEnd {
        id: op,
        status: OperationStatus::Completed,
        result: None,
        error: None,
    };
    store
        .settle_instance_operation(&end, id, &update, false)
        .await
        .expect("settle")
}

async fn at_once(store: &Store) {
    let project = new_project(store, "proj-1", "p").await;
    // Twelve CPUs each wanted by two instances; a host whose memory holds
    // ten of the sixteen that want it; and creations this store does not
    // drive (pending), whose placement changes nothing.
    let crowded = ready_host(store, "crowded", 12, 1 << 20).await;
    let small = ready_host(store, "small", 16, MEMORY_MB * SMALL_HOLDS as i64).await;
    let mut wants: Vec<((String, String), String, u32)> = Vec::new();
    for n in 0..24u32 {
        let created = created(store, &project.id, &format!("c{n}"), true).await;
        wants.push((created, crowded.clone(), n % 12));
    }
    for n in 0..16u32 {
        let created = created(store, &project.id, &format!("s{n}"), true).await;
        wants.push((created, small.clone(), n));
    }
    let mut pending = Vec::new();
    for n in 0..4u32 {
        let created = created(store, &project.id, &format!("p{n}"), false).await;
        wants.push((created.clone(), crowded.clone(), 100 + n));
        pending.push(created.0);
    }
    // First the placements that all succeed but the pending ones, whose
    // batches commit; then the small host's, whose batch passes its memory
    // only counted together (each CPU free); then the CPUs taken. Refused
    // batches fail as a whole and run again call by call.
    let (first, then): (Vec<usize>, Vec<usize>) =
        (0..wants.len()).partition(|&n| (n < 12) || pending.contains(&wants[n].0.0));
    let (small_ones, taken): (Vec<usize>, Vec<usize>) =
        then.into_iter().partition(|&n| wants[n].1 == small);
    let generation = |host: String| async move {
        let record = store.host(&host).await.expect("read").expect("there");
        record.generation
    };
    let generations = (
        generation(crowded.clone()).await,
        generation(small.clone()).await,
    );
    let mut placed = vec![false; wants.len()];
    for wave in [first, small_ones, taken] {
        let answers = join_all(wave.iter().map(|&n| {
            let (created, host, cpu) = &wants[n];
            place(store, created, host, *cpu)
        }))
        .await;
        for (n, answer) in wave.into_iter().zip(answers) {
            placed[n] = answer;
        }
    }

    let won = |host: &str| {
        wants
            .iter()
            .zip(&placed)
            .filter(|((_, h, _), placed)| h == host && **placed)
            .count()
    };
    assert_eq!(won(&crowded), 12, "each CPU goes to one of its two");
    assert_eq!(won(&small), SMALL_HOLDS, "as many as the memory holds");
    // Each placement moves its host's generation on by one, as the
    // placement view counts.
    assert_eq!(generation(crowded.clone()).await, generations.0 + 12);
    assert_eq!(
        generation(small.clone()).await,
        generations.1 + SMALL_HOLDS as i64
    );
    let claims = store.cpu_claims(None).await.expect("the ledger");
    assert_eq!(claims.len(), 12 + SMALL_HOLDS, "{claims:?}");
    let claimed: HashSet<(String, u32)> = claims.into_iter().collect();
    for ((created @ (id, op), host, cpu), placed) in wants.iter().zip(&placed) {
        assert!(
            !(*placed && pending.contains(id)),
            "{id}: a creation this store does not drive is not placed"
        );
        let instance = store.instance(id).await.expect("read").expect("there");
        let operation = store.operation(op).await.expect("read").expect("there");
        if *placed {
            assert_eq!(instance.host_id.as_deref(), Some(host.as_str()), "{id}");
            assert_eq!(instance.cpu_list, Some(cpu.to_string()), "{id}");
            assert!(claimed.contains(&(host.clone(), *cpu)), "{id}");
            assert_eq!(operation.steps, steps_of(id), "{id}: its progress");
        } else {
            assert_eq!(instance.host_id, None, "{id}: refused, nothing changed");
            assert_ne!(operation.steps, steps_of(id), "{id}: no progress");
        }
        assert_eq!(
            pending.contains(id),
            operation.status == "pending",
            "{created:?}"
        );
    }

    // Every creation ended twice at once: once each. The placed ones end
    // running or stopped; the others' are no longer (or not) running.
    let placed_ones: Vec<&(String, String)> = wants
        .iter()
        .zip(&placed)
        .filter(|(_, placed)| **placed)
        .map(|(w, _)| &w.0)
        .collect();
    let state_of = |n: usize| match n % 3 {
        0 => InstanceState::Stopped,
        _ => InstanceState::Running,
    };
    let calls: Vec<(usize, &(String, String))> = placed_ones
        .iter()
        .enumerate()
        .flat_map(|(n, created)| [(n, *created), (n, *created)])
        .chain(
            wants
                .iter()
                .filter(|w| pending.contains(&w.0.0))
                .map(|w| (0, &w.0)),
        )
        .collect();
    let ended = join_all(
        calls
            .iter()
            .map(|(n, created)| settle(store, created, state_of(*n))),
    )
    .await;
    let mut ends: HashMap<&str, usize> = HashMap::new();
    for ((_, (id, _)), ended) in calls.iter().zip(&ended) {
        *ends.entry(id.as_str()).or_default() += usize::from(*ended);
    }
    let mut running = 0;
    for (n, (id, op)) in placed_ones.iter().enumerate() {
        assert_eq!(ends[id.as_str()], 1, "{id}: ended once");
        let instance = store.instance(id).await.expect("read").expect("there");
        assert_eq!(instance.state, state_of(n).as_str(), "{id}");
        assert_eq!(instance.operation_id, None, "{id}");
        assert_eq!(instance.private_ip, format!("10.0.0.{}", id.len()), "{id}");
        let operation = store.operation(op).await.expect("read").expect("there");
        assert_eq!(operation.status, "completed", "{id}");
        running += usize::from(state_of(n) == InstanceState::Running);
    }
    for id in &pending {
        assert_eq!(ends[id.as_str()], 0, "{id}: not this store's to end");
        let instance = store.instance(id).await.expect("read").expect("there");
        assert_eq!(instance.state, "provisioning", "{id}: unchanged");
    }
    // The meters: the running ones run, and the instances still being
    // made (refused placements, pending creations) are committed to;
    // the stopped ones cost nothing.
    let provisioning = wants.len() - placed_ones.len();
    let balance = store.balance(&project.id).await.expect("balance");
    assert_eq!(
        balance.committed_micros_per_hour,
        PRICE * (running + provisioning) as i64,
        "{running} running, {provisioning} being made"
    );
}

/// The most instances the project of [`creations`] may have.
const LIMIT: i64 = 30;

const AT: &str = "2026-12-06T00:00:00.000000Z";

/// A group of the project, with no rules.
fn group(project: &str, id: &str) -> SecurityGroupRecord {
    SecurityGroupRecord {
        id: id.into(),
        project_id: project.into(),
        name: id.into(),
        description: String::new(),
        rules: "[]".into(),
        is_default: 0,
        created_at: AT.into(),
        updated_at: AT.into(),
    }
}

/// Records instance `name` in `network` (labelled with it), checked
/// against [`LIMIT`] and driven by this store at once: its address, or why
/// it was refused.
async fn create_in(
    store: &Store,
    project: &str,
    name: &str,
    network: Option<&NewAttachment>,
) -> (String, String, Result<String, String>) {
    let (mut instance, op) = creation_of(project, name);
    let (id, op_id) = (instance.id.clone(), op.id.clone());
    // A label that is not text is kept in the instance's labels, not among
    // those selectors find.
    instance.labels = serde_json::json!({ "app": "web", "name": name, "size": 4 });
    instance.network = network.cloned();
    instance.created_by = Some("alice".into());
    let quota = QuotaCheck {
        project_id: project.into(),
        defaults: Usage {
            instances: LIMIT,
            ..Usage::UNLIMITED
        },
        adds: Usage {
            instances: 1,
            vcpus: 1,
            memory_mb: MEMORY_MB,
            ..Usage::default()
        },
        funds: false,
    };
    let added = store
        .insert_instance(&instance, &op, Some(&quota), Some(LEASE.as_str()))
        .await;
    let answer = match added {
        Ok(InstancesAdded::Recorded {
            instances,
            taken: Some(taken),
        }) => {
            assert_eq!(instances.len(), 1);
            assert_eq!(taken.id, op_id);
            assert_eq!(taken.status, "running");
            assert_eq!(instances[0].id, id);
            Ok(instances[0].private_ip.clone())
        }
        Ok(other) => Err(format!("{other:?}")),
        Err(StoreError::QuotaExceeded(exceeded)) => Err(format!("quota: {exceeded:?}")),
        Err(err) => panic!("{name}: {err}"),
    };
    (id, op_id, answer)
}

/// A VPC of `project` on `block`, with its one subnet, all of `block`, and
/// group `sg-a`: the subnet's id.
async fn new_vpc(store: &Store, project: &str, block: &str) -> String {
    // This process's address hints are by subnet: each run its own.
    let suffix = format!("{:08x}", rand::random::<u32>());
    let (vpc, subnet) = (format!("vpc-{suffix}"), format!("sub-{suffix}"));
    let added = store
        .insert_vpc(&NewVpc {
            vpc: VpcRecord {
                id: vpc.clone(),
                project_id: project.to_string(),
                name: "app".into(),
                cidr: String::new(),
                is_default: 0,
                created_at: AT.into(),
            },
            block: Block::Given(block.parse().expect("a block")),
            subnet: Some(SubnetRecord {
                id: subnet.clone(),
                project_id: project.to_string(),
                vpc_id: vpc.clone(),
                name: "app".into(),
                cidr: String::new(),
                is_default: 0,
                created_at: AT.into(),
            }),
            group: Some(group(project, "sg-a")),
            limit: None,
        })
        .await
        .expect("the write runs");
    assert!(matches!(added, NetworkAdded::Added { .. }), "{added:?}");
    subnet
}

async fn creations(store: &Store, raw: common::Raw) {
    let project = new_project(store, "proj-c", "c").await.id;
    let subnet = new_vpc(store, &project, "10.88.0.0/24").await;
    let suffix = subnet.trim_start_matches("sub-").to_string();
    assert!(
        store
            .insert_security_group(&group(&project, "sg-b"))
            .await
            .expect("a group")
    );
    let network = NewAttachment {
        subnet_id: subnet.clone(),
        subnet_cidr: "10.88.0.0/24".parse().expect("a block"),
        groups: vec!["sg-b".into(), "sg-a".into(), "sg-b".into()],
    };
    // The first learns the subnet's addresses; those after it go together.
    let (_, _, first) = create_in(store, &project, "first", Some(&network)).await;
    assert_eq!(first, Ok("10.88.0.2".to_string()));
    // Three waves at once, each most likely one batch: ten that all fit;
    // five of which another replica took the addresses the hint gives
    // meanwhile, whose creations look for the next free ones; then
    // twice as many as the quota leaves room for, a batch that would
    // exceed it, run call by call: those that pass are recorded whole, the
    // rest not at all.
    let mut made = Vec::new();
    let mut taken = vec!["10.88.0.2".to_string()];
    for (wave, count) in [("a", 10), ("b", 5), ("c", 2 * (LIMIT - 16))] {
        if wave == "b" {
            for address in ["10.88.0.13", "10.88.0.15", "10.88.0.17"] {
                raw.execute(&format!(
                    "INSERT INTO instance_addresses (subnet_id, address, instance_id) \
                     VALUES ('{subnet}', '{address}', 'inst-first')"
                ))
                .await;
                taken.push(address.to_string());
            }
        }
        let names: Vec<String> = (0..count).map(|n| format!("{wave}{n}")).collect();
        made.extend(
            join_all(
                names
                    .iter()
                    .map(|name| create_in(store, &project, name, Some(&network))),
            )
            .await,
        );
    }
    let recorded: Vec<&(String, String, Result<String, String>)> =
        made.iter().filter(|(_, _, made)| made.is_ok()).collect();
    assert_eq!(recorded.len() as i64, LIMIT - 1, "{made:?}");
    let mut addresses: HashSet<String> = taken.into_iter().collect();
    let own = store.own_operations().await.expect("own");
    for (id, op, answer) in &made {
        let instance = store.instance(id).await.expect("read");
        let operation = store.operation(op).await.expect("read");
        let groups = store.instance_security_groups(id).await.expect("read");
        let name = id.trim_start_matches("inst-");
        let labelled = store
            .instances(&InstanceFilter {
                project_id: Some(project.clone()),
                labels: vec![("name".into(), name.into())],
                ..InstanceFilter::default()
            })
            .await
            .expect("a label selector");
        match answer {
            Ok(address) => {
                assert!(
                    addresses.insert(address.clone()),
                    "{id}: {address} given twice"
                );
                assert!(address.starts_with("10.88.0."), "{id}: {address}");
                let instance = instance.expect("written");
                assert_eq!(
                    &instance.private_ip, address,
                    "{id}: the row and the answer"
                );
                assert_eq!(instance.state, "provisioning");
                assert_eq!(instance.operation_id.as_ref(), Some(op));
                let place = store
                    .instance_surroundings(id, &project)
                    .await
                    .expect("read")
                    .place
                    .expect("a place");
                assert_eq!(&place.address, address, "{id}: its network agrees");
                let operation = operation.expect("written");
                assert_eq!(operation.status, "running", "{id}");
                assert!(own.contains(op), "{id}: its operation is this store's");
                assert_eq!(
                    groups.iter().map(|g| g.id.as_str()).collect::<Vec<_>>(),
                    vec!["sg-a", "sg-b"],
                    "{id}: each group once"
                );
                assert_eq!(
                    labelled.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(),
                    vec![id.as_str()],
                    "{id}: found by its label"
                );
            }
            Err(why) => {
                assert!(why.starts_with("quota"), "{id}: {why}");
                assert!(instance.is_none(), "{id}: nothing written");
                assert!(operation.is_none(), "{id}: no operation");
                assert!(groups.is_empty(), "{id}: in no group");
                assert!(labelled.is_empty(), "{id}: no labels");
            }
        }
    }
    let all = store
        .instances(&InstanceFilter {
            project_id: Some(project.clone()),
            ..InstanceFilter::default()
        })
        .await
        .expect("a list");
    assert_eq!(all.len() as i64, LIMIT, "the quota holds");
    let sized = store
        .instances(&InstanceFilter {
            project_id: Some(project.clone()),
            labels: vec![("size".into(), "4".into())],
            ..InstanceFilter::default()
        })
        .await
        .expect("a label selector");
    assert!(
        sized.is_empty(),
        "a label that is not text is not selected on"
    );
    assert_eq!(
        store.subnet_addresses_used(&subnet).await.expect("read"),
        LIMIT + 3,
        "the instances' addresses and the other replica's"
    );
    // Every meter is in, each committed to while its instance is made.
    let balance = store.balance(&project).await.expect("balance");
    assert_eq!(balance.committed_micros_per_hour, PRICE * LIMIT);

    // A project at its quota that keeps creating, beside another's
    // creations at once: its own are refused, the other's recorded.
    let other = new_project(store, &format!("proj-{suffix}"), &format!("d{suffix}")).await;
    let mixed = join_all((0..12).map(|n| {
        let (project, name) = match n % 2 {
            0 => (project.as_str(), format!("full{n}")),
            _ => (other.id.as_str(), format!("{suffix}-{n}")),
        };
        async move { (project, create_in(store, project, &name, None).await) }
    }))
    .await;
    for (owner, (id, _, answer)) in &mixed {
        match *owner == project {
            true => assert!(
                answer.as_ref().is_err_and(|why| why.starts_with("quota")),
                "{id}: {answer:?}"
            ),
            false => assert_eq!(answer, &Ok(String::new()), "{id}: recorded"),
        }
    }
    let others = store
        .instances(&InstanceFilter {
            project_id: Some(other.id.clone()),
            ..InstanceFilter::default()
        })
        .await
        .expect("a list");
    assert_eq!(others.len(), 6, "the other project's, every one");
}

/// A termination frees a shared CPU by the shares it sees once it holds
/// the CPU's host, under whose lock a share is claimed: a share claimed
/// while the termination waited for the host keeps the CPU shared.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_termination_sees_shares_claimed_while_it_waited_on_postgres() {
    use sqlx::Executor;
    let (store, database) = common::postgres("tessera_termination_shares").await;
    let project = new_project(&store, "p-wait", "wait").await;
    let host = ready_host(&store, "wait-1", 2, 64 * 1024).await;
    let leaving = created(&store, &project.id, "leaving", true).await;
    assert!(place_share(&store, &leaving, &host, 0, Some(500)).await);
    let coming = created(&store, &project.id, "coming", true).await;
    let mut watch = common::connect(&database.url).await;
    let mut holder = common::connect(&database.url).await;
    holder.execute("BEGIN").await.expect("a transaction");
    holder
        .execute(format!("SELECT 1 FROM hosts WHERE id = '{host}' FOR NO KEY UPDATE").as_str())
        .await
        .expect("the host's row");
    // The share's claim waits for the host first, the termination after.
    let claim = tokio::spawn({
        let (store, coming, host) = (store.clone(), coming.clone(), host.clone());
        async move { place_share(&store, &coming, &host, 0, Some(500)).await }
    });
    common::lock_waiters(&mut watch, 1).await;
    let ending = tokio::spawn({
        let store = store.clone();
        async move { terminated(&store, &leaving).await }
    });
    common::lock_waiters(&mut watch, 2).await;
    holder.execute("COMMIT").await.expect("a commit");
    assert!(claim.await.expect("the claim"), "coming shares CPU 0");
    assert!(ending.await.expect("the termination"), "leaving ended");
    assert_eq!(
        store.cpu_claims(Some(&host)).await.expect("the ledger"),
        vec![(host.clone(), 0)],
        "CPU 0 is still shared: coming's share is on it"
    );
    assert_eq!(
        store.cpu_shares(Some(&host)).await.expect("shares"),
        vec![(host.clone(), 0, 500)]
    );
    store.close().await;
    database.drop().await;
}

/// A termination takes its project's usage rows before its instance and
/// host, as a creation takes them before anything else: while another
/// transaction holds the usage rows, a termination waiting for them holds
/// neither.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_termination_takes_usage_before_its_instance_and_host_on_postgres() {
    use sqlx::Executor;
    let (store, database) = common::postgres("tessera_termination_order").await;
    let project = new_project(&store, "p-order", "order").await;
    let host = ready_host(&store, "order-1", 2, 64 * 1024).await;
    let leaving = created(&store, &project.id, "leaving", true).await;
    assert!(place(&store, &leaving, &host, 0).await);
    let mut watch = common::connect(&database.url).await;
    // Every shard's row exists, so that the termination locks one.
    watch
        .execute(
            format!(
                "INSERT INTO project_usage (project_id, shard, instances, vcpus, memory_mb, \
                 volumes, volume_gb, containers, ssh_keys) \
                 SELECT '{}', s, 0, 0, 0, 0, 0, 0, 0 FROM generate_series(0, 15) AS s \
                 ON CONFLICT (project_id, shard) DO NOTHING",
                project.id
            )
            .as_str(),
        )
        .await
        .expect("the usage rows");
    let mut holder = common::connect(&database.url).await;
    holder.execute("BEGIN").await.expect("a transaction");
    holder
        .execute(
            format!(
                "SELECT 1 FROM project_usage WHERE project_id = '{}' FOR UPDATE",
                project.id
            )
            .as_str(),
        )
        .await
        .expect("the usage rows");
    let ending = tokio::spawn({
        let store = store.clone();
        let leaving = leaving.clone();
        async move { terminated(&store, &leaving).await }
    });
    let waiting = common::lock_waiter(&mut watch).await;
    assert!(waiting.contains("project_usage"), "{waiting}");
    for row in [
        format!("SELECT 1 FROM hosts WHERE id = '{host}' FOR UPDATE NOWAIT"),
        format!(
            "SELECT 1 FROM instances WHERE id = '{}' FOR UPDATE NOWAIT",
            leaving.0
        ),
    ] {
        watch
            .execute(row.as_str())
            .await
            .unwrap_or_else(|e| panic!("{row}: held while waiting for usage: {e}"));
    }
    holder.execute("COMMIT").await.expect("a commit");
    assert!(ending.await.expect("the termination"), "leaving ended");
    store.close().await;
    database.drop().await;
}

/// Only PostgreSQL has row locks to take in an order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creations_take_usage_before_addresses_on_postgres() {
    let (store, database) = common::postgres("tessera_batches").await;
    usage_first(&store, &database.url).await;
    store.close().await;
    database.drop().await;
}

on_both_stores!(
    a_hosts_memory_counts_instances_moving_in,
    moving_in,
    "tessera_memory_moving_in"
);

/// A host's memory holds what is placed on it, each instance once though
/// the ledger holds its CPUs there too, and what is moving in: an
/// instance placed elsewhere that reserved CPUs on it.
async fn moving_in(store: &Store) {
    let project = new_project(store, "proj-1", "p").await;
    let from = ready_host(store, "from", 4, 1 << 20).await;
    let to = ready_host(store, "to", 4, 2 * MEMORY_MB).await;
    let mover = created(store, &project.id, "mover", true).await;
    assert!(place(store, &mover, &from, 0).await);
    let (id, op) = &mover;
    let reserved = store
        .claim_instance_cpus(
            CpuClaim::MoveTo,
            id,
            (&to, None),
            (&[0], None),
            (op, &steps_of(id), &LEASE),
        )
        .await
        .expect("reserve");
    assert!(reserved, "the mover's memory fits where it moves");
    let first = created(store, &project.id, "first", true).await;
    assert!(
        place(store, &first, &to, 1).await,
        "the mover and this one fill the host, each counted once"
    );
    let second = created(store, &project.id, "second", true).await;
    assert!(
        !place(store, &second, &to, 2).await,
        "the mover's memory is held where it moves"
    );
    assert_eq!(
        store
            .instance(&second.0)
            .await
            .expect("read")
            .expect("there")
            .host_id,
        None
    );
}

/// Creations take their project's usage row before any address or
/// address count, alone and in a batch: while another transaction holds
/// the project's usage rows, a creation waiting for them holds none of its
/// subnet's counts. (Taken the other way round by some creations, two of
/// one project, subnet and shard each held a row the other waited for,
/// until PostgreSQL's deadlock check.)
async fn usage_first(store: &Store, url: &str) {
    use sqlx::Executor;
    let project = new_project(store, "proj-u", "u").await.id;
    let other_project = new_project(store, "proj-v", "v").await.id;
    let subnet = new_vpc(store, &project, "10.89.0.0/24").await;
    let network = NewAttachment {
        subnet_id: subnet.clone(),
        subnet_cidr: "10.89.0.0/24".parse().expect("a block"),
        groups: vec!["sg-a".into()],
    };
    // The first learns the subnet's addresses: those after it try theirs
    // in their statement.
    let (_, _, first) = create_in(store, &project, "first", Some(&network)).await;
    assert_eq!(first, Ok("10.89.0.2".to_string()));
    let connect = || common::connect(url);
    // Every shard's rows exist, so that a creation locks one rather than
    // writing it anew.
    let mut watch = connect().await;
    common::every_count_shard(&mut watch, &subnet).await;
    watch
        .execute(
            format!(
                "INSERT INTO project_usage (project_id, shard, instances, vcpus, memory_mb, \
                 volumes, volume_gb, containers, ssh_keys) \
                 SELECT p, s, 0, 0, 0, 0, 0, 0, 0 FROM generate_series(0, 15) AS s \
                 CROSS JOIN (VALUES ('{project}'), ('{other_project}')) AS v (p) \
                 ON CONFLICT (project_id, shard) DO NOTHING"
            )
            .as_str(),
        )
        .await
        .expect("the counter rows");
    // Another transaction holding `project`'s usage rows.
    let hold = |project: String| async move {
        let mut conn = connect().await;
        conn.execute("BEGIN").await.expect("a transaction");
        conn.execute(
            format!("SELECT 1 FROM project_usage WHERE project_id = '{project}' FOR UPDATE")
                .as_str(),
        )
        .await
        .expect("the project's usage rows");
        conn
    };
    let spawn = |names: Vec<String>, project: String, network: Option<NewAttachment>| {
        let store = store.clone();
        tokio::spawn(async move {
            join_all(
                names
                    .iter()
                    .map(|name| create_in(&store, &project, name, network.as_ref())),
            )
            .await
        })
    };

    // Alone.
    let mut holder = hold(project.clone()).await;
    let alone = spawn(vec!["alone".into()], project.clone(), Some(network.clone()));
    let waiting = common::lock_waiter(&mut watch).await;
    assert!(!waiting.contains("json_to_recordset"), "{waiting}");
    assert_eq!(
        common::counts_unlocked(&mut watch, &subnet).await,
        16,
        "{waiting}"
    );
    holder.execute("COMMIT").await.expect("a commit");
    let mut addresses: HashSet<String> = HashSet::new();
    for (_, _, made) in alone.await.expect("the creation") {
        addresses.insert(made.expect("an address"));
    }

    // In a batch: they gather while a creation of another project, whose
    // usage another transaction holds too, takes the batches' one slot.
    let mut holder = hold(project.clone()).await;
    let mut blocker = hold(other_project.clone()).await;
    let blocked = spawn(vec!["blocker".into()], other_project.clone(), None);
    common::lock_waiter(&mut watch).await;
    let names: Vec<String> = (0..5).map(|n| format!("b{n}")).collect();
    let batched = spawn(names, project.clone(), Some(network.clone()));
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    blocker.execute("COMMIT").await.expect("a commit");
    for (_, _, made) in blocked.await.expect("the creation") {
        made.expect("recorded");
    }
    let waiting = common::lock_waiter(&mut watch).await;
    assert!(waiting.contains("json_to_recordset"), "{waiting}");
    assert_eq!(
        common::counts_unlocked(&mut watch, &subnet).await,
        16,
        "{waiting}"
    );
    holder.execute("COMMIT").await.expect("a commit");
    for (_, _, made) in batched.await.expect("the creations") {
        addresses.insert(made.expect("an address"));
    }
    assert_eq!(addresses.len(), 6, "{addresses:?}");
}
