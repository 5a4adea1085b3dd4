//! Images from OCI registries: a host pulls an image by reference
//! (`registry/name:tag` or `…@sha256:…`) with the `oci-client` crate,
//! anonymously or with a user name and password, through the operator's
//! mirrors (`docker.io` served by an internal mirror, say), and imports it
//! as a named image like an OCI layout ([`super::image`]).
//!
//! Every manifest and blob is checked against its digest as it arrives
//! (the client does). Blobs are kept in `IMAGES/.blobs/sha256/`, written
//! there only once checked, so a layer two images share is fetched once.
//!
//! Blobs fetched with credentials are kept apart, under their pull's
//! scope (a project): a manifest only names digests, so a tenant who
//! learnt the digest of a neighbour's private layer could otherwise write
//! a manifest of their own naming it and be handed the layer from the
//! cache without ever being let into the neighbour's registry. A pull finds
//! the shared cache (blobs any anonymous pull could fetch) and its own
//! scope's, never another's.

use super::fail;
use super::image::{import_image_within, validate_image_name};
use super::pull_guard::{Allowed, PullGuard};
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::manifest::{OciDescriptor, OciImageManifest};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use sha2::Digest;
use std::path::{Path, PathBuf};
use tessera_agent_api::AgentError;

/// A registry served from elsewhere: pulls of `registry` go to `endpoint`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mirror {
    /// As references name it: `docker.io`, `ghcr.io`, `registry.example:5000`.
    pub registry: String,
    /// `host[:port]` of the mirror.
    pub endpoint: String,
    /// Plain HTTP (a mirror on the operator's own network).
    pub plain_http: bool,
}

impl std::str::FromStr for Mirror {
    type Err = String;

    /// `REGISTRY=URL`: `docker.io=http://10.0.0.5:5000`.
    fn from_str(text: &str) -> Result<Mirror, String> {
        let bad = || {
            format!("bad mirror {text:?}: expected REGISTRY=URL, as docker.io=http://10.0.0.5:5000")
        };
        let (registry, url) = text.split_once('=').ok_or_else(bad)?;
        let (plain_http, endpoint) = match url.split_once("://") {
            Some(("http", rest)) => (true, rest),
            Some(("https", rest)) => (false, rest),
            Some(_) => return Err(bad()),
            None => (false, url),
        };
        let endpoint = endpoint.trim_end_matches('/');
        let host_ok = |s: &str| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'))
        };
        if !host_ok(registry) || !host_ok(endpoint) {
            return Err(bad());
        }
        Ok(Mirror {
            registry: registry.to_string(),
            endpoint: endpoint.to_string(),
            plain_http,
        })
    }
}

/// How a host pulls.
#[derive(Clone, Debug, Default)]
pub struct PullOptions {
    /// A user name and password (or token) for the registry; `None`:
    /// anonymous.
    pub credentials: Option<(String, String)>,
    pub mirrors: Vec<Mirror>,
    /// Registries spoken to over plain HTTP (`localhost:5000`).
    pub plain_http: Vec<String>,
    /// Who the pull is for (a project): blobs fetched with credentials are
    /// found only by pulls of the same scope.
    pub scope: Option<String>,
    /// The most an image may weigh, downloaded and unpacked; `None`: no
    /// limit (an operator's own pulls).
    pub max_bytes: Option<u64>,
    /// A tenant's pull: the registry must be at public addresses, not the
    /// host's own, its private networks' or these blocks (the firewall's
    /// denied ones, as networks: `--egress-deny` and the defaults),
    /// unless the operator named it (a mirror, an insecure registry). A
    /// pull runs in the host's network, past the firewall that keeps
    /// instances from those addresses.
    pub public_only: Option<Vec<String>>,
}

/// What a pull did, as it goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Progress {
    /// The manifest was read: this many layers, of this many bytes.
    Manifest {
        digest: String,
        layers: usize,
        bytes: u64,
    },
    /// A blob was already on the host.
    Cached { digest: String, bytes: u64 },
    /// A blob was fetched and checked.
    Fetched { digest: String, bytes: u64 },
    /// The layers are being unpacked into the image.
    Unpacking,
}

/// What a pull made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pulled {
    /// The manifest's digest: pull `REF@DIGEST` to get this image again.
    pub digest: String,
    pub fetched_bytes: u64,
    pub cached_bytes: u64,
}

/// Where a reference is pulled from: its own registry, or its mirror.
fn source(reference: &Reference, options: &PullOptions) -> (Reference, ClientProtocol) {
    let mut plain = options.plain_http.clone();
    let wanted = reference.resolve_registry().to_string();
    let mirror = options
        .mirrors
        .iter()
        .find(|m| m.registry == reference.registry() || m.registry == wanted);
    let from = match mirror {
        Some(m) => {
            if m.plain_http {
                plain.push(m.endpoint.clone());
            }
            match reference.digest() {
                Some(digest) => Reference::with_digest(
                    m.endpoint.clone(),
                    reference.repository().to_string(),
                    digest.to_string(),
                ),
                None => Reference::with_tag(
                    m.endpoint.clone(),
                    reference.repository().to_string(),
                    reference.tag().unwrap_or("latest").to_string(),
                ),
            }
        }
        None => reference.clone(),
    };
    (from, ClientProtocol::HttpsExcept(plain))
}

/// Whether the registry `from` names is one the operator named (a
/// mirror, an insecure registry): a tenant's pull of it is not guarded.
fn operator_named(from: &Reference, options: &PullOptions) -> bool {
    let registry = from.resolve_registry();
    options.plain_http.iter().any(|r| r == registry)
        || options.mirrors.iter().any(|m| m.endpoint == registry)
}

/// Why a tenant's pull may not connect to `ip`, if it may not: an address
/// of the host's, of a private network, or in `denied`.
fn tenant_may_reach(ip: std::net::IpAddr, denied: &[ipnet::IpNet]) -> Result<(), String> {
    let ip = super::pull_guard::canonical(ip);
    if !is_public(ip) || denied.iter().any(|d| d.contains(&ip)) {
        return Err(format!(
            "an address of this host's or of a private network: {PUBLIC_ONLY}"
        ));
    }
    Ok(())
}

const PUBLIC_ONLY: &str = "images are pulled for instances from public registries only (an \
     operator names others with the agent's --insecure-registry or --registry-mirror)";

/// `Err` (why) unless the registry `from` names is one the operator
/// named, or each of its addresses is public and outside `denied`. This
/// is the first look, for a clear answer before anything is fetched; the
/// pull's connections themselves, redirects and token realms included,
/// go through a [`PullGuard`] that checks each again.
async fn check_public(
    from: &Reference,
    options: &PullOptions,
    denied: &[String],
) -> Result<(), String> {
    if operator_named(from, options) {
        return Ok(());
    }
    let registry = from.resolve_registry();
    let (host, port) =
        split_host_port(registry).ok_or_else(|| format!("bad registry address {registry:?}"))?;
    let addresses: Vec<std::net::IpAddr> = match host.parse() {
        Ok(ip) => vec![ip],
        Err(_) => tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| format!("registry {host} not found: {e}"))?
            .map(|a| a.ip())
            .collect(),
    };
    let denied = denied_networks(denied);
    for ip in addresses {
        tenant_may_reach(ip, &denied).map_err(|why| {
            format!(
                "registry {registry} is at {}, {why}",
                super::pull_guard::canonical(ip)
            )
        })?;
    }
    Ok(())
}

fn denied_networks(denied: &[String]) -> Vec<ipnet::IpNet> {
    denied.iter().filter_map(|d| d.parse().ok()).collect()
}

/// `host` and port (443 unless given) of `host[:port]` (references
/// take no bracketed IPv6 address).
fn split_host_port(registry: &str) -> Option<(&str, u16)> {
    match registry.rsplit_once(':') {
        Some((host, port)) => Some((host, port.parse().ok()?)),
        None => Some((registry, 443)),
    }
}

/// Whether `ip` is an address of the internet at large: not loopback,
/// unspecified, link-local (metadata services), multicast or broadcast,
/// and not of a private, shared (carrier-grade NAT), benchmarking,
/// documentation or reserved block.
fn is_public(ip: std::net::IpAddr) -> bool {
    match ip {
        std::net::IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            !(v4.is_loopback()
                || v4.is_unspecified()
                || v4.is_link_local()
                || v4.is_multicast()
                || v4.is_broadcast()
                || v4.is_private()
                || v4.is_documentation()
                || a == 0
                || (a == 100 && (64..128).contains(&b))
                || (a == 198 && (18..20).contains(&b))
                || a >= 240)
        }
        std::net::IpAddr::V6(v6) => {
            let s = v6.segments();
            let first = s[0];
            let v4 = |hi: u16, lo: u16| {
                let [a, b] = hi.to_be_bytes();
                let [c, d] = lo.to_be_bytes();
                std::net::IpAddr::V4(std::net::Ipv4Addr::new(a, b, c, d))
            };
            // Forms that carry an IPv4 address a gateway delivers to: the
            // address is judged as that IPv4 one. NAT64 (64:ff9b::/96, and
            // the local-use 64:ff9b:1::/48), 6to4 (2002::/16), and the old
            // IPv4-compatible ::/96.
            if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0] {
                return is_public(v4(s[6], s[7]));
            }
            if s[0] == 0x2002 {
                return is_public(v4(s[1], s[2]));
            }
            if s[..6] == [0, 0, 0, 0, 0, 0] && !v6.is_loopback() && !v6.is_unspecified() {
                return is_public(v4(s[6], s[7]));
            }
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
                // Site-local (deprecated, still routed by some).
                || (first & 0xffc0) == 0xfec0
                // Local-use NAT64, and Teredo, which tunnels to addresses
                // no check here sees.
                || (first == 0x64 && s[1] == 0xff9b && s[2] == 1)
                || (first == 0x2001 && s[1] == 0)
                || first == 0x2001 && s[1] == 0x0db8)
        }
    }
}

/// The caches a pull reads, in order, and the one it writes.
fn caches(image_dir: &Path, options: &PullOptions) -> (Vec<PathBuf>, PathBuf) {
    let shared = image_dir.join(".blobs");
    match (&options.credentials, &options.scope) {
        (Some(_), Some(scope)) => {
            let key = hex::encode(sha2::Sha256::digest(scope.as_bytes()));
            let own = shared.join("scoped").join(&key[..32]);
            (vec![shared, own.clone()], own)
        }
        // An operator's pull with credentials (`tessera image pull`) makes
        // an image every tenant may run anyway.
        _ => (vec![shared.clone()], shared),
    }
}

fn blob_file(cache: &Path, digest: &str) -> Result<PathBuf, AgentError> {
    let hex = digest
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.chars().all(|c| c.is_ascii_hexdigit()))
        .ok_or_else(|| fail(format!("unsupported digest {digest:?}: only sha256 is")))?;
    Ok(cache.join("sha256").join(hex))
}

fn registry_error(reference: &str, e: oci_client::errors::OciDistributionError) -> AgentError {
    fail(format!("pulling {reference}: {e}"))
}

/// Pulls `reference` and imports it as image `name` in `image_dir`
/// (replacing one of that name), telling `progress` what it does.
pub async fn pull_image(
    image_dir: &Path,
    name: &str,
    reference: &str,
    options: &PullOptions,
    progress: &mut (dyn FnMut(Progress) + Send),
) -> Result<Pulled, AgentError> {
    validate_image_name(name)?;
    super::image::close_image_dir(image_dir)?;
    let wanted: Reference = reference
        .parse()
        .map_err(|e| fail(format!("bad image reference {reference:?}: {e}")))?;
    let from = source(&wanted, options).0;
    let allowed = match &options.public_only {
        Some(denied) if !operator_named(&from, options) => {
            check_public(&from, options, denied)
                .await
                .map_err(|why| fail(format!("pulling {reference}: {why}")))?;
            let denied = denied_networks(denied);
            let allowed: Allowed = std::sync::Arc::new(move |ip| tenant_may_reach(ip, &denied));
            Some(allowed)
        }
        _ => None,
    };
    pull_through(image_dir, name, reference, options, allowed, progress).await
}

/// [`pull_image`], every connection through a [`PullGuard`] letting
/// through what `allowed` allows, if given.
async fn pull_through(
    image_dir: &Path,
    name: &str,
    reference: &str,
    options: &PullOptions,
    allowed: Option<Allowed>,
    progress: &mut (dyn FnMut(Progress) + Send),
) -> Result<Pulled, AgentError> {
    let wanted: Reference = reference
        .parse()
        .map_err(|e| fail(format!("bad image reference {reference:?}: {e}")))?;
    let (from, protocol) = source(&wanted, options);
    let guard = match allowed {
        Some(allowed) => Some(
            PullGuard::start(allowed)
                .await
                .map_err(|e| fail(format!("pulling {reference}: starting its guard: {e}")))?,
        ),
        None => None,
    };
    let proxy = guard.as_ref().map(PullGuard::url);
    let client = Client::new(ClientConfig {
        protocol,
        connect_timeout: Some(std::time::Duration::from_secs(10)),
        read_timeout: Some(std::time::Duration::from_secs(60)),
        https_proxy: proxy.clone(),
        http_proxy: proxy,
        ..ClientConfig::default()
    });
    let pulled = fetch_and_import(
        image_dir, name, reference, options, &client, &from, progress,
    )
    .await;
    match (pulled, guard.as_ref().and_then(PullGuard::refused)) {
        (Err(_), Some(why)) => Err(fail(format!("pulling {reference}: {why}"))),
        (pulled, _) => pulled,
    }
}

/// The pull itself, through `client`: the manifest, the blobs the caches
/// lack, and the image made of them.
async fn fetch_and_import(
    image_dir: &Path,
    name: &str,
    reference: &str,
    options: &PullOptions,
    client: &Client,
    from: &Reference,
    progress: &mut (dyn FnMut(Progress) + Send),
) -> Result<Pulled, AgentError> {
    let auth = match &options.credentials {
        Some((user, password)) => RegistryAuth::Basic(user.clone(), password.clone()),
        None => RegistryAuth::Anonymous,
    };
    let (manifest, digest) = client
        .pull_image_manifest(from, &auth)
        .await
        .map_err(|e| registry_error(reference, e))?;
    let bytes: u64 = manifest.layers.iter().map(|l| l.size.max(0) as u64).sum();
    let max_bytes = options.max_bytes.unwrap_or(u64::MAX);
    if bytes.saturating_add(manifest.config.size.max(0) as u64) > max_bytes {
        return Err(fail(format!(
            "pulling {reference}: the image weighs {bytes} bytes, more than this host allows ({max_bytes})"
        )));
    }
    progress(Progress::Manifest {
        digest: digest.clone(),
        layers: manifest.layers.len(),
        bytes,
    });
    let (found_in, kept_in) = caches(image_dir, options);
    let mut pulled = Pulled {
        digest: digest.clone(),
        fetched_bytes: 0,
        cached_bytes: 0,
    };
    let mut blobs = Vec::new();
    for descriptor in std::iter::once(&manifest.config).chain(manifest.layers.iter()) {
        blobs.push(
            fetch_blob(
                client,
                from,
                descriptor,
                (&found_in, &kept_in),
                reference,
                &mut pulled,
                progress,
            )
            .await?,
        );
    }
    progress(Progress::Unpacking);
    let layout = write_layout(image_dir, &blobs, &manifest)?;
    let (dir, name2, layout2) = (image_dir.to_path_buf(), name.to_string(), layout.clone());
    let imported =
        tokio::task::spawn_blocking(move || import_image_within(&dir, &name2, &layout2, max_bytes))
            .await
            .map_err(|e| fail(format!("importing {reference}: {e}")))?;
    let _ = std::fs::remove_dir_all(&layout);
    imported?;
    let kept: Vec<PathBuf> = blobs.into_iter().map(|(_, path)| path).collect();
    super::image::set_pulled(image_dir, name, &format!("{reference}@{digest}"), &kept)?;
    Ok(pulled)
}

/// Fetches one blob into the cache unless the pull's caches have it,
/// checked; answers where it is.
async fn fetch_blob(
    client: &Client,
    from: &Reference,
    descriptor: &OciDescriptor,
    (found_in, kept_in): (&[PathBuf], &Path),
    reference: &str,
    pulled: &mut Pulled,
    progress: &mut (dyn FnMut(Progress) + Send),
) -> Result<(String, PathBuf), AgentError> {
    let size = descriptor.size.max(0) as u64;
    let digested = descriptor.digest.clone();
    for cache in found_in {
        let path = blob_file(cache, &descriptor.digest)?;
        if path.is_file() {
            pulled.cached_bytes += size;
            progress(Progress::Cached {
                digest: descriptor.digest.clone(),
                bytes: size,
            });
            return Ok((digested, path));
        }
    }
    let path = blob_file(kept_in, &descriptor.digest)?;
    let dir = path.parent().unwrap_or(kept_in);
    tokio::fs::create_dir_all(dir)
        .await
        .map_err(|e| fail(format!("creating {}: {e}", dir.display())))?;
    let part = dir.join(format!(".part-{:016x}", rand::random::<u64>()));
    let file = tokio::fs::File::create(&part)
        .await
        .map_err(|e| fail(format!("creating {}: {e}", part.display())))?;
    let mut out = Capped {
        inner: tokio::io::BufWriter::new(file),
        left: size,
    };
    let fetched = client.pull_blob(from, descriptor, &mut out).await;
    let flushed = tokio::io::AsyncWriteExt::flush(&mut out).await;
    drop(out);
    if let Err(e) = fetched {
        let _ = tokio::fs::remove_file(&part).await;
        return Err(registry_error(reference, e));
    }
    if let Err(e) = flushed {
        let _ = tokio::fs::remove_file(&part).await;
        return Err(fail(format!("writing {}: {e}", part.display())));
    }
    tokio::fs::rename(&part, &path)
        .await
        .map_err(|e| fail(format!("keeping {}: {e}", path.display())))?;
    pulled.fetched_bytes += size;
    progress(Progress::Fetched {
        digest: descriptor.digest.clone(),
        bytes: size,
    });
    Ok((digested, path))
}

/// A writer that refuses more bytes than the blob's descriptor says it has:
/// a registry cannot fill the host's disk with a blob it lies about (its
/// digest would fail too, but only once it is all written).
struct Capped<W> {
    inner: W,
    left: u64,
}

impl<W: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Capped<W> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        if data.len() as u64 > self.left {
            return std::task::Poll::Ready(Err(std::io::Error::other(
                "the blob is larger than its descriptor says",
            )));
        }
        let written = std::task::ready!(std::pin::Pin::new(&mut self.inner).poll_write(cx, data))?;
        self.left -= written as u64;
        std::task::Poll::Ready(Ok(written))
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// An OCI image layout of the manifest over the pull's blobs, for the
/// importer: `oci-layout`, `index.json`, the manifest, and each blob linked
/// from the cache it is in.
fn write_layout(
    image_dir: &Path,
    blobs: &[(String, PathBuf)],
    manifest: &OciImageManifest,
) -> Result<PathBuf, AgentError> {
    let io = |what: &str, p: &Path, e: std::io::Error| fail(format!("{what} {}: {e}", p.display()));
    let layout = image_dir.join(format!(".pull-{:016x}", rand::random::<u64>()));
    let dir = layout.join("blobs");
    std::fs::create_dir_all(dir.join("sha256")).map_err(|e| io("creating", &layout, e))?;
    let body = serde_json::to_vec(manifest).map_err(|e| fail(e.to_string()))?;
    let digest = format!("sha256:{}", hex::encode(sha2::Sha256::digest(&body)));
    let manifest_file = blob_file(&dir, &digest)?;
    std::fs::write(&manifest_file, &body).map_err(|e| io("writing", &manifest_file, e))?;
    for (digest, path) in blobs {
        let link = blob_file(&dir, digest)?;
        let real = std::fs::canonicalize(path).map_err(|e| io("resolving", path, e))?;
        match std::os::unix::fs::symlink(&real, &link) {
            // The config and a layer may be one blob.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            other => other.map_err(|e| io("linking", &link, e))?,
        }
    }
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": digest,
            "size": body.len(),
        }],
    });
    let write = |file: &str, text: String| {
        let p = layout.join(file);
        std::fs::write(&p, text).map_err(|e| io("writing", &p, e))
    };
    write(
        "oci-layout",
        r#"{"imageLayoutVersion":"1.0.0"}"#.to_string(),
    )?;
    write("index.json", index.to_string())?;
    Ok(layout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_addresses_are_the_internets() {
        for ip in [
            "8.8.8.8",
            "1.1.1.1",
            "2606:4700::1111",
            "64:ff9b::808:808",
            "2002:808:808::1",
        ] {
            assert!(is_public(ip.parse().expect("ip")), "{ip}");
        }
        for ip in [
            "127.0.0.1",
            "0.0.0.0",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "198.18.0.1",
            "192.0.2.1",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fd00::1",
            "fe80::1",
            "2001:db8::1",
            // IPv4 carried in IPv6: NAT64, 6to4, IPv4-compatible.
            "64:ff9b::a00:5",
            "64:ff9b::7f00:1",
            "64:ff9b:1::1",
            "2002:a00:5::1",
            "2002:a9fe:a9fe::1",
            "::10.0.0.5",
            "::127.0.0.1",
            // Site-local, Teredo.
            "fec0::1",
            "2001:0:4136:e378::1",
        ] {
            assert!(!is_public(ip.parse().expect("ip")), "{ip}");
        }
    }

    /// A tenant's image from the host's own or private addresses is
    /// refused before any connection, unless the operator named the
    /// registry; so is one in the operator's denied blocks.
    #[tokio::test]
    async fn a_tenants_pull_reaches_public_registries_only() {
        let check = |reference: &str, named: &[&str], denied: &[&str]| {
            let reference: Reference = reference.parse().expect("reference");
            let options = PullOptions {
                plain_http: named.iter().map(|s| (*s).to_string()).collect(),
                ..PullOptions::default()
            };
            let denied: Vec<String> = denied.iter().map(|s| (*s).to_string()).collect();
            async move { check_public(&reference, &options, &denied).await }
        };
        for reference in [
            "127.0.0.1:9443/apps/echo:v1",
            "localhost:5000/apps/echo:v1",
            "169.254.169.254/latest:x",
            "10.0.0.5:5000/internal/app:1",
        ] {
            let refused = check(reference, &[], &[]).await;
            assert!(
                refused
                    .as_ref()
                    .is_err_and(|why| why.contains("public registries only")),
                "{reference}: {refused:?}"
            );
        }
        assert!(
            check("127.0.0.1:9443/a/b:1", &["127.0.0.1:9443"], &[])
                .await
                .is_ok()
        );
        assert!(check("8.8.8.8/a/b:1", &[], &[]).await.is_ok());
        assert!(
            check("8.8.8.8:5000/a/b:1", &[], &["8.8.8.0/24"])
                .await
                .is_err()
        );
        assert!(check("8.8.8.8/a/b:1", &[], &["8.8.8.8/32"]).await.is_err());
    }

    /// Every connection of a guarded pull goes through its guard: one to
    /// a destination the guard refuses fails with the guard's reason, and
    /// a plain HTTP one (a redirect to `http://` makes one) is refused.
    #[tokio::test]
    async fn a_guarded_pull_connects_through_its_guard() {
        let dir = tempfile::tempdir().expect("dir");
        let pull = |reference: &'static str, plain: Vec<String>, allow: bool| {
            let dir = dir.path().to_path_buf();
            async move {
                let options = PullOptions {
                    plain_http: plain,
                    ..PullOptions::default()
                };
                let allowed: Allowed = std::sync::Arc::new(move |_| {
                    if allow {
                        Ok(())
                    } else {
                        Err("refused here".into())
                    }
                });
                let mut quiet = |_| {};
                pull_through(&dir, "app", reference, &options, Some(allowed), &mut quiet)
                    .await
                    .expect_err("refused")
                    .to_string()
            }
        };
        let why = pull("127.0.0.1:1/apps/echo:v1", Vec::new(), false).await;
        assert!(
            why.contains("127.0.0.1 is at 127.0.0.1: refused here"),
            "{why}"
        );
        let why = pull("127.0.0.1:1/apps/echo:v1", vec!["127.0.0.1:1".into()], true).await;
        assert!(why.contains("only HTTPS"), "{why}");
    }

    #[test]
    fn mirrors_are_read_and_used() {
        let m: Mirror = "docker.io=http://10.0.0.5:5000".parse().expect("mirror");
        assert_eq!(
            m,
            Mirror {
                registry: "docker.io".into(),
                endpoint: "10.0.0.5:5000".into(),
                plain_http: true
            }
        );
        for bad in [
            "docker.io",
            "=http://x",
            "docker.io=ftp://x",
            "a=http://b/c d",
        ] {
            assert!(bad.parse::<Mirror>().is_err(), "{bad}");
        }
        let options = PullOptions {
            mirrors: vec![m],
            ..PullOptions::default()
        };
        let busybox: Reference = "busybox:1.36".parse().expect("ref");
        let (from, protocol) = source(&busybox, &options);
        assert_eq!(from.registry(), "10.0.0.5:5000");
        assert_eq!(from.repository(), "library/busybox");
        assert_eq!(from.tag(), Some("1.36"));
        assert_eq!(
            protocol,
            ClientProtocol::HttpsExcept(vec!["10.0.0.5:5000".into()])
        );
        let other: Reference = "ghcr.io/org/app@sha256:0123456789012345678901234567890123456789012345678901234567890123"
            .parse()
            .expect("ref");
        let (from, _) = source(&other, &options);
        assert_eq!(from.registry(), "ghcr.io", "no mirror for ghcr.io");
    }

    #[tokio::test]
    async fn a_blob_longer_than_its_descriptor_is_cut_off() {
        use tokio::io::AsyncWriteExt;
        let mut out = Capped {
            inner: Vec::new(),
            left: 4,
        };
        out.write_all(b"abcd").await.expect("as long as declared");
        assert!(out.write_all(b"e").await.is_err(), "one byte more");
        assert_eq!(out.inner, b"abcd");
    }

    #[test]
    fn only_sha256_digests_name_blobs() {
        let cache = Path::new("/c");
        let hex = "ab".repeat(32);
        assert_eq!(
            blob_file(cache, &format!("sha256:{hex}")).expect("fine"),
            cache.join("sha256").join(&hex)
        );
        for bad in [
            "sha512:ab",
            "sha256:../../etc",
            "sha256:",
            &format!("sha256:{hex}/x"),
        ] {
            assert!(blob_file(cache, bad).is_err(), "{bad}");
        }
    }
}
