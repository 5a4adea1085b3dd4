//! What can be ordered, where, and at what price: locations, instance
//! types, images, volume types, long-term periods, container and cluster
//! types.
//!
//! The catalog is data, read from a TOML file the operator may replace
//! (`--catalog FILE`); [`Catalog::built_in`] is `crates/core/catalog.toml`.
//! Every face reads the same catalog: a type's name means the same size
//! and price through the native API and through the Verda face. Prices are
//! kept as given and turned into integer micro-units ([`to_micros`]) where
//! money is counted.

use serde::Deserialize;
use std::collections::HashSet;

pub const MAX_VCPUS: u32 = 512;
pub const MAX_MEMORY_MB: u64 = 4 * 1024 * 1024;
pub const MAX_DISK_GB: u64 = 64 * 1024;
/// Hours in a month, for volume prices given per month.
pub const HOURS_PER_MONTH: f64 = 730.0;

const BUILT_IN: &str = include_str!("../catalog.toml");

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Catalog {
    /// `usd` or `eur`: every price is in it, and balances are kept in it.
    pub currency: String,
    /// Prices shown in another currency when a client asks for it (Verda's
    /// `?currency=eur`): how many of that currency one of `currency` is.
    /// Balances and charges stay in `currency`.
    #[serde(default)]
    pub exchange_rates: std::collections::BTreeMap<String, f64>,
    #[serde(default)]
    pub locations: Vec<Location>,
    #[serde(default)]
    pub images: Vec<Image>,
    #[serde(default)]
    pub instance_types: Vec<InstanceType>,
    #[serde(default)]
    pub volume_types: Vec<VolumeType>,
    #[serde(default)]
    pub long_term_periods: Vec<LongTermPeriod>,
    #[serde(default)]
    pub container_types: Vec<ContainerType>,
    #[serde(default)]
    pub cluster_types: Vec<ClusterType>,
    /// The sizes of container the containers API (`/compute`) offers.
    #[serde(default)]
    pub compute_types: Vec<ComputeType>,
    /// The image a container gets when its request names none.
    #[serde(default)]
    pub compute_image: Option<String>,
    /// What a replica of a serverless deployment gets, by `compute` name.
    #[serde(default)]
    pub serverless_compute: Vec<ServerlessCompute>,
    /// What a Kloigos compute unit costs per CPU and hour while it is
    /// allocated to a tenant; none: units are free.
    #[serde(default)]
    pub compute_unit_price_per_cpu_hour: Option<f64>,
}

/// A serverless compute resource without GPUs (Verda's "General
/// Compute"): what one replica gets per unit of its deployment's
/// `compute.size`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ServerlessCompute {
    pub name: String,
    /// The host architecture its replicas run on.
    pub arch: String,
    /// CPU per unit, in thousandths: under 1000 in all, a share of a CPU
    /// shared with other such replicas.
    pub cpu_millis: u32,
    pub memory_mb: u64,
    /// The sizes a deployment may ask for.
    pub sizes: Vec<u32>,
    /// What one unit costs per hour while a replica runs.
    pub price_per_hour: f64,
}

impl ServerlessCompute {
    /// The CPU of a replica of `size` units, in thousandths.
    pub fn cpu_millis(&self, size: u32) -> u32 {
        self.cpu_millis.saturating_mul(size)
    }

    /// Its share of a shared CPU, if under one CPU, for `size` units.
    pub fn share(&self, size: u32) -> Option<u32> {
        let millis = self.cpu_millis(size);
        (millis < crate::placement::CPU_MILLIS).then_some(millis)
    }

    /// The CPUs placement gives a replica of `size` units.
    pub fn cpus(&self, size: u32) -> u32 {
        self.cpu_millis(size).div_ceil(crate::placement::CPU_MILLIS)
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Location {
    pub code: String,
    pub name: String,
    pub country_code: String,
}

/// An operating system image.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Image {
    pub id: String,
    /// What requests name: `ubuntu-24.04`.
    pub image_type: String,
    pub name: String,
    pub category: String,
    #[serde(default)]
    pub details: Vec<String>,
    #[serde(default)]
    pub is_default: bool,
    #[serde(default)]
    pub is_cluster: bool,
    /// Its instances run as the host's root, without a user namespace of
    /// their own: an operator's explicit choice for an image that needs it
    /// (and is trusted), shown on each instance (`status.privileged`).
    #[serde(default)]
    pub privileged: bool,
    /// An OCI registry reference (`registry/name:tag` or `…@sha256:…`) a
    /// host pulls the image from the first time an instance needs it, when
    /// it has no image of this `image_type` imported.
    #[serde(default)]
    pub oci: Option<String>,
}

/// A size of instance.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct InstanceType {
    pub id: String,
    pub name: String,
    pub description: String,
    pub vcpus: u32,
    pub memory_gb: u64,
    /// The default size of the OS volume.
    pub disk_gb: u64,
    #[serde(default)]
    pub gpus: u32,
    #[serde(default)]
    pub gpu_memory_gb: u64,
    pub price_per_hour: f64,
    pub spot_price: f64,
    #[serde(default)]
    pub model: String,
    /// The GPU's (or CPU's) model name.
    #[serde(default)]
    pub gpu_name: String,
    #[serde(default)]
    pub manufacturer: String,
    #[serde(default)]
    pub display_name: String,
    #[serde(default)]
    pub p2p: String,
    #[serde(default)]
    pub best_for: Vec<String>,
    /// Image types it may run; empty allows any.
    #[serde(default)]
    pub supported_os: Vec<String>,
    /// The host architecture it runs on: `amd64` or `arm64`.
    #[serde(default = "amd64")]
    pub arch: String,
}

fn amd64() -> String {
    "amd64".into()
}

/// A size of container on the containers API (`/compute`).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ComputeType {
    pub name: String,
    /// The host architecture it runs on: `amd64` or `arm64`.
    pub arch: String,
    /// Its CPU in thousandths: under 1000, a share of a CPU it shares with
    /// other such containers (a CPU quota); else whole CPUs of its own.
    pub cpu_millis: u32,
    pub price_per_hour: f64,
}

impl ComputeType {
    /// Its share of a shared CPU, if it has one rather than CPUs of its own.
    pub fn share(&self) -> Option<u32> {
        (self.cpu_millis < crate::placement::CPU_MILLIS).then_some(self.cpu_millis)
    }

    /// The CPUs placement gives it: one shared, or its own.
    pub fn cpus(&self) -> u32 {
        self.cpu_millis.div_ceil(crate::placement::CPU_MILLIS)
    }

    /// Its cores, as people write them (`0.5`).
    pub fn cores(&self) -> f64 {
        f64::from(self.cpu_millis) / f64::from(crate::placement::CPU_MILLIS)
    }
}

impl InstanceType {
    /// Whether it may run the image (of this image type).
    pub fn runs(&self, image_type: &str) -> bool {
        self.supported_os.is_empty() || self.supported_os.iter().any(|os| os == image_type)
    }

    pub fn memory_mb(&self) -> u64 {
        self.memory_gb * 1024
    }

    /// Its hourly price, spot or not.
    pub fn hourly(&self, spot: bool) -> f64 {
        if spot {
            self.spot_price
        } else {
            self.price_per_hour
        }
    }

    /// The hourly price of an instance of this type sized as asked (the
    /// native API lets a request give its own vCPUs, memory and disk):
    /// the type's price times the largest of those over the type's own,
    /// never below the type's price. A type is a floor, and no resource
    /// grows for free: 14 vCPUs on a one-vCPU type cost 14 of it.
    pub fn hourly_sized(
        &self,
        spot: bool,
        vcpus: Option<u32>,
        memory_mb: Option<u64>,
        disk_gb: Option<u64>,
    ) -> f64 {
        let ratio = |asked: Option<u64>, own: u64| match (asked, own) {
            (Some(asked), own) if own > 0 => asked as f64 / own as f64,
            _ => 1.0,
        };
        let scale = [
            ratio(vcpus.map(u64::from), u64::from(self.vcpus)),
            ratio(memory_mb, self.memory_mb()),
            ratio(disk_gb, self.disk_gb),
        ]
        .into_iter()
        .fold(1.0, f64::max);
        self.hourly(spot) * scale
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct VolumeType {
    #[serde(rename = "type")]
    pub name: String,
    pub price_per_month_per_gb: f64,
    #[serde(default)]
    pub is_shared_fs: bool,
    #[serde(default)]
    pub burst_bandwidth: f64,
    #[serde(default)]
    pub continuous_bandwidth: f64,
    #[serde(default)]
    pub internal_network_speed: f64,
    #[serde(default)]
    pub iops: String,
    #[serde(default)]
    pub throughput_gbps: f64,
}

impl VolumeType {
    /// The hourly price of `size_gb` of it.
    pub fn hourly(&self, size_gb: u64) -> f64 {
        self.price_per_month_per_gb * size_gb as f64 / HOURS_PER_MONTH
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LongTermPeriod {
    pub code: String,
    pub name: String,
    #[serde(default = "yes")]
    pub is_enabled: bool,
    pub unit_name: String,
    pub unit_value: u32,
    pub discount_percentage: f64,
    /// `instances`, `clusters`.
    #[serde(rename = "for")]
    pub applies_to: Vec<String>,
}

fn yes() -> bool {
    true
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ContainerType {
    pub id: String,
    pub name: String,
    pub model: String,
    pub gpu_name: String,
    pub vcpus: u32,
    pub memory_gb: u64,
    pub gpus: u32,
    pub gpu_memory_gb: u64,
    pub serverless_price: f64,
    pub serverless_spot_price: f64,
    pub manufacturer: String,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClusterType {
    pub id: String,
    pub name: String,
    pub model: String,
    pub gpu_name: String,
    pub vcpus: u32,
    pub memory_gb: u64,
    pub gpus: u32,
    pub gpu_memory_gb: u64,
    pub price_per_hour: f64,
    pub manufacturer: String,
    #[serde(default)]
    pub node_details: Vec<String>,
    #[serde(default)]
    pub supported_os: Vec<String>,
}

/// An amount of money in millionths of the currency unit.
pub fn to_micros(amount: f64) -> i64 {
    (amount * 1_000_000.0).round() as i64
}

/// Micro-units back to the currency unit.
pub fn from_micros(micros: i64) -> f64 {
    micros as f64 / 1_000_000.0
}

impl Catalog {
    /// The catalog that ships with Tessera.
    pub fn built_in() -> Catalog {
        Catalog::from_toml(BUILT_IN).expect("the built-in catalog is valid")
    }

    /// What a Kloigos unit costs per CPU and hour while allocated, in
    /// millionths of the currency.
    pub fn compute_unit_micros_per_cpu_hour(&self) -> i64 {
        self.compute_unit_price_per_cpu_hour.map_or(0, to_micros)
    }

    /// How many of `currency` one of the catalog's is: 1 for its own,
    /// its exchange rate for another it offers, `None` for the rest.
    pub fn rate_to(&self, currency: &str) -> Option<f64> {
        match currency == self.currency {
            true => Some(1.0),
            false => self.exchange_rates.get(currency).copied(),
        }
    }

    /// Reads and checks a catalog file's text.
    pub fn from_toml(text: &str) -> Result<Catalog, String> {
        let catalog: Catalog = toml::from_str(text).map_err(|e| e.to_string())?;
        catalog.check()?;
        Ok(catalog)
    }

    fn check(&self) -> Result<(), String> {
        if !matches!(self.currency.as_str(), "usd" | "eur") {
            return Err(format!(
                "currency must be \"usd\" or \"eur\", not {:?}",
                self.currency
            ));
        }
        for (other, rate) in &self.exchange_rates {
            if !matches!(other.as_str(), "usd" | "eur") || *other == self.currency {
                return Err(format!(
                    "exchange_rates: {other:?} is not a currency other than {:?} (usd or eur)",
                    self.currency
                ));
            }
            if !(rate.is_finite() && *rate > 0.0) {
                return Err(format!(
                    "exchange_rates: the rate of {other} must be a positive number, not {rate}"
                ));
            }
        }
        if let Some(price) = self.compute_unit_price_per_cpu_hour
            && !(price.is_finite() && price >= 0.0)
        {
            return Err(format!(
                "compute_unit_price_per_cpu_hour must be a price of zero or more, not {price}"
            ));
        }
        unique("location", self.locations.iter().map(|l| l.code.as_str()))?;
        unique("image", self.images.iter().map(|i| i.image_type.as_str()))?;
        unique(
            "instance type",
            self.instance_types.iter().map(|t| t.name.as_str()),
        )?;
        unique(
            "volume type",
            self.volume_types.iter().map(|t| t.name.as_str()),
        )?;
        unique(
            "compute type",
            self.compute_types.iter().map(|t| t.name.as_str()),
        )?;
        for kind in &self.compute_types {
            let per_cpu = crate::placement::CPU_MILLIS;
            // A share under 10 thousandths is below the kernel's quota.
            let sized = kind.cpu_millis >= 10
                && (kind.cpu_millis < per_cpu || kind.cpu_millis % per_cpu == 0)
                && kind.cpus() <= MAX_VCPUS;
            if !sized {
                return Err(format!(
                    "compute type {}: cpu_millis must be 10 to 999 (a share of one CPU) or whole CPUs (a multiple of 1000), at most {MAX_VCPUS} CPUs",
                    kind.name
                ));
            }
            if !matches!(kind.arch.as_str(), "amd64" | "arm64") {
                return Err(format!(
                    "compute type {}: arch must be amd64 or arm64",
                    kind.name
                ));
            }
            if kind.price_per_hour.is_nan() || kind.price_per_hour < 0.0 {
                return Err(format!(
                    "compute type {}: the price cannot be negative",
                    kind.name
                ));
            }
        }
        if let Some(image) = &self.compute_image
            && self.image(image).is_none()
        {
            return Err(format!(
                "compute_image {image} is not an image the catalog lists"
            ));
        }
        unique(
            "long-term period",
            self.long_term_periods.iter().map(|p| p.code.as_str()),
        )?;
        for location in &self.locations {
            let ok = !location.code.is_empty()
                && location
                    .code
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
            if !ok {
                return Err(format!(
                    "location code {:?} must be letters, digits, '-', '_' or '.'",
                    location.code
                ));
            }
        }
        for kind in &self.instance_types {
            if !(1..=MAX_VCPUS).contains(&kind.vcpus)
                || kind.memory_gb == 0
                || kind.memory_mb() > MAX_MEMORY_MB
                || !(1..=MAX_DISK_GB).contains(&kind.disk_gb)
            {
                return Err(format!(
                    "instance type {}: vcpus must be 1 to {MAX_VCPUS}, memory_gb at least 1 and disk_gb 1 to {MAX_DISK_GB}",
                    kind.name
                ));
            }
            if [kind.price_per_hour, kind.spot_price]
                .iter()
                .any(|p| p.is_nan() || *p < 0.0)
            {
                return Err(format!(
                    "instance type {}: prices cannot be negative",
                    kind.name
                ));
            }
            for os in &kind.supported_os {
                if self.image(os).is_none() {
                    return Err(format!(
                        "instance type {} supports image {os}, which the catalog does not list",
                        kind.name
                    ));
                }
            }
        }
        for kind in &self.volume_types {
            if kind.price_per_month_per_gb.is_nan() || kind.price_per_month_per_gb < 0.0 {
                return Err(format!(
                    "volume type {}: the price cannot be negative",
                    kind.name
                ));
            }
        }
        Ok(())
    }

    pub fn instance_type(&self, name: &str) -> Option<&InstanceType> {
        self.instance_types.iter().find(|t| t.name == name)
    }

    pub fn image(&self, image_type: &str) -> Option<&Image> {
        self.images.iter().find(|i| i.image_type == image_type)
    }

    pub fn location(&self, code: &str) -> Option<&Location> {
        self.locations.iter().find(|l| l.code == code)
    }

    /// The volume type a volume gets when none is asked for (an OS
    /// volume): `NVMe` where the catalog has it, else its first.
    pub fn default_volume_type(&self) -> Option<&VolumeType> {
        self.volume_type("NVMe").or(self.volume_types.first())
    }

    pub fn compute_type(&self, name: &str) -> Option<&ComputeType> {
        self.compute_types.iter().find(|t| t.name == name)
    }

    pub fn serverless_compute(&self, name: &str) -> Option<&ServerlessCompute> {
        self.serverless_compute.iter().find(|t| t.name == name)
    }

    pub fn volume_type(&self, name: &str) -> Option<&VolumeType> {
        self.volume_types.iter().find(|t| t.name == name)
    }

    /// The names of a list, for "known ...: " hints.
    pub fn names<'a>(items: impl Iterator<Item = &'a str>) -> String {
        items.collect::<Vec<_>>().join(", ")
    }
}

fn unique<'a>(what: &str, names: impl Iterator<Item = &'a str>) -> Result<(), String> {
    let mut seen = HashSet::new();
    for name in names {
        if !seen.insert(name) {
            return Err(format!("{what} {name:?} is listed twice"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_built_in_catalog_is_valid_and_mirrors_verda() {
        let catalog = Catalog::built_in();
        for code in ["FIN-01", "FIN-02", "FIN-03", "ICE-01"] {
            assert!(catalog.location(code).is_some(), "{code}");
        }
        let cpu = catalog.instance_type("CPU.4V.16G").expect("CPU.4V.16G");
        assert_eq!((cpu.vcpus, cpu.memory_mb()), (4, 16 * 1024));
        assert!(catalog.instance_type("cx11").is_some());
        assert!(catalog.image("ubuntu-24.04").is_some());
        assert!(catalog.volume_type("NVMe").is_some());
        // No image runs privileged unless the operator says so.
        assert!(catalog.images.iter().all(|i| !i.privileged));
        let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/catalog.toml"))
            .expect("catalog.toml")
            .replacen(
                "image_type = \"ubuntu-24.04\"",
                "image_type = \"ubuntu-24.04\"\nprivileged = true",
                1,
            );
        let marked = Catalog::from_toml(&text).expect("a catalog with a privileged image");
        assert!(marked.image("ubuntu-24.04").is_some_and(|i| i.privileged));
        assert!(marked.image("ubuntu-22.04").is_some_and(|i| !i.privileged));
    }

    #[test]
    fn a_catalog_that_does_not_hold_together_is_refused() {
        let bad = [
            ("currency = \"gbp\"", "currency"),
            (
                "currency = \"usd\"\nexchange_rates = { usd = 1.0 }",
                "exchange_rates",
            ),
            (
                "currency = \"usd\"\nexchange_rates = { eur = 0 }",
                "exchange_rates",
            ),
            ("currency = \"usd\"\nbogus = 1", "unknown field"),
            (
                "currency = \"usd\"\n[[locations]]\ncode = \"A\"\nname = \"a\"\ncountry_code = \"X\"\n[[locations]]\ncode = \"A\"\nname = \"b\"\ncountry_code = \"X\"",
                "twice",
            ),
            (
                "currency = \"usd\"\n[[instance_types]]\nid = \"x\"\nname = \"t\"\ndescription = \"\"\nvcpus = 1\nmemory_gb = 1\ndisk_gb = 1\nprice_per_hour = 1\nspot_price = 1\nsupported_os = [\"nope\"]",
                "does not list",
            ),
        ];
        for (text, why) in bad {
            let err = Catalog::from_toml(text).expect_err(text);
            assert!(err.contains(why), "{text}: {err}");
        }
    }

    #[test]
    fn money_is_counted_in_micro_units() {
        assert_eq!(to_micros(0.0799), 79_900);
        assert_eq!(from_micros(1_500_000), 1.5);
    }
}
