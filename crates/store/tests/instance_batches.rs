//! Instances placed and their creations ended by many callers at once mean
//! what each means alone. On PostgreSQL the store gathers such calls into
//! one statement (its `instance_batches` module); these tests make them
//! concurrently, so that most go in batches, including ones refused as a
//! whole (two placements on one CPU, a host's memory run out) and run again
//! call by call. SQLite, which runs them one by one in its writer, must
//! answer the same.

mod common;

use futures::future::join_all;
use std::collections::{HashMap, HashSet};
use tessera_core::status::{HostStatus, InstanceState, OperationKind, OperationStatus};
use tessera_store::{
    CpuClaim, InstanceUpdate, InstancesAdded, NewHost, NewInstance, NewOperation, OperationEnd,
    ProjectRecord, Store,
};

/// What each instance costs an hour while it runs.
const PRICE: i64 = 3_600;

/// Each instance's memory, and how many of them the small host holds.
const MEMORY_MB: i64 = 1024;
const SMALL_HOLDS: usize = 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn placements_and_settlements_at_once_on_sqlite() {
    let (store, _dir) = common::sqlite().await;
    at_once(&store).await;
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn placements_and_settlements_at_once_on_postgres() {
    let (store, database) = common::postgres("tessera_instance_batches").await;
    at_once(&store).await;
    store.close().await;
    database.drop().await;
}

/// A READY host of `cpus` CPUs and `memory_mb`, no units: a pooled host.
async fn ready_host(store: &Store, name: &str, cpus: u32, memory_mb: i64) -> String {
    let id = format!("id-{name}");
    let host = NewHost {
        id: id.clone(),
        hostname: name.into(),
        ip: "192.0.2.1".into(),
        region: "r".into(),
        zone: "z".into(),
        cpu_ranges: vec![format!("0-{}", cpus - 1)],
        numa_nodes: vec![],
        memory_mb,
        units: vec![],
        cpus: None,
        provider: None,
        plan: None,
        tags: vec![],
        arch: "amd64".into(),
    };
    assert!(store.insert_host(&host).await.expect("insert the host"));
    let ready = store
        .transition_host(&id, &[HostStatus::Initializing], HostStatus::Ready, None)
        .await
        .expect("make the host READY");
    assert!(ready);
    id
}

/// A new instance `name` and its creation, taken by this store (`taken`)
/// or left pending for anyone: `(instance, operation)`.
async fn created(store: &Store, project: &str, name: &str, taken: bool) -> (String, String) {
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
        id: op_id.clone(),
        project_id: project.into(),
        kind: OperationKind::InstanceCreate,
        resource_id: Some(id.clone()),
        params: serde_json::json!({ "instance_id": id }),
        created_by: "alice".into(),
    };
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
    let project = ProjectRecord {
        id: "proj-1".into(),
        name: "p".into(),
        path: "p".into(),
        created_at: tessera_store::now(),
    };
    assert!(store.insert_project(&project, None).await.expect("project"));
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
    // batches commit; then those refused, whose batches fail as a whole
    // and run again call by call.
    let (first, then): (Vec<usize>, Vec<usize>) =
        (0..wants.len()).partition(|&n| (n < 12) || pending.contains(&wants[n].0.0));
    let mut placed = vec![false; wants.len()];
    for wave in [first, then] {
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
