//! Tags on instances and volumes, as Verda's clients manage them: a key
//! (kept in lower case) and a value, at most [`MAX_TAGS`] a resource and one
//! per key, each with an id. Every face shows the same tags.

use crate::App;
use crate::error::{Error, Result};
use crate::identity::Principal;
use std::collections::HashMap;
use tessera_core::Permission;
use tessera_store::{TagAdded, TagRecord};

/// Tags a resource may carry.
pub const MAX_TAGS: usize = 10;
pub const MAX_KEY: usize = 63;
pub const MAX_VALUE: usize = 127;

/// What carries tags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tagged {
    Instance,
    Volume,
}

impl Tagged {
    fn prefix(self) -> &'static str {
        match self {
            Tagged::Instance => "instance",
            Tagged::Volume => "volume",
        }
    }

    fn resource(self, id: &str) -> String {
        format!("{}:{id}", self.prefix())
    }
}

/// A tag as shown.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tag {
    pub id: String,
    pub key: String,
    pub value: String,
}

impl From<TagRecord> for Tag {
    fn from(r: TagRecord) -> Self {
        Tag {
            id: r.id,
            key: r.key,
            value: r.value,
        }
    }
}

/// Checks a tag; answers it with its key in lower case.
pub fn check_tag(field: &'static str, key: &str, value: &str) -> Result<(String, String)> {
    let key = key.trim().to_lowercase();
    if key.is_empty() || key.chars().count() > MAX_KEY || key.chars().any(char::is_control) {
        return Err(Error::invalid(
            field,
            format!("a tag key is 1 to {MAX_KEY} printable characters"),
        ));
    }
    if value.chars().count() > MAX_VALUE || value.chars().any(char::is_control) {
        return Err(Error::invalid(
            field,
            format!("a tag value is at most {MAX_VALUE} printable characters"),
        ));
    }
    Ok((key, value.to_string()))
}

/// Checks the tags a new resource is made with: each one, their number, and
/// no key twice.
pub fn check_tags(field: &'static str, tags: &[(String, String)]) -> Result<Vec<(String, String)>> {
    if tags.len() > MAX_TAGS {
        return Err(Error::invalid(
            field,
            format!("a resource has at most {MAX_TAGS} tags"),
        ));
    }
    let mut checked: Vec<(String, String)> = Vec::with_capacity(tags.len());
    for (key, value) in tags {
        let tag = check_tag(field, key, value)?;
        if checked.iter().any(|(k, _)| *k == tag.0) {
            return Err(Error::invalid(
                field,
                format!("tag key {:?} is given twice", tag.0),
            ));
        }
        checked.push(tag);
    }
    Ok(checked)
}

impl App {
    /// Refuses unless the caller may change `kind` and the resource is one
    /// of its project's (404 otherwise).
    /// Whether the resource is live (a terminated instance, a deleted
    /// volume are not: they keep their tags, and take no new one).
    async fn taggable(&self, caller: &Principal, kind: Tagged, id: &str) -> Result<bool> {
        Ok(match kind {
            Tagged::Instance => {
                caller.require(Permission::InstanceCreate)?;
                let instance = self.project_instance(&caller.project_id, id).await?;
                instance.state != tessera_core::status::InstanceState::Terminated
            }
            Tagged::Volume => {
                caller.require(Permission::VolumeWrite)?;
                let volume = self.project_volume(&caller.project_id, id).await?;
                volume.status != tessera_core::status::VolumeStatus::Deleted.as_str()
            }
        })
    }

    /// Adds a tag: 409 when the resource has one with that key, 400 when
    /// it has as many as it may.
    pub async fn add_tag(
        &self,
        caller: &Principal,
        kind: Tagged,
        id: &str,
        key: &str,
        value: &str,
    ) -> Result<Tag> {
        let (key, value) = check_tag("key", key, value)?;
        if !self.taggable(caller, kind, id).await? {
            return Err(Error::invalid(
                "id",
                format!("{} {id} is deleted: it takes no new tags", kind.prefix()),
            ));
        }
        let record = TagRecord {
            id: crate::new_uuid(),
            project_id: caller.project_id.clone(),
            resource: kind.resource(id),
            key,
            value,
            created_at: tessera_store::now(),
        };
        match self.store.add_tag(&record, MAX_TAGS as i64).await? {
            TagAdded::Added => Ok(record.into()),
            TagAdded::KeyTaken => Err(Error::Conflict(format!(
                "{} {id} already has a tag {:?}",
                kind.prefix(),
                record.key
            ))),
            TagAdded::Full => Err(Error::invalid(
                "key",
                format!(
                    "{} {id} has {MAX_TAGS} tags, the most it may",
                    kind.prefix()
                ),
            )),
        }
    }

    /// Tags a resource just made with what was checked by [`check_tags`].
    pub(crate) async fn tag_new(
        &self,
        project_id: &str,
        kind: Tagged,
        id: &str,
        tags: &[(String, String)],
    ) -> Result<()> {
        for (key, value) in tags {
            let record = TagRecord {
                id: crate::new_uuid(),
                project_id: project_id.to_string(),
                resource: kind.resource(id),
                key: key.clone(),
                value: value.clone(),
                created_at: tessera_store::now(),
            };
            self.store.add_tag(&record, MAX_TAGS as i64).await?;
        }
        Ok(())
    }

    /// Removes a tag by key: 404 when the resource has none with it.
    pub async fn delete_tag(
        &self,
        caller: &Principal,
        kind: Tagged,
        id: &str,
        key: &str,
    ) -> Result<()> {
        self.taggable(caller, kind, id).await?;
        let key = key.trim().to_lowercase();
        if crate::has_nul(&key) || !self.store.delete_tag(&kind.resource(id), &key).await? {
            return Err(Error::NotFound(format!(
                "{} {id} has no tag {key:?}",
                kind.prefix()
            )));
        }
        Ok(())
    }

    /// The tags of one resource.
    pub async fn tags_of(&self, kind: Tagged, id: &str) -> Result<Vec<Tag>> {
        Ok(self
            .store
            .resource_tags(&kind.resource(id))
            .await?
            .into_iter()
            .map(Tag::from)
            .collect())
    }

    /// The tags of a project's resources of `kind`, by resource id.
    pub async fn project_tags(
        &self,
        project_id: &str,
        kind: Tagged,
    ) -> Result<HashMap<String, Vec<Tag>>> {
        Ok(by_resource(
            kind,
            self.store.project_tags(project_id).await?,
        ))
    }

    /// The tags of some of a project's resources of a kind (a page of a
    /// list), by resource id: reads only theirs.
    pub async fn page_tags<'a>(
        &self,
        project_id: &str,
        kind: Tagged,
        ids: impl IntoIterator<Item = &'a str>,
    ) -> Result<HashMap<String, Vec<Tag>>> {
        let resources: Vec<String> = ids.into_iter().map(|id| kind.resource(id)).collect();
        Ok(by_resource(
            kind,
            self.store.tags_of(project_id, &resources).await?,
        ))
    }
}

/// Tag records grouped by the id of their resource of `kind`, oldest first.
fn by_resource(kind: Tagged, records: Vec<TagRecord>) -> HashMap<String, Vec<Tag>> {
    let prefix = format!("{}:", kind.prefix());
    let mut by_resource: HashMap<String, Vec<Tag>> = HashMap::new();
    for record in records {
        if let Some(id) = record.resource.strip_prefix(&prefix) {
            by_resource
                .entry(id.to_string())
                .or_default()
                .push(record.into());
        }
    }
    by_resource
}
