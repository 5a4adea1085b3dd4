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

/// Paths of the Verda spec that a later issue covers (clusters).
const VERDA_LATER: &[&str] = &["/v1/clusters"];

/// Paths the real service has that its document predates: tags, as Verda's
/// Go SDK manages them, and one instance type, as it reads it.
const VERDA_BEYOND_THE_DOCUMENT: &[&str] = &[
    "/v1/instances/{instance_id}/tags",
    "/v1/instances/{instance_id}/tags/{key}",
    "/v1/volumes/{volume_id}/tags",
    "/v1/volumes/{volume_id}/tags/{key}",
    "/v1/instance-types/{instance_type}",
];

/// Where Tessera answers what the real API answers rather than what its
/// document says: `GET /sshkeys/{id}` and `GET /scripts/{id}` answer a list
/// of one (the SDK reads `[0]`).
const VERDA_LIST_OF_ONE: &[&str] = &[
    "/v1/sshkeys/{sshKeyId}",
    "/v1/ssh-keys/{sshKeyId}",
    "/v1/scripts/{scriptId}",
];

fn load(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The property names of a schema, through `$ref`, `allOf`, `oneOf` and
/// `anyOf`; an array's are its items'.
fn properties(
    doc: &serde_json::Value,
    schema: &serde_json::Value,
) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    if let Some(reference) = schema["$ref"].as_str() {
        let name = reference.rsplit('/').next().unwrap_or_default();
        return properties(doc, &doc["components"]["schemas"][name]);
    }
    for key in ["allOf", "oneOf", "anyOf"] {
        for part in schema[key].as_array().into_iter().flatten() {
            names.extend(properties(doc, part));
        }
    }
    if schema["type"] == "array" {
        names.extend(properties(doc, &schema["items"]));
    }
    for name in schema["properties"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, _)| k)
    {
        names.insert(name.clone());
    }
    names
}

fn json_schema(operation_part: &serde_json::Value) -> Option<&serde_json::Value> {
    operation_part["content"]["application/json"]["schema"].as_object()?;
    Some(&operation_part["content"]["application/json"]["schema"])
}

/// The Verda face's generated document agrees with Verda's own for
/// everything in scope: the same paths and methods, request bodies with
/// every field Verda documents, and answers with every field Verda's do.
#[test]
fn the_verda_document_agrees_with_verda_s() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../openapi");
    let seed = load(&dir.join("upstream/verda-openapi.json"));
    let ours: serde_json::Value = serde_json::from_str(
        &tessera_faces::openapi_documents()
            .into_iter()
            .find(|(name, _)| *name == "verda.json")
            .expect("verda.json")
            .1,
    )
    .expect("json");
    let methods = ["get", "post", "put", "delete", "patch"];
    let mut problems = Vec::new();
    let mut checked = 0;
    for (path, item) in seed["paths"].as_object().expect("paths") {
        if VERDA_LATER.iter().any(|p| path.starts_with(p)) {
            continue;
        }
        for method in methods {
            let Some(theirs) = item.get(method) else {
                continue;
            };
            let Some(mine) = ours["paths"][path].get(method) else {
                problems.push(format!("{method} {path} is missing"));
                continue;
            };
            checked += 1;
            if let (Some(a), Some(b)) = (
                json_schema(&theirs["requestBody"]),
                json_schema(&mine["requestBody"]),
            ) {
                let missing: Vec<_> = properties(&seed, a)
                    .difference(&properties(&ours, b))
                    .cloned()
                    .collect();
                if !missing.is_empty() {
                    problems.push(format!("{method} {path}: the request lacks {missing:?}"));
                }
            }
            for (status, answer) in theirs["responses"].as_object().into_iter().flatten() {
                if !status.starts_with('2') {
                    continue;
                }
                let Some(a) = json_schema(answer) else {
                    continue;
                };
                let Some(b) = json_schema(&mine["responses"][status]) else {
                    if !properties(&seed, a).is_empty() {
                        problems.push(format!("{method} {path}: no JSON answer for {status}"));
                    }
                    continue;
                };
                if VERDA_LIST_OF_ONE.contains(&path.as_str()) {
                    assert_eq!(b["type"], "array", "{path}");
                }
                let missing: Vec<_> = properties(&seed, a)
                    .difference(&properties(&ours, b))
                    .cloned()
                    .collect();
                if !missing.is_empty() {
                    problems.push(format!(
                        "{method} {path} {status}: the answer lacks {missing:?}"
                    ));
                }
            }
        }
    }
    for (path, item) in ours["paths"].as_object().expect("paths") {
        if VERDA_BEYOND_THE_DOCUMENT.contains(&path.as_str()) {
            continue;
        }
        for method in methods {
            if item.get(method).is_some() && seed["paths"][path].get(method).is_none() {
                problems.push(format!("{method} {path} is not in Verda's document"));
            }
        }
    }
    assert!(checked >= 40, "only {checked} operations compared");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
