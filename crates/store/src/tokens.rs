//! API tokens, kept as hashes only.

use crate::writer::Commit;
use crate::{Result, Store, now};
use sqlx::Row;
use sqlx::any::AnyRow;

#[derive(Clone, Debug)]
pub struct TokenRecord {
    pub id: String,
    pub name: String,
    pub token_hash: String,
    pub created_at: String,
}

fn token_from_row(row: &AnyRow) -> Result<TokenRecord> {
    Ok(TokenRecord {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        token_hash: row.try_get("token_hash")?,
        created_at: row.try_get("created_at")?,
    })
}

impl Store {
    pub async fn token_by_hash(&self, token_hash: &str) -> Result<Option<TokenRecord>> {
        let row = sqlx::query(
            "SELECT id, name, token_hash, created_at FROM api_tokens WHERE token_hash = $1",
        )
        .bind(token_hash)
        .fetch_optional(&self.read)
        .await?;
        row.as_ref().map(token_from_row).transpose()
    }

    pub async fn token(&self, id: &str) -> Result<Option<TokenRecord>> {
        let row =
            sqlx::query("SELECT id, name, token_hash, created_at FROM api_tokens WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.read)
                .await?;
        row.as_ref().map(token_from_row).transpose()
    }

    /// Creates token `id` with `token_hash`, or, when `id` exists, replaces its
    /// hash. Answers whether a row was created.
    pub async fn put_token(&self, id: &str, name: &str, token_hash: &str) -> Result<bool> {
        let (id, name, hash) = (id.to_string(), name.to_string(), token_hash.to_string());
        self.write("put_token", move |mut conn| {
            let (id, name, hash) = (id.clone(), name.clone(), hash.clone());
            Box::pin(async move {
                let created = conn
                    .execute(
                        "INSERT INTO api_tokens (id, name, token_hash, created_at) \
                         VALUES ($1, $2, $3, $4) ON CONFLICT (id) DO NOTHING",
                        &[
                            (&id).into(),
                            (&name).into(),
                            (&hash).into(),
                            now().as_str().into(),
                        ],
                    )
                    .await?
                    == 1;
                if !created {
                    conn.execute(
                        "UPDATE api_tokens SET token_hash = $1 WHERE id = $2",
                        &[(&hash).into(), (&id).into()],
                    )
                    .await?;
                }
                Ok(Commit::Keep(created))
            })
        })
        .await
    }
}
