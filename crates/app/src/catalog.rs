//! Catalog questions whose answers depend on the fleet: which instance
//! types could be placed now, and where. Computed from the hosts' real free
//! CPUs and memory (the placement view, refreshed first so that other
//! replicas' decisions count), never from the catalog file.

use crate::App;
use crate::error::{Error, Result};
use tessera_core::catalog::InstanceType;
use tessera_core::placement::Request;

/// The instance types that could be placed now in one location.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Availability {
    pub location: String,
    pub instance_types: Vec<String>,
}

impl App {
    pub(crate) fn fits(&self, kind: &InstanceType, location: &str) -> bool {
        // No host offers GPUs yet (agents do not report them).
        if kind.gpus > 0 {
            return false;
        }
        // A location names a region or, failing that, a zone.
        [
            (Some(location.to_string()), None),
            (None, Some(location.to_string())),
        ]
        .into_iter()
        .any(|(region, zone)| {
            let request = Request::Cpus {
                count: kind.vcpus,
                memory_mb: kind.memory_mb(),
                region,
                zone,
                whole_units: true,
                arch: Some(kind.arch.clone()),
                share: None,
                // A type, whatever image it is asked with.
                image: None,
            };
            self.placement
                .with_engine(|engine| engine.place(&request).is_some())
        })
    }

    /// Checks a location code against the catalog.
    pub fn check_location(&self, field: &'static str, code: &str) -> Result<()> {
        if self.catalog.location(code).is_none() {
            return Err(Error::invalid(
                field,
                format!(
                    "unknown location {:?}; known locations: {}",
                    code,
                    tessera_core::catalog::Catalog::names(
                        self.catalog.locations.iter().map(|l| l.code.as_str())
                    )
                ),
            ));
        }
        Ok(())
    }

    /// A native `spec.location`: a region or zone of a server here that is
    /// not retired, or a location of the catalog. One that names none is
    /// refused, as a cloud refuses an availability zone it does not have,
    /// rather than recorded to fail later for want of a host.
    pub(crate) async fn check_fleet_location(
        &self,
        field: &'static str,
        location: &str,
    ) -> Result<()> {
        let in_view = self.placement.with_engine(|engine| {
            engine
                .hosts()
                .any(|host| host.region == location || host.zone == location)
        });
        if in_view
            || self.catalog.location(location).is_some()
            || self.store.location_in_use(location).await?
        {
            return Ok(());
        }
        let mut known: Vec<String> = self.placement.with_engine(|engine| {
            engine
                .hosts()
                .flat_map(|host| [host.region.clone(), host.zone.clone()])
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .filter(|name| !name.is_empty())
                .collect()
        });
        let more = known.len() > 20;
        known.truncate(20);
        let known = match known.is_empty() {
            true => "none yet".to_string(),
            false => format!("{}{}", known.join(", "), if more { ", ..." } else { "" }),
        };
        Err(Error::invalid(
            field,
            format!(
                "unknown {field} {:?}: no server here is in a region or zone of that name \
                 (names are exact; servers here are in: {known})",
                location
            ),
        ))
    }

    /// Whether an instance of `type_name` could be placed now, in
    /// `location` or anywhere. A type the catalog does not have is not
    /// available (as Verda answers), not an error.
    pub async fn is_available(&self, type_name: &str, location: Option<&str>) -> Result<bool> {
        if let Some(code) = location {
            self.check_location("location_code", code)?;
        }
        let Some(kind) = self.catalog.instance_type(type_name) else {
            return Ok(false);
        };
        self.refresh_for_availability();
        Ok(match location {
            Some(code) => self.fits(kind, code),
            None => self
                .catalog
                .locations
                .iter()
                .any(|l| self.fits(kind, &l.code)),
        })
    }

    /// Catches the placement view up with other replicas' changes, in the
    /// background, unless it looked within the last second or is looking.
    /// This process's own changes are in the view already; a look reads
    /// every host's version, too much to wait for in each of a fleet's
    /// availability reads, and an answer about "now" a second or two old
    /// is as good as any.
    fn refresh_for_availability(&self) {
        let now = std::time::Instant::now();
        let needed_at = now
            .checked_sub(std::time::Duration::from_secs(1))
            .unwrap_or(now);
        if self.placement.looked_since(needed_at) {
            return;
        }
        let (placement, store) = (self.placement.clone(), self.store.clone());
        tokio::spawn(async move {
            if let Err(err) = placement.refresh_changed(&store, needed_at).await {
                tracing::warn!(error = %err, "placement view: looking for other replicas' changes");
            }
        });
    }

    /// The instance types that could be placed now, per location.
    pub async fn availability(&self, location: Option<&str>) -> Result<Vec<Availability>> {
        if let Some(code) = location {
            self.check_location("location_code", code)?;
        }
        self.refresh_for_availability();
        Ok(self
            .catalog
            .locations
            .iter()
            .filter(|l| location.is_none_or(|code| code == l.code))
            .map(|l| Availability {
                location: l.code.clone(),
                instance_types: self
                    .catalog
                    .instance_types
                    .iter()
                    .filter(|kind| self.fits(kind, &l.code))
                    .map(|kind| kind.name.clone())
                    .collect(),
            })
            .collect())
    }
}
