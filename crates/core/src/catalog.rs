//! What can be ordered: instance types and images.
//!
//! The built-in catalog. Types give an instance's default size; a request
//! may ask for other `vcpus` or `memory_mb` within [`MAX_VCPUS`] and
//! [`MAX_MEMORY_MB`].

/// A size of instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InstanceType {
    pub name: &'static str,
    pub vcpus: u32,
    pub memory_mb: u64,
    pub disk_gb: u64,
}

/// An operating system image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Image {
    pub name: &'static str,
    pub description: &'static str,
}

pub const MAX_VCPUS: u32 = 512;
pub const MAX_MEMORY_MB: u64 = 4 * 1024 * 1024;
pub const MAX_DISK_GB: u64 = 64 * 1024;

pub const INSTANCE_TYPES: &[InstanceType] = &[
    InstanceType {
        name: "cx11",
        vcpus: 1,
        memory_mb: 2048,
        disk_gb: 20,
    },
    InstanceType {
        name: "cx21",
        vcpus: 2,
        memory_mb: 4096,
        disk_gb: 40,
    },
    InstanceType {
        name: "cx31",
        vcpus: 2,
        memory_mb: 8192,
        disk_gb: 80,
    },
    InstanceType {
        name: "cx41",
        vcpus: 4,
        memory_mb: 16384,
        disk_gb: 160,
    },
    InstanceType {
        name: "cx51",
        vcpus: 8,
        memory_mb: 32768,
        disk_gb: 240,
    },
    InstanceType {
        name: "cx61",
        vcpus: 16,
        memory_mb: 65536,
        disk_gb: 360,
    },
];

pub const IMAGES: &[Image] = &[
    Image {
        name: "ubuntu-22.04",
        description: "Ubuntu 22.04 LTS",
    },
    Image {
        name: "ubuntu-24.04",
        description: "Ubuntu 24.04 LTS",
    },
    Image {
        name: "debian-12",
        description: "Debian 12",
    },
    Image {
        name: "tiny",
        description: "BusyBox and Dropbear: a small test image (scripts/images/tiny)",
    },
];

pub fn instance_type(name: &str) -> Option<&'static InstanceType> {
    INSTANCE_TYPES.iter().find(|t| t.name == name)
}

pub fn image(name: &str) -> Option<&'static Image> {
    IMAGES.iter().find(|i| i.name == name)
}
