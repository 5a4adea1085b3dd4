//! The image store: `IMAGES/<name>/rootfs/` and `IMAGES/<name>/image.json`.

use super::fail;
use serde::{Deserialize, Serialize};
use std::fs::{self, File};
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Component, Path, PathBuf};
use tessera_agent_api::AgentError;

/// What `image.json` records about an image.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(super) struct ImageMeta {
    pub name: String,
    /// Seconds since the Unix epoch.
    pub imported_at: u64,
    pub source: String,
    /// `rootfs-tar` or `oci`.
    pub format: String,
    /// The OCI image's entrypoint and command, used when the image has no
    /// `/sbin/tessera-init`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
    /// The OCI image's entrypoint and command apart (a serverless replica
    /// may replace either).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub entrypoint: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cmd: Vec<String>,
    /// Where its process starts (`WorkingDir`); empty: `/`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub workdir: String,
    /// Pulled by the host for an instance that needed it (not imported or
    /// pulled by the operator): collected once no instance uses it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub on_demand: bool,
    /// The cached blobs it was made of, relative to the image directory.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub blobs: Vec<String>,
}

pub(super) fn validate_image_name(name: &str) -> Result<(), AgentError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
    if ok {
        Ok(())
    } else {
        Err(fail(format!(
            "bad image name {name:?}: use 1 to 64 letters, digits, '.', '-' or '_', not starting with '.'"
        )))
    }
}

pub(super) fn image_rootfs(image_dir: &Path, name: &str) -> PathBuf {
    image_dir.join(name).join("rootfs")
}

pub(super) fn read_meta(image_dir: &Path, name: &str) -> Result<ImageMeta, AgentError> {
    let path = image_dir.join(name).join("image.json");
    let text = fs::read(&path).map_err(|e| fail(format!("reading {}: {e}", path.display())))?;
    serde_json::from_slice(&text).map_err(|e| fail(format!("reading {}: {e}", path.display())))
}

/// Records where a pulled image came from (`image.json`'s `source`) and
/// the cached blobs it was made of.
pub(super) fn set_pulled(
    image_dir: &Path,
    name: &str,
    source: &str,
    blobs: &[PathBuf],
) -> Result<(), AgentError> {
    let mut meta = read_meta(image_dir, name)?;
    meta.source = source.to_string();
    meta.blobs = blobs
        .iter()
        .filter_map(|b| b.strip_prefix(image_dir).ok())
        .map(|b| b.display().to_string())
        .collect();
    write_meta(image_dir, name, &meta)
}

/// Marks an image as pulled on an instance's demand.
pub(super) fn set_on_demand(image_dir: &Path, name: &str) -> Result<(), AgentError> {
    let mut meta = read_meta(image_dir, name)?;
    meta.on_demand = true;
    write_meta(image_dir, name, &meta)
}

/// Notes that an instance is being made from the image now (the mtime of
/// `IMAGES/<name>/used`).
pub(super) fn mark_used(image_dir: &Path, name: &str) {
    let path = image_dir.join(name).join("used");
    let touched = File::create(&path).and_then(|f| f.set_modified(std::time::SystemTime::now()));
    if let Err(e) = touched {
        tracing::debug!(path = %path.display(), error = %e, "marking an image used");
    }
}

/// What a collection removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Collected {
    pub images: Vec<String>,
    pub blobs: usize,
}

/// Removes the images pulled on demand that no instance here uses
/// (`in_use`) and none was made from for `unused_for`, then the cached
/// blobs no image left was made of and none fetched for `unused_for` (a
/// pull under way keeps its own: the caller holds pulls off meanwhile).
pub fn collect_images(
    image_dir: &Path,
    in_use: &std::collections::HashSet<String>,
    unused_for: std::time::Duration,
) -> Result<Collected, AgentError> {
    let now = std::time::SystemTime::now();
    let idle = |path: &Path| {
        fs::symlink_metadata(path)
            .and_then(|m| m.modified())
            .map_or(true, |t| {
                now.duration_since(t).is_ok_and(|d| d >= unused_for)
            })
    };
    let mut collected = Collected::default();
    let mut kept_blobs = std::collections::HashSet::new();
    for name in list_images(image_dir)? {
        let meta = read_meta(image_dir, &name).unwrap_or_default();
        let dir = image_dir.join(&name);
        let unused =
            !in_use.contains(&name) && idle(&dir.join("used")) && idle(&dir.join("image.json"));
        if meta.on_demand && unused {
            let trash = image_dir.join(format!(".gone-{name}-{:016x}", rand::random::<u64>()));
            fs::rename(&dir, &trash).map_err(io_err("removing", &dir))?;
            remove_all(&trash).map_err(io_err("removing", &trash))?;
            collected.images.push(name);
        } else {
            kept_blobs.extend(meta.blobs.into_iter().map(|b| image_dir.join(b)));
        }
    }
    let cache = image_dir.join(".blobs");
    let mut dirs = vec![cache.join("sha256")];
    if let Ok(scoped) = fs::read_dir(cache.join("scoped")) {
        dirs.extend(scoped.flatten().map(|e| e.path().join("sha256")));
    }
    for dir in dirs {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if !kept_blobs.contains(&path) && idle(&path) && fs::remove_file(&path).is_ok() {
                collected.blobs += 1;
            }
        }
    }
    Ok(collected)
}

fn write_meta(image_dir: &Path, name: &str, meta: &ImageMeta) -> Result<(), AgentError> {
    let path = image_dir.join(name).join("image.json");
    let json = serde_json::to_vec_pretty(meta).map_err(|e| fail(e.to_string()))?;
    let tmp = path.with_extension("json.tmp");
    fs::write(&tmp, json).map_err(|e| fail(format!("writing {}: {e}", tmp.display())))?;
    fs::rename(&tmp, &path).map_err(|e| fail(format!("writing {}: {e}", path.display())))
}

/// The images imported into `image_dir`, sorted.
pub fn list_images(image_dir: &Path) -> Result<Vec<String>, AgentError> {
    let entries = match fs::read_dir(image_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(fail(format!("listing {}: {e}", image_dir.display()))),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| fail(format!("listing {}: {e}", image_dir.display())))?;
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            continue;
        };
        if validate_image_name(&name).is_ok()
            && entry.path().join("image.json").is_file()
            && entry.path().join("rootfs").is_dir()
        {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// Makes the image store, the host root's alone (`0700`): images keep
/// their files' owners and modes, set-user-id bits included, and a
/// tenant's image (a serverless replica's) could otherwise hand any host
/// account a set-user-id root program; blobs pulled with a tenant's
/// registry login are there too.
pub fn close_image_dir(image_dir: &Path) -> Result<(), AgentError> {
    use std::os::unix::fs::PermissionsExt;
    fs::create_dir_all(image_dir)
        .map_err(|e| fail(format!("creating {}: {e}", image_dir.display())))?;
    fs::set_permissions(image_dir, fs::Permissions::from_mode(0o700))
        .map_err(|e| fail(format!("protecting {}: {e}", image_dir.display())))
}

/// Imports a root filesystem tarball (plain or gzipped) or an OCI image
/// layout (a directory, or a tar of one, plain or gzipped) as image `name`
/// in `image_dir`, replacing an image of that name.
pub fn import_image(image_dir: &Path, name: &str, file: &Path) -> Result<(), AgentError> {
    import_image_within(image_dir, name, file, u64::MAX)
}

/// [`import_image`], refusing an image whose files come to more than
/// `max_bytes` unpacked (each entry counted at least as a tar block, so a
/// flood of empty files counts too): a layer that decompresses to far more
/// than it weighs cannot fill the host's disk.
pub fn import_image_within(
    image_dir: &Path,
    name: &str,
    file: &Path,
    max_bytes: u64,
) -> Result<(), AgentError> {
    validate_image_name(name)?;
    close_image_dir(image_dir)?;
    let tmp = image_dir.join(format!(".import-{name}-{:016x}", rand::random::<u64>()));
    let mut budget = Budget {
        left: max_bytes,
        max: max_bytes,
    };
    let built = build(&tmp, name, file, &mut budget);
    if let Err(e) = built {
        let _ = remove_all(&tmp);
        return Err(e);
    }
    let dest = image_dir.join(name);
    let installed = if dest.exists() {
        // Swap the new image in with one rename; the old one lands in tmp.
        nix::fcntl::renameat2(
            nix::fcntl::AT_FDCWD,
            &tmp,
            nix::fcntl::AT_FDCWD,
            &dest,
            nix::fcntl::RenameFlags::RENAME_EXCHANGE,
        )
        .map_err(|e| fail(format!("replacing image {}: {e}", dest.display())))
    } else {
        fs::rename(&tmp, &dest)
            .map_err(|e| fail(format!("installing image {}: {e}", dest.display())))
    };
    let cleaned = remove_all(&tmp);
    installed?;
    if let Err(e) = cleaned {
        tracing::warn!(path = %tmp.display(), error = %e, "removing the replaced image");
    }
    Ok(())
}

fn remove_all(path: &Path) -> std::io::Result<()> {
    match fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
    }
}

fn io_err(what: &str, path: &Path) -> impl FnOnce(std::io::Error) -> AgentError {
    let msg = format!("{what} {}", path.display());
    move |e| fail(format!("{msg}: {e}"))
}

/// What an import may still unpack.
struct Budget {
    left: u64,
    max: u64,
}

impl Budget {
    fn spend(&mut self, bytes: u64, file: &Path) -> Result<(), AgentError> {
        self.left = self.left.checked_sub(bytes.max(512)).ok_or_else(|| {
            fail(format!(
                "unpacking {}: the image is larger than this host allows ({} bytes unpacked)",
                file.display(),
                self.max
            ))
        })?;
        Ok(())
    }
}

fn build(tmp: &Path, name: &str, file: &Path, budget: &mut Budget) -> Result<(), AgentError> {
    fs::create_dir_all(tmp).map_err(io_err("creating", tmp))?;
    let rootfs = tmp.join("rootfs");
    let mut meta = ImageMeta {
        name: name.to_string(),
        imported_at: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        source: file.display().to_string(),
        ..ImageMeta::default()
    };
    let meta_file = fs::metadata(file).map_err(io_err("reading", file))?;
    if meta_file.is_dir() {
        if !is_oci_layout(file) {
            return Err(fail(format!(
                "{} is a directory but not an OCI image layout (no oci-layout and index.json)",
                file.display()
            )));
        }
        fs::create_dir_all(&rootfs).map_err(io_err("creating", &rootfs))?;
        apply_oci(file, &rootfs, &mut meta, budget)?;
    } else {
        let unpack = tmp.join("unpack");
        fs::create_dir_all(&unpack).map_err(io_err("creating", &unpack))?;
        extract(file, &unpack, false, budget)?;
        if is_oci_layout(&unpack) {
            fs::create_dir_all(&rootfs).map_err(io_err("creating", &rootfs))?;
            apply_oci(&unpack, &rootfs, &mut meta, budget)?;
            remove_all(&unpack).map_err(io_err("removing", &unpack))?;
        } else {
            meta.format = "rootfs-tar".into();
            fs::rename(&unpack, &rootfs).map_err(io_err("renaming", &unpack))?;
        }
    }
    let json = serde_json::to_vec_pretty(&meta).map_err(|e| fail(e.to_string()))?;
    let meta_path = tmp.join("image.json");
    fs::write(&meta_path, json).map_err(io_err("writing", &meta_path))?;
    Ok(())
}

fn is_oci_layout(dir: &Path) -> bool {
    dir.join("oci-layout").is_file() && dir.join("index.json").is_file()
}

/// Opens a tar stream, gunzipping it when it starts with gzip's magic.
fn open_tar(file: &Path) -> Result<Box<dyn Read>, AgentError> {
    let mut f = File::open(file).map_err(io_err("opening", file))?;
    let mut magic = [0u8; 6];
    let n = read_up_to(&mut f, &mut magic).map_err(io_err("reading", file))?;
    f.seek(SeekFrom::Start(0))
        .map_err(io_err("reading", file))?;
    let magic = &magic[..n];
    if magic.starts_with(&[0x1f, 0x8b]) {
        Ok(Box::new(flate2::read::GzDecoder::new(BufReader::new(f))))
    } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Err(fail(format!(
            "{} is zstd-compressed; only plain and gzipped tarballs are supported",
            file.display()
        )))
    } else if magic.starts_with(&[0xfd, b'7', b'z', b'X', b'Z']) {
        Err(fail(format!(
            "{} is xz-compressed; only plain and gzipped tarballs are supported",
            file.display()
        )))
    } else {
        Ok(Box::new(BufReader::new(f)))
    }
}

fn read_up_to(f: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// The path of an entry inside `dest`, or `None` when it would leave it.
fn inside(dest: &Path, path: &Path) -> Option<PathBuf> {
    let mut out = dest.to_path_buf();
    for c in path.components() {
        match c {
            Component::Normal(part) => out.push(part),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// Whether `path`'s parent resolves inside `dest` (no symlink leads out).
fn parent_inside(dest: &Path, path: &Path) -> bool {
    let (Some(parent), Ok(root)) = (path.parent(), dest.canonicalize()) else {
        return false;
    };
    parent
        .canonicalize()
        .is_ok_and(|real| real.starts_with(&root))
}

/// Unpacks a tarball into `dest`. As an image layer (`layer`), whiteouts
/// remove what earlier layers put there.
fn extract(file: &Path, dest: &Path, layer: bool, budget: &mut Budget) -> Result<(), AgentError> {
    let reader = open_tar(file)?;
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(nix::unistd::geteuid().is_root());
    archive.set_preserve_mtime(true);
    archive.set_overwrite(true);
    archive.set_unpack_xattrs(false);
    let bad = |e: std::io::Error| {
        // tar's errors say what failed in their sources.
        let mut msg = format!("unpacking {}: {e}", file.display());
        let mut cause = std::error::Error::source(&e);
        while let Some(c) = cause {
            msg.push_str(&format!(": {c}"));
            cause = c.source();
        }
        fail(msg)
    };
    for entry in archive.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        // What it unpacks: a PAX `size` record overrides the header's.
        budget.spend(entry.size().max(entry.header().size().map_err(bad)?), file)?;
        let path = entry.path().map_err(bad)?.into_owned();
        let kind = entry.header().entry_type();
        if kind.is_character_special() || kind.is_block_special() || kind.is_fifo() {
            // The runtime makes /dev; device nodes in images are not needed.
            continue;
        }
        let Some(target) = inside(dest, &path) else {
            return Err(fail(format!(
                "unpacking {}: entry {} leaves the root",
                file.display(),
                path.display()
            )));
        };
        if layer {
            let fname = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if fname == ".wh..wh..opq" {
                // An opaque directory: nothing from earlier layers shows.
                if let Some(dir) = target.parent()
                    && dir.is_dir()
                    && parent_inside(dest, &dir.join("x"))
                {
                    for child in fs::read_dir(dir).map_err(bad)? {
                        let child = child.map_err(bad)?;
                        remove_all(&child.path()).map_err(bad)?;
                    }
                }
                continue;
            }
            if let Some(hidden) = fname.strip_prefix(".wh.") {
                if let Some(dir) = target.parent() {
                    let gone = dir.join(hidden);
                    if parent_inside(dest, &gone) {
                        remove_all(&gone).map_err(bad)?;
                    }
                }
                continue;
            }
            // A layer may turn a directory into a file or the reverse.
            if let Ok(old) = fs::symlink_metadata(&target)
                && old.is_dir() != kind.is_dir()
                && target != dest
            {
                remove_all(&target).map_err(bad)?;
            }
        }
        entry.unpack_in(dest).map_err(bad)?;
    }
    Ok(())
}

/// Reads a blob of an OCI layout by digest (`sha256:...`).
fn blob_path(layout: &Path, digest: &str) -> Result<PathBuf, AgentError> {
    let (alg, hex) = digest
        .split_once(':')
        .ok_or_else(|| fail(format!("bad digest {digest:?} in the OCI layout")))?;
    let ok = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric());
    if !ok(alg) || !ok(hex) {
        return Err(fail(format!("bad digest {digest:?} in the OCI layout")));
    }
    Ok(layout.join("blobs").join(alg).join(hex))
}

fn read_json(path: &Path) -> Result<serde_json::Value, AgentError> {
    let text = fs::read(path).map_err(io_err("reading", path))?;
    serde_json::from_slice(&text).map_err(|e| fail(format!("reading {}: {e}", path.display())))
}

fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// Finds the image manifest for this platform, following image indexes.
fn find_manifest(
    layout: &Path,
    index: &serde_json::Value,
    depth: u32,
) -> Result<serde_json::Value, AgentError> {
    if depth > 4 {
        return Err(fail("OCI image indexes nest too deep".to_string()));
    }
    let manifests = index["manifests"]
        .as_array()
        .ok_or_else(|| fail("the OCI index lists no manifests".to_string()))?;
    let fits = |m: &&serde_json::Value| {
        let p = &m["platform"];
        p.is_null() || (p["os"] == "linux" && p["architecture"] == go_arch())
    };
    let chosen = manifests.iter().find(fits).ok_or_else(|| {
        fail(format!(
            "the OCI index has no manifest for linux/{}",
            go_arch()
        ))
    })?;
    let digest = chosen["digest"]
        .as_str()
        .ok_or_else(|| fail("an OCI manifest descriptor has no digest".to_string()))?;
    let doc = read_json(&blob_path(layout, digest)?)?;
    let media = chosen["mediaType"]
        .as_str()
        .or_else(|| doc["mediaType"].as_str())
        .unwrap_or("");
    if media.contains("index") || media.contains("manifest.list") || doc["manifests"].is_array() {
        find_manifest(layout, &doc, depth + 1)
    } else {
        Ok(doc)
    }
}

fn apply_oci(
    layout: &Path,
    rootfs: &Path,
    meta: &mut ImageMeta,
    budget: &mut Budget,
) -> Result<(), AgentError> {
    meta.format = "oci".into();
    let index = read_json(&layout.join("index.json"))?;
    let manifest = find_manifest(layout, &index, 0)?;
    if let Some(digest) = manifest["config"]["digest"].as_str() {
        let config = read_json(&blob_path(layout, digest)?)?;
        let c = &config["config"];
        let strings = |v: &serde_json::Value| -> Vec<String> {
            v.as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default()
        };
        meta.entrypoint = strings(&c["Entrypoint"]);
        meta.cmd = strings(&c["Cmd"]);
        meta.command = meta.entrypoint.clone();
        meta.command.extend(meta.cmd.iter().cloned());
        meta.env = strings(&c["Env"]);
        meta.workdir = c["WorkingDir"].as_str().unwrap_or_default().to_string();
    }
    let layers = manifest["layers"]
        .as_array()
        .ok_or_else(|| fail("the OCI manifest lists no layers".to_string()))?;
    for layer in layers {
        let digest = layer["digest"]
            .as_str()
            .ok_or_else(|| fail("an OCI layer has no digest".to_string()))?;
        extract(&blob_path(layout, digest)?, rootfs, true, budget)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::Digest;

    fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, data) in files {
            let mut h = tar::Header::new_gnu();
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(0);
            if path.ends_with('/') {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                h.set_size(0);
                b.append_data(&mut h, path, &[][..]).expect("dir");
            } else {
                h.set_mode(0o644);
                h.set_size(data.len() as u64);
                b.append_data(&mut h, path, *data).expect("file");
            }
        }
        b.into_inner().expect("tar")
    }

    fn gz(data: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).expect("gz");
        e.finish().expect("gz")
    }

    fn put_blob(layout: &Path, data: &[u8]) -> String {
        let hex = hex::encode(sha2::Sha256::digest(data));
        let dir = layout.join("blobs/sha256");
        fs::create_dir_all(&dir).expect("blobs");
        fs::write(dir.join(&hex), data).expect("blob");
        format!("sha256:{hex}")
    }

    #[test]
    fn names_are_checked() {
        assert!(validate_image_name("tiny").is_ok());
        assert!(validate_image_name("debian-12_x.1").is_ok());
        assert!(validate_image_name("").is_err());
        assert!(validate_image_name("../x").is_err());
        assert!(validate_image_name(".hidden").is_err());
        assert!(validate_image_name(&"a".repeat(65)).is_err());
    }

    #[test]
    fn unused_pulled_images_and_their_blobs_are_collected() {
        use std::collections::HashSet;
        use std::time::{Duration, SystemTime};
        let dir = tempfile::tempdir().expect("tempdir");
        let images = dir.path().join("images");
        let tarball = dir.path().join("root.tar");
        fs::write(&tarball, tar_of(&[("etc/", b""), ("etc/os", b"x")])).expect("w");
        let blobs = images.join(".blobs/sha256");
        let scoped = images.join(".blobs/scoped/p1/sha256");
        fs::create_dir_all(&blobs).expect("blobs");
        fs::create_dir_all(&scoped).expect("scoped");
        let blob = |dir: &Path, name: &str| {
            let path = dir.join(name);
            fs::write(&path, name).expect("blob");
            path
        };
        let shared = blob(&blobs, "shared");
        let only_old = blob(&scoped, "only-old");
        let in_use_blob = blob(&blobs, "in-use");
        let stray = blob(&blobs, "stray");
        let fresh = blob(&blobs, "fresh");
        // Imported by the operator, pulled on demand and unused, pulled on
        // demand and used by an instance, and pulled on demand lately.
        for (name, on_demand, made_of) in [
            ("operator", false, vec![]),
            ("old", true, vec![shared.clone(), only_old.clone()]),
            ("busy", true, vec![shared.clone(), in_use_blob.clone()]),
            ("recent", true, vec![]),
        ] {
            import_image(&images, name, &tarball).expect("import");
            set_pulled(&images, name, "registry/x:v1@sha256:0", &made_of).expect("pulled");
            if on_demand {
                set_on_demand(&images, name).expect("on demand");
            }
            mark_used(&images, name);
        }
        let long_ago = SystemTime::now() - Duration::from_secs(7200);
        let age = |path: &Path| {
            File::options()
                .write(true)
                .open(path)
                .and_then(|f| f.set_modified(long_ago))
                .expect("aged");
        };
        for name in ["operator", "old", "busy"] {
            age(&images.join(name).join("used"));
            age(&images.join(name).join("image.json"));
        }
        for path in [&shared, &only_old, &in_use_blob, &stray] {
            age(path);
        }
        let in_use: HashSet<String> = ["busy".to_string()].into();
        let collected =
            collect_images(&images, &in_use, Duration::from_secs(3600)).expect("collect");
        assert_eq!(collected.images, ["old"]);
        assert_eq!(collected.blobs, 2, "its own blob and the stray one");
        assert_eq!(
            list_images(&images).expect("list"),
            ["busy", "operator", "recent"]
        );
        assert!(
            shared.exists() && in_use_blob.exists(),
            "what busy is made of stays"
        );
        assert!(!only_old.exists() && !stray.exists());
        assert!(
            fresh.exists(),
            "a blob fetched lately stays (a pull may need it)"
        );
    }

    #[test]
    fn an_image_larger_unpacked_than_allowed_is_refused_and_leaves_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let images = dir.path().join("images");
        // 4 MiB of zeros gzips to a few KiB: what counts is the unpacked size.
        let zeros = vec![0u8; 4 << 20];
        let bomb = dir.path().join("bomb.tar.gz");
        fs::write(&bomb, gz(&tar_of(&[("./big", &zeros)]))).expect("w");
        assert!(fs::metadata(&bomb).expect("m").len() < 64 << 10);
        let err = import_image_within(&images, "bomb", &bomb, 1 << 20).expect_err("too big");
        assert!(
            err.to_string().contains("larger than this host allows"),
            "{err}"
        );
        assert!(!images.join("bomb").exists());
        let leftovers: Vec<_> = fs::read_dir(&images).expect("dir").collect();
        assert!(
            leftovers.is_empty(),
            "nothing half-made is left: {leftovers:?}"
        );
        // Many empty files count too.
        let names: Vec<String> = (0..3000).map(|i| format!("./f{i}")).collect();
        let files: Vec<(&str, &[u8])> = names.iter().map(|n| (n.as_str(), &b""[..])).collect();
        let many = dir.path().join("many.tar");
        fs::write(&many, tar_of(&files)).expect("w");
        assert!(import_image_within(&images, "many", &many, 1 << 20).is_err());
        import_image_within(&images, "fits", &bomb, 8 << 20).expect("within the limit");
    }

    #[test]
    fn imports_a_gzipped_rootfs_and_replaces_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let images = dir.path().join("images");
        let t1 = dir.path().join("one.tar.gz");
        fs::write(&t1, gz(&tar_of(&[("./etc/", b""), ("./etc/os", b"one")]))).expect("w");
        import_image(&images, "img", &t1).expect("import");
        assert_eq!(
            fs::read(images.join("img/rootfs/etc/os")).expect("r"),
            b"one"
        );
        let t2 = dir.path().join("two.tar");
        fs::write(&t2, tar_of(&[("etc/", b""), ("etc/os", b"two")])).expect("w");
        import_image(&images, "img", &t2).expect("reimport");
        assert_eq!(
            fs::read(images.join("img/rootfs/etc/os")).expect("r"),
            b"two"
        );
        assert_eq!(
            read_meta(&images, "img").expect("meta").format,
            "rootfs-tar"
        );
        assert_eq!(list_images(&images).expect("list"), vec!["img".to_string()]);
        // Only the image is left: no temporary directories.
        assert_eq!(fs::read_dir(&images).expect("ls").count(), 1);
        assert!(import_image(&images, "bad/name", &t2).is_err());
        assert!(import_image(&images, "x", &dir.path().join("missing")).is_err());
        assert_eq!(list_images(&images).expect("list").len(), 1);
    }

    #[test]
    fn imports_an_oci_layout_with_whiteouts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let layout = dir.path().join("layout");
        fs::create_dir_all(&layout).expect("mk");
        fs::write(
            layout.join("oci-layout"),
            br#"{"imageLayoutVersion":"1.0.0"}"#,
        )
        .expect("w");
        let l1 = put_blob(
            &layout,
            &gz(&tar_of(&[
                ("etc/", b""),
                ("etc/keep", b"k"),
                ("etc/gone", b"g"),
                ("opaque/", b""),
                ("opaque/old", b"o"),
            ])),
        );
        let l2 = put_blob(
            &layout,
            &tar_of(&[
                ("etc/.wh.gone", b""),
                ("opaque/.wh..wh..opq", b""),
                ("opaque/new", b"n"),
            ]),
        );
        let config = put_blob(
            &layout,
            br#"{"config":{"Entrypoint":["/bin/sh"],"Cmd":["-c","sleep 1"],"Env":["A=1"]}}"#,
        );
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": 1},
            "layers": [
                {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": l1, "size": 1},
                {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": l2, "size": 1},
            ],
        });
        let m = put_blob(&layout, manifest.to_string().as_bytes());
        let index = serde_json::json!({
            "schemaVersion": 2,
            "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": m, "size": 1,
                "platform": {"os": "linux", "architecture": go_arch()}}],
        });
        fs::write(layout.join("index.json"), index.to_string()).expect("w");

        let images = dir.path().join("images");
        import_image(&images, "oci", &layout).expect("import dir");
        let root = images.join("oci/rootfs");
        assert!(root.join("etc/keep").is_file());
        assert!(!root.join("etc/gone").exists());
        assert!(!root.join("etc/.wh.gone").exists());
        assert!(!root.join("opaque/old").exists());
        assert!(root.join("opaque/new").is_file());
        let meta = read_meta(&images, "oci").expect("meta");
        assert_eq!(meta.format, "oci");
        assert_eq!(meta.command, vec!["/bin/sh", "-c", "sleep 1"]);
        assert_eq!(meta.env, vec!["A=1"]);

        // The same layout as a tarball.
        let tarball = dir.path().join("layout.tar");
        let mut b = tar::Builder::new(File::create(&tarball).expect("create"));
        b.append_dir_all(".", &layout).expect("tar layout");
        b.finish().expect("finish");
        import_image(&images, "oci2", &tarball).expect("import tar");
        assert!(images.join("oci2/rootfs/opaque/new").is_file());
        assert!(!images.join("oci2/rootfs/etc/gone").exists());
        assert!(!images.join("oci2/rootfs/oci-layout").exists());
    }
}
