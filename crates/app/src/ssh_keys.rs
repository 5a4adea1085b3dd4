//! SSH public keys of a project, which instances name in `ssh_key_ids`.
//!
//! A key is taken as Verda takes it: one line of a known key type and a
//! base64 body, with an optional comment. Its body is checked only as far
//! as every SSH key's is alike (a client may send a key real Verda accepts
//! that the `ssh-key` crate would not): it must name the line's key type
//! (`ssh-rsa` on an Ed25519 body can never log in), an Ed25519 key must be
//! whole, and no key may be larger than OpenSSH takes. What is clearly not
//! a key (no type, an unknown type, NUL, line breaks, a body that is not
//! base64) is refused.

use crate::error::{Error, Result};
use crate::identity::Principal;
use crate::{App, has_nul, new_id};
use tessera_core::quota::Usage;
use tessera_core::{Permission, ProjectId};
use tessera_store::{KeyAdded, SshKeyRecord};

/// An SSH public key of a project.
#[derive(Clone, Debug)]
pub struct SshKey {
    pub id: String,
    pub project_id: ProjectId,
    pub name: String,
    /// One `authorized_keys` line.
    pub public_key: String,
    /// `SHA256:...`, as `ssh-keygen -l` prints it.
    pub fingerprint: String,
    pub created_at: String,
    /// Its number within its project (the containers API's integer id).
    pub number: i64,
}

impl From<SshKeyRecord> for SshKey {
    fn from(r: SshKeyRecord) -> SshKey {
        SshKey {
            id: r.id,
            project_id: ProjectId::new(r.project_id),
            name: r.name,
            public_key: r.public_key,
            fingerprint: r.fingerprint,
            created_at: r.created_at,
            number: r.number,
        }
    }
}

#[derive(Clone, Debug)]
pub struct CreateSshKey {
    pub name: String,
    pub public_key: String,
    /// How closely its body is read.
    pub check: KeyCheck,
}

/// How closely a new key's body is read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KeyCheck {
    /// A key of its type, as OpenSSH reads it (Tessera's own APIs).
    #[default]
    Whole,
    /// As Verda takes keys: a known type and a body of base64's letters,
    /// no more. Verda's clients send keys real Verda accepts (its Go SDK's
    /// and Terraform provider's own tests send bodies that are not whole
    /// base64); a host that cannot read one skips it, as sshd does.
    AsVerda,
}

/// The key types an OpenSSH `authorized_keys` line may name.
const KEY_TYPES: &[&str] = &[
    "ssh-ed25519",
    "ssh-rsa",
    "ssh-dss",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
    "ssh-ed25519-cert-v01@openssh.com",
    "ssh-rsa-cert-v01@openssh.com",
    "ecdsa-sha2-nistp256-cert-v01@openssh.com",
    "ecdsa-sha2-nistp384-cert-v01@openssh.com",
    "ecdsa-sha2-nistp521-cert-v01@openssh.com",
    "sk-ssh-ed25519-cert-v01@openssh.com",
    "sk-ecdsa-sha2-nistp256-cert-v01@openssh.com",
];

/// A key line as stored: its trimmed text and its SHA-256 fingerprint
/// (OpenSSH's, of the decoded body).
pub fn check_public_key(field: &'static str, key: &str) -> Result<(String, String)> {
    check_key_line(field, key, KeyCheck::Whole)
}

/// [`check_public_key`], as closely as `check` says.
pub fn check_key_line(field: &'static str, key: &str, check: KeyCheck) -> Result<(String, String)> {
    use base64::Engine;
    use sha2::Digest;
    let key = key.trim();
    if key.chars().any(char::is_control) {
        return Err(Error::invalid(
            field,
            format!("{field} must be a single OpenSSH public key line, without control characters"),
        ));
    }
    let mut parts = key.split_ascii_whitespace();
    let (kind, body) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if !KEY_TYPES.contains(&kind) {
        return Err(Error::invalid(
            field,
            format!(
                "{field} must start with a key type ({}), as in \"ssh-ed25519 AAAA... user@host\"",
                KEY_TYPES[..6].join(", ")
            ),
        ));
    }
    if check == KeyCheck::AsVerda {
        return base64_looking(field, kind, key, body);
    }
    let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(body) else {
        return Err(Error::invalid(
            field,
            format!("{field}: the key's body after {kind} is not base64"),
        ));
    };
    if let Err(why) = check_key_body(kind, &decoded) {
        return Err(Error::invalid(
            field,
            format!("{field}: the key's body is not an {kind} key ({why})"),
        ));
    }
    let fingerprint =
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(sha2::Sha256::digest(&decoded));
    Ok((key.to_string(), format!("SHA256:{fingerprint}")))
}

/// A key line whose body needs only look like base64 ([`KeyCheck::AsVerda`]):
/// its letters, at most what the largest key takes. Its fingerprint is
/// OpenSSH's when the body decodes, else the SHA-256 of its text.
fn base64_looking(
    field: &'static str,
    kind: &str,
    key: &str,
    body: &str,
) -> Result<(String, String)> {
    use base64::Engine;
    use sha2::Digest;
    // Every key body starts with its type's name, length first: in
    // base64, the whole groups of three bytes of that are fixed.
    let mut named = (kind.len() as u32).to_be_bytes().to_vec();
    named.extend_from_slice(kind.as_bytes());
    let whole = named.len() / 3 * 3;
    let prefix = base64::engine::general_purpose::STANDARD.encode(&named[..whole]);
    let letters = body.trim_end_matches('=');
    if letters.len() <= prefix.len()
        || !body.starts_with(&prefix)
        || body.len() - letters.len() > 2
        || body.len() > MAX_KEY_BODY * 4 / 3 + 4
        || !letters
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
    {
        return Err(Error::invalid(
            field,
            format!("{field}: the key's body after {kind} is not base64"),
        ));
    }
    let lenient = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent)
            .with_decode_allow_trailing_bits(true),
    );
    let digest = match lenient.decode(body) {
        Ok(decoded) => sha2::Sha256::digest(&decoded),
        Err(_) => sha2::Sha256::digest(body.as_bytes()),
    };
    let fingerprint = base64::engine::general_purpose::STANDARD_NO_PAD.encode(digest);
    Ok((key.to_string(), format!("SHA256:{fingerprint}")))
}

/// The most a key's body may weigh: OpenSSH takes RSA keys of up to 16,384
/// bits (2 KiB of modulus); a certificate carries more, never this much.
const MAX_KEY_BODY: usize = 16 * 1024;

/// Checks what every SSH key body shares: it starts with its type's name
/// (a 32-bit big-endian length, then the name), which is the line's; an
/// Ed25519 key is that and its 32 bytes, nothing more.
fn check_key_body(kind: &str, body: &[u8]) -> std::result::Result<(), String> {
    if body.len() > MAX_KEY_BODY {
        return Err(format!("{} bytes, more than any SSH key", body.len()));
    }
    let end = body
        .get(..4)
        .map(|n| u32::from_be_bytes([n[0], n[1], n[2], n[3]]) as usize)
        .and_then(|n| n.checked_add(4))
        .filter(|end| *end <= body.len())
        .ok_or("it does not start with its key type")?;
    let named = &body[4..end];
    if named != kind.as_bytes() {
        return Err(format!("it names {:?}", String::from_utf8_lossy(named)));
    }
    if end == body.len() {
        return Err("it is its type's name and no key".into());
    }
    if kind == "ssh-ed25519" && body.len() != 4 + kind.len() + 4 + 32 {
        return Err("an Ed25519 key is 32 bytes".into());
    }
    Ok(())
}

impl App {
    pub async fn ssh_keys(&self, caller: &Principal) -> Result<Vec<SshKey>> {
        caller.require(Permission::SshKeyRead)?;
        let keys = self.store.ssh_keys(&caller.project_id).await?;
        Ok(keys.into_iter().map(SshKey::from).collect())
    }

    pub async fn ssh_key(&self, caller: &Principal, id: &str) -> Result<SshKey> {
        caller.require(Permission::SshKeyRead)?;
        self.project_ssh_key(&caller.project_id, id).await
    }

    pub(crate) async fn project_ssh_key(&self, project_id: &str, id: &str) -> Result<SshKey> {
        let key = match has_nul(id) {
            true => None,
            false => self.store.ssh_key(project_id, id).await?,
        };
        key.map(SshKey::from)
            .ok_or_else(|| Error::NotFound(format!("SSH key {id} not found")))
    }

    pub async fn create_ssh_key(&self, caller: &Principal, req: CreateSshKey) -> Result<SshKey> {
        caller.require(Permission::SshKeyWrite)?;
        let name = req.name.trim();
        if name.is_empty() || name.len() > 128 || name.chars().any(char::is_control) {
            return Err(Error::invalid(
                "name",
                "name must be 1 to 128 printable characters",
            ));
        }
        let (public_key, fingerprint) = check_key_line("public_key", &req.public_key, req.check)?;
        let mut key = SshKeyRecord {
            id: new_id("key"),
            project_id: caller.project_id.clone(),
            name: name.to_string(),
            public_key,
            fingerprint,
            created_at: tessera_store::now(),
            number: 0,
        };
        let quota = self.quota_check(
            &caller.project_id,
            Usage {
                ssh_keys: 1,
                ..Usage::default()
            },
        );
        match self.store.insert_ssh_key(&key, Some(&quota)).await? {
            KeyAdded::Added(number) => key.number = number,
            KeyAdded::NameTaken => {
                return Err(Error::Conflict(format!(
                    "an SSH key named {name} already exists"
                )));
            }
        }
        Ok(key.into())
    }

    /// Deletes a key of the project by its number (the containers API's
    /// integer id).
    pub async fn delete_ssh_key_numbered(&self, caller: &Principal, number: i64) -> Result<()> {
        caller.require(Permission::SshKeyWrite)?;
        let key = self
            .store
            .ssh_key_numbered(&caller.project_id, number)
            .await?
            .ok_or_else(|| Error::NotFound(format!("SSH key {number} not found")))?;
        self.store
            .delete_ssh_key(&caller.project_id, &key.id)
            .await?;
        Ok(())
    }

    pub async fn delete_ssh_key(&self, caller: &Principal, id: &str) -> Result<()> {
        caller.require(Permission::SshKeyWrite)?;
        let key = self.project_ssh_key(&caller.project_id, id).await?;
        self.store
            .delete_ssh_key(&caller.project_id, &key.id)
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAILmnyh5Zhh+xjmtoWSoe3i1RmWA29P+9P0gB1tgCQjT5 test@tessera";

    #[test]
    fn a_key_is_taken_as_verda_takes_it() {
        let (text, fingerprint) = check_public_key("key", &format!("  {KEY}\n")).expect("key");
        assert_eq!(text, KEY);
        let parsed = ssh_key::PublicKey::from_openssh(KEY).expect("parses");
        assert_eq!(
            fingerprint,
            parsed.fingerprint(ssh_key::HashAlg::Sha256).to_string(),
            "the fingerprint is OpenSSH's"
        );
        // A body Verda accepts that is no key the ssh-key crate reads.
        let odd = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABgQC7c2VjcmV0IHN0dWZm go-client";
        assert!(ssh_key::PublicKey::from_openssh(odd).is_err());
        assert!(check_public_key("key", odd).is_ok());
    }

    #[test]
    fn as_verda_a_body_needs_only_look_like_base64() {
        let verda = |line: &str| check_key_line("key", line, KeyCheck::AsVerda);
        // Bodies of base64's letters whose length no base64 has (as in the
        // Go SDK's and the Terraform provider's tests against Verda).
        for odd in [
            "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQC7 terraform@test",
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIG",
            KEY,
        ] {
            assert!(verda(odd).is_ok(), "{odd}");
            assert!(verda(odd).expect("taken").1.starts_with("SHA256:"));
        }
        assert_eq!(
            verda(KEY).expect("key"),
            check_public_key("key", KEY).expect("key")
        );
        for bad in [
            "ssh-foo AAAA",
            "ssh-ed25519",
            "ssh-rsa nope",
            "ssh-rsa AAAAB3NzaC1y",
            "ssh-ed25519 AAAAB3NzaC1yc2EAAAADAQABAAABAQC7",
            "ssh-ed25519 not*base64!",
            "ssh-ed25519 ====",
            "ssh-ed25519 AAAA\nssh-rsa AAAA",
        ] {
            assert!(verda(bad).is_err(), "{bad:?}");
        }
        assert!(verda(&format!("ssh-rsa {}", "A".repeat(30_000))).is_err());
    }

    #[test]
    fn what_is_clearly_not_a_key_is_refused() {
        for bad in [
            "AAAAC3NzaC1lZDI1NTE5AAAAILmnyh5Zhh+xjmtoWSoe3i1RmWA29P+9P0gB1tgCQjT5",
            "ssh-foo AAAAC3NzaC1lZDI1NTE5AAAAILmnyh5Zhh+xjmtoWSoe3i1RmWA29P+9P0gB1tgCQjT5",
            "ssh-ed25519 not*base64!",
            "ssh-ed25519",
            "ssh-ed25519 AAAA",
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAILmnyh5Zhh+xjmtoWSoe3i1RmWA29P+9P0gB1tgCQjT5\nssh-rsa AAAA",
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAILmnyh5Zhh+xjmtoWSoe3i1RmWA29P+9P0gB1tgCQjT5\0",
            "",
        ] {
            assert!(check_public_key("key", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_body_that_cannot_be_its_type_is_refused() {
        use base64::Engine;
        let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
        let body = KEY.split(' ').nth(1).expect("body");
        let refused = |line: &str| match check_public_key("key", line) {
            Err(Error::Invalid { message, .. }) => message,
            other => panic!("{line:?}: {other:?}"),
        };
        // Another type's body under this type's name.
        let rsa = "AAAAB3NzaC1yc2EAAAADAQABAAABgQC7c2VjcmV0IHN0dWZm";
        let why = refused(&format!("ssh-ed25519 {rsa}"));
        assert!(why.contains("names \"ssh-rsa\""), "{why}");
        assert!(refused(&format!("ssh-rsa {body}")).contains("ssh-ed25519"));
        // An Ed25519 key cut short, or with more than its key.
        refused("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAABQEBAQEB");
        let mut long = base64::engine::general_purpose::STANDARD
            .decode(body)
            .expect("base64");
        long.push(0);
        refused(&format!("ssh-ed25519 {}", b64(&long)));
        // Base64 that is no key at all, or a type's name alone.
        assert!(refused("ssh-ed25519 AAAAAAAA").contains("not an ssh-ed25519 key"));
        assert!(refused("ssh-rsa AAAAB3NzaC1yc2E=").contains("no key"));
        // Larger than any key OpenSSH takes.
        let mut huge = b"\0\0\0\x07ssh-rsa".to_vec();
        huge.resize(200_000, 0xff);
        assert!(refused(&format!("ssh-rsa {}", b64(&huge))).contains("more than any SSH key"));
    }
}
