//! Tags on a project's resources: key and value, at most a few a resource,
//! one per key. Both limits hold under concurrent requests: the insert
//! itself checks them.

use crate::writer::Commit;
use crate::{Result, Store};

#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct TagRecord {
    pub id: String,
    pub project_id: String,
    /// `instance:ID` or `volume:ID`.
    pub resource: String,
    #[sqlx(rename = "tag_key")]
    pub key: String,
    #[sqlx(rename = "tag_value")]
    pub value: String,
    pub created_at: String,
}

/// How adding a tag went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TagAdded {
    Added,
    /// The resource has a tag with that key.
    KeyTaken,
    /// The resource has as many tags as it may.
    Full,
}

const TAG_COLUMNS: &str = "id, project_id, resource, tag_key, tag_value, created_at";

impl Store {
    /// Adds `tag` unless its resource has one with that key, or `max` tags.
    pub async fn add_tag(&self, tag: &TagRecord, max: i64) -> Result<TagAdded> {
        let tag = std::sync::Arc::new(tag.clone());
        self.write("add_tag", move |mut conn| {
            let tag = tag.clone();
            Box::pin(async move {
                if conn
                    .fetch_int(
                        "SELECT 1 FROM tags WHERE resource = $1 AND tag_key = $2",
                        &[(&tag.resource).into(), (&tag.key).into()],
                    )
                    .await?
                    .is_some()
                {
                    return Ok(Commit::Undo(TagAdded::KeyTaken));
                }
                let added = conn
                    .execute(
                        &format!(
                            "INSERT INTO tags ({TAG_COLUMNS}) SELECT $1, $2, $3, $4, $5, $6 \
                             WHERE (SELECT COUNT(*) FROM tags WHERE resource = $3) < $7 \
                             ON CONFLICT (resource, tag_key) DO NOTHING"
                        ),
                        &[
                            (&tag.id).into(),
                            (&tag.project_id).into(),
                            (&tag.resource).into(),
                            (&tag.key).into(),
                            (&tag.value).into(),
                            (&tag.created_at).into(),
                            max.into(),
                        ],
                    )
                    .await?;
                Ok(match added {
                    1 => Commit::Keep(TagAdded::Added),
                    // Lost a race for the key, or the resource is full.
                    _ => match conn
                        .fetch_int(
                            "SELECT 1 FROM tags WHERE resource = $1 AND tag_key = $2",
                            &[(&tag.resource).into(), (&tag.key).into()],
                        )
                        .await?
                    {
                        Some(_) => Commit::Undo(TagAdded::KeyTaken),
                        None => Commit::Undo(TagAdded::Full),
                    },
                })
            })
        })
        .await
    }

    /// Removes a resource's tag; `false` when it has none with that key.
    pub async fn delete_tag(&self, resource: &str, key: &str) -> Result<bool> {
        let counts = self
            .run_statements(
                "delete_tag",
                vec![(
                    "DELETE FROM tags WHERE resource = $1 AND tag_key = $2".into(),
                    vec![resource.into(), key.into()],
                )],
                |_| true,
            )
            .await?;
        Ok(counts[0] == 1)
    }

    /// The tags of a project's resources, oldest first.
    pub async fn project_tags(&self, project_id: &str) -> Result<Vec<TagRecord>> {
        self.fetch_all(
            &format!(
                "SELECT {TAG_COLUMNS} FROM tags WHERE project_id = $1 ORDER BY created_at, id"
            ),
            &[project_id.into()],
        )
        .await
    }

    /// The tags of some of a project's resources (a page of a list),
    /// oldest first: read on the resource key, whatever the project holds.
    pub async fn tags_of(&self, project_id: &str, resources: &[String]) -> Result<Vec<TagRecord>> {
        if resources.is_empty() {
            return Ok(Vec::new());
        }
        let mut args: Vec<crate::db::Arg> = vec![project_id.into()];
        let listed: Vec<String> = resources
            .iter()
            .map(|r| {
                args.push(r.into());
                format!("${}", args.len())
            })
            .collect();
        self.fetch_all(
            &format!(
                "SELECT {TAG_COLUMNS} FROM tags WHERE project_id = $1 AND resource IN ({}) \
                 ORDER BY created_at, id",
                listed.join(", ")
            ),
            &args,
        )
        .await
    }

    /// One resource's tags, oldest first.
    pub async fn resource_tags(&self, resource: &str) -> Result<Vec<TagRecord>> {
        self.fetch_all(
            &format!("SELECT {TAG_COLUMNS} FROM tags WHERE resource = $1 ORDER BY created_at, id"),
            &[resource.into()],
        )
        .await
    }
}
