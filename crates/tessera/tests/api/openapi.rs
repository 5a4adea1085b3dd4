//! The checked-in OpenAPI documents are the ones the code generates.

use std::path::Path;

#[test]
fn checked_in_openapi_documents_are_current() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../openapi");
    for (name, generated) in tessera_faces::openapi_documents() {
        let path = dir.join(name);
        let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            checked_in == generated,
            "openapi/{name} is stale or missing: regenerate it with `cargo run -- openapi openapi` \
             and review the diff"
        );
    }
}
