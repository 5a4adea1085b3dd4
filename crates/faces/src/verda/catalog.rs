//! The catalog: locations, instance types, images, volume types, long-term
//! periods, container and cluster types, and availability (computed from
//! the hosts' free capacity).

use super::Json;
use super::{Caller, ErrorBody, Path, Query, Result, bad_request, json_bool};
use axum::extract::State;
use axum::response::Response;
use serde::{Deserialize, Serialize};
use tessera_app::App;
use tessera_core::catalog::{self as cat, HOURS_PER_MONTH};
use utoipa::{IntoParams, ToSchema};

#[derive(Serialize, ToSchema)]
pub struct LocationBody {
    #[schema(example = "FIN-01")]
    pub code: String,
    #[schema(example = "Finland 1")]
    pub name: String,
    #[schema(example = "FI")]
    pub country_code: String,
}

#[derive(Serialize, ToSchema)]
pub struct CpuBody {
    pub description: String,
    pub number_of_cores: u32,
}

#[derive(Serialize, ToSchema)]
pub struct GpuBody {
    pub description: String,
    pub number_of_gpus: u32,
}

#[derive(Serialize, ToSchema)]
pub struct SizeBody {
    pub description: String,
    pub size_in_gigabytes: u64,
}

#[derive(Serialize, ToSchema)]
pub struct StorageBody {
    pub description: String,
}

fn cpu(vcpus: u32) -> CpuBody {
    CpuBody {
        description: format!("{vcpus} CPU"),
        number_of_cores: vcpus,
    }
}

fn gpu(count: u32, name: &str) -> GpuBody {
    GpuBody {
        description: match count {
            0 => String::new(),
            n => format!("{n}x {name}"),
        },
        number_of_gpus: count,
    }
}

fn memory(gb: u64) -> SizeBody {
    SizeBody {
        description: format!("{gb}GB RAM"),
        size_in_gigabytes: gb,
    }
}

fn gpu_memory(gb: u64) -> SizeBody {
    SizeBody {
        description: match gb {
            0 => String::new(),
            n => format!("{n}GB GPU RAM"),
        },
        size_in_gigabytes: gb,
    }
}

/// Prices are strings in Verda's answers.
fn price(amount: f64) -> String {
    let text = format!("{amount:.4}");
    let text = text.trim_end_matches('0');
    text.strip_suffix('.').unwrap_or(text).to_string()
}

#[derive(Serialize, ToSchema)]
pub struct InstanceTypeBody {
    #[schema(example = "7c723b34-0287-53e2-95cc-c1c93c600f7e")]
    pub id: String,
    #[schema(example = "CPU.4V.16G")]
    pub instance_type: String,
    #[schema(example = "0.0799")]
    pub price_per_hour: String,
    #[schema(example = "0.0319")]
    pub spot_price: String,
    /// Dynamic pricing is gone: the fixed price.
    pub dynamic_price: String,
    pub max_dynamic_price: String,
    pub serverless_price: String,
    pub serverless_spot_price: String,
    pub description: String,
    pub cpu: CpuBody,
    pub gpu: GpuBody,
    pub memory: SizeBody,
    pub gpu_memory: SizeBody,
    pub storage: StorageBody,
    pub best_for: Vec<String>,
    pub model: String,
    pub name: String,
    pub p2p: String,
    /// `usd` or `eur`.
    pub currency: String,
    pub manufacturer: String,
    pub display_name: String,
    pub supported_os: Vec<String>,
    pub deploy_warning: String,
}

fn instance_type_body(t: &cat::InstanceType, priced: &Priced) -> InstanceTypeBody {
    InstanceTypeBody {
        id: t.id.clone(),
        instance_type: t.name.clone(),
        price_per_hour: priced.price(t.price_per_hour),
        spot_price: priced.price(t.spot_price),
        dynamic_price: priced.price(t.price_per_hour),
        max_dynamic_price: priced.price(t.price_per_hour),
        serverless_price: priced.price(t.price_per_hour),
        serverless_spot_price: priced.price(t.spot_price),
        description: t.description.clone(),
        cpu: cpu(t.vcpus),
        gpu: gpu(t.gpus, &t.gpu_name),
        memory: memory(t.memory_gb),
        gpu_memory: gpu_memory(t.gpu_memory_gb),
        storage: StorageBody {
            description: "dynamic".into(),
        },
        best_for: t.best_for.clone(),
        model: t.model.clone(),
        name: t.gpu_name.clone(),
        p2p: t.p2p.clone(),
        currency: priced.currency.clone(),
        manufacturer: t.manufacturer.clone(),
        display_name: match t.display_name.is_empty() {
            true => t.name.clone(),
            false => t.display_name.clone(),
        },
        supported_os: t.supported_os.clone(),
        deploy_warning: String::new(),
    }
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CurrencyQuery {
    /// `usd` or `eur`: the catalog's currency, or one it has an exchange
    /// rate for (prices are shown in it; balances stay in the catalog's).
    pub currency: Option<String>,
}

/// The currency a list's prices are shown in, and how many of it one of
/// the catalog's is: the catalog's own unless the client asks for one the
/// catalog has an exchange rate for.
struct Priced {
    currency: String,
    rate: f64,
}

impl Priced {
    fn price(&self, amount: f64) -> String {
        price(amount * self.rate)
    }
}

fn priced_in(app: &App, asked: Option<&str>) -> Result<Priced> {
    let catalog = app.catalog();
    let currency = asked.unwrap_or(&catalog.currency);
    match catalog.rate_to(currency) {
        Some(rate) => Ok(Priced {
            currency: currency.to_string(),
            rate,
        }),
        None => Err(bad_request(format!(
            "prices are kept in {}{}; currency {:?} is not offered",
            catalog.currency,
            catalog
                .exchange_rates
                .keys()
                .map(|c| format!(" and shown in {c}"))
                .collect::<String>(),
            currency
        ))),
    }
}

/// List the locations.
#[utoipa::path(get, path = "/v1/locations", tag = "Locations",
    responses(
        (status = 200, description = "Locations", body = Vec<LocationBody>),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 429, description = "Too many requests", body = ErrorBody),
    ))]
pub async fn locations(State(app): State<App>, _caller: Caller) -> Json<Vec<LocationBody>> {
    Json(
        app.catalog()
            .locations
            .iter()
            .map(|l| LocationBody {
                code: l.code.clone(),
                name: l.name.clone(),
                country_code: l.country_code.clone(),
            })
            .collect(),
    )
}

/// List the instance types (public).
#[utoipa::path(get, path = "/v1/instance-types", tag = "Instance Types",
    params(CurrencyQuery),
    security(()),
    responses(
        (status = 200, description = "Instance types", body = Vec<InstanceTypeBody>),
        (status = 400, description = "Invalid request", body = ErrorBody),
    ))]
pub async fn instance_types(
    State(app): State<App>,
    Query(query): Query<CurrencyQuery>,
) -> Result<Json<Vec<InstanceTypeBody>>> {
    let priced = priced_in(&app, query.currency.as_deref())?;
    Ok(Json(
        app.catalog()
            .instance_types
            .iter()
            .map(|t| instance_type_body(t, &priced))
            .collect(),
    ))
}

/// One instance type (public): what [`instance_types`] lists of it.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct InstanceTypeQuery {
    /// `usd` or `eur`: the catalog's currency, or one it has an exchange
    /// rate for (prices are shown in it; balances stay in the catalog's).
    pub currency: Option<String>,
    /// A location: must be one of the catalog's (prices are the same
    /// everywhere).
    pub location_code: Option<String>,
    /// `true` or `false`: the spot price is listed beside the fixed one.
    pub is_spot: Option<String>,
}

/// One instance type (public).
#[utoipa::path(get, path = "/v1/instance-types/{instance_type}", tag = "Instance Types",
    params(("instance_type" = String, Path, description = "Instance type"), InstanceTypeQuery),
    security(()),
    responses(
        (status = 200, description = "The instance type", body = InstanceTypeBody),
        (status = 400, description = "Invalid request", body = ErrorBody),
        (status = 404, description = "No such instance type", body = ErrorBody),
    ))]
pub async fn instance_type(
    State(app): State<App>,
    Path(name): Path<String>,
    Query(query): Query<InstanceTypeQuery>,
) -> Result<Json<InstanceTypeBody>> {
    let priced = priced_in(&app, query.currency.as_deref())?;
    AvailabilityQuery {
        location_code: None,
        location_code_camel: None,
        is_spot: query.is_spot,
        is_spot_camel: None,
    }
    .check()?;
    if let Some(code) = query.location_code.as_deref().filter(|c| !c.is_empty()) {
        app.check_location("location_code", code)?;
    }
    let catalog = app.catalog();
    let kind = catalog.instance_type(&name).ok_or_else(|| {
        tessera_app::Error::NotFound(format!("instance type {:?} not found", name))
    })?;
    Ok(Json(instance_type_body(kind, &priced)))
}

/// List the instance types (deprecated path).
#[utoipa::path(get, path = "/v1/instances/types", tag = "Instances",
    responses(
        (status = 200, description = "Instance types", body = Vec<InstanceTypeBody>),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 429, description = "Too many requests", body = ErrorBody),
    ))]
pub async fn instance_types_deprecated(
    State(app): State<App>,
    _caller: Caller,
) -> Json<Vec<InstanceTypeBody>> {
    let priced = Priced {
        currency: app.catalog().currency.clone(),
        rate: 1.0,
    };
    Json(
        app.catalog()
            .instance_types
            .iter()
            .map(|t| instance_type_body(t, &priced))
            .collect(),
    )
}

/// Daily dynamic price history (public), by instance type: dynamic pricing
/// is gone, so there is none. A map, as Verda's clients read it.
#[utoipa::path(get, path = "/v1/instance-types/price-history", tag = "Instance Types",
    security(()),
    responses((status = 200, description = "No history: an empty map of instance type to records",
        body = std::collections::BTreeMap<String, Vec<String>>)))]
pub async fn price_history() -> Json<std::collections::BTreeMap<String, Vec<String>>> {
    Json(std::collections::BTreeMap::new())
}

#[derive(Serialize, ToSchema)]
pub struct ImageBody {
    #[schema(example = "3891e138-3fd5-5de9-b8bb-812a28ec4e48")]
    pub id: String,
    #[schema(example = "ubuntu-24.04")]
    pub image_type: String,
    #[schema(example = "Ubuntu 24.04")]
    pub name: String,
    pub is_default: bool,
    pub details: Vec<String>,
    #[schema(example = "ubuntu")]
    pub category: String,
    pub is_cluster: bool,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ImageQuery {
    /// Only images this instance type supports.
    pub instance_type: Option<String>,
}

/// Which images a listing shows.
enum ImageFilter {
    All,
    /// A type's supported images (all, when it names none).
    SupportedBy(Vec<String>),
    /// A type the catalog does not have: no image (as Verda answers).
    Nothing,
}

impl ImageFilter {
    fn shows(&self, image_type: &str) -> bool {
        match self {
            ImageFilter::All => true,
            ImageFilter::SupportedBy(list) => {
                list.is_empty() || list.iter().any(|s| s == image_type)
            }
            ImageFilter::Nothing => false,
        }
    }
}

fn image_list(app: &App, instance_type: Option<&str>, cluster: bool) -> Result<Vec<ImageBody>> {
    let catalog = app.catalog();
    let filter = match instance_type {
        None => ImageFilter::All,
        Some(name) => {
            let list = match cluster {
                false => catalog.instance_type(name).map(|t| t.supported_os.clone()),
                true => catalog
                    .cluster_types
                    .iter()
                    .find(|t| t.name == name)
                    .map(|t| t.supported_os.clone()),
            };
            list.map_or(ImageFilter::Nothing, ImageFilter::SupportedBy)
        }
    };
    Ok(catalog
        .images
        .iter()
        .filter(|i| filter.shows(&i.image_type))
        .map(|i| ImageBody {
            id: i.id.clone(),
            image_type: i.image_type.clone(),
            name: i.name.clone(),
            is_default: i.is_default,
            details: i.details.clone(),
            category: i.category.clone(),
            is_cluster: cluster || i.is_cluster,
        })
        .collect())
}

/// List the OS images.
#[utoipa::path(get, path = "/v1/images", tag = "Images",
    params(ImageQuery),
    responses(
        (status = 200, description = "Images", body = Vec<ImageBody>),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 404, description = "Unknown instance type", body = ErrorBody),
        (status = 429, description = "Too many requests", body = ErrorBody),
    ))]
pub async fn images(
    State(app): State<App>,
    _caller: Caller,
    Query(query): Query<ImageQuery>,
) -> Result<Json<Vec<ImageBody>>> {
    Ok(Json(image_list(
        &app,
        query.instance_type.as_deref(),
        false,
    )?))
}

/// List the OS images for clusters.
#[utoipa::path(get, path = "/v1/images/cluster", tag = "Images",
    params(ImageQuery),
    responses(
        (status = 200, description = "Images", body = Vec<ImageBody>),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 404, description = "Unknown cluster type", body = ErrorBody),
        (status = 429, description = "Too many requests", body = ErrorBody),
    ))]
pub async fn cluster_images(
    State(app): State<App>,
    _caller: Caller,
    Query(query): Query<ImageQuery>,
) -> Result<Json<Vec<ImageBody>>> {
    Ok(Json(image_list(
        &app,
        query.instance_type.as_deref(),
        true,
    )?))
}

#[derive(Serialize, ToSchema)]
pub struct VolumePriceBody {
    pub price_per_month_per_gb: f64,
    /// Cost per second per GB.
    pub cps_per_gb: f64,
    pub currency: String,
}

#[derive(Serialize, ToSchema)]
pub struct VolumeTypeBody {
    #[serde(rename = "type")]
    #[schema(example = "NVMe")]
    pub volume_type: String,
    pub price: VolumePriceBody,
    pub is_shared_fs: bool,
    pub burst_bandwidth: f64,
    pub continuous_bandwidth: f64,
    pub internal_network_speed: f64,
    pub iops: String,
    pub throughput_gbps: f64,
}

/// List the volume types and their prices (public).
#[utoipa::path(get, path = "/v1/volume-types", tag = "Volume Types",
    security(()),
    responses((status = 200, description = "Volume types", body = Vec<VolumeTypeBody>)))]
pub async fn volume_types(State(app): State<App>) -> Json<Vec<VolumeTypeBody>> {
    let catalog = app.catalog();
    Json(
        catalog
            .volume_types
            .iter()
            .map(|t| VolumeTypeBody {
                volume_type: t.name.clone(),
                price: VolumePriceBody {
                    price_per_month_per_gb: t.price_per_month_per_gb,
                    cps_per_gb: t.price_per_month_per_gb / (HOURS_PER_MONTH * 3600.0),
                    currency: catalog.currency.clone(),
                },
                is_shared_fs: t.is_shared_fs,
                burst_bandwidth: t.burst_bandwidth,
                continuous_bandwidth: t.continuous_bandwidth,
                internal_network_speed: t.internal_network_speed,
                iops: t.iops.clone(),
                throughput_gbps: t.throughput_gbps,
            })
            .collect(),
    )
}

#[derive(Serialize, ToSchema)]
pub struct LongTermPeriodBody {
    #[schema(example = "3_MONTHS")]
    pub code: String,
    #[schema(example = "3 months")]
    pub name: String,
    pub is_enabled: bool,
    /// `hour`, `day`, `week`, `month` or `year`.
    pub unit_name: String,
    pub unit_value: f64,
    pub discount_percentage: f64,
}

fn periods(app: &App, kind: Option<&str>) -> Json<Vec<LongTermPeriodBody>> {
    Json(
        app.catalog()
            .long_term_periods
            .iter()
            .filter(|p| kind.is_none_or(|k| p.applies_to.iter().any(|a| a == k)))
            .map(|p| LongTermPeriodBody {
                code: p.code.clone(),
                name: p.name.clone(),
                is_enabled: p.is_enabled,
                unit_name: p.unit_name.clone(),
                unit_value: f64::from(p.unit_value),
                discount_percentage: p.discount_percentage,
            })
            .collect(),
    )
}

/// List the long-term periods (deprecated: use the instances or clusters
/// list).
#[utoipa::path(get, path = "/v1/long-term/periods", tag = "Long Term",
    security(()),
    responses((status = 200, description = "Periods", body = Vec<LongTermPeriodBody>)))]
pub async fn long_term_periods(State(app): State<App>) -> Json<Vec<LongTermPeriodBody>> {
    periods(&app, None)
}

/// List the long-term periods for instances.
#[utoipa::path(get, path = "/v1/long-term/periods/instances", tag = "Long Term",
    security(()),
    responses((status = 200, description = "Periods", body = Vec<LongTermPeriodBody>)))]
pub async fn long_term_periods_instances(State(app): State<App>) -> Json<Vec<LongTermPeriodBody>> {
    periods(&app, Some("instances"))
}

/// List the long-term periods for clusters.
#[utoipa::path(get, path = "/v1/long-term/periods/clusters", tag = "Long Term",
    security(()),
    responses((status = 200, description = "Periods", body = Vec<LongTermPeriodBody>)))]
pub async fn long_term_periods_clusters(State(app): State<App>) -> Json<Vec<LongTermPeriodBody>> {
    periods(&app, Some("clusters"))
}

#[derive(Serialize, ToSchema)]
pub struct ContainerTypeBody {
    pub id: String,
    pub model: String,
    pub name: String,
    pub instance_type: String,
    pub cpu: CpuBody,
    pub gpu: GpuBody,
    pub gpu_memory: SizeBody,
    pub memory: SizeBody,
    pub serverless_price: String,
    pub serverless_spot_price: String,
    pub currency: String,
    pub manufacturer: String,
}

/// List the serverless container types (public).
#[utoipa::path(get, path = "/v1/container-types", tag = "Container Types",
    params(CurrencyQuery),
    security(()),
    responses(
        (status = 200, description = "Container types", body = Vec<ContainerTypeBody>),
        (status = 400, description = "Invalid request", body = ErrorBody),
    ))]
pub async fn container_types(
    State(app): State<App>,
    Query(query): Query<CurrencyQuery>,
) -> Result<Json<Vec<ContainerTypeBody>>> {
    let priced = priced_in(&app, query.currency.as_deref())?;
    let catalog = app.catalog();
    Ok(Json(
        catalog
            .container_types
            .iter()
            .map(|t| ContainerTypeBody {
                id: t.id.clone(),
                model: t.model.clone(),
                name: t.gpu_name.clone(),
                instance_type: t.name.clone(),
                cpu: cpu(t.vcpus),
                gpu: gpu(t.gpus, &t.gpu_name),
                gpu_memory: gpu_memory(t.gpu_memory_gb),
                memory: memory(t.memory_gb),
                serverless_price: priced.price(t.serverless_price),
                serverless_spot_price: priced.price(t.serverless_spot_price),
                currency: priced.currency.clone(),
                manufacturer: t.manufacturer.clone(),
            })
            .collect(),
    ))
}

#[derive(Serialize, ToSchema)]
pub struct ClusterTypeBody {
    pub id: String,
    pub model: String,
    pub name: String,
    pub cluster_type: String,
    pub cpu: CpuBody,
    pub gpu: GpuBody,
    pub gpu_memory: SizeBody,
    pub memory: SizeBody,
    pub price_per_hour: String,
    pub currency: String,
    pub manufacturer: String,
    pub node_details: Vec<String>,
    pub supported_os: Vec<String>,
}

/// List the cluster types (public).
#[utoipa::path(get, path = "/v1/cluster-types", tag = "Clusters",
    params(CurrencyQuery),
    security(()),
    responses(
        (status = 200, description = "Cluster types", body = Vec<ClusterTypeBody>),
        (status = 400, description = "Invalid request", body = ErrorBody),
    ))]
pub async fn cluster_types(
    State(app): State<App>,
    Query(query): Query<CurrencyQuery>,
) -> Result<Json<Vec<ClusterTypeBody>>> {
    let priced = priced_in(&app, query.currency.as_deref())?;
    let catalog = app.catalog();
    Ok(Json(
        catalog
            .cluster_types
            .iter()
            .map(|t| ClusterTypeBody {
                id: t.id.clone(),
                model: t.model.clone(),
                name: t.gpu_name.clone(),
                cluster_type: t.name.clone(),
                cpu: cpu(t.vcpus),
                gpu: gpu(t.gpus, &t.gpu_name),
                gpu_memory: gpu_memory(t.gpu_memory_gb),
                memory: memory(t.memory_gb),
                price_per_hour: priced.price(t.price_per_hour),
                currency: priced.currency.clone(),
                manufacturer: t.manufacturer.clone(),
                node_details: t.node_details.clone(),
                supported_os: t.supported_os.clone(),
            })
            .collect(),
    ))
}

#[derive(Serialize, ToSchema)]
pub struct AvailabilityBody {
    #[schema(example = "FIN-01")]
    pub location_code: String,
    /// The instance (or cluster) types that could be deployed there now.
    pub availabilities: Vec<String>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AvailabilityQuery {
    /// Only this location.
    pub location_code: Option<String>,
    /// The same, as older clients send it.
    #[serde(rename = "locationCode")]
    #[param(rename = "locationCode")]
    pub location_code_camel: Option<String>,
    /// `true` or `false`: spot instances use the same capacity.
    pub is_spot: Option<String>,
    /// The same, as the SDK sends it.
    #[serde(rename = "isSpot")]
    #[param(rename = "isSpot")]
    pub is_spot_camel: Option<String>,
}

impl AvailabilityQuery {
    fn location(&self) -> Option<&str> {
        self.location_code
            .as_deref()
            .or(self.location_code_camel.as_deref())
            .filter(|l| !l.is_empty())
    }

    fn check(&self) -> Result<()> {
        for value in [&self.is_spot, &self.is_spot_camel].into_iter().flatten() {
            if !matches!(
                value.as_str(),
                "true" | "false" | "True" | "False" | "1" | "0"
            ) {
                return Err(bad_request(format!(
                    "is_spot must be true or false, not {:?}",
                    value
                )));
            }
        }
        Ok(())
    }
}

/// Instance types that could be deployed now, per location.
#[utoipa::path(get, path = "/v1/instance-availability", tag = "Instance Availability",
    params(AvailabilityQuery),
    responses(
        (status = 200, description = "Availability", body = Vec<AvailabilityBody>),
        (status = 400, description = "Invalid request", body = ErrorBody),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 429, description = "Too many requests", body = ErrorBody),
    ))]
pub async fn availabilities(
    State(app): State<App>,
    _caller: Caller,
    Query(query): Query<AvailabilityQuery>,
) -> Result<Json<Vec<AvailabilityBody>>> {
    query.check()?;
    let list = app.availability(query.location()).await?;
    Ok(Json(
        list.into_iter()
            .map(|a| AvailabilityBody {
                location_code: a.location,
                availabilities: a.instance_types,
            })
            .collect(),
    ))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ClusterAvailabilityQuery {
    /// Only this location.
    pub location_code: Option<String>,
}

impl ClusterAvailabilityQuery {
    /// The locations asked about, each checked.
    fn locations(&self, app: &App) -> Result<Vec<String>> {
        match self.location_code.as_deref().filter(|c| !c.is_empty()) {
            Some(code) => {
                app.check_location("location_code", code)?;
                Ok(vec![code.to_string()])
            }
            None => Ok(app
                .catalog()
                .locations
                .iter()
                .map(|l| l.code.clone())
                .collect()),
        }
    }
}

/// Cluster types that could be deployed now, per location: none, as
/// clusters are not offered yet (their types are listed, with prices).
#[utoipa::path(get, path = "/v1/cluster-availability", tag = "Clusters",
    params(ClusterAvailabilityQuery),
    responses(
        (status = 200, description = "Availability", body = Vec<AvailabilityBody>),
        (status = 400, description = "Invalid request", body = ErrorBody),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 429, description = "Too many requests", body = ErrorBody),
    ))]
pub async fn cluster_availabilities(
    State(app): State<App>,
    _caller: Caller,
    Query(query): Query<ClusterAvailabilityQuery>,
) -> Result<Json<Vec<AvailabilityBody>>> {
    Ok(Json(
        query
            .locations(&app)?
            .into_iter()
            .map(|location_code| AvailabilityBody {
                location_code,
                availabilities: Vec::new(),
            })
            .collect(),
    ))
}

/// Whether a cluster type could be deployed now: `false`, as clusters are
/// not offered yet.
#[utoipa::path(get, path = "/v1/cluster-availability/{cluster_type}", tag = "Clusters",
    params(("cluster_type" = String, Path, description = "Cluster type"), ClusterAvailabilityQuery),
    responses(
        (status = 200, description = "Whether it is available", body = bool, content_type = "application/json"),
        (status = 400, description = "Invalid request", body = ErrorBody),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 429, description = "Too many requests", body = ErrorBody),
    ))]
pub async fn cluster_availability(
    State(app): State<App>,
    _caller: Caller,
    Path(_cluster_type): Path<String>,
    Query(query): Query<ClusterAvailabilityQuery>,
) -> Result<Response> {
    query.locations(&app)?;
    Ok(json_bool(false))
}

/// Whether an instance type could be deployed now: a bare `true` or
/// `false`.
#[utoipa::path(get, path = "/v1/instance-availability/{instance_type}", tag = "Instance Availability",
    params(("instance_type" = String, Path, description = "Instance type"), AvailabilityQuery),
    responses(
        (status = 200, description = "Whether it is available", body = bool, content_type = "application/json"),
        (status = 400, description = "Invalid request", body = ErrorBody),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 429, description = "Too many requests", body = ErrorBody),
    ))]
pub async fn availability(
    State(app): State<App>,
    _caller: Caller,
    Path(instance_type): Path<String>,
    Query(query): Query<AvailabilityQuery>,
) -> Result<Response> {
    query.check()?;
    Ok(json_bool(
        app.is_available(&instance_type, query.location()).await?,
    ))
}

/// Whether an instance type could be deployed now (deprecated path).
#[utoipa::path(get, path = "/v1/instances/availability/{instanceType}", tag = "Instances",
    params(("instanceType" = String, Path, description = "Instance type"), AvailabilityQuery),
    responses(
        (status = 200, description = "Whether it is available", body = bool, content_type = "application/json"),
        (status = 400, description = "Invalid request", body = ErrorBody),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 429, description = "Too many requests", body = ErrorBody),
    ))]
pub async fn availability_deprecated(
    state: State<App>,
    caller: Caller,
    path: Path<String>,
    query: Query<AvailabilityQuery>,
) -> Result<Response> {
    availability(state, caller, path, query).await
}
