//! Who may call the API.
//!
//! Until identity lands, one bootstrap admin token: `TESSERA_ADMIN_TOKEN`
//! when set, otherwise generated on first start and shown once. Tokens are
//! high-entropy, so a SHA-256 hash is what is stored and compared (a slow
//! password hash buys nothing for them and would cost every request).

use crate::error::{Error, Result};
use rand::RngCore;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tessera_store::Store;

const BOOTSTRAP_TOKEN_ID: &str = "bootstrap-admin";
/// How long a verified token is trusted without asking the store again.
const CACHE_TTL: Duration = Duration::from_secs(10);

/// The caller behind a request.
#[derive(Clone, Debug)]
pub struct Principal {
    pub token_id: String,
    pub name: String,
}

pub struct Access {
    store: Store,
    verified: Mutex<HashMap<String, (Principal, Instant)>>,
}

pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

impl Access {
    pub fn new(store: Store) -> Self {
        Self {
            store,
            verified: Mutex::new(HashMap::new()),
        }
    }

    /// Ensures the bootstrap admin token exists. With `from_env`, that token
    /// is the admin's; without, a token is generated on the first start and
    /// returned so that it can be shown once (`None` on later starts).
    pub async fn bootstrap(&self, from_env: Option<&str>) -> Result<Option<String>> {
        if let Some(token) = from_env {
            if token.len() < 16 {
                return Err(Error::invalid(
                    "TESSERA_ADMIN_TOKEN",
                    "TESSERA_ADMIN_TOKEN must be at least 16 characters",
                ));
            }
            self.store
                .put_token(BOOTSTRAP_TOKEN_ID, "bootstrap admin", &hash_token(token))
                .await?;
            return Ok(None);
        }
        if self.store.token(BOOTSTRAP_TOKEN_ID).await?.is_some() {
            return Ok(None);
        }
        let mut secret = [0u8; 32];
        rand::rng().fill_bytes(&mut secret);
        let token = format!("tsr_{}", hex::encode(secret));
        self.store
            .put_token(BOOTSTRAP_TOKEN_ID, "bootstrap admin", &hash_token(&token))
            .await?;
        Ok(Some(token))
    }

    /// The principal a bearer token stands for.
    pub async fn authenticate(&self, bearer: Option<&str>) -> Result<Principal> {
        let Some(token) = bearer.filter(|t| !t.is_empty()) else {
            return Err(Error::Unauthenticated("Not authenticated".into()));
        };
        let hash = hash_token(token);
        if let Some(principal) = self.cached(&hash) {
            return Ok(principal);
        }
        let record =
            self.store.token_by_hash(&hash).await?.ok_or_else(|| {
                Error::Unauthenticated("Invalid authentication credentials".into())
            })?;
        let principal = Principal {
            token_id: record.id,
            name: record.name,
        };
        let mut verified = self.verified.lock().unwrap_or_else(|e| e.into_inner());
        if verified.len() > 10_000 {
            verified.clear();
        }
        verified.insert(hash, (principal.clone(), Instant::now()));
        Ok(principal)
    }

    fn cached(&self, hash: &str) -> Option<Principal> {
        let verified = self.verified.lock().unwrap_or_else(|e| e.into_inner());
        verified
            .get(hash)
            .filter(|(_, at)| at.elapsed() < CACHE_TTL)
            .map(|(p, _)| p.clone())
    }
}
