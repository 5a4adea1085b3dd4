//! Pulls from a real registry on localhost (Debian's `docker-registry`,
//! which `scripts/test-packages` installs), holding images these tests
//! build and push themselves: layers with whiteouts, a layer two images
//! share, pulls by tag and by digest, through a mirror, a blob tampered
//! with in the registry's storage, and a private registry behind a user
//! name and password. Without the registry they skip, saying why.

use super::registry::{Mirror, Progress, PullOptions, pull_image};
use crate::drivers::instances::InstanceRuntime;
use crate::testkit::{Registry, go_arch};
use oci_client::Reference;
use oci_client::client::{Config, ImageLayer};
use oci_client::secrets::RegistryAuth;
use std::path::Path;

fn skip_reason() -> Option<String> {
    crate::testkit::registry_missing()
}

/// Pulls, collecting what it said.
async fn pull(
    dir: &Path,
    name: &str,
    reference: &str,
    options: &PullOptions,
) -> Result<Vec<Progress>, String> {
    let mut said = Vec::new();
    let mut progress = |p: Progress| said.push(p);
    pull_image(dir, name, reference, options, &mut progress)
        .await
        .map_err(|e| e.to_string())?;
    Ok(said)
}

fn fetched(said: &[Progress]) -> usize {
    said.iter()
        .filter(|p| matches!(p, Progress::Fetched { .. }))
        .count()
}

fn cached(said: &[Progress]) -> usize {
    said.iter()
        .filter(|p| matches!(p, Progress::Cached { .. }))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_are_pulled_checked_and_shared() {
    if let Some(reason) = skip_reason() {
        eprintln!("skipped: {reason}");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let registry = Registry::start(&dir.path().join("open"), None).await;
    let anonymous = RegistryAuth::Anonymous;
    let base: &[(&str, &[u8])] = &[
        ("etc/hello", b"hello\n"),
        ("etc/gone", b"x"),
        ("bin/app", b"#!/bin/sh\n"),
    ];
    let over: &[(&str, &[u8])] = &[("etc/.wh.gone", b""), ("etc/new", b"new\n")];
    let digest = registry
        .push("team/app", "v1", &[base, over], &anonymous)
        .await;
    registry
        .push(
            "team/other",
            "v1",
            &[base, &[("etc/other", b"o\n")]],
            &anonymous,
        )
        .await;
    registry
        .push("library/app", "v1", &[base, over], &anonymous)
        .await;
    let images = dir.path().join("images");
    let options = PullOptions {
        plain_http: vec![registry.addr.clone()],
        ..PullOptions::default()
    };

    // By tag: every blob fetched, the layers applied in order, whiteouts
    // honoured, the config's command kept, and where it came from.
    let reference = format!("{}/team/app:v1", registry.addr);
    let said = pull(&images, "app", &reference, &options)
        .await
        .expect("pull");
    assert_eq!(fetched(&said), 3, "config and two layers: {said:?}");
    let rootfs = images.join("app/rootfs");
    assert_eq!(
        std::fs::read(rootfs.join("etc/hello")).expect("hello"),
        b"hello\n"
    );
    assert_eq!(
        std::fs::read(rootfs.join("etc/new")).expect("new"),
        b"new\n"
    );
    assert!(!rootfs.join("etc/gone").exists(), "the whiteout removed it");
    assert!(!rootfs.join("etc/.wh.gone").exists());
    let meta = super::image::read_meta(&images, "app").expect("meta");
    assert_eq!(meta.command, ["/bin/app", "serve"]);
    assert_eq!(meta.source, format!("{reference}@{digest}"));
    assert_eq!(super::list_images(&images).expect("list"), ["app"]);

    // Another image sharing the bottom layer fetches only what it lacks.
    let said = pull(
        &images,
        "other",
        &format!("{}/team/other:v1", registry.addr),
        &options,
    )
    .await
    .expect("pull other");
    // (Its config is the first's too: only its top layer is new.)
    assert_eq!((fetched(&said), cached(&said)), (1, 2), "{said:?}");
    // By digest: all there already.
    let said = pull(
        &images,
        "app-pinned",
        &format!("{}/team/app@{digest}", registry.addr),
        &options,
    )
    .await
    .expect("pull by digest");
    assert_eq!((fetched(&said), cached(&said)), (0, 3), "{said:?}");
    assert!(images.join("app-pinned/rootfs/etc/new").is_file());

    // Through a mirror: docker.io's library/app comes from the registry.
    let mirrored = PullOptions {
        mirrors: vec![
            format!("docker.io=http://{}", registry.addr)
                .parse::<Mirror>()
                .expect("mirror"),
        ],
        ..PullOptions::default()
    };
    pull(&images, "hub-app", "app:v1", &mirrored)
        .await
        .expect("pull through the mirror");
    assert!(images.join("hub-app/rootfs/etc/new").is_file());

    // What is not there, or not an image reference, is a clear error.
    let missing = pull(
        &images,
        "nope",
        &format!("{}/team/nope:v1", registry.addr),
        &options,
    )
    .await
    .expect_err("no such image");
    assert!(missing.contains("team/nope"), "{missing}");
    let bad = pull(&images, "bad", "no spaces allowed:v1", &options)
        .await
        .expect_err("bad reference");
    assert!(bad.contains("bad image reference"), "{bad}");

    // A blob altered in the registry's storage is refused, and kept nowhere.
    let evil = registry
        .push(
            "team/evil",
            "v1",
            &[&[("etc/evil", b"original contents\n")]],
            &anonymous,
        )
        .await;
    let manifest = registry
        .client()
        .pull_image_manifest(
            &format!("{}/team/evil@{evil}", registry.addr)
                .parse()
                .expect("ref"),
            &anonymous,
        )
        .await
        .expect("manifest")
        .0;
    let layer = manifest.layers[0]
        .digest
        .strip_prefix("sha256:")
        .expect("sha256")
        .to_string();
    let data = registry.storage.join(format!(
        "docker/registry/v2/blobs/sha256/{}/{layer}/data",
        &layer[..2]
    ));
    let mut bytes = std::fs::read(&data).expect("the blob");
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&data, bytes).expect("tamper");
    let refused = pull(
        &images,
        "evil",
        &format!("{}/team/evil:v1", registry.addr),
        &options,
    )
    .await
    .expect_err("a tampered blob");
    assert!(refused.to_lowercase().contains("digest"), "{refused}");
    assert!(!images.join("evil").exists(), "no image made of it");
    assert!(
        !images.join(".blobs/sha256").join(&layer).exists(),
        "not cached"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_registry_wants_its_credentials() {
    if let Some(reason) = skip_reason() {
        eprintln!("skipped: {reason}");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let registry =
        Registry::start(&dir.path().join("private"), Some(("puller", "s3cret-pass"))).await;
    let auth = RegistryAuth::Basic("puller".into(), "s3cret-pass".into());
    registry
        .push("team/secret", "v1", &[&[("etc/secret", b"s\n")]], &auth)
        .await;
    let images = dir.path().join("images");
    let reference = format!("{}/team/secret:v1", registry.addr);
    let mut options = PullOptions {
        plain_http: vec![registry.addr.clone()],
        ..PullOptions::default()
    };
    let refused = pull(&images, "secret", &reference, &options)
        .await
        .expect_err("anonymous");
    assert!(refused.to_lowercase().contains("authoriz"), "{refused}");
    options.credentials = Some(("puller".into(), "wrong".into()));
    pull(&images, "secret", &reference, &options)
        .await
        .expect_err("a wrong password");
    options.credentials = Some(("puller".into(), "s3cret-pass".into()));
    pull(&images, "secret", &reference, &options)
        .await
        .expect("with its credentials");
    assert!(images.join("secret/rootfs/etc/secret").is_file());
    let kept = std::fs::read_dir(images.join(".blobs/sha256")).map_or(0, |d| d.count());
    assert!(kept >= 2, "its blobs are kept for the next pull: {kept}");

    // A tenant's pull with credentials keeps its blobs to its project: a
    // pull for another project, even naming the same digests, fetches them
    // again, so the registry decides whether it may have them.
    let scoped = dir.path().join("tenants");
    options.scope = Some("project-a".into());
    let said = pull(&scoped, "secret-a", &reference, &options)
        .await
        .expect("project a");
    assert!(fetched(&said) >= 2, "{said:?}");
    assert!(
        std::fs::read_dir(scoped.join(".blobs/sha256")).map_or(0, |d| d.count()) == 0,
        "nothing fetched with credentials lands in the shared cache"
    );
    let again = pull(&scoped, "secret-a2", &reference, &options)
        .await
        .expect("project a again");
    assert_eq!(fetched(&again), 0, "its own project finds them: {again:?}");
    options.scope = Some("project-b".into());
    let other = pull(&scoped, "secret-b", &reference, &options)
        .await
        .expect("project b, with its own credentials");
    assert_eq!(fetched(&other), fetched(&said), "{other:?}");
}

/// An image heavier than the host allows is refused before a byte of it
/// is fetched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_over_the_size_limit_is_refused() {
    if let Some(reason) = skip_reason() {
        eprintln!("skipped: {reason}");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let registry = Registry::start(&dir.path().join("registry"), None).await;
    // Random bytes: they weigh as much compressed.
    let big: Vec<u8> = (0..64 << 10).map(|_| rand::random::<u8>()).collect();
    registry
        .push(
            "team/big",
            "v1",
            &[&[("big", &big[..])]],
            &RegistryAuth::Anonymous,
        )
        .await;
    let images = dir.path().join("images");
    let mut options = PullOptions {
        plain_http: vec![registry.addr.clone()],
        max_bytes: Some(1024),
        ..PullOptions::default()
    };
    let reference = format!("{}/team/big:v1", registry.addr);
    let refused = pull(&images, "big", &reference, &options)
        .await
        .expect_err("too heavy");
    assert!(refused.contains("more than this host allows"), "{refused}");
    assert!(!images.join(".blobs/sha256").exists(), "nothing fetched");
    options.max_bytes = Some(1 << 20);
    pull(&images, "big", &reference, &options)
        .await
        .expect("within the limit");
}

/// On the real container driver: an instance of an image the host does
/// not have, which the catalog names by reference, is pulled on its first
/// use and runs (SSH answers); a second instance of it pulls nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_pulls_its_image_on_first_use() {
    use super::tests::{Cleanup, fixture, skip_reason as driver_skip_reason, spec, ssh_ok};
    if let Some(reason) = skip_reason().or_else(driver_skip_reason) {
        eprintln!("skipped: {reason}");
        return;
    }
    let tag = (std::process::id() % 100_000).to_string();
    let bridge = format!("tsrr{tag}");
    let mut f = fixture(&bridge, "10.250.17.0/24", 43300);
    let registry = Registry::start(&f.dir.path().join("registry"), None).await;
    // The tiny image's root file system, as one layer.
    let rootfs = std::fs::read(f.dir.path().join("tiny.tar.gz")).expect("the tiny image");
    let reference: Reference = format!("{}/images/tiny:v1", registry.addr)
        .parse()
        .expect("ref");
    let config = serde_json::json!({"architecture": go_arch(), "os": "linux", "config": {},
        "rootfs": {"type": "layers", "diff_ids": []}});
    registry
        .client()
        .push(
            &reference,
            &[ImageLayer::oci_v1_gzip(rootfs, None)],
            Config::oci_v1(config.to_string().into_bytes(), None),
            &RegistryAuth::Anonymous,
            None,
        )
        .await
        .expect("push");
    // A registry that takes connections and never answers.
    let hung = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let hung_addr = hung.local_addr().expect("addr").to_string();
    let held = tokio::spawn(async move {
        let mut kept = Vec::new();
        while let Ok((c, _)) = hung.accept().await {
            kept.push(c);
        }
    });
    f.config.registry.plain_http = vec![registry.addr.clone(), hung_addr.clone()];
    let driver = super::ContainerDriver::new(f.config.clone()).expect("driver");
    let _cleanup = Cleanup {
        state_dir: f.config.state_dir.clone(),
        bridge: bridge.clone(),
        netns: ["r1", "r2"]
            .iter()
            .map(|id| driver.net_names(id).netns)
            .collect(),
    };
    let mut first = spec(&f, "r1", "r1");
    first.image = "tiny-pulled".into();
    first.image_ref = Some(reference.whole());
    let report = driver
        .create(&first)
        .await
        .expect("create, pulling the image");
    assert_eq!(
        super::list_images(&f.config.image_dir).expect("images"),
        ["tiny", "tiny-pulled"]
    );
    let name = ssh_ok(&f.key, &report.private_ip, 22, "hostname").await;
    assert_eq!(name.trim(), "r1");
    // Pulled once: the second instance finds it (even with the registry
    // gone).
    drop(registry);
    let mut second = spec(&f, "r2", "r2");
    second.image = "tiny-pulled".into();
    second.image_ref = Some(reference.whole());
    second.cpus = tessera_core::CpuSet::parse_list("0").expect("cpus");
    let report = driver
        .create(&second)
        .await
        .expect("create from the pulled image");
    ssh_ok(&f.key, &report.private_ip, 22, "true").await;
    // Without a reference, a missing image says how to get one.
    let mut third = spec(&f, "r3", "r3");
    third.image = "nowhere".into();
    let e = driver.create(&third).await.expect_err("no such image");
    assert!(e.to_string().contains("tessera image pull"), "{e}");
    // While its image is pulled, an instance's observation says how far
    // the pull got; once the pull is given up, nothing is said of it.
    let mut fourth = spec(&f, "r4", "r4");
    fourth.image = "stuck".into();
    let stuck = format!("{hung_addr}/slow/app:v1");
    fourth.image_ref = Some(stuck.clone());
    let mut create = Box::pin(driver.create(&fourth));
    let seen = tokio::select! {
        made = &mut create => panic!("a registry that never answers made {made:?}"),
        seen = async {
            loop {
                let all = driver.observe().await.expect("observe");
                if let Some(o) = all.into_iter().find(|o| o.id == "r4") {
                    break o;
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        } => seen,
    };
    assert!(!seen.running && seen.pulling, "{seen:?}");
    assert_eq!(
        seen.detail,
        Some(format!("pulling image {stuck}: reading its manifest"))
    );
    drop(create);
    let all = driver.observe().await.expect("observe");
    assert!(all.iter().all(|o| o.id != "r4"), "{all:?}");
    held.abort();
    for id in ["r1", "r2"] {
        driver.delete(id).await.expect("delete");
    }
}
