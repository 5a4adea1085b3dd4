//! Sealing what must be read back: secrets' values, file secrets' files
//! and registry credentials are stored encrypted (XChaCha20-Poly1305) with a
//! key that lives in the control plane's data directory, never in the
//! database, so a copy of the database alone reveals none of them.
//!
//! A sealed text is `v1.<key id>.<base64 of nonce and ciphertext>`. The key
//! id (the first 8 bytes of the key's SHA-256) tells a replica holding
//! another key why it cannot open a text, rather than failing as if the
//! text were corrupt. What a text belongs to (its table, project and name)
//! is bound in as associated data, so a sealed value moved to another row
//! does not open there.

use base64::Engine;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};
use rand::RngCore;
use sha2::{Digest, Sha256};
use std::fmt;
use std::io::Write;
use std::path::Path;

/// The key that seals and opens stored secrets.
#[derive(Clone)]
pub struct SealingKey {
    key: Key,
    id: String,
}

impl fmt::Debug for SealingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SealingKey").field("id", &self.id).finish()
    }
}

const VERSION: &str = "v1";
const NONCE_LEN: usize = 24;

/// Why a sealed text did not open.
#[derive(Debug, thiserror::Error)]
pub enum Unsealed {
    #[error(
        "it was sealed with key {sealed_with}, and this control plane's key is {ours}: every replica needs the same secrets key"
    )]
    OtherKey { sealed_with: String, ours: String },
    #[error("it is damaged, or was moved from another row")]
    Damaged,
}

impl SealingKey {
    pub fn from_bytes(bytes: [u8; 32]) -> SealingKey {
        let id = hex::encode(&Sha256::digest(bytes)[..8]);
        SealingKey {
            key: Key::from(bytes),
            id,
        }
    }

    /// A new random key.
    pub fn generate() -> SealingKey {
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        SealingKey::from_bytes(bytes)
    }

    /// The key's public name: which key sealed a text.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Reads the key in `path` (64 hex digits), or makes one there, readable
    /// by its owner only, when there is no file.
    pub fn load_or_create(path: &Path) -> Result<SealingKey, String> {
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let bytes: [u8; 32] = hex::decode(text.trim())
                    .ok()
                    .and_then(|b| b.try_into().ok())
                    .ok_or_else(|| {
                        format!(
                            "{} does not hold a secrets key (64 hex digits)",
                            path.display()
                        )
                    })?;
                Ok(SealingKey::from_bytes(bytes))
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                let key = SealingKey::generate();
                let mut options = std::fs::OpenOptions::new();
                options.write(true).create_new(true);
                #[cfg(unix)]
                std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
                let mut file = options
                    .open(path)
                    .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
                writeln!(file, "{}", hex::encode(key.key.as_slice()))
                    .and_then(|()| file.sync_all())
                    .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
                Ok(key)
            }
            Err(err) => Err(format!("cannot read {}: {err}", path.display())),
        }
    }

    /// Seals `plain` for the row named by `context`.
    pub fn seal(&self, context: &str, plain: &[u8]) -> String {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        self.seal_with(context, plain, nonce)
    }

    fn seal_with(&self, context: &str, plain: &[u8], nonce: [u8; NONCE_LEN]) -> String {
        let cipher = XChaCha20Poly1305::new(&self.key);
        let sealed = cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: plain,
                    aad: context.as_bytes(),
                },
            )
            // Encryption fails only past 256 GiB of plaintext.
            .unwrap_or_default();
        let mut joined = nonce.to_vec();
        joined.extend_from_slice(&sealed);
        format!("{VERSION}.{}.{}", self.id, STANDARD_NO_PAD.encode(joined))
    }

    /// Seals `plain` with a nonce derived from the key, the context and
    /// `plain` itself (a synthetic nonce, as AES-SIV does): the same value
    /// seals to the same text, so a desired state that did not change
    /// compares equal. It reveals only that two texts hold the same value.
    pub fn seal_stable(&self, context: &str, plain: &[u8]) -> String {
        let mut hash = Sha256::new();
        hash.update(b"tessera-synthetic-nonce\0");
        hash.update(self.key.as_slice());
        hash.update(context.as_bytes());
        hash.update([0u8]);
        hash.update(plain);
        let digest = hash.finalize();
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&digest[..NONCE_LEN]);
        self.seal_with(context, plain, nonce)
    }

    /// Opens what [`SealingKey::seal`] sealed for the same `context`.
    pub fn open(&self, context: &str, sealed: &str) -> Result<Vec<u8>, Unsealed> {
        let mut parts = sealed.splitn(3, '.');
        let (Some(VERSION), Some(id), Some(body)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(Unsealed::Damaged);
        };
        if id != self.id {
            return Err(Unsealed::OtherKey {
                sealed_with: id.to_string(),
                ours: self.id.clone(),
            });
        }
        let joined = STANDARD_NO_PAD
            .decode(body)
            .map_err(|_| Unsealed::Damaged)?;
        if joined.len() < NONCE_LEN {
            return Err(Unsealed::Damaged);
        }
        let (nonce, ciphertext) = joined.split_at(NONCE_LEN);
        XChaCha20Poly1305::new(&self.key)
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad: context.as_bytes(),
                },
            )
            .map_err(|_| Unsealed::Damaged)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_value_opens_only_with_its_key_and_for_its_row() {
        let key = SealingKey::generate();
        let sealed = key.seal("secrets/p1/token", b"tk_123");
        assert!(!sealed.contains("tk_123"));
        assert_eq!(
            key.open("secrets/p1/token", &sealed).expect("a value"),
            b"tk_123"
        );
        // Two seals of one value differ (a fresh nonce each time).
        assert_ne!(sealed, key.seal("secrets/p1/token", b"tk_123"));
        // Moved to another project's row: refused.
        assert!(matches!(
            key.open("secrets/p2/token", &sealed),
            Err(Unsealed::Damaged)
        ));
        // Another replica's key: refused, and said so.
        let other = SealingKey::generate();
        assert!(matches!(
            other.open("secrets/p1/token", &sealed),
            Err(Unsealed::OtherKey { .. })
        ));
        // A flipped byte: refused.
        let mut bytes = sealed.into_bytes();
        let last = bytes.len() - 2;
        bytes[last] = if bytes[last] == b'A' { b'B' } else { b'A' };
        let damaged = String::from_utf8(bytes).expect("a value");
        assert!(key.open("secrets/p1/token", &damaged).is_err());
    }

    #[test]
    fn the_key_file_is_made_once_and_read_back() {
        let dir = tempfile::tempdir().expect("a value");
        let path = dir.path().join("secrets.key");
        let made = SealingKey::load_or_create(&path).expect("a value");
        let read = SealingKey::load_or_create(&path).expect("a value");
        assert_eq!(made.id(), read.id());
        let sealed = made.seal("c", b"v");
        assert_eq!(read.open("c", &sealed).expect("a value"), b"v");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path)
                .expect("a value")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::write(&path, "not a key").expect("a value");
        assert!(SealingKey::load_or_create(&path).is_err());
    }
}
