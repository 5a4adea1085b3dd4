//! A new instance's place on its network is written with it: an address of
//! its subnet (never one another instance holds, even one another replica
//! gave meanwhile) and its security groups. When the subnet or a group is
//! gone by then, nothing is written. On PostgreSQL the first of these
//! writes rides in the instance's own statement; SQLite, one statement at a
//! time, must answer the same.

mod common;

use tessera_core::status::OperationKind;
use tessera_store::{
    Block, InstancesAdded, NetworkAdded, NewAttachment, NewInstance, NewOperation, NewVolume,
    NewVpc, ProjectRecord, SecurityGroupRecord, Store, SubnetRecord, VolumeRecord, VpcRecord,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_join_their_network_on_sqlite() {
    let (store, dir) = common::sqlite().await;
    let path = dir.path().join("tessera.db");
    joins(&store, common::Raw::Sqlite(path.display().to_string())).await;
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_join_their_network_on_postgres() {
    let (store, database) = common::postgres("tessera_networks").await;
    joins(&store, common::Raw::Postgres(database.url.clone())).await;
    store.close().await;
    database.drop().await;
}

/// Only PostgreSQL has transactions in flight beside the store's own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_a_transaction_in_flight_holds_is_passed_over_on_postgres() {
    let (store, database) = common::postgres("tessera_networks").await;
    passes_over_busy_address(&store, &database.url).await;
    store.close().await;
    database.drop().await;
}

/// Only PostgreSQL has transactions in flight beside the store's own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_creation_waits_for_an_address_being_freed_holding_no_count_on_postgres() {
    let (store, database) = common::postgres("tessera_networks").await;
    waits_for_address_freed(&store, &database.url).await;
    store.close().await;
    database.drop().await;
}

const AT: &str = "2026-12-06T00:00:00.000000Z";

fn new_instance(project: &str, name: &str, network: NewAttachment) -> NewInstance {
    NewInstance {
        id: format!("inst-{name}-{:08x}", rand::random::<u32>()),
        project_id: project.into(),
        name: name.into(),
        labels: serde_json::json!({}),
        spec: serde_json::json!({}),
        memory_mb: 1024,
        vcpus: 1,
        micros_per_hour: 0,
        volumes: Vec::new(),
        attach: Vec::new(),
        container: None,
        network: Some(network),
        replica: None,
        created_by: None,
    }
}

/// Records `instances` with one operation: their addresses, or how it was
/// refused.
async fn record(
    store: &Store,
    project: &str,
    instances: &[NewInstance],
) -> Result<Vec<String>, InstancesAdded> {
    let op = NewOperation {
        id: format!("op-{:08x}", rand::random::<u32>()),
        project_id: project.into(),
        kind: OperationKind::ClusterCreate,
        resource_id: None,
        params: serde_json::json!({}),
        created_by: "test".into(),
    };
    match store
        .insert_instances(instances, &op, None, None)
        .await
        .expect("the write runs")
    {
        InstancesAdded::Recorded { instances, .. } => {
            Ok(instances.into_iter().map(|i| i.private_ip).collect())
        }
        refused => Err(refused),
    }
}

/// A new project with a VPC of `block`, its one subnet and group: the
/// project, subnet and group ids.
async fn new_network(store: &Store, block: &str) -> (String, String, String) {
    let project = format!("prj-{:08x}", rand::random::<u32>());
    assert!(
        store
            .insert_project(
                &ProjectRecord {
                    id: project.clone(),
                    name: project.clone(),
                    path: project.clone(),
                    created_at: AT.into(),
                },
                None,
            )
            .await
            .expect("a project")
    );
    let (vpc, subnet, group) = (
        format!("vpc-{project}"),
        format!("sub-{project}"),
        format!("sg-{project}"),
    );
    let added = store
        .insert_vpc(&NewVpc {
            vpc: VpcRecord {
                id: vpc.clone(),
                project_id: project.clone(),
                name: "app".into(),
                cidr: String::new(),
                is_default: 0,
                created_at: AT.into(),
            },
            block: Block::Given(block.parse().expect("a block")),
            subnet: Some(SubnetRecord {
                id: subnet.clone(),
                project_id: project.clone(),
                vpc_id: vpc.clone(),
                name: "app".into(),
                cidr: String::new(),
                is_default: 0,
                created_at: AT.into(),
            }),
            group: Some(SecurityGroupRecord {
                id: group.clone(),
                project_id: project.clone(),
                name: "app".into(),
                description: String::new(),
                rules: "[]".into(),
                is_default: 0,
                created_at: AT.into(),
                updated_at: AT.into(),
            }),
            limit: None,
        })
        .await
        .expect("the write runs");
    assert!(matches!(added, NetworkAdded::Added { .. }), "{added:?}");
    (project, subnet, group)
}

async fn joins(store: &Store, raw: common::Raw) {
    let (project, subnet, group) = new_network(store, "10.77.0.0/28").await;
    let network = |subnet: &str, groups: &[&str]| NewAttachment {
        subnet_id: subnet.into(),
        subnet_cidr: "10.77.0.0/28".parse().expect("a block"),
        groups: groups.iter().map(|g| g.to_string()).collect(),
    };

    // The first instances take the first addresses, and join their group.
    // The first has volumes too, its OS volume and a data volume: what its
    // host is told reads them with the rest.
    let mut first = new_instance(&project, "a", network(&subnet, &[&group]));
    first.volumes = [("vda", 1), ("vdb", 0)]
        .into_iter()
        .map(|(target, os)| NewVolume {
            record: VolumeRecord {
                id: format!("vol-{target}-{}", first.id),
                project_id: project.clone(),
                name: target.into(),
                volume_type: "NVMe".into(),
                size_gb: 5,
                location: "FIN-01".into(),
                status: "attached".into(),
                is_os_volume: os,
                instance_id: Some(first.id.clone()),
                target: Some(target.into()),
                host_id: None,
                created_by: None,
                created_at: AT.into(),
                trashed_at: None,
                purged_at: None,
                deleted_at: None,
                generation: 1,
            },
            micros_per_hour: 0,
        })
        .collect();
    assert_eq!(
        record(store, &project, std::slice::from_ref(&first)).await,
        Ok(vec!["10.77.0.2".to_string()])
    );
    usage_only_from_its_host(store, &raw, &first.id).await;
    let pair = [
        new_instance(&project, "b", network(&subnet, &[&group])),
        new_instance(&project, "c", network(&subnet, &[&group])),
    ];
    assert_eq!(
        record(store, &project, &pair).await,
        Ok(vec!["10.77.0.3".to_string(), "10.77.0.4".to_string()])
    );
    for instance in [&first, &pair[0], &pair[1]] {
        let groups = store
            .instance_security_groups(&instance.id)
            .await
            .expect("a read");
        assert_eq!(
            groups.iter().map(|g| g.id.as_str()).collect::<Vec<_>>(),
            vec![group.as_str()]
        );
        let written = store.instance(&instance.id).await.expect("a read");
        let surroundings = store
            .instance_surroundings(&instance.id, &project)
            .await
            .expect("a read");
        // Its host is told its groups' rules with the rest.
        assert_eq!(surroundings.groups, vec![(group.clone(), "[]".to_string())]);
        assert_eq!(
            surroundings.volumes,
            store.instance_volumes(&instance.id).await.expect("a read")
        );
        assert_eq!(
            surroundings.volumes.len(),
            if instance.id == first.id { 2 } else { 0 }
        );
        let place = surroundings.place.expect("a place");
        assert_eq!(
            written.map(|w| w.private_ip),
            Some(place.address),
            "the row and the network agree"
        );
    }

    // Another replica gives the next address meanwhile: this one takes
    // the one after.
    raw.execute(&format!(
        "INSERT INTO instance_addresses (subnet_id, address, instance_id) \
         VALUES ('{subnet}', '10.77.0.5', '{}')",
        first.id
    ))
    .await;
    let after = new_instance(&project, "d", network(&subnet, &[&group]));
    assert_eq!(
        record(store, &project, std::slice::from_ref(&after)).await,
        Ok(vec!["10.77.0.6".to_string()])
    );

    // A subnet or group gone by then: nothing is written, and no address
    // is used up.
    for gone in [
        new_instance(&project, "e", network("sub-gone", &[&group])),
        new_instance(&project, "f", network(&subnet, &[&group, "sg-gone"])),
    ] {
        assert_eq!(
            record(store, &project, std::slice::from_ref(&gone)).await,
            Err(InstancesAdded::NetworkGone)
        );
        assert!(
            store.instance(&gone.id).await.expect("a read").is_none(),
            "{} was not written",
            gone.id
        );
        assert!(
            store
                .instance_security_groups(&gone.id)
                .await
                .expect("a read")
                .is_empty()
        );
    }
    // The subnet fills up: 13 addresses in a /28, five of them given.
    let mut given = Vec::new();
    for n in 0..8 {
        let next = new_instance(&project, &format!("g{n}"), network(&subnet, &[]));
        given.extend(
            record(store, &project, std::slice::from_ref(&next))
                .await
                .expect("an address"),
        );
        let surroundings = store
            .instance_surroundings(&next.id, &project)
            .await
            .expect("a read");
        assert!(surroundings.groups.is_empty(), "{:?}", surroundings.groups);
    }
    // Each once, in whatever order: on PostgreSQL the refused creation
    // above tried the next address in its statement, and a creation takes
    // an address passed over like that once the subnet's end is reached.
    let mut given: Vec<u32> = given
        .iter()
        .map(|a| u32::from(a.parse::<std::net::Ipv4Addr>().expect("an address")) & 0xff)
        .collect();
    given.sort_unstable();
    assert_eq!(given, (7..=14).collect::<Vec<u32>>());
    let full = new_instance(&project, "h", network(&subnet, &[]));
    assert_eq!(
        record(store, &project, std::slice::from_ref(&full)).await,
        Err(InstancesAdded::SubnetFull(subnet.clone()))
    );
    assert!(store.instance(&full.id).await.expect("a read").is_none());
}

/// A creation whose address search meets an address that another
/// transaction, still in flight, has just given takes the next one rather
/// than wait: by then it holds its project's usage row and its subnet's
/// count, which that transaction may be about to wait for (a deadlock).
async fn passes_over_busy_address(store: &Store, url: &str) {
    use sqlx::Executor;
    let (project, subnet, _) = new_network(store, "10.78.0.0/28").await;
    // An instance of the project with no network, for the other
    // transaction's address to belong to.
    let mut holder = new_instance(&project, "holder", network_of(&subnet));
    holder.network = None;
    record(store, &project, std::slice::from_ref(&holder))
        .await
        .expect("an instance");
    // Another replica gives the subnet's first address and has not
    // committed: this process has not looked at the subnet yet, so its
    // search reads the used addresses (none it can see) and starts there.
    let mut other = common::connect(url).await;
    other.execute("BEGIN").await.expect("a transaction");
    give_address(&mut other, &subnet, "10.78.0.2", &holder.id).await;
    let next = new_instance(&project, "next", network_of(&subnet));
    let recorded = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        record(store, &project, std::slice::from_ref(&next)),
    )
    .await
    .expect("the creation waited for the transaction in flight");
    assert_eq!(recorded, Ok(vec!["10.78.0.3".to_string()]));
    other.execute("COMMIT").await.expect("the other commits");
    // The subnet counts both, the one in flight once it committed.
    assert_eq!(
        store.subnet_addresses_used(&subnet).await.expect("a read"),
        2
    );
}

/// A creation whose address another transaction is freeing (an instance
/// of another replica ending) waits for that transaction while holding
/// none of its subnet's counts, which the one freeing it takes as its
/// delete ends (the lock order ARCHITECTURE.md gives: usage row, then
/// addresses, then counts), and gets the address once it is free.
async fn waits_for_address_freed(store: &Store, url: &str) {
    use sqlx::Executor;
    let (project, subnet, _) = new_network(store, "10.78.0.0/28").await;
    let mut watch = common::connect(url).await;
    common::every_count_shard(&mut watch, &subnet).await;
    // This process learns the subnet: its first instance gets .2, and its
    // next creation will try .3.
    let first = new_instance(&project, "first", network_of(&subnet));
    let given = record(store, &project, std::slice::from_ref(&first)).await;
    assert_eq!(given, Ok(vec!["10.78.0.2".to_string()]));
    // Another replica gave .3 to an instance of its own, and is ending
    // that instance now: the address is being freed, not yet free.
    let mut other = new_instance(&project, "other", network_of(&subnet));
    other.network = None;
    record(store, &project, std::slice::from_ref(&other))
        .await
        .expect("an instance");
    let mut ending = common::connect(url).await;
    give_address(&mut ending, &subnet, "10.78.0.3", &other.id).await;
    ending.execute("BEGIN").await.expect("a transaction");
    ending
        .execute(
            format!(
                "DELETE FROM instance_addresses WHERE instance_id = '{}'",
                other.id
            )
            .as_str(),
        )
        .await
        .expect("the address freed in flight");
    assert_eq!(common::counts_unlocked(&mut watch, &subnet).await, 15);
    let next = new_instance(&project, "next", network_of(&subnet));
    let creating = {
        let (store, project) = (store.clone(), project.clone());
        tokio::spawn(async move { record(&store, &project, std::slice::from_ref(&next)).await })
    };
    let waiting = common::lock_waiter(&mut watch).await;
    assert!(waiting.contains("INSERT INTO instances"), "{waiting}");
    assert_eq!(
        common::counts_unlocked(&mut watch, &subnet).await,
        15,
        "the creation holds none of the counts while it waits"
    );
    ending.execute("COMMIT").await.expect("a commit");
    let given = creating.await.expect("the creation");
    assert_eq!(given, Ok(vec!["10.78.0.3".to_string()]));
    assert_eq!(
        store.subnet_addresses_used(&subnet).await.expect("a read"),
        2
    );
}

/// Gives `address` of `subnet` to `instance` on `conn`, as another
/// replica does.
async fn give_address(conn: &mut sqlx::PgConnection, subnet: &str, address: &str, instance: &str) {
    use sqlx::Executor;
    conn.execute(
        format!(
            "INSERT INTO instance_addresses (subnet_id, address, instance_id) \
             VALUES ('{subnet}', '{address}', '{instance}')"
        )
        .as_str(),
    )
    .await
    .expect("an address given by another replica");
}

fn network_of(subnet: &str) -> NewAttachment {
    NewAttachment {
        subnet_id: subnet.into(),
        subnet_cidr: "10.78.0.0/28".parse().expect("a block"),
        groups: Vec::new(),
    }
}

/// What a host reports of an instance is kept only when the instance is on
/// that host: another host's report of it, or of an instance that does not
/// exist, leaves nothing (a host's credential writes its own instances'
/// figures alone, which the containers API shows and the scaler reads).
async fn usage_only_from_its_host(store: &Store, raw: &common::Raw, instance: &str) {
    let home = common::ready_host(store, "usage-home", 4, 8192, Vec::new()).await;
    let other = common::ready_host(store, "usage-other", 4, 8192, Vec::new()).await;
    raw.execute(&format!(
        "UPDATE instances SET host_id = '{home}' WHERE id = '{instance}'"
    ))
    .await;
    let usage = |id: &str, memory: u64| tessera_store::InstanceUsage {
        instance_id: id.into(),
        running: true,
        detail: None,
        memory_used_bytes: Some(memory),
        storage_used_bytes: None,
        cpu_percent: Some(100),
        observed_at: AT.into(),
    };
    let forged = store
        .record_instance_usage(&other, &[usage(instance, 7 << 30)])
        .await
        .expect("recorded");
    assert_eq!(forged, [false]);
    assert!(
        store
            .instance_usage(instance)
            .await
            .expect("read")
            .is_none()
    );
    let reported = store
        .record_instance_usage(
            &home,
            &[usage(instance, 50 << 20), usage("inst-made-up", 1)],
        )
        .await
        .expect("recorded");
    assert_eq!(reported, [true, false]);
    let kept = store
        .instance_usage(instance)
        .await
        .expect("read")
        .expect("kept");
    assert_eq!(kept.memory_used_bytes, Some(50 << 20));
    assert!(
        store
            .instance_usage("inst-made-up")
            .await
            .expect("read")
            .is_none()
    );
}
