//! Block volumes: their records, what they are attached to, where their
//! storage lives, and their meters.
//!
//! Every change is conditional on the generation the caller read, so two
//! requests acting on one volume at once cannot both win.

use crate::billing::{meter_open, meter_set};
use crate::db::Arg;
use crate::{QuotaCheck, Result, Store};

/// A volume as stored. It is also read as JSON (an instance's volumes, in
/// [`Store::instance_surroundings`]): each field named as its column.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow, serde::Deserialize)]
pub struct VolumeRecord {
    pub id: String,
    pub project_id: String,
    pub name: String,
    #[sqlx(rename = "type")]
    #[serde(rename = "type")]
    pub volume_type: String,
    pub size_gb: i64,
    pub location: String,
    /// `ordered`, `detached`, `attached`, `deleted`.
    pub status: String,
    pub is_os_volume: i64,
    pub instance_id: Option<String>,
    pub target: Option<String>,
    pub host_id: Option<String>,
    pub created_by: Option<String>,
    pub created_at: String,
    /// When it went to the trash.
    pub trashed_at: Option<String>,
    /// When its storage was destroyed for good.
    pub purged_at: Option<String>,
    pub generation: i64,
    /// When it was deleted (to the trash, or for good); none while live.
    pub deleted_at: Option<String>,
}

/// A new volume and what it costs per hour.
#[derive(Clone, Debug)]
pub struct NewVolume {
    pub record: VolumeRecord,
    pub micros_per_hour: i64,
}

/// What a volume change does to its meter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MeterChange {
    /// It now costs this much per hour (a resize).
    Rerate(i64),
    /// It costs nothing from now on (purged).
    Stop,
}

/// Which volumes to list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VolumeSet {
    /// Not deleted.
    Live,
    /// Deleted but not yet purged.
    Trash,
}

pub(crate) const VOLUME_COLUMNS: &str = "id, project_id, name, type, size_gb, location, status, is_os_volume, \
     instance_id, target, host_id, created_by, created_at, trashed_at, purged_at, generation, deleted_at";

pub(crate) fn volume_insert(volume: &NewVolume) -> Vec<(String, Vec<Arg>)> {
    let v = &volume.record;
    vec![
        (
            format!(
                "INSERT INTO volumes ({VOLUME_COLUMNS}) VALUES \
                 ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, NULL, NULL, 1, NULL)"
            ),
            vec![
                (&v.id).into(),
                (&v.project_id).into(),
                (&v.name).into(),
                (&v.volume_type).into(),
                v.size_gb.into(),
                (&v.location).into(),
                (&v.status).into(),
                v.is_os_volume.into(),
                v.instance_id.as_ref().into(),
                v.target.as_ref().into(),
                v.host_id.as_ref().into(),
                v.created_by.as_ref().into(),
                (&v.created_at).into(),
            ],
        ),
        meter_open(&v.id, &v.project_id, "volume", volume.micros_per_hour, true),
    ]
}

/// Attaches a detached volume of the project to an instance.
pub(crate) fn volume_attach(
    volume_id: &str,
    project_id: &str,
    instance_id: &str,
    target: &str,
) -> (String, Vec<Arg>) {
    (
        "UPDATE volumes SET instance_id = $1, target = $2, status = 'attached', \
         generation = generation + 1 \
         WHERE id = $3 AND project_id = $4 AND status = 'detached' AND instance_id IS NULL"
            .into(),
        vec![
            instance_id.into(),
            target.into(),
            volume_id.into(),
            project_id.into(),
        ],
    )
}

impl Store {
    /// Records new volumes (each billed from now), all or none.
    /// Records new volumes, within `quota` when given.
    pub async fn insert_volumes(
        &self,
        volumes: &[NewVolume],
        quota: Option<&QuotaCheck>,
    ) -> Result<()> {
        let statements = volumes.iter().flat_map(volume_insert).collect();
        self.run_statements_within("insert_volumes", statements, |_| true, quota)
            .await?;
        Ok(())
    }

    pub async fn volume(&self, id: &str) -> Result<Option<VolumeRecord>> {
        self.fetch_optional(
            &format!("SELECT {VOLUME_COLUMNS} FROM volumes WHERE id = $1"),
            &[id.into()],
        )
        .await
    }

    /// A project's volumes, oldest first.
    pub async fn volumes(&self, project_id: &str, set: VolumeSet) -> Result<Vec<VolumeRecord>> {
        let condition = match set {
            VolumeSet::Live => "status <> 'deleted'",
            VolumeSet::Trash => {
                "status = 'deleted' AND trashed_at IS NOT NULL AND purged_at IS NULL"
            }
        };
        self.fetch_all(
            &format!(
                "SELECT {VOLUME_COLUMNS} FROM volumes WHERE project_id = $1 AND {condition} \
                 ORDER BY created_at, id"
            ),
            &[project_id.into()],
        )
        .await
    }

    /// The volumes attached to an instance, by target.
    pub async fn instance_volumes(&self, instance_id: &str) -> Result<Vec<VolumeRecord>> {
        self.fetch_all(
            &format!(
                "SELECT {VOLUME_COLUMNS} FROM volumes WHERE instance_id = $1 ORDER BY target, id"
            ),
            &[instance_id.into()],
        )
        .await
    }

    /// The volumes whose storage lives on a host and is not destroyed.
    pub async fn host_volumes(&self, host_id: &str) -> Result<Vec<VolumeRecord>> {
        self.fetch_all(
            &format!(
                "SELECT {VOLUME_COLUMNS} FROM volumes WHERE host_id = $1 AND purged_at IS NULL \
                 AND is_os_volume = 0 ORDER BY created_at, id"
            ),
            &[host_id.into()],
        )
        .await
    }

    /// Deleted volumes whose storage is still there: in the trash since
    /// before `cutoff`, or deleted for good but not yet purged.
    pub async fn volumes_to_purge(&self, cutoff: &str) -> Result<Vec<VolumeRecord>> {
        self.fetch_all(
            &format!(
                "SELECT {VOLUME_COLUMNS} FROM volumes WHERE status = 'deleted' AND purged_at IS NULL \
                 AND (trashed_at IS NULL OR trashed_at < $1) ORDER BY created_at LIMIT 100"
            ),
            &[cutoff.into()],
        )
        .await
    }

    /// Attaches a volume read at `read_generation` to an instance as
    /// `target`, with `host_id` as its home if it has none. `false`,
    /// changing nothing, when the volume changed since or the instance
    /// already has a volume there. Attaches to one instance are serialised
    /// on the instance's row, so two cannot take one target.
    pub async fn attach_volume(
        &self,
        volume_id: &str,
        read_generation: i64,
        instance_id: &str,
        target: &str,
        host_id: Option<&str>,
    ) -> Result<bool> {
        let counts = self
            .run_statements(
                "attach_volume",
                vec![
                    (
                        "UPDATE instances SET updated_at = updated_at WHERE id = $1".into(),
                        vec![instance_id.into()],
                    ),
                    (
                        "UPDATE volumes SET status = 'attached', instance_id = $1, target = $2, \
                         host_id = COALESCE(host_id, $3), generation = generation + 1 \
                         WHERE id = $4 AND generation = $5 AND NOT EXISTS \
                         (SELECT 1 FROM volumes AS other WHERE other.instance_id = $1 AND other.target = $2)"
                            .into(),
                        vec![
                            instance_id.into(),
                            target.into(),
                            host_id.into(),
                            volume_id.into(),
                            read_generation.into(),
                        ],
                    ),
                ],
                |c| c[1] == 1,
            )
            .await?;
        Ok(counts[1] == 1)
    }

    /// Writes `volume` over the record of generation `read_generation`;
    /// `false`, changing nothing, when it changed since.
    /// Writes a volume read at `read_generation` (within `quota` when
    /// given: a volume that grows); `false`, changing nothing, when it
    /// changed meanwhile.
    pub async fn update_volume(
        &self,
        volume: &VolumeRecord,
        read_generation: i64,
        meter: Option<MeterChange>,
        quota: Option<&QuotaCheck>,
    ) -> Result<bool> {
        let mut statements = vec![(
            "UPDATE volumes SET name = $1, type = $2, size_gb = $3, status = $4, instance_id = $5, \
             target = $6, host_id = $7, trashed_at = $8, purged_at = $9, deleted_at = $12, \
             generation = generation + 1 WHERE id = $10 AND generation = $11"
                .to_string(),
            vec![
                (&volume.name).into(),
                (&volume.volume_type).into(),
                volume.size_gb.into(),
                (&volume.status).into(),
                volume.instance_id.as_ref().into(),
                volume.target.as_ref().into(),
                volume.host_id.as_ref().into(),
                volume.trashed_at.as_ref().into(),
                volume.purged_at.as_ref().into(),
                (&volume.id).into(),
                read_generation.into(),
                volume.deleted_at.as_ref().into(),
            ],
        )];
        match meter {
            Some(MeterChange::Rerate(rate)) => {
                statements.push(meter_set(&volume.id, true, Some(rate)))
            }
            Some(MeterChange::Stop) => statements.push(meter_set(&volume.id, false, None)),
            None => {}
        }
        let counts = self
            .run_statements_within("update_volume", statements, |c| c[0] == 1, quota)
            .await?;
        Ok(counts[0] == 1)
    }
}
