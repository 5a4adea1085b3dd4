//! What the unit driver remembers across restarts: `STATE/units/units.json`.
//!
//! It lists the host's units, whether a tenant holds each, and the highest
//! generation seen per unit: the fencing token. [`Inner::fence`] refuses a
//! step older than one already done, so a late key install never lands on
//! the unit's next tenant. Every change is a read-modify-write under
//! `Inner::state_lock`, written atomically.

use super::files::write_atomic;
use super::{Inner, Result, failed, io_failed};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;
use tessera_agent_api::UnitSpec;

#[derive(Debug, Default, Serialize, Deserialize)]
pub(super) struct StateFile {
    /// By Linux user name (prefix included).
    pub(super) units: BTreeMap<String, UnitRecord>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct UnitRecord {
    pub(super) spec: UnitSpec,
    /// The highest generation seen for the unit.
    pub(super) generation: i64,
    /// Whether a tenant holds it (a key is installed, dropbear should run).
    pub(super) active: bool,
}

impl Inner {
    pub(super) fn state_path(&self) -> PathBuf {
        self.dir.join("units.json")
    }

    pub(super) fn load_state(&self) -> Result<StateFile> {
        let path = self.state_path();
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| failed(format!("unit driver: reading {}: {e}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(StateFile::default()),
            Err(e) => Err(io_failed(
                format!("unit driver: reading {}", path.display()),
                e,
            )),
        }
    }

    fn save_state(&self, state: &StateFile) -> Result<()> {
        let path = self.state_path();
        let bytes = serde_json::to_vec_pretty(state)
            .map_err(|e| failed(format!("unit driver: encoding state: {e}")))?;
        write_atomic(&path, &bytes, 0o600)
    }

    pub(super) fn update_state<R>(
        &self,
        change: impl FnOnce(&mut StateFile) -> Result<R>,
    ) -> Result<R> {
        let _guard = self.state_lock.lock().unwrap_or_else(|e| e.into_inner());
        let mut state = self.load_state()?;
        let result = change(&mut state)?;
        self.save_state(&state)?;
        Ok(result)
    }

    /// Fencing: refuses a step older than one already seen for the unit,
    /// records its generation and whether the unit is now held. Answers
    /// whether the unit was known.
    pub(super) fn fence(&self, unit: &UnitSpec, user: &str, active: bool) -> Result<bool> {
        self.update_state(|state| match state.units.get_mut(user) {
            Some(record) if unit.generation < record.generation => Err(failed(format!(
                "unit {} ({user}): refusing a stale step of generation {}; generation {} is already done",
                unit.compute_id, unit.generation, record.generation
            ))),
            Some(record) => {
                record.generation = unit.generation;
                record.spec = unit.clone();
                record.active = active;
                Ok(true)
            }
            None => {
                state.units.insert(
                    user.to_owned(),
                    UnitRecord {
                        spec: unit.clone(),
                        generation: unit.generation,
                        active,
                    },
                );
                Ok(false)
            }
        })
    }
}
