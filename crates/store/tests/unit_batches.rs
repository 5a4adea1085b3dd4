//! Kloigos unit writes made by many callers at once mean what each means
//! alone. On PostgreSQL the store gathers such calls into one statement
//! (its `batch` module); these tests make them concurrently, so that most
//! go in batches, including ones that fail as a whole (two claims of one
//! CPU) and are run again call by call. SQLite, which runs them one by one
//! in its writer, must answer the same.

mod common;

use futures::future::join_all;
use std::collections::HashSet;
use tessera_core::status::{HostStatus, UnitStatus};
use tessera_store::{NewUnit, Store, UnitClaim};

/// Units on each host, one CPU each.
const UNITS: u32 = 48;

on_both_stores!(unit_writes_at_once, writes_at_once, "tessera_batches");

on_both_stores!(
    a_units_meter_runs_while_allocated,
    metered_allocations,
    "tessera_unit_meters"
);

#[tokio::test]
async fn units_allocated_before_meters_get_one_on_sqlite() {
    let (store, dir) = common::sqlite().await;
    let path = dir.path().join("tessera.db");
    unmetered_units(&store, common::Raw::Sqlite(path.display().to_string())).await;
    store.close().await;
}

#[tokio::test]
async fn units_allocated_before_meters_get_one_on_postgres() {
    let (store, database) = common::postgres("tessera_unmetered_units").await;
    unmetered_units(&store, common::Raw::Postgres(database.url.clone())).await;
    store.close().await;
    database.drop().await;
}

/// A unit ALLOCATED without a meter (allocated before units were
/// metered) gets one, running from then at its CPUs times the price; one
/// that has one, or is not a tenant's, gets none, and a second pass
/// meters nothing.
async fn unmetered_units(store: &Store, raw: common::Raw) {
    projects_and_price(store).await;
    let host = ready_host(store, "um1").await;
    for cpu in [1, 2] {
        let unit = unit_id("um1", cpu);
        let generation = claim_for(store, "p1", &host, &unit, cpu)
            .await
            .expect("claimed");
        allocated(store, &unit, generation).await;
    }
    assert_eq!(metered(store).await.0, 2 * PRICE);
    // As before migration 0052: unit 1 has no meter.
    raw.execute(&format!(
        "DELETE FROM meters WHERE resource_id LIKE 'unit:{}@%'",
        unit_id("um1", 1)
    ))
    .await;
    assert_eq!(metered(store).await.0, PRICE);
    assert_eq!(store.meter_unmetered_units().await.expect("metered"), 1);
    assert_eq!(metered(store).await.0, 2 * PRICE);
    assert_eq!(store.meter_unmetered_units().await.expect("metered"), 0);
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    assert!(metered(store).await.1 >= 2 * 20, "both run");
}

/// A unit allocated, deallocated and allocated again: a meter per
/// allocation, running only while the unit is ALLOCATED, at its CPUs
/// times the price set when it started.
async fn metered_allocations(store: &Store) {
    projects_and_price(store).await;
    let host = ready_host(store, "m1").await;
    let unit = unit_id("m1", 3);
    let mut charged = 0;
    for round in 0..2 {
        let generation = claim_for(store, "p1", &host, &unit, 3)
            .await
            .expect("claimed");
        // Being allocated, it counts at its price, before its meter runs.
        assert_eq!(
            metered(store).await,
            (PRICE, charged),
            "round {round}: allocating"
        );
        allocated(store, &unit, generation).await;
        assert_eq!(metered(store).await.0, PRICE, "round {round}: allocated");
        tokio::time::sleep(std::time::Duration::from_millis(30)).await;
        let begun = store
            .begin_unit_release(&unit, Some("p1"), "2100-01-01T00:00:00Z")
            .await
            .expect("begun")
            .expect("deallocating");
        let (committed, spent) = metered(store).await;
        assert_eq!(committed, 0, "round {round}: deallocating");
        // 30 ms at a millionth per millisecond (and what the statements
        // between took).
        assert!(
            (charged + 30..charged + 5_000).contains(&spent),
            "round {round}: charged {spent} after {charged}"
        );
        charged = spent;
        assert!(
            store
                .release_unit(&unit, begun.generation, Some("p1"))
                .await
                .expect("released")
        );
        assert_eq!(metered(store).await, (0, charged), "round {round}: free");
    }
    // A price set later holds for allocations that start after it.
    store.set_unit_price(2 * PRICE).await.expect("the price");
    let generation = claim_for(store, "p3", &host, &unit, 3)
        .await
        .expect("claimed");
    allocated(store, &unit, generation).await;
    assert_eq!(metered(store).await.0, 2 * PRICE);
    // The ended allocations' meters fold into p1's balance, which reads
    // the same; p3's running one stays a meter, and a second fold finds
    // nothing.
    let p1 = store.balance("p1").await.expect("balance");
    assert_eq!(p1.spent_micros, charged);
    assert_eq!(store.fold_meters().await.expect("fold"), 1);
    assert_eq!(store.balance("p1").await.expect("balance"), p1);
    assert_eq!(store.fold_meters().await.expect("fold"), 0);
    assert_eq!(store.balance("p1").await.expect("balance"), p1);
    assert_eq!(metered(store).await.0, 2 * PRICE);
}

/// Moves an ALLOCATING unit at `generation` to ALLOCATED.
async fn allocated(store: &Store, unit: &str, generation: i64) {
    store
        .transition_unit(
            unit,
            generation,
            &[UnitStatus::Allocating],
            UnitStatus::Allocated,
            None,
            None,
        )
        .await
        .expect("moved")
        .expect("allocated");
}

fn unit_id(host: &str, cpu: u32) -> String {
    format!("{host}-u{cpu}")
}

/// A READY host `name` with [`UNITS`] units, CPU `i` in unit `i`, and one
/// more unit (`{name}-dup`) over CPU 0, which only one of it and unit 0
/// can hold at a time.
async fn ready_host(store: &Store, name: &str) -> String {
    let mut units: Vec<NewUnit> = (0..UNITS)
        .map(|cpu| NewUnit {
            compute_id: unit_id(name, cpu),
            cpu_range: format!("{cpu}-{cpu}"),
            cpu_list: cpu.to_string(),
            cpu_count: 1,
            ports_range: "10000-10099".into(),
        })
        .collect();
    units.push(NewUnit {
        compute_id: format!("{name}-dup"),
        cpu_range: "0-0".into(),
        cpu_list: "0".into(),
        cpu_count: 1,
        ports_range: "10100-10199".into(),
    });
    common::ready_host(store, name, UNITS, 1024, units).await
}

/// The projects the claims are for, so that a batch holds several (each
/// batch's usage rows are taken in their order).
const PROJECTS: [&str; 3] = ["p1", "p3", "p4"];

async fn claim(store: &Store, host_id: &str, compute_id: &str, cpu: u32) -> Option<i64> {
    let project = PROJECTS[cpu as usize % PROJECTS.len()];
    claim_for(store, project, host_id, compute_id, cpu).await
}

/// Instances and vCPUs the [`PROJECTS`] use, in all.
async fn used(store: &Store) -> (i64, i64) {
    let mut total = (0, 0);
    for project in PROJECTS {
        let usage = store.project_usage(project).await.expect("usage");
        total = (total.0 + usage.instances, total.1 + usage.vcpus);
    }
    total
}

/// What a Kloigos unit costs per CPU and hour in these tests: a
/// millionth of the currency per millisecond, so that what a meter
/// charges shows after a few of them.
const PRICE: i64 = 3_600_000;

/// Makes the [`PROJECTS`] (a meter names its project) and sets the units'
/// price.
async fn projects_and_price(store: &Store) {
    for id in PROJECTS {
        let project = tessera_store::ProjectRecord {
            id: id.into(),
            name: id.into(),
            path: id.into(),
            created_at: tessera_store::now(),
        };
        store
            .insert_project(&project, None)
            .await
            .expect("a project");
    }
    store.set_unit_price(PRICE).await.expect("the price");
}

/// What the [`PROJECTS`] are committed to per hour, and have spent, in all.
async fn metered(store: &Store) -> (i64, i64) {
    let mut total = (0, 0);
    for project in PROJECTS {
        let balance = store.balance(project).await.expect("balance");
        total.0 += balance.committed_micros_per_hour;
        total.1 += balance.spent_micros;
    }
    total
}

async fn claim_for(
    store: &Store,
    project_id: &str,
    host_id: &str,
    compute_id: &str,
    cpu: u32,
) -> Option<i64> {
    store
        .claim_unit(&UnitClaim {
            compute_id,
            host_id,
            cpus: &[cpu],
            ssh_public_key: "ssh-ed25519 AAAA test",
            tags: None,
            deadline: "2100-01-01T00:00:00Z",
            project_id,
            quota: tessera_store::ClaimQuota::NoOwnLimit,
        })
        .await
        .expect("a claim answers")
        .map(|unit| {
            // The unit as claimed, with its host's fields.
            assert_eq!(unit.compute_id, compute_id);
            assert_eq!(unit.status, UnitStatus::Allocating);
            assert_eq!(unit.hostname, host_id["id-".len()..]);
            assert_eq!(unit.project_id.as_deref(), Some(project_id));
            assert_eq!(
                unit.ssh_public_key.as_deref(),
                Some("ssh-ed25519 AAAA test")
            );
            assert_eq!(unit.cpu_list, cpu.to_string());
            unit.generation
        })
}

async fn status_of(store: &Store, compute_id: &str) -> (UnitStatus, i64) {
    let unit = store
        .unit(compute_id)
        .await
        .expect("read")
        .expect("the unit");
    (unit.status, unit.generation)
}

async fn writes_at_once(store: &Store) {
    projects_and_price(store).await;
    let hosts = [ready_host(store, "b1").await, ready_host(store, "b2").await];

    // Every unit of the first host claimed at once, each twice: each goes
    // to one claim. Then the second host's, and the extra units over CPU 0
    // of both: of the second host's unit 0 and its extra unit, exactly one
    // is claimed (the batch of claims fails as a whole on the ledger, and
    // its claims run again one by one); the first host's extra unit loses
    // to its unit 0, claimed already.
    let round = |host: &str, dup: bool| {
        let name = &host[3..];
        let mut claims: Vec<(String, String, u32)> = (0..UNITS)
            .flat_map(|cpu| [cpu, cpu])
            .map(|cpu| (host.to_string(), unit_id(name, cpu), cpu))
            .collect();
        if dup {
            claims.push((host.to_string(), format!("{name}-dup"), 0));
        }
        claims
    };
    let first = round(&hosts[0], false);
    let mut answers = join_all(first.iter().map(|(h, u, cpu)| claim(store, h, u, *cpu))).await;
    let mut second = round(&hosts[1], true);
    second.push((hosts[0].clone(), "b1-dup".into(), 0));
    answers.extend(join_all(second.iter().map(|(h, u, cpu)| claim(store, h, u, *cpu))).await);
    let claims: Vec<_> = first.into_iter().chain(second).collect();
    assert_eq!(answers.last(), Some(&None), "b1-dup took a CPU held");
    let mut won: Vec<(String, i64)> = Vec::new();
    for ((_, unit, _), answer) in claims.iter().zip(&answers) {
        if let Some(generation) = answer {
            assert!(
                !won.iter().any(|(w, _)| w == unit),
                "{unit} was claimed twice"
            );
            won.push((unit.clone(), *generation));
        }
    }
    assert_eq!(
        won.len(),
        2 * UNITS as usize,
        "one claim of each CPU: {won:?}"
    );
    for (unit, generation) in &won {
        assert_eq!(
            status_of(store, unit).await,
            (UnitStatus::Allocating, *generation)
        );
    }
    let ledger = store.cpu_claims(None).await.expect("the ledger");
    assert_eq!(ledger.len(), 2 * UNITS as usize);
    let units = i64::from(2 * UNITS);
    assert_eq!(used(store).await, (units, units), "each unit counted once");
    // Not metered while allocating, but counted in what the projects are
    // committed to, at the price.
    assert_eq!(
        metered(store).await,
        (units * PRICE, 0),
        "counted, not metered, while allocating"
    );
    assert_eq!(ledger.iter().collect::<HashSet<_>>().len(), ledger.len());

    // A deallocation does not begin in one write while a unit is being
    // allocated.
    let begun = join_all(
        won.iter()
            .map(|(unit, _)| store.begin_unit_release(unit, None, "2100-01-01T00:00:00Z")),
    )
    .await;
    for ((unit, _), answer) in won.iter().zip(begun) {
        assert!(
            answer.expect("a start answers").is_none(),
            "{unit} began its release while ALLOCATING"
        );
    }

    // Each ALLOCATING unit moved on twice at once, and once more at a
    // generation it no longer has: one move each.
    let mut steps = Vec::new();
    for (unit, generation) in &won {
        steps.push((unit.clone(), *generation));
        steps.push((unit.clone(), *generation));
        steps.push((unit.clone(), generation - 1));
    }
    let moved = join_all(steps.iter().map(|(unit, generation)| {
        store.transition_unit(
            unit,
            *generation,
            &[UnitStatus::Allocating],
            UnitStatus::Allocated,
            None,
            None,
        )
    }))
    .await;
    let mut allocated: Vec<(String, i64)> = Vec::new();
    for ((unit, generation), answer) in steps.iter().zip(moved) {
        if let Some(new) = answer.expect("a move answers") {
            assert_eq!(new, generation + 1);
            assert!(
                !allocated.iter().any(|(a, _)| a == unit),
                "{unit} moved twice"
            );
            allocated.push((unit.clone(), new));
        }
    }
    assert_eq!(allocated.len(), won.len());
    assert_eq!(
        metered(store).await.0,
        units * PRICE,
        "each unit metered once it is allocated"
    );
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    // A move at a generation a unit had before is refused, whatever else
    // matches.
    let stale = join_all(won.iter().map(|(unit, generation)| {
        store.transition_unit(
            unit,
            *generation,
            &[UnitStatus::Allocated],
            UnitStatus::AllocationFail,
            Some("stale"),
            None,
        )
    }))
    .await;
    for ((unit, _), answer) in won.iter().zip(stale) {
        assert_eq!(
            answer.expect("a move answers"),
            None,
            "{unit} moved from a stale generation"
        );
    }

    // Half of the units begin their deallocation in one write: asked for
    // another project, none does; asked for their own and for anyone, at
    // once, each begins once.
    let (starting, allocated) = allocated.split_at(allocated.len() / 2);
    let mut owners = Vec::new();
    for (unit, _) in starting {
        let record = store.unit(unit).await.expect("read").expect("the unit");
        owners.push(record.project_id.expect("held"));
    }
    let others = join_all(starting.iter().zip(&owners).map(|((unit, _), owner)| {
        let other = PROJECTS.iter().find(|p| **p != owner).expect("another");
        store.begin_unit_release(unit, Some(other), "2100-01-01T00:00:00Z")
    }))
    .await;
    for ((unit, _), answer) in starting.iter().zip(others) {
        assert!(
            answer.expect("a start answers").is_none(),
            "{unit} began its release for another project"
        );
    }
    let begun = join_all(starting.iter().zip(&owners).flat_map(|((unit, _), owner)| {
        [Some(owner.as_str()), None]
            .map(|project| store.begin_unit_release(unit, project, "2100-01-01T00:00:00Z"))
    }))
    .await;
    let mut releasing: Vec<(String, i64)> = Vec::new();
    for (i, answer) in begun.into_iter().enumerate() {
        let (unit, generation) = &starting[i / 2];
        if let Some(moved) = answer.expect("a start answers") {
            assert_eq!(&moved.compute_id, unit);
            assert_eq!(moved.status, UnitStatus::Deallocating);
            assert_eq!(moved.generation, generation + 1);
            assert_eq!(moved.hostname, moved.host_id["id-".len()..]);
            assert_eq!(moved.deadline.as_deref(), Some("2100-01-01T00:00:00Z"));
            assert!(
                !releasing.iter().any(|(r, _)| r == unit),
                "{unit} began its release twice"
            );
            releasing.push((unit.clone(), moved.generation));
        }
    }
    assert_eq!(releasing.len(), starting.len());

    // Asked for anyone alone (an operator's deallocation), a unit begins
    // too.
    let (anyones, allocated) = allocated.split_at(2);
    for (unit, generation) in anyones {
        let moved = store
            .begin_unit_release(unit, None, "2100-01-01T00:00:00Z")
            .await
            .expect("a start answers")
            .unwrap_or_else(|| panic!("{unit} did not begin for anyone"));
        assert_eq!(moved.generation, generation + 1);
        releasing.push((unit.clone(), moved.generation));
    }

    // The others from ALLOCATED to DEALLOCATING, with a `from` they are
    // not in as well.
    let moved = join_all(allocated.iter().flat_map(|(unit, generation)| {
        [
            store.transition_unit(
                unit,
                *generation,
                &[UnitStatus::Allocating],
                UnitStatus::AllocationFail,
                Some("not from here"),
                None,
            ),
            store.transition_unit(
                unit,
                *generation,
                &[UnitStatus::Allocated, UnitStatus::AllocationFail],
                UnitStatus::Deallocating,
                None,
                Some("2100-01-01T00:00:00Z"),
            ),
        ]
    }))
    .await;
    for (i, answer) in moved.into_iter().enumerate() {
        let (unit, generation) = &allocated[i / 2];
        match (i % 2, answer.expect("a move answers")) {
            (0, None) => {}
            (1, Some(new)) => releasing.push((unit.clone(), new)),
            (which, answer) => panic!("{unit} at {generation}: move {which} answered {answer:?}"),
        }
    }
    for (unit, generation) in &releasing {
        assert_eq!(
            status_of(store, unit).await,
            (UnitStatus::Deallocating, *generation)
        );
    }
    // Each meter stopped as its deallocation began, with what it charged.
    let (committed, spent) = metered(store).await;
    assert_eq!(committed, 0, "no meter runs once deallocations began");
    assert!(spent >= units, "each unit charged a millisecond at least");
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    assert_eq!(
        metered(store).await,
        (0, spent),
        "stopped meters charge no more"
    );

    // The second host leaves READY: its units go back UNAVAILABLE, the
    // first's FREE. Each release is asked twice, and once at a generation
    // the unit no longer has.
    assert!(
        store
            .transition_host(&hosts[1], &[HostStatus::Ready], HostStatus::Draining, None)
            .await
            .expect("drain")
    );
    let mut releases = Vec::new();
    for (unit, generation) in &releasing {
        let record = store.unit(unit).await.expect("read").expect("the unit");
        let project = record.project_id;
        releases.push((unit.clone(), *generation, project.clone()));
        releases.push((unit.clone(), *generation, project.clone()));
        releases.push((unit.clone(), generation - 1, project));
    }
    let freed = join_all(releases.iter().map(|(unit, generation, project)| {
        store.release_unit(unit, *generation, project.as_deref())
    }))
    .await;
    let mut released = HashSet::new();
    for ((unit, _, _), answer) in releases.iter().zip(freed) {
        if answer.expect("a release answers") {
            assert!(released.insert(unit.clone()), "{unit} released twice");
        }
    }
    assert_eq!(released.len(), releasing.len());
    for (unit, generation) in &releasing {
        let expected = if unit.starts_with("b1") {
            UnitStatus::Free
        } else {
            UnitStatus::Unavailable
        };
        assert_eq!(status_of(store, unit).await, (expected, generation + 1));
        let record = store.unit(unit).await.expect("read").expect("the unit");
        assert_eq!(record.project_id, None);
        assert_eq!(record.ssh_public_key, None);
    }
    assert!(store.cpu_claims(None).await.expect("the ledger").is_empty());
    assert_eq!(used(store).await, (0, 0), "each unit uncounted once");
    assert_eq!(metered(store).await, (0, spent), "released: nothing more");

    // A claim that counts nothing is not made for a project with a limit
    // of its own, alone or with others; the others' are.
    let limited = tessera_store::ProjectRecord {
        id: "p2".into(),
        name: "limited".into(),
        path: "limited".into(),
        created_at: tessera_store::now(),
    };
    assert!(
        store
            .insert_project(&limited, None)
            .await
            .expect("a project")
    );
    let limit = tessera_store::QuotaOverrides {
        vcpus: Some(100),
        ..Default::default()
    };
    store
        .set_project_quota("p2", &limit)
        .await
        .expect("a quota");
    let units: Vec<String> = (0..UNITS).map(|cpu| unit_id("b1", cpu)).collect();
    let answers = join_all(units.iter().zip(0..).map(|(unit, cpu)| {
        let project = if cpu % 2 == 0 { "p1" } else { "p2" };
        claim_for(store, project, &hosts[0], unit, cpu)
    }))
    .await;
    for (cpu, answer) in answers.iter().enumerate() {
        assert_eq!(answer.is_some(), cpu % 2 == 0, "CPU {cpu}: {answer:?}");
    }
}
