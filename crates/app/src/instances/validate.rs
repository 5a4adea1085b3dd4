//! Checking an instance request: its name, labels, spec and startup
//! script, against the catalog.

use super::{CreateInstance, MAX_USER_DATA};
use crate::error::{Error, Result};
use base64::Engine;
use tessera_core::catalog::{Catalog, MAX_DISK_GB, MAX_MEMORY_MB, MAX_VCPUS};

/// The most labels an instance has, and terms a selector names.
const MAX_LABELS: usize = 64;

/// Parses a label selector: `env=production,team=platform`, each term a
/// label an instance could have (so at most 64 of them).
pub fn parse_selector(selector: &str) -> Result<Vec<(String, String)>> {
    let terms: Vec<(String, String)> = selector
        .split(',')
        .filter(|part| !part.trim().is_empty())
        .map(|part| {
            let (key, value) = part.split_once('=').ok_or_else(|| {
                Error::invalid(
                    "labels",
                    format!("label selector {part:?} is not key=value (e.g. labels=env=production,team=platform)"),
                )
            })?;
            let (key, value) = (key.trim(), value.trim());
            check_label("labels", key, value)?;
            Ok((key.to_string(), value.to_string()))
        })
        .collect::<Result<_>>()?;
    if terms.len() > MAX_LABELS {
        return Err(Error::invalid(
            "labels",
            format!("a label selector names at most {MAX_LABELS} labels, as an instance has"),
        ));
    }
    Ok(terms)
}

/// Checks one label (of a request's `field`).
fn check_label(field: &'static str, key: &str, value: &str) -> Result<()> {
    let key_ok = !key.is_empty()
        && key.len() <= 63
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'/'));
    if !key_ok
        || value.len() > 63
        || value.contains([',', '='])
        || value.chars().any(char::is_control)
    {
        return Err(Error::invalid(
            field,
            format!(
                "label {key:?}={value:?}: keys are 1 to 63 letters, digits, '-', '_', '.' or '/'; values at most 63 printable characters without ',' or '='"
            ),
        ));
    }
    Ok(())
}

pub(super) fn check_text(field: &'static str, value: &str, max: usize) -> Result<()> {
    if value.is_empty() || value.len() > max || value.chars().any(char::is_control) {
        return Err(Error::invalid(
            field,
            format!("{field} must be 1 to {max} printable characters"),
        ));
    }
    Ok(())
}

pub(crate) fn validate(catalog: &Catalog, req: &mut CreateInstance) -> Result<Option<Vec<u8>>> {
    let name = &req.name;
    // The name is the instance's host name: a leading '-' or '.' would be
    // read as an option or a relative name by what it is handed to.
    let name_ok = name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !name_ok {
        return Err(Error::invalid(
            "metadata.name",
            "metadata.name must be 1 to 63 letters, digits, '-', '_' or '.', starting with a letter or digit",
        ));
    }
    if req.labels.len() > MAX_LABELS {
        return Err(Error::invalid(
            "metadata.labels",
            format!("at most {MAX_LABELS} labels"),
        ));
    }
    let mut listed = std::collections::HashSet::new();
    if let Some(twice) = req.existing_volumes.iter().find(|v| !listed.insert(*v)) {
        return Err(Error::invalid(
            "existing_volumes",
            format!("volume {twice} is listed twice"),
        ));
    }
    for (key, value) in &req.labels {
        check_label("metadata.labels", key, value)?;
    }
    let spec = &mut req.spec;
    let Some(kind) = catalog.instance_type(&spec.instance_type) else {
        return Err(Error::invalid(
            "spec.type",
            format!(
                "unknown instance type {:?}; known types: {}",
                spec.instance_type,
                Catalog::names(catalog.instance_types.iter().map(|t| t.name.as_str()))
            ),
        ));
    };
    if catalog.image(&spec.image).is_none() {
        return Err(Error::invalid(
            "spec.image",
            format!(
                "unknown image {:?}; known images: {}",
                spec.image,
                Catalog::names(catalog.images.iter().map(|i| i.image_type.as_str()))
            ),
        ));
    }
    if !kind.runs(&spec.image) {
        return Err(Error::invalid(
            "spec.image",
            format!(
                "instance type {} does not support image {}; it supports {}",
                spec.instance_type,
                spec.image,
                kind.supported_os.join(", ")
            ),
        ));
    }
    let vcpus = spec.vcpus.unwrap_or(kind.vcpus);
    if !(1..=MAX_VCPUS).contains(&vcpus) {
        return Err(Error::invalid(
            "spec.vcpus",
            format!("vcpus must be between 1 and {MAX_VCPUS}"),
        ));
    }
    let memory_mb = spec.memory_mb.unwrap_or(kind.memory_mb());
    if !(128..=MAX_MEMORY_MB).contains(&memory_mb) {
        return Err(Error::invalid(
            "spec.memory_mb",
            format!("memory_mb must be between 128 and {MAX_MEMORY_MB}"),
        ));
    }
    let disk_gb = spec.disk_gb.unwrap_or(kind.disk_gb);
    if !(1..=MAX_DISK_GB).contains(&disk_gb) {
        return Err(Error::invalid(
            "spec.disk_gb",
            format!("disk_gb must be between 1 and {MAX_DISK_GB}"),
        ));
    }
    (spec.vcpus, spec.memory_mb, spec.disk_gb) = (Some(vcpus), Some(memory_mb), Some(disk_gb));
    for (field, value) in [
        ("spec.vpc_id", &spec.vpc_id),
        ("spec.subnet_id", &spec.subnet_id),
        ("spec.location", &spec.location),
    ] {
        if let Some(value) = value {
            check_text(field, value, 64)?;
        }
    }
    if spec.security_groups.len() > 32 {
        return Err(Error::invalid(
            "spec.security_groups",
            "at most 32 security groups",
        ));
    }
    for group in &spec.security_groups {
        check_text("spec.security_groups", group, 64)?;
    }
    if spec.ssh_key_ids.len() > 32 {
        return Err(Error::invalid("spec.ssh_key_ids", "at most 32 SSH keys"));
    }
    // A key named twice is one key (as the containers API takes it).
    let mut named = std::collections::HashSet::new();
    spec.ssh_key_ids.retain(|key| named.insert(key.clone()));
    let user_data = match &spec.user_data {
        None => None,
        Some(text) => {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(text.trim())
                .map_err(|e| {
                    Error::invalid("spec.user_data", format!("user_data is not base64 ({e})"))
                })?;
            if decoded.len() > MAX_USER_DATA {
                return Err(Error::invalid(
                    "spec.user_data",
                    format!("user_data is at most {MAX_USER_DATA} bytes once decoded"),
                ));
            }
            Some(decoded)
        }
    };
    Ok(user_data)
}
