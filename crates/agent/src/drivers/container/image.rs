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

/// Records where image `name` came from (`image.json`'s `source`).
pub(super) fn set_source(image_dir: &Path, name: &str, source: &str) -> Result<(), AgentError> {
    let mut meta = read_meta(image_dir, name)?;
    meta.source = source.to_string();
    let path = image_dir.join(name).join("image.json");
    let json = serde_json::to_vec_pretty(&meta).map_err(|e| fail(e.to_string()))?;
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
    fs::create_dir_all(image_dir)
        .map_err(|e| fail(format!("creating {}: {e}", image_dir.display())))?;
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
        budget.spend(entry.header().size().map_err(bad)?, file)?;
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
