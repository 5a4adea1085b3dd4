//! `GET /balance`.

use super::Json;
use super::{Caller, ErrorBody, Result};
use axum::extract::State;
use serde::Serialize;
use tessera_app::App;
use utoipa::ToSchema;

#[derive(Serialize, ToSchema)]
pub struct BalanceBody {
    /// What the project has left: money put in less what its instances and
    /// volumes have cost up to now.
    #[schema(example = 1000)]
    pub amount: f64,
    /// `usd` or `eur`.
    #[schema(example = "usd")]
    pub currency: String,
}

/// Get the project's balance.
#[utoipa::path(get, path = "/v1/balance", tag = "Balance",
    responses(
        (status = 200, description = "The balance", body = BalanceBody),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 429, description = "Too many requests", body = ErrorBody),
    ))]
pub async fn balance(State(app): State<App>, Caller(caller): Caller) -> Result<Json<BalanceBody>> {
    let balance = app.balance(&caller).await?;
    Ok(Json(BalanceBody {
        amount: balance.amount,
        currency: balance.currency,
    }))
}
