//! `sqlx::migrate!` embeds the migrations at build time; a migration added
//! without touching Rust code must still rebuild the crate.

fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
